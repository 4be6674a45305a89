"""Property tests of the parsers that face the network: whatever the bytes, the
answer is a typed refusal, never a crash (issue 5, "Bad input")."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyodo.codec import DecodeError, decode_record, encode
from kyodo.crypto import Ed25519Signer
from kyodo.gateway import RequestRejectedError
from kyodo.gateway._tokens import TOKEN_PREFIX
from kyodo.identity import IdentityError, Membership, Role
from kyodo.ledger import Transaction, TransactionRejectedError, TxEnvelope, check_envelope
from kyodo.wire import (
    BlockRequest,
    RequestPayload,
    SignedRequest,
    StatusRequest,
    SubmitRequest,
    TxRequest,
)
from tests.test_creator_checks import CA, member
from tests.test_tokens import context, service

MEMBERS = Membership({"org1": CA.cert_pem})
CHAIN = "kyodo-fuzz"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@FUZZ
@given(
    data=st.binary(max_size=4096),
    kind=st.sampled_from(
        [SubmitRequest, StatusRequest, BlockRequest, TxRequest, SignedRequest, RequestPayload]
    ),
)
def test_gateway_requests_decode_or_raise_decode_error(data, kind):
    with contextlib.suppress(DecodeError):
        decode_record(kind, data, max_size=1024 * 1024)


@FUZZ
@given(payload=st.binary(max_size=4096), signature=st.binary(max_size=96))
def test_arbitrary_envelopes_are_typed_rejections(payload, signature):
    with pytest.raises(TransactionRejectedError):
        check_envelope(
            TxEnvelope(payload=payload, signature=signature),
            membership=MEMBERS,
            chain_id=CHAIN,
            now_ms=now_ms(),
            max_age_ms=60_000,
        )


CERT, SIGNER = member(Role.CLIENT)


@FUZZ
@given(
    contract=st.text(max_size=80),
    function=st.text(max_size=80),
    nonce=st.binary(max_size=40),
    creator=st.one_of(st.just(CERT), st.binary(max_size=2048)),
    args=st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.text(max_size=20)
            | st.binary(max_size=10),
            lambda inner: st.lists(inner, max_size=4),
            max_leaves=10,
        ),
        max_size=5,
    ),
)
def test_well_formed_but_wrong_transactions_are_typed_rejections(
    contract, function, nonce, creator, args
):
    tx = Transaction(
        chain_id=CHAIN,
        contract=contract,
        function=function,
        args=tuple(args),
        nonce=nonce,
        created_ms=now_ms(),
        creator=creator,
    )
    payload = encode(tx)
    envelope = TxEnvelope(payload=payload, signature=Ed25519Signer.generate().sign(payload))
    with pytest.raises(TransactionRejectedError):  # someone else's signature, at best
        check_envelope(
            envelope, membership=MEMBERS, chain_id=CHAIN, now_ms=now_ms(), max_age_ms=60_000
        )


@FUZZ
@given(token=st.text(max_size=600) | st.builds(lambda t: TOKEN_PREFIX + t, st.text(max_size=600)))
def test_arbitrary_tokens_are_typed_rejections(token):
    with pytest.raises(RequestRejectedError):
        service().verify(token, context(), now_ms())


@FUZZ
@given(data=st.binary(max_size=3000))
def test_arbitrary_login_certificates_are_typed_rejections(data):
    with pytest.raises((RequestRejectedError, IdentityError)):
        service().challenge(data, context(), now_ms())


def test_a_huge_certificate_is_refused_before_parsing():
    with pytest.raises(RequestRejectedError, match="more than"):
        service().challenge(b"\x30" * (2 * 1024 * 1024), context(), now_ms())
