"""Canonical encoding (deterministic CBOR) of every signed or hashed structure."""

from kyodo.codec._core import (
    MAX_DEPTH,
    decode,
    decode_record,
    decode_value,
    encode,
    encode_value,
    record,
    record_class,
    to_plain,
)
from kyodo.codec.errors import CodecError, DecodeError, EncodeError, NonCanonicalError

__all__ = [
    "MAX_DEPTH",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "NonCanonicalError",
    "decode",
    "decode_record",
    "decode_value",
    "encode",
    "encode_value",
    "record",
    "record_class",
    "to_plain",
]
