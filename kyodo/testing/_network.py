"""The simulated network between nodes: delay, loss, duplication, partitions.

Each message is the canonical bytes of a consensus message (the shell
encodes, the receiver decodes, exactly as over the real p2p streams). For
every message the network draws, from the run's one random generator:

* whether it is lost (``drop_probability``);
* whether it is delivered twice (``duplicate_probability``);
* a delay in ``[min_delay_ms, max_delay_ms]`` per copy. Independent delays
  reorder messages, even between the same two nodes.

A *connection* between two nodes is up when both are running and no
partition separates them. A message is lost when its connection is down
when it is sent, or closes (crash, partition) or reopens while the message
travels. This is harsher than the real p2p layer, which queues (bounded)
what is sent while a peer is unreachable: consensus must recover lost
messages through status and sync anyway. When a connection comes
(back) up both ends are told, after a short delay, as the real p2p layer
calls ``on_connected`` on both sides.

Partitions assign nodes to groups; two nodes can talk only when they are in
the same group. Nodes left out of every group form one further group.

Two hooks serve the checks:

* the *tap* sees every message a node hands to the network, once per
  ``send`` or ``broadcast`` and before any loss: what was said on the wire,
  whether or not it arrived (the invariant checker reads votes there);
* a frame may be sent ``as_sender`` another identity: it travels over the
  real sender's connections but arrives labelled with the claimed sender
  (a Byzantine node posing as a non-validator; the receiving shell must
  refuse it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from kyodo.testing._scheduler import Scheduler

__all__ = ["Endpoint", "NetworkProfile", "NetworkStats", "SimNetwork"]

_CONNECT_DELAY_MS = (1, 20)
"""Range of the delay between a connection becoming possible and both ends noticing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkProfile:
    """How the network treats messages during one phase of a run."""

    min_delay_ms: int = 1
    """Shortest one-way delay of a message."""
    max_delay_ms: int = 20
    """Longest one-way delay of a message (at least ``min_delay_ms``)."""
    drop_probability: float = 0.0
    """Chance that a message is lost, in [0, 1)."""
    duplicate_probability: float = 0.0
    """Chance that a message is delivered twice, in [0, 1)."""

    def __post_init__(self) -> None:
        assert 0 <= self.min_delay_ms <= self.max_delay_ms
        assert 0.0 <= self.drop_probability < 1.0
        assert 0.0 <= self.duplicate_probability < 1.0


@dataclass(slots=True)
class NetworkStats:
    """Counters of what the network did with the messages it was given."""

    sent: int = 0
    """Messages handed to the network (a broadcast counts once per receiver)."""
    delivered: int = 0
    """Copies handed to a receiver."""
    dropped: int = 0
    """Messages lost to the loss probability."""
    duplicated: int = 0
    """Messages delivered twice."""
    cut: int = 0
    """Messages lost because their connection was down (partition, crash)."""
    reordered: int = 0
    """Copies delivered after a later message between the same two nodes."""


class Endpoint(Protocol):
    """What the network needs from a simulated node."""

    node_id: str
    incarnation: int
    """Bumped on every start and crash; a message sent to an older one is lost."""

    def is_up(self) -> bool:
        """Whether the node is running."""
        ...

    def on_frame(self, peer: str, raw: bytes) -> None:
        """A message from ``peer`` arrived."""
        ...

    def on_connected(self, peer: str) -> None:
        """The connection to ``peer`` (re)opened."""
        ...


class SimNetwork:
    """Message transport between the simulated nodes (see module docstring)."""

    def __init__(self, scheduler: Scheduler, rng: random.Random, profile: NetworkProfile) -> None:
        self._scheduler = scheduler
        self._rng = rng
        self.profile = profile
        """Current treatment of messages; replaced at the scheduled heal."""
        self.stats = NetworkStats()
        self._nodes: dict[str, Endpoint] = {}
        self._group: dict[str, int] = {}
        self._generation: dict[tuple[str, str], int] = {}
        """Per pair of nodes (sorted), how many times their connection closed."""
        self._sent_seq: dict[tuple[str, str], int] = {}
        self._delivered_seq: dict[tuple[str, str], int] = {}
        """Per (sender, receiver), numbers of the last sent and latest delivered message."""
        self.tap: Callable[[str, bytes, str], None] | None = None
        """Called with (sender, raw, kind) for every message handed to the network."""

    def attach(self, nodes: Mapping[str, Endpoint]) -> None:
        """Make the nodes reachable through this network."""
        self._nodes = dict(nodes)

    def node_ids(self) -> tuple[str, ...]:
        """Every attached node, in attachment order."""
        return tuple(self._nodes)

    # -- topology --------------------------------------------------------------------

    def is_reachable(self, a: str, b: str) -> bool:
        """Whether no partition separates ``a`` and ``b``."""
        return self._group.get(a, -1) == self._group.get(b, -1)

    def is_connected(self, a: str, b: str) -> bool:
        """Whether the connection between ``a`` and ``b`` is up."""
        return self._nodes[a].is_up() and self._nodes[b].is_up() and self.is_reachable(a, b)

    def set_partition(self, groups: tuple[tuple[str, ...], ...]) -> None:
        """Split the network into ``groups`` (replacing any earlier partition)."""
        before = self._connected_pairs()
        self._group = {node: index for index, group in enumerate(groups) for node in group}
        self._close_lost(before)
        self._announce(before)

    def heal_partition(self) -> None:
        """Remove every partition; reopened connections are announced."""
        before = self._connected_pairs()
        self._group = {}
        self._announce(before)

    def set_profile(self, profile: NetworkProfile) -> None:
        """Change delays and loss for messages sent from now on."""
        self.profile = profile

    def on_node_stopped(self, node_id: str) -> None:
        """A node crashed: its connections close (what was in flight is lost)."""
        for peer in self._nodes:
            if peer != node_id:
                self._bump(node_id, peer)

    def on_node_started(self, node_id: str) -> None:
        """A node (re)started: open its connections to every reachable running peer."""
        for peer in self._nodes:
            if peer != node_id and self.is_connected(node_id, peer):
                self._schedule_connect(node_id, peer)

    # -- transport -------------------------------------------------------------------

    def send(
        self, sender: str, to: str, raw: bytes, kind: str, *, as_sender: str | None = None
    ) -> None:
        """Carry ``raw`` (a message of type ``kind``) from ``sender`` to ``to``.

        ``as_sender``: the identity the receiver sees (default: ``sender``).
        """
        if self.tap is not None:
            self.tap(sender, raw, kind)
        self._transmit(sender, to, raw, kind, as_sender or sender)

    def broadcast(self, sender: str, raw: bytes, kind: str) -> None:
        """Send ``raw`` to every other node (encoded once, as the real p2p layer does)."""
        if self.tap is not None:
            self.tap(sender, raw, kind)
        for to in self._nodes:
            if to != sender:
                self._transmit(sender, to, raw, kind, sender)

    # -- internals -------------------------------------------------------------------

    def _transmit(self, sender: str, to: str, raw: bytes, kind: str, label: str) -> None:
        assert sender != to, "a node does not message itself"
        self.stats.sent += 1
        if not self.is_connected(sender, to):
            self.stats.cut += 1
            return
        profile = self.profile
        rng = self._rng
        if rng.random() < profile.drop_probability:
            self.stats.dropped += 1
            self._scheduler.note(f"drop {sender}>{to} {kind}")
            return
        copies = 1
        if rng.random() < profile.duplicate_probability:
            copies = 2
            self.stats.duplicated += 1
        generation = self._generation.get(_pair(sender, to), 0)
        seq = self._sent_seq.get((sender, to), 0) + 1
        self._sent_seq[(sender, to)] = seq
        for _ in range(copies):
            delay = rng.randint(profile.min_delay_ms, profile.max_delay_ms)
            self._scheduler.after(
                delay,
                f"recv {label}>{to} {kind}",
                lambda: self._deliver(sender, to, raw, generation, seq, label),
            )

    def _deliver(
        self, sender: str, to: str, raw: bytes, generation: int, seq: int, label: str
    ) -> None:
        node = self._nodes[to]
        if self._generation.get(_pair(sender, to), 0) != generation or not self.is_connected(
            sender, to
        ):
            self.stats.cut += 1
            self._scheduler.note("lost: connection closed in flight")
            return
        self.stats.delivered += 1
        latest = self._delivered_seq.get((sender, to), 0)
        if seq < latest:
            self.stats.reordered += 1
        else:
            self._delivered_seq[(sender, to)] = seq
        node.on_frame(label, raw)

    def _connected_pairs(self) -> set[tuple[str, str]]:
        ids = list(self._nodes)
        return {(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if self.is_connected(a, b)}

    def _close_lost(self, before: set[tuple[str, str]]) -> None:
        for a, b in sorted(before):
            if not self.is_connected(a, b):
                self._bump(a, b)

    def _bump(self, a: str, b: str) -> None:
        pair = _pair(a, b)
        self._generation[pair] = self._generation.get(pair, 0) + 1

    def _announce(self, before: set[tuple[str, str]]) -> None:
        ids = list(self._nodes)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                if (a, b) not in before and self.is_connected(a, b):
                    self._schedule_connect(a, b)

    def _schedule_connect(self, a: str, b: str) -> None:
        incarnations = (self._nodes[a].incarnation, self._nodes[b].incarnation)

        def connect() -> None:
            now = (self._nodes[a].incarnation, self._nodes[b].incarnation)
            if now != incarnations or not self.is_connected(a, b):
                return
            self._nodes[a].on_connected(b)
            self._nodes[b].on_connected(a)

        self._scheduler.after(self._rng.randint(*_CONNECT_DELAY_MS), f"connect {a}<>{b}", connect)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
