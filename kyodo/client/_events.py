"""Event streams in the SDK: what a consumer receives, and where it keeps its place.

A :class:`LedgerEvent` is one item of a stream (a contract event, a contract's state
change, a transaction with its status, or a block), in ledger order. Its
``position`` - ``(height, tx_index, index)`` - and ``idempotency_key`` are the same
on every node and every delivery, so a consumer that sees an item twice (only ever
across a restart or a failover: delivery is at least once) recognises it.

Two ways to keep one's place:

* a **named subscription** kept by the node: ``event.ack()`` advances the node's
  checkpoint; after a restart the stream resumes after the last acknowledged item.
* a **checkpointer** kept by the consumer (:class:`FileCheckpointer`,
  :class:`SqliteCheckpointer`), for consumers without server-side state: the stream
  starts after the saved position and ``ack()`` saves it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kyodo.wire import EventFilter, StreamBatch, StreamItem, SubscriptionSpec, check_position

__all__ = [
    "Checkpointer",
    "FileCheckpointer",
    "LedgerEvent",
    "SqliteCheckpointer",
    "Subscription",
    "event_filter",
]

Position = tuple[int, int, int]


def event_filter(
    kind: str, contracts: Sequence[str], names: Sequence[str], include_state: bool
) -> EventFilter:
    """A stream's filter, as the wire carries it."""
    return EventFilter(
        kind=kind,
        contracts=tuple(contracts),
        names=tuple(names),
        include_state=include_state,
    )


def replay_ended(batch: StreamBatch, until: int) -> bool:
    """Whether ``batch`` is the node's end of a replay up to block ``until``: an empty
    batch at or past it (a heartbeat during a replay is always before it)."""
    return until >= 0 and not batch.items and batch.tip >= until


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A durable subscription, as an application declares it.

    ``kind`` is ``events`` (contract events; ``contracts`` and ``names`` narrow it,
    ``include_state`` adds the contracts' state changes), ``transactions`` (every
    transaction with its status) or ``blocks``. ``start`` is ``oldest``, ``latest`` or
    ``height`` (with ``start_height``), fixed when the node first sees the name.
    """

    name: str
    kind: str = "events"
    contracts: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    include_state: bool = False
    start: str = "latest"
    start_height: int = 0
    webhook_url: str = ""
    webhook_secret: bytes = b""
    max_attempts: int = 8

    def event_filter(self) -> EventFilter:
        """The filter part, as the wire carries it."""
        return event_filter(self.kind, self.contracts, self.names, self.include_state)

    def spec(self) -> SubscriptionSpec:
        """The whole declaration, as the wire carries it."""
        return SubscriptionSpec(
            name=self.name,
            filter=self.event_filter(),
            start=self.start,
            start_height=self.start_height,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            max_attempts=self.max_attempts,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEvent:
    """One item of an event stream.

    Attributes:
        kind: ``event``, ``state``, ``transaction`` or ``block``.
        height, tx_index, index: where it stands (``position``); ``tx_index`` is -1
            for a block.
        tx_id: hex id of the transaction ("" for a block).
        contract: the contract (namespace) it concerns.
        name: the event name (``event``), the function (``transaction``).
        key: the state key written (``state``).
        payload: the event's payload; the new value (``state``; None: deleted); the
            result (``transaction``); ``{"hash", "tx_count", "state_root"}`` (hex;
            ``block``).
        status: ``OK`` or the failure code (``transaction``).
        message: the contract's failure message (``transaction``).
        timestamp_ms: the block's timestamp.
        idempotency_key: ``kind:height:tx_index:index``.
    """

    kind: str
    height: int
    tx_index: int
    index: int
    tx_id: str
    contract: str
    name: str
    key: str
    payload: Any
    status: str
    message: str
    timestamp_ms: int
    idempotency_key: str
    _ack: Callable[[Position], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def position(self) -> Position:
        """``(height, tx_index, index)``: what a checkpoint records."""
        return (self.height, self.tx_index, self.index)

    def ack(self) -> Any:
        """Acknowledge this item and every item before it. In the asyncio SDK, await it."""
        if self._ack is None:
            return None
        return self._ack(self.position)

    def as_dict(self) -> dict[str, Any]:
        """The item as plain data (without the acknowledgement hook)."""
        return {
            "kind": self.kind,
            "height": self.height,
            "tx_index": self.tx_index,
            "index": self.index,
            "tx_id": self.tx_id,
            "contract": self.contract,
            "name": self.name,
            "key": self.key,
            "payload": self.payload,
            "status": self.status,
            "message": self.message,
            "timestamp_ms": self.timestamp_ms,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_item(
        cls, item: StreamItem, ack: Callable[[Position], Any] | None = None
    ) -> LedgerEvent:
        """The SDK's view of a wire :class:`StreamItem`."""
        return cls(
            kind=item.kind,
            height=item.height,
            tx_index=item.tx_index,
            index=item.index,
            tx_id=item.tx_id.hex(),
            contract=item.contract,
            name=item.name,
            key=item.key,
            payload=item.payload,
            status=item.status,
            message=item.message,
            timestamp_ms=item.timestamp_ms,
            idempotency_key=item.idempotency_key,
            _ack=ack,
        )


class Checkpointer(Protocol):
    """Where a consumer without a server-side subscription keeps its place."""

    def load(self) -> Position | None:
        """The last processed position, or None (start from the stream's beginning)."""
        ...

    def save(self, position: Position) -> None:
        """Record ``position`` durably before returning."""
        ...


AsyncAck = Callable[[Position], Awaitable[None]]


class FileCheckpointer:
    """A checkpoint in a small JSON file, replaced atomically (write, fsync, rename)."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> Position | None:
        """The saved position, or None if there is no file yet."""
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return None
        return check_position(tuple(data["position"]))

    def save(self, position: Position) -> None:
        """Write the position to a temporary file, fsync it, rename it over the old one."""
        check_position(position)
        tmp = self._path.with_name(self._path.name + ".tmp")
        with self._lock:
            with open(tmp, "w") as f:
                json.dump({"position": list(position)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class SqliteCheckpointer:
    """Checkpoints in a SQLite table ``kyodo_checkpoints(name PRIMARY KEY, height,
    tx_index, idx)``: one row per consumer name. Give the consumer's own database
    connection's path to keep the checkpoint beside the data it writes."""

    def __init__(self, path: Path | str, name: str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kyodo_checkpoints ("
            "name TEXT PRIMARY KEY, height INTEGER NOT NULL, tx_index INTEGER NOT NULL, "
            "idx INTEGER NOT NULL)"
        )
        self._name = name
        self._lock = threading.Lock()

    def load(self) -> Position | None:
        """The saved position of this consumer, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT height, tx_index, idx FROM kyodo_checkpoints WHERE name = ?",
                (self._name,),
            ).fetchone()
        return None if row is None else check_position(tuple(row))

    def save(self, position: Position) -> None:
        """Upsert this consumer's row (committed before returning)."""
        h, t, i = check_position(position)
        with self._lock:
            self._db.execute(
                "INSERT INTO kyodo_checkpoints (name, height, tx_index, idx) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET height = excluded.height, "
                "tx_index = excluded.tx_index, idx = excluded.idx",
                (self._name, h, t, i),
            )

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
