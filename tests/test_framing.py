"""Tests of kyodo.p2p framing: a 4-byte big-endian length, then the payload."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kyodo.p2p import FrameTooLargeError, MalformedFrameError, P2PError, encode_frame, read_frame

LIMIT = 1024


def feed(data: bytes, *, eof: bool = True) -> Callable[[], asyncio.StreamReader]:
    """A factory of a StreamReader holding ``data`` (built inside the running loop)."""

    def make() -> asyncio.StreamReader:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return reader

    return make


def run(coro: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        # a guard only: every read here completes (or fails) without waiting
        return await asyncio.wait_for(coro(), timeout=10)

    return asyncio.run(main())


def read_all(data: bytes, *, max_bytes: int = LIMIT, eof: bool = True) -> tuple[list[bytes], Any]:
    """Every frame read from ``data`` until an error; returns (frames, the error)."""

    async def go() -> tuple[list[bytes], Any]:
        reader = feed(data, eof=eof)()
        frames: list[bytes] = []
        while True:
            try:
                frames.append(await read_frame(reader, max_bytes))
            except (EOFError, P2PError) as exc:
                return frames, exc

    result: tuple[list[bytes], Any] = run(go)
    return result


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"\x00" * 300)[:4] == b"\x00\x00\x01\x2c"
    with pytest.raises(AssertionError):
        encode_frame(b"")


def test_round_trip_of_several_frames() -> None:
    payloads = [b"a", b"hello", bytes(range(256)) * 4, b"\x00" * LIMIT]
    frames, error = read_all(b"".join(encode_frame(p) for p in payloads))
    assert frames == payloads
    assert isinstance(error, EOFError)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_random_frames_round_trip(payloads: list[bytes]) -> None:
    frames, error = read_all(b"".join(encode_frame(p) for p in payloads))
    assert frames == payloads
    assert isinstance(error, EOFError)


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    frames, _ = read_all(encode_frame(b"x" * 100), max_bytes=100)
    assert frames == [b"x" * 100]


@pytest.mark.parametrize("size", [LIMIT + 1, 2**31, 2**32 - 1])
def test_oversized_frame_is_refused_before_its_payload_is_read(size: int) -> None:
    async def go() -> tuple[Any, bytes]:
        # the header and a little payload; no EOF, so reading the payload would wait
        reader = feed(struct.pack(">I", size) + b"payload", eof=False)()
        with pytest.raises(FrameTooLargeError) as info:
            await read_frame(reader, LIMIT)
        rest = await reader.readexactly(7)  # the payload bytes were not consumed
        return info.value, rest

    error, rest = run(go)
    assert (error.size, error.limit) == (size, LIMIT)
    assert str(size) in str(error)
    assert rest == b"payload"


def test_zero_length_frame_is_malformed() -> None:
    frames, error = read_all(encode_frame(b"ok") + b"\x00\x00\x00\x00" + encode_frame(b"next"))
    assert frames == [b"ok"]
    assert isinstance(error, MalformedFrameError)
    assert "empty" in str(error)


@pytest.mark.parametrize("header", [b"\x00", b"\x00\x00", b"\x00\x00\x00"])
def test_truncated_header_is_malformed(header: bytes) -> None:
    frames, error = read_all(encode_frame(b"ok") + header)
    assert frames == [b"ok"]
    assert isinstance(error, MalformedFrameError)
    assert "header" in str(error)


@pytest.mark.parametrize("received", [0, 1, 9])
def test_truncated_payload_is_malformed(received: int) -> None:
    frames, error = read_all(struct.pack(">I", 10) + b"x" * received)
    assert frames == []
    assert isinstance(error, MalformedFrameError)
    assert f"after {received} of 10 bytes" in str(error)


def test_clean_eof_between_frames() -> None:
    frames, error = read_all(b"")
    assert frames == []
    assert isinstance(error, EOFError)
    assert not isinstance(error, P2PError)
    frames, error = read_all(encode_frame(b"one") + encode_frame(b"two"))
    assert frames == [b"one", b"two"]
    assert isinstance(error, EOFError)


def test_reader_waits_for_a_frame_delivered_in_pieces() -> None:
    async def go() -> bytes:
        reader = asyncio.StreamReader()
        task = asyncio.create_task(read_frame(reader, LIMIT))
        data = encode_frame(b"split payload")
        for i in range(len(data)):
            await asyncio.sleep(0)  # let the reader run between pieces (no timing involved)
            assert not task.done()
            reader.feed_data(data[i : i + 1])
        return await task

    assert run(go) == b"split payload"


def test_errors_are_p2p_errors() -> None:
    assert issubclass(FrameTooLargeError, P2PError)
    assert issubclass(MalformedFrameError, P2PError)
