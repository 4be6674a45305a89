"""Login by signed challenge and access tokens (kyodo.gateway.TokenService)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from kyodo.crypto import Ed25519Signer
from kyodo.gateway import AuthContext, RequestRejectedError, TokenService
from kyodo.gateway._tokens import TOKEN_PREFIX, _b64, _unb64
from kyodo.identity import CertificateAuthority, Membership, Role
from kyodo.policy import AclTable
from kyodo.wire import login_message
from tests.test_creator_checks import CA, NOW, member

CHAIN = "kyodo-token-test"
NODE_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_CA = CertificateAuthority.create("org2", now=NOW)


def context(membership: Membership | None = None) -> AuthContext:
    return AuthContext(
        chain_id=CHAIN,
        membership=membership or Membership({"org1": CA.cert_pem, "org2": OTHER_CA.cert_pem}),
        max_age_ms=60_000,
        acl=AclTable(),
    )


def service(
    ttl_ms: int = 60_000, node_id: str = "org1-node0", denied_file: Path | None = None
) -> TokenService:
    signer = Ed25519Signer(NODE_KEY)
    keys = {"org1-node0": signer.public_key, "org1-node1": signer.public_key}
    return TokenService(
        chain_id=CHAIN,
        node_id=node_id,
        org_id="org1",
        signer=lambda: signer,
        node_key=lambda node, org: keys.get(node) if org == "org1" else None,
        ttl_ms=ttl_ms,
        denied_file=denied_file,
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def login(svc: TokenService, cert: bytes, signer: Ed25519Signer, at: int | None = None) -> str:
    at = at or now_ms()
    challenge, _ = svc.challenge(cert, context(), at)
    token, _, _ = svc.exchange(
        challenge, signer.sign(login_message(CHAIN, challenge)), context(), at
    )
    return token


def reason(fn, *args) -> str:
    with pytest.raises(RequestRejectedError) as refused:
        fn(*args)
    return refused.value.reason


def test_a_signed_challenge_yields_a_token_bound_to_the_identity():
    cert, signer = member(Role.CLIENT)
    svc = service()
    token = login(svc, cert, signer)
    assert token.startswith(TOKEN_PREFIX)
    claims, who = svc.verify(token, context(), now_ms())
    assert (who.org, who.role) == ("org1", Role.CLIENT)
    assert claims.certificate == cert and claims.issuer == "org1-node0"
    # a sibling gateway of the same organization accepts it too (fail-over)
    assert service(node_id="org1-node1").verify(token, context(), now_ms())[1] == who


def test_each_bad_login_has_its_own_reason():
    cert, signer = member(Role.CLIENT)
    svc = service()
    at = now_ms()
    challenge, _ = svc.challenge(cert, context(), at)
    assert reason(svc.exchange, challenge, b"\0" * 64, context(), at) == "bad_signature"
    # the challenge was used up by the failed attempt
    good = signer.sign(login_message(CHAIN, challenge))
    assert reason(svc.exchange, challenge, good, context(), at) == "challenge_unknown"
    challenge, _ = svc.challenge(cert, context(), at)
    late = at + 61_000
    assert reason(svc.exchange, challenge, good, context(), late) == "challenge_unknown"
    other_chain = signer.sign(login_message("another", challenge))
    challenge, _ = svc.challenge(cert, context(), at)
    assert reason(svc.exchange, challenge, other_chain, context(), at) == "bad_signature"
    node_cert, _ = member(Role.NODE)
    assert reason(svc.challenge, node_cert, context(), at) == "wrong_role"
    key = ed25519.Ed25519PrivateKey.generate()
    stranger = OTHER_CA.issue_signing_cert(
        name="zed", role=Role.CLIENT, public_key=key.public_key(), now=NOW
    )
    assert reason(svc.challenge, stranger, context(), at) == "identity_mismatch"
    unknown = CertificateAuthority.create("org1", now=NOW).issue_signing_cert(
        name="eve", role=Role.CLIENT, public_key=key.public_key(), now=NOW
    )
    assert reason(svc.challenge, unknown, context(), at) == "unknown_ca"


def test_a_token_stops_working_when_it_expires_is_logged_out_or_its_user_revoked():
    cert, signer = member(Role.CLIENT)
    svc = service(ttl_ms=1_000)
    at = now_ms()
    token = login(svc, cert, signer, at)
    assert reason(svc.verify, token, context(), at + 1_000) == "token_expired"
    token = login(svc, cert, signer, at)
    claims, _ = svc.verify(token, context(), at)
    svc.revoke(claims, at)
    assert reason(svc.verify, token, context(), at) == "token_revoked"
    token = login(svc, cert, signer, at)
    serial = x509.load_der_x509_certificate(cert).serial_number
    revoking = Membership(
        {"org1": CA.cert_pem}, crls={"org1": CA.revocation_list([serial], now=NOW)}
    )
    assert reason(svc.verify, token, context(revoking), at) == "revoked"


def test_forged_altered_and_foreign_tokens_are_refused():
    cert, signer = member(Role.CLIENT)
    svc = service()
    token = login(svc, cert, signer)
    body, _, sig = token[len(TOKEN_PREFIX) :].partition(".")
    assert reason(svc.verify, "Bearer-ish", context(), now_ms()) == "token_malformed"
    assert reason(svc.verify, TOKEN_PREFIX + "!!.!!", context(), now_ms()) == "token_malformed"
    other_cert, _ = member(Role.ADMIN)  # swap the identity inside, keep the signature
    from kyodo.codec import decode_record, encode
    from kyodo.gateway import TokenClaims

    claims = decode_record(TokenClaims, _unb64(body))
    swapped = _b64(encode(replace(claims, certificate=other_cert)))
    assert reason(svc.verify, f"{TOKEN_PREFIX}{swapped}.{sig}", context(), now_ms()) == (
        "token_invalid"
    )
    foreign = _b64(encode(replace(claims, issuer="org2-node0")))
    assert reason(svc.verify, f"{TOKEN_PREFIX}{foreign}.{sig}", context(), now_ms()) == (
        "token_issuer"
    )
    impostor = TokenService(
        chain_id=CHAIN,
        node_id="org1-node0",
        org_id="org1",
        signer=lambda: Ed25519Signer(ed25519.Ed25519PrivateKey.generate()),
        node_key=lambda node, org: None,
        ttl_ms=60_000,
    )
    forged = login(impostor, cert, signer)
    assert reason(svc.verify, forged, context(), now_ms()) == "token_invalid"


def test_a_logout_reaches_the_organizations_other_gateways(tmp_path: Path) -> None:
    """A token is accepted by every gateway of its organization, so its logout must be
    too: ``on_revoke`` hands it to the node, which sends it to the other nodes, whose
    gateways ``deny`` it; one that restarts is sent ``denied()`` again."""
    cert, signer = member(Role.CLIENT)
    sent: list[tuple[bytes, int]] = []
    issuer = service()
    issuer._on_revoke = lambda token_id, expires: sent.append((token_id, expires))
    other = service(node_id="org1-node1")
    at = now_ms()
    token = login(issuer, cert, signer, at)
    claims, _ = other.verify(token, context(), at)  # accepted by the other gateway
    issuer.revoke(claims, at)
    assert sent == [(claims.token_id, claims.expires_ms)]
    for token_id, expires in sent:
        assert other.deny(token_id, expires, at)
    assert reason(other.verify, token, context(), at) == "token_revoked"
    restarted = service(node_id="org1-node1")
    for token_id, expires in other.denied(at):
        restarted.deny(token_id, expires, at)
    assert reason(restarted.verify, token, context(), at) == "token_revoked"
    # what is not a token's revocation is not kept
    assert not other.deny(b"short", at + 1000, at)
    assert not other.deny(b"x" * 16, at - 1, at)  # already expired
    assert not other.deny(b"x" * 16, at + 10 * 24 * 3600 * 1000, at)  # no token lives so long
    assert len(other.denied(at)) == 1
    # a gateway keeps what it denied across its own restart (peers may all be down)
    kept = service(node_id="org1-node1", denied_file=tmp_path / "tokens-denied")
    kept.deny(claims.token_id, claims.expires_ms, at)
    kept.deny(b"y" * 16, now_ms() + 1, now_ms())  # expires at once: not kept across
    again = service(node_id="org1-node1", denied_file=tmp_path / "tokens-denied")
    assert reason(again.verify, token, context(), at) == "token_revoked"
    assert (tmp_path / "tokens-denied").read_text().count("\n") <= 2


def test_a_logout_holds_whatever_the_token_lifetime_and_a_bad_deny_file_is_set_aside(
    tmp_path: Path,
) -> None:
    cert, signer = member(Role.CLIENT)
    svc = service(ttl_ms=48 * 3600 * 1000)  # two days: a logout must still hold
    at = now_ms()
    token = login(svc, cert, signer, at)
    claims, _ = svc.verify(token, context(), at)
    svc.revoke(claims, at)
    assert reason(svc.verify, token, context(), at) == "token_revoked"
    # a peer's whole list again: the known ones change nothing
    assert svc.deny_many(svc.denied(at), at) == 1 and len(svc.denied(at)) == 1
    bad = tmp_path / "tokens-denied"
    bad.write_bytes(b"\xff\xfe not text")
    service(denied_file=bad)  # starts, with the unreadable file set aside for the operator
    assert [p.name.split("-")[0] for p in tmp_path.glob("tokens-denied.unreadable-*")] == ["tokens"]
