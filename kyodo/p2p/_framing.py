"""Message framing on a byte stream: a 4-byte big-endian length, then the payload.

The length is checked against the limit *before* any payload is read, so a
peer cannot make a node allocate more than ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import struct

from kyodo.p2p.errors import FrameTooLargeError, MalformedFrameError

__all__ = ["encode_frame", "read_frame"]

_LENGTH = struct.Struct(">I")


def encode_frame(payload: bytes) -> bytes:
    """Length-prefixed bytes of ``payload``."""
    assert payload, "frames carry a non-empty payload"
    return _LENGTH.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The next frame's payload; raises on an oversized, empty or truncated frame."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError("peer closed the connection") from exc
        raise MalformedFrameError("connection closed inside a frame header") from exc
    (size,) = _LENGTH.unpack(header)
    if size == 0:
        raise MalformedFrameError("empty frame")
    if size > max_bytes:
        raise FrameTooLargeError(size=size, limit=max_bytes)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise MalformedFrameError(
            f"connection closed after {len(exc.partial)} of {size} bytes"
        ) from exc
