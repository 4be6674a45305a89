"""Authenticated streams between nodes (mutual TLS), with framing and reconnection.

Theory of operation
-------------------
Each node listens on its p2p port and dials every other node. A connection
is used in one direction only: a node *sends* on the connection it dialed
and *receives* on connections it accepted. That keeps the logic free of
duplicate-connection races: there is exactly one outbound stream per peer.

Both sides authenticate with TLS 1.3 and certificates of the organizations'
CAs; beyond the CA check, the certificate must be *exactly* the TLS
certificate the network configuration lists for that node (compared by
SHA-256 fingerprint), so a valid certificate of some other member cannot
pose as a node.

Every outbound queue is bounded. A full queue drops the oldest message and
counts it (consensus recovers lost messages by status and sync); the drop is
logged, never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from kyodo.p2p._framing import encode_frame, read_frame
from kyodo.p2p.errors import FrameTooLargeError, MalformedFrameError, PeerAuthenticationError

__all__ = ["PeerAddress", "PeerNetwork"]

log = structlog.get_logger("kyodo.p2p")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAddress:
    """Where a peer listens and which TLS certificate it must present."""

    node_id: str
    host: str
    port: int
    tls_fingerprint: bytes


@dataclass(slots=True)
class _Stats:
    frames_in: int = 0
    frames_out: int = 0
    dropped_out: int = 0
    rejected_frames: int = 0
    rejected_peers: int = 0


class PeerNetwork:
    """The node's connections to its peers."""

    def __init__(
        self,
        *,
        node_id: str,
        listen_host: str,
        listen_port: int,
        peers: list[PeerAddress],
        server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext,
        on_frame: Callable[[str, bytes], None],
        on_connected: Callable[[str], None],
        max_frame_bytes: int,
        max_queue: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self._listen = (listen_host, listen_port)
        self._peers = {p.node_id: p for p in peers if p.node_id != node_id}
        self._by_fingerprint = {p.tls_fingerprint: p.node_id for p in peers}
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._on_frame = on_frame
        self._on_connected = on_connected
        self.max_frame_bytes = max_frame_bytes
        self._max_queue = max_queue
        self._queues: dict[str, asyncio.Queue[bytes]] = {
            p: asyncio.Queue(maxsize=max_queue) for p in self._peers
        }
        self._connected: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self.stats = _Stats()

    async def start(self) -> None:
        """Listen, and start dialing every peer."""
        self._server = await asyncio.start_server(
            self._accept,
            self._listen[0],
            self._listen[1],
            ssl=self._server_ssl,
            limit=self.max_frame_bytes + 16,
        )
        for peer in self._peers.values():
            self._tasks[peer.node_id] = asyncio.create_task(self._dial_loop(peer))

    def set_peers(self, peers: list[PeerAddress]) -> None:
        """Follow a configuration change: dial new nodes, stop dialing removed ones, and
        accept exactly the TLS certificates the new configuration lists."""
        wanted = {p.node_id: p for p in peers if p.node_id != self.node_id}
        self._by_fingerprint = {p.tls_fingerprint: p.node_id for p in peers}
        for node_id in [n for n in self._peers if n not in wanted]:
            self._peers.pop(node_id)
            self._queues.pop(node_id, None)
            task = self._tasks.pop(node_id, None)
            if task is not None:
                task.cancel()
        for node_id, peer in wanted.items():
            if node_id not in self._peers:
                self._peers[node_id] = peer
                self._queues[node_id] = asyncio.Queue(maxsize=self._max_queue)
                self._tasks[node_id] = asyncio.create_task(self._dial_loop(peer))

    def trust(self, ca_pem: bytes) -> None:
        """Also accept certificates of this CA (a new organization joined)."""
        self._server_ssl.load_verify_locations(cadata=ca_pem.decode())
        self._client_ssl.load_verify_locations(cadata=ca_pem.decode())

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until what was queued for connected peers is sent
        (a node stopping sends its last news first)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            not self._queues[p].empty() for p in self._connected if p in self._queues
        ):
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Close every connection."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def connected(self) -> list[str]:
        """Peers with an open outbound stream."""
        return sorted(self._connected)

    def send(self, peer: str, payload: bytes) -> None:
        """Queue ``payload`` for ``peer`` (dropping, and logging, the oldest if full)."""
        if len(payload) > self.max_frame_bytes:
            raise AssertionError(f"outgoing message of {len(payload)} bytes over the frame limit")
        queue = self._queues.get(peer)
        if queue is None:
            log.warning("send_to_unknown_peer", peer=peer)
            return
        if queue.full():
            queue.get_nowait()
            self.stats.dropped_out += 1
            log.warning("peer_queue_full_dropped_oldest", peer=peer)
        queue.put_nowait(payload)

    def broadcast(self, payload: bytes) -> None:
        """Queue ``payload`` for every peer."""
        for peer in self._peers:
            self.send(peer, payload)

    # -- inbound -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "?"
        try:
            peer = self._authenticate(writer)
            while True:
                payload = await read_frame(reader, self.max_frame_bytes)
                self.stats.frames_in += 1
                self._on_frame(peer, payload)
        except (EOFError, ConnectionError, asyncio.CancelledError):
            pass
        except PeerAuthenticationError as exc:
            self.stats.rejected_peers += 1
            log.warning("peer_rejected", error=str(exc))
        except (FrameTooLargeError, MalformedFrameError) as exc:
            self.stats.rejected_frames += 1
            log.warning("frame_rejected", peer=peer, error=type(exc).__name__, detail=str(exc))
        except ssl.SSLError as exc:
            log.warning("peer_tls_error", peer=peer, detail=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _authenticate(self, writer: asyncio.StreamWriter) -> str:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not cert:
            raise PeerAuthenticationError("peer presented no certificate")
        peer = self._by_fingerprint.get(hashlib.sha256(cert).digest())
        if peer is None or peer == self.node_id:
            address = writer.get_extra_info("peername")
            raise PeerAuthenticationError(
                f"certificate from {address} is not the TLS certificate of any configured node"
            )
        return peer

    # -- outbound ----------------------------------------------------------------------

    async def _dial_loop(self, peer: PeerAddress) -> None:
        backoff = 0.05
        queue = self._queues[peer.node_id]
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        peer.host,
                        peer.port,
                        ssl=self._client_ssl,
                        server_hostname=peer.host,
                        local_addr=(self._listen[0], 0),  # from our own address
                    ),
                    timeout=5,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                cert = ssl_object.getpeercert(binary_form=True)
                if hashlib.sha256(cert).digest() != peer.tls_fingerprint:
                    raise PeerAuthenticationError(f"{peer.node_id} presented another certificate")
                backoff = 0.05
                self._connected.add(peer.node_id)
                self._on_connected(peer.node_id)
                await self._pump(queue, reader, writer)
            except PeerAuthenticationError as exc:
                log.warning("peer_rejected", peer=peer.node_id, error=str(exc))
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                self._connected.discard(peer.node_id)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await asyncio.sleep(backoff)

    async def _pump(
        self,
        queue: asyncio.Queue[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        closed = asyncio.create_task(reader.read(1))  # the peer never sends on this stream
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    raise ConnectionError("peer closed the connection")
                payload = getter.result()
                writer.write(encode_frame(payload))
                while not queue.empty() and writer.transport.get_write_buffer_size() < 1 << 20:
                    writer.write(encode_frame(queue.get_nowait()))
                    self.stats.frames_out += 1
                self.stats.frames_out += 1
                await writer.drain()
        finally:
            closed.cancel()
