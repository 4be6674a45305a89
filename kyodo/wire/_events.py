"""Event-stream records: subscriptions, stream items, acknowledgements (issue 7).

An event stream is *derived* from committed blocks: every node of the network
derives the same items, at the same positions, from the same certified blocks.
So a position - ``(height, tx_index, index)`` - and the idempotency key built
from it mean the same thing on every node, and a consumer can resume on
another node from the checkpoint it last acknowledged.

Positions order items in ledger order. A checkpoint is the position of the
last item a consumer has processed; delivery resumes with the first item
*after* it. ``(h, -1, -1)`` is "before everything of block h".

Positions travel as ``tuple[int, ...]`` (the codec's tuple form); every reader checks
they are three integers (:func:`check_position`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kyodo.codec import record

__all__ = [
    "EVENT_KINDS",
    "MAX_STREAM_WINDOW",
    "ContractList",
    "DeadLetter",
    "EventFilter",
    "StreamAck",
    "StreamBatch",
    "StreamItem",
    "StreamOpen",
    "SubscribeRequest",
    "SubscriptionInfo",
    "SubscriptionList",
    "SubscriptionRequest",
    "SubscriptionSpec",
    "check_position",
    "idempotency_key",
]

EVENT_KINDS = ("events", "transactions", "blocks")
"""What a subscription delivers: contract events (optionally with the contracts' state
changes), every transaction with its status, or every block."""

MAX_STREAM_WINDOW = 1024
"""Most items a stream sends ahead of the consumer's acknowledgement."""


@record(86)
@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which items a subscription delivers."""

    kind: str = "events"
    """One of :data:`EVENT_KINDS`."""
    contracts: tuple[str, ...] = ()
    """Only these contracts (events and transactions kinds); empty: all."""
    names: tuple[str, ...] = ()
    """Only these event names (events kind); empty: all."""
    include_state: bool = False
    """Events kind: also deliver each state change (``kind="state"``) of the contracts."""


@record(87)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionSpec:
    """A durable subscription as its owner declares it. The starting point is fixed at
    creation; declaring the same spec again is a no-op, a different one is refused."""

    name: str
    filter: EventFilter
    start: str = "latest"
    """``oldest`` (block 0), ``latest`` (blocks after the tip at creation) or ``height``."""
    start_height: int = 0
    """First block delivered when ``start`` is ``height``."""
    webhook_url: str = ""
    """Empty: the consumer pulls (gRPC stream, WebSocket, SSE). Else the node POSTs each
    item to this URL (signed with HMAC-SHA256 of ``webhook_secret``)."""
    webhook_secret: bytes = b""
    max_attempts: int = 8
    """Webhook: deliveries of one item before it goes to the dead-letter list."""


@record(88)
@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """An item a webhook refused ``attempts`` times; the subscription moved past it."""

    key: str
    position: tuple[int, ...]
    attempts: int
    error: str
    at_ms: int


@record(89)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionInfo:
    """A subscription and where it stands (the webhook secret is never returned)."""

    name: str
    owner: str
    """``org/role/name`` of the member who created it; only its organization sees it."""
    filter: EventFilter
    start: str
    start_height: int
    webhook_url: str
    max_attempts: int
    checkpoint: tuple[int, ...]
    """Position of the last acknowledged item."""
    created_ms: int
    acked: int
    """Items acknowledged so far."""
    connected: bool
    """A consumer stream is open (pull), or the webhook worker runs."""
    dead_letters: tuple[DeadLetter, ...]
    failures: int
    """Webhook: failed attempts on the current item."""
    last_error: str


@record(90)
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamItem:
    """One item of an event stream."""

    kind: str
    """``event``, ``state`` (a contract's state change), ``transaction`` or ``block``."""
    height: int
    tx_index: int
    """-1 for a block item."""
    index: int
    """Event: its index in the transaction; state: events count + write index; else 0."""
    tx_id: bytes
    contract: str
    name: str
    """Event name; the function for a transaction; empty otherwise."""
    key: str
    """State: the key written."""
    payload: Any
    """Event payload; state: the new value (None: deleted); transaction: its result;
    block: ``{"hash", "tx_count", "state_root"}`` (hex)."""
    status: str
    """Transaction: ``OK`` or its failure code; else empty."""
    message: str
    timestamp_ms: int
    """The block's timestamp."""

    @property
    def position(self) -> tuple[int, int, int]:
        """Where the item stands in ledger order (what a checkpoint records)."""
        return (self.height, self.tx_index, self.index)

    @property
    def idempotency_key(self) -> str:
        """The same on every node and every delivery of this item."""
        return idempotency_key(self.kind, self.position)


def check_position(value: object) -> tuple[int, int, int]:
    """``value`` as a position; ValueError unless three integers with height >= 0."""
    if (
        not isinstance(value, tuple | list)
        or len(value) != 3
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        or value[0] < 0
        or value[1] < -1
        or value[2] < -1
    ):
        raise ValueError(f"a position is [height, tx_index, index], got {value!r}")
    return (value[0], value[1], value[2])


def idempotency_key(kind: str, position: tuple[int, ...]) -> str:
    """``kind:height:tx_index:index``: names one item of the ledger for ever."""
    h, t, i = position
    return f"{kind}:{h}:{t}:{i}"


@record(91)
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpen:
    """First message of an ``Events`` stream: a named subscription, or an inline filter
    (no server-side state: the consumer keeps its own checkpoint)."""

    subscription: str = ""
    filter: EventFilter | None = None
    after: tuple[int, ...] | None = None
    """Resume after this position. Named: the later of this and the stored checkpoint
    (a consumer failing over from another node brings its own). Inline: required."""
    window: int = 256
    """Items sent ahead of acknowledgement (at most :data:`MAX_STREAM_WINDOW`)."""
    until_height: int = -1
    """End the stream once block ``until_height`` was delivered (a replay); -1: never."""


@record(92)
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamAck:
    """The consumer processed every item up to and including ``position``."""

    position: tuple[int, ...]


@record(93)
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamBatch:
    """Items in ledger order (possibly none: a heartbeat carrying the tip)."""

    items: tuple[StreamItem, ...]
    tip: int


@record(97)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeRequest:
    """Declare a subscription (idempotent). ``after``: the consumer's own checkpoint, when
    it fails over from another node of its organization."""

    spec: SubscriptionSpec
    after: tuple[int, ...] | None = None


@record(94)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionRequest:
    """Name a subscription (get, delete)."""

    name: str


@record(95)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionList:
    """Subscriptions of the caller's organization on this node."""

    subscriptions: tuple[SubscriptionInfo, ...]


@record(98)
@dataclass(frozen=True, slots=True, kw_only=True)
class ContractList:
    """The contracts callers can use, with their functions and access rules (the same
    documents as ``GET /v1/contracts``)."""

    contracts: tuple[Any, ...]


@record(100)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaEntry:
    """One subscription as a node keeps it, for the other nodes of its organization."""

    key: str
    """``<org>/<name>``."""
    stored: bytes
    """The node's stored record of it (checkpoint included); empty once deleted."""
    deleted_ms: int = 0
    """When it was deleted (``stored`` empty), to tell a deletion from a newer
    declaration of the same name."""


@record(99)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionReplica:
    """Subscriptions changed on a node (declared, acknowledged, deleted), sent over p2p to
    the other nodes of its organization only: any of them serves the consumer, and
    delivers the webhooks, when that node is down."""

    entries: tuple[ReplicaEntry, ...]
