"""The P2P protocol: mutually authenticated, framed streams between nodes."""

from kyodo.p2p._framing import encode_frame, read_frame
from kyodo.p2p._network import PeerAddress, PeerNetwork
from kyodo.p2p._tls import client_context, load_key_chain, server_context
from kyodo.p2p.errors import (
    FrameTooLargeError,
    MalformedFrameError,
    P2PError,
    PeerAuthenticationError,
)

__all__ = [
    "FrameTooLargeError",
    "MalformedFrameError",
    "P2PError",
    "PeerAddress",
    "PeerAuthenticationError",
    "PeerNetwork",
    "client_context",
    "encode_frame",
    "load_key_chain",
    "read_frame",
    "server_context",
]
