"""Load a user's identity, signer and TLS material from a folder of files.

A user folder holds ``signing.pem`` (Ed25519 signing certificate),
``signing.key`` and ``tls.key`` (encrypted key files), and ``tls.pem``.
The keys are decrypted in memory with the passphrase; nothing plaintext is
written anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kyodo.client._gateway import Gateway, Identity, TlsCredentials, connect
from kyodo.client.errors import KyodoError
from kyodo.crypto import Ed25519Signer, KeyFileError, Signer, load_private_key

__all__ = ["UserCredentials", "load_user"]


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """Everything needed to connect as one user."""

    identity: Identity
    signer: Signer
    """A key file's signer, or an HSM key's (kyodo.crypto.Pkcs11Signer)."""
    tls: TlsCredentials

    def connect(self, address: str | Sequence[str], **kwargs: object) -> Gateway:
        """Connect to a gateway as this user (several addresses: failover in that order)."""
        return connect(self.identity, self.signer, address, tls=self.tls, **kwargs)  # type: ignore[arg-type]


def load_user(
    user_dir: Path,
    *,
    passphrase: bytes,
    chain_id: str,
    ca_bundle: Path,
) -> UserCredentials:
    """Read a user folder (see module docstring)."""
    try:
        signing_pem = (user_dir / "signing.pem").read_bytes()
        signing_key = load_private_key(user_dir / "signing.key", passphrase)
        tls_key = load_private_key(user_dir / "tls.key", passphrase)
        tls_cert = (user_dir / "tls.pem").read_bytes()
        roots = ca_bundle.read_bytes()
    except (OSError, KeyFileError) as exc:
        raise KyodoError(f"cannot load user from {user_dir}: {exc}", code="credentials") from exc
    if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
        raise KyodoError(f"{user_dir}/signing.key is not an Ed25519 key", code="credentials")
    cert_der = x509.load_pem_x509_certificate(signing_pem).public_bytes(serialization.Encoding.DER)
    key_pem = tls_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )  # in memory, for gRPC's TLS
    return UserCredentials(
        Identity(certificate=cert_der, chain_id=chain_id),
        Ed25519Signer(signing_key),
        TlsCredentials(root_certificates=roots, certificate_chain=tls_cert, private_key=key_pem),
    )
