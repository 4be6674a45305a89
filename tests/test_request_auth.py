"""Signed gateway requests (kyodo.gateway.check_request, ReplayGuard): each way a
request can be unacceptable is a distinct, typed refusal."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from kyodo.codec import encode
from kyodo.crypto import Ed25519Signer
from kyodo.gateway import (
    AuthContext,
    ReplayGuard,
    RequestRejectedError,
    check_request,
    request_id,
)
from kyodo.identity import CertificateAuthority, Membership, Role
from kyodo.policy import AclTable
from kyodo.wire import BlockRequest, RequestPayload, SignedRequest
from tests.test_creator_checks import CA, NOW, member

CHAIN = "kyodo-request-test"
WINDOW = 60_000


def context(membership: Membership | None = None) -> AuthContext:
    return AuthContext(
        chain_id=CHAIN,
        membership=membership or Membership({"org1": CA.cert_pem}),
        max_age_ms=WINDOW,
        acl=AclTable(),
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed(
    cert: bytes, signer: Ed25519Signer, *, sign_other: bool = False, **changes: object
) -> SignedRequest:
    fields: dict[str, object] = {
        "chain_id": CHAIN,
        "method": "GetBlock",
        "body": encode(BlockRequest(height=1)),
        "nonce": b"\x02" * 16,
        "created_ms": now_ms(),
        "creator": cert,
    }
    fields.update(changes)
    payload = encode(RequestPayload(**fields))  # type: ignore[arg-type]
    return SignedRequest(payload=payload, signature=signer.sign(b"x" if sign_other else payload))


def reason(request: SignedRequest, ctx: AuthContext | None = None, at_ms: int | None = None) -> str:
    with pytest.raises(RequestRejectedError) as refused:
        check_request(
            request, method="GetBlock", context=ctx or context(), now_ms=at_ms or now_ms()
        )
    return refused.value.reason


def test_an_authentic_fresh_request_names_its_signer():
    cert, signer = member(Role.CLIENT)
    payload, who = check_request(
        signed(cert, signer), method="GetBlock", context=context(), now_ms=now_ms()
    )
    assert (who.org, who.role) == ("org1", Role.CLIENT)
    assert payload.body == encode(BlockRequest(height=1))


def test_each_unacceptable_request_has_its_own_reason():
    cert, signer = member(Role.CLIENT)
    stranger = CertificateAuthority.create("org1", now=NOW - timedelta(days=1))
    assert reason(signed(*member(Role.CLIENT, issuer=stranger))) == "unknown_ca"
    later = int((NOW + timedelta(days=40)).timestamp() * 1000)
    assert reason(signed(cert, signer, created_ms=later), at_ms=later) == "certificate_expired"
    assert reason(signed(*member(Role.NODE))) == "wrong_role"
    assert reason(signed(cert, signer, sign_other=True)) == "bad_signature"
    serial = x509.load_der_x509_certificate(cert).serial_number
    revoking = Membership(
        {"org1": CA.cert_pem}, crls={"org1": CA.revocation_list([serial], now=NOW)}
    )
    assert reason(signed(cert, signer), context(revoking)) == "revoked"
    assert reason(signed(cert, signer, created_ms=now_ms() - 2 * WINDOW)) == "expired"
    assert reason(signed(cert, signer, chain_id="another")) == "wrong_chain"
    assert reason(signed(cert, signer, method="GetConfig")) == "wrong_method"
    assert reason(signed(cert, signer, nonce=b"short")) == "malformed"
    assert reason(signed(cert, signer, creator=b"\x30\x03garbage")) == "unknown_identity"
    good = signed(cert, signer)
    assert reason(replace(good, payload=good.payload[:-3])) == "malformed"


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=2048), signature=st.binary(max_size=128))
def test_arbitrary_bytes_are_a_typed_refusal_never_a_crash(payload, signature):
    with pytest.raises(RequestRejectedError):
        check_request(
            SignedRequest(payload=payload, signature=signature),
            method="GetBlock",
            context=context(),
            now_ms=now_ms(),
        )


def test_a_replayed_request_is_refused_and_forgotten_only_once_too_old():
    guard = ReplayGuard()
    t = now_ms()
    guard.admit(b"a", created_ms=t, now_ms=t, window_ms=WINDOW)
    with pytest.raises(RequestRejectedError) as refused:
        guard.admit(b"a", created_ms=t, now_ms=t + WINDOW, window_ms=WINDOW)
    assert refused.value.reason == "replayed"
    # once the request is older than the window, check_request refuses it as expired,
    # so the guard may forget it
    guard.admit(b"b", created_ms=t + 2 * WINDOW, now_ms=t + 2 * WINDOW, window_ms=WINDOW)
    assert len(guard) == 1


def test_a_full_replay_guard_shortens_the_window_instead_of_forgetting_replays():
    guard = ReplayGuard(capacity=3)
    t = now_ms()
    for i in range(3):
        guard.admit(bytes([i]), created_ms=t + i, now_ms=t + 10, window_ms=WINDOW)
    guard.admit(b"new", created_ms=t + 5, now_ms=t + 10, window_ms=WINDOW)  # evicts t + 0
    assert len(guard) == 3
    with pytest.raises(RequestRejectedError) as refused:  # the evicted one, replayed
        guard.admit(bytes([0]), created_ms=t, now_ms=t + 11, window_ms=WINDOW)
    assert refused.value.reason == "expired"
    with pytest.raises(RequestRejectedError, match="already received"):
        guard.admit(bytes([1]), created_ms=t + 1, now_ms=t + 11, window_ms=WINDOW)


def test_request_ids_differ_with_any_byte_of_the_payload():
    cert, signer = member(Role.CLIENT)
    a, b = signed(cert, signer), signed(cert, signer, nonce=b"\x03" * 16)
    assert request_id(a) != request_id(b)
    assert request_id(a) == request_id(replace(a, signature=b"other"))
