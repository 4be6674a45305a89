"""Errors of :mod:`kyodo.p2p`: bad frames and unauthenticated peers."""

from __future__ import annotations


class P2PError(Exception):
    """Base class of every error raised by kyodo.p2p."""


class FrameTooLargeError(P2PError):
    """A peer announced a frame larger than the limit; the connection is closed.

    Attributes:
        size: the announced size in bytes.
        limit: the largest size accepted.
    """

    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class MalformedFrameError(P2PError):
    """A frame ended early or carried an empty payload."""


class PeerAuthenticationError(P2PError):
    """A peer's TLS certificate is not one of the network's configured nodes."""
