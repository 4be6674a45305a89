"""SHA-256, the one hash function of the ledger."""

from __future__ import annotations

import hashlib

__all__ = ["HASH_SIZE", "ZERO_HASH", "sha256"]

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)


def sha256(data: bytes) -> bytes:
    """The 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()
