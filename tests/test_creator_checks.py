"""Each way a transaction's creator can be unacceptable is a distinct, typed refusal."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kyodo.codec import encode
from kyodo.crypto import Ed25519Signer
from kyodo.identity import CertificateAuthority, Membership, Role
from kyodo.ledger import Transaction, TransactionRejectedError, TxEnvelope, check_envelope

CHAIN = "kyodo-creator-test"
NOW = datetime.now(UTC).replace(microsecond=0)
CA = CertificateAuthority.create("org1", now=NOW - timedelta(days=1))


def member(
    role: Role, *, issuer: CertificateAuthority = CA, days: int = 30
) -> tuple[bytes, Ed25519Signer]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = issuer.issue_signing_cert(
        name=f"{role}-x", role=role, public_key=key.public_key(), now=NOW, validity_days=days
    )
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return der, Ed25519Signer(key)


def envelope(cert: bytes, signer: Ed25519Signer, *, sign_other: bool = False) -> TxEnvelope:
    tx = Transaction(
        chain_id=CHAIN,
        contract="asset_transfer",
        function="create_account",
        args=("a",),
        nonce=b"\x01" * 16,
        created_ms=time.time_ns() // 1_000_000,
        creator=cert,
    )
    payload = encode(tx)
    return TxEnvelope(payload=payload, signature=signer.sign(b"x" if sign_other else payload))


def refusal(env: TxEnvelope, membership: Membership, *, at: datetime | None = None) -> str:
    when = int((at or datetime.now(UTC)).timestamp() * 1000)
    with pytest.raises(TransactionRejectedError) as refused:
        check_envelope(env, membership=membership, chain_id=CHAIN, now_ms=when, max_age_ms=10**12)
    return refused.value.reason


def test_each_unacceptable_creator_has_its_own_reason() -> None:
    members = Membership({"org1": CA.cert_pem})
    client, signer = member(Role.CLIENT)
    assert (
        check_envelope(
            envelope(client, signer),
            membership=members,
            chain_id=CHAIN,
            now_ms=time.time_ns() // 1_000_000,
            max_age_ms=60_000,
        ).creator.role
        == Role.CLIENT
    )
    stranger_ca = CertificateAuthority.create("org1", now=NOW - timedelta(days=1))
    assert refusal(envelope(*member(Role.CLIENT, issuer=stranger_ca)), members) == "unknown_ca"
    assert refusal(envelope(client, signer), members, at=NOW + timedelta(days=40)) == (
        "certificate_expired"
    )
    assert refusal(envelope(*member(Role.NODE)), members) == "wrong_role"
    assert refusal(envelope(client, signer, sign_other=True), members) == "bad_signature"
    serial = x509.load_der_x509_certificate(client).serial_number
    revoking = Membership(
        {"org1": CA.cert_pem}, crls={"org1": CA.revocation_list([serial], now=NOW)}
    )
    assert refusal(envelope(client, signer), revoking) == "revoked"
