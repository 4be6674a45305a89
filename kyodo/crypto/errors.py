"""Errors raised by :mod:`kyodo.crypto` for bad input from outside.

Every error here means the *input* was wrong (a forged signature, a tampered
proof, a wrong passphrase); a broken internal invariant raises AssertionError.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by kyodo.crypto."""


class InvalidSignatureError(CryptoError):
    """A signature does not verify under the given public key and message."""


class UnsupportedKeyError(CryptoError):
    """A key of a type or size Kyodo does not accept."""


class KeyFileError(CryptoError):
    """An encrypted key file is missing, malformed, or the passphrase is wrong."""


class MerkleProofError(CryptoError):
    """A Merkle inclusion or consistency proof does not verify.

    Attributes name what was checked so a caller can report it.
    """

    def __init__(self, message: str, *, index: int | None = None, size: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.size = size
