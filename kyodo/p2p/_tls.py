"""TLS contexts for mutual authentication between nodes.

Python's ``ssl`` loads a private key only from a file. To keep the key off
the disk in plaintext, it is written to an anonymous in-memory file
(``memfd``) encrypted under a random one-time password, loaded, and the file
closed at once.
"""

from __future__ import annotations

import os
import secrets
import ssl
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["client_context", "load_key_chain", "server_context"]


def load_key_chain(ctx: ssl.SSLContext, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> None:
    """Load a certificate and an in-memory private key into ``ctx`` without a plaintext file."""
    password = secrets.token_bytes(24).hex().encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    key_fd = os.memfd_create("kyodo-tls-key")
    cert_fd = os.memfd_create("kyodo-tls-cert")
    try:
        os.write(key_fd, pem)
        os.write(cert_fd, cert_pem)
        ctx.load_cert_chain(
            certfile=f"/proc/self/fd/{cert_fd}",
            keyfile=f"/proc/self/fd/{key_fd}",
            password=password,
        )
    finally:
        os.close(key_fd)
        os.close(cert_fd)


def _base(
    ctx: ssl.SSLContext, ca_pems: list[bytes], cert_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=b"".join(ca_pems).decode())
    load_key_chain(ctx, cert_pem, key)
    return ctx


def server_context(
    ca_pems: list[bytes], cert_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> ssl.SSLContext:
    """A TLS 1.3 server context that requires a client certificate from a member CA."""
    return _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca_pems, cert_pem, key)


def client_context(
    ca_pems: list[bytes], cert_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting our certificate and checking the server's."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_pems, cert_pem, key)
    ctx.check_hostname = True
    return ctx


def read_pem(path: Path) -> bytes:
    """A certificate file's bytes."""
    return path.read_bytes()
