"""Errors raised by :mod:`kyodo.codec` when bytes from outside do not decode."""

from __future__ import annotations


class CodecError(Exception):
    """Base class of every error raised by kyodo.codec."""


class DecodeError(CodecError):
    """The bytes are not a well-formed encoding of the expected type.

    Attributes:
        path: where in the structure decoding failed (e.g. ``Block.txs[3].nonce``).
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class NonCanonicalError(DecodeError):
    """The bytes decode, but are not the one canonical encoding of their value.

    Accepting them would let two byte strings stand for one signed message,
    so they are refused.
    """


class EncodeError(CodecError):
    """A value cannot be encoded canonically (a float, an unknown type...)."""
