"""Durable subscriptions and their delivery: pull streams and signed webhooks.

Theory of operation
-------------------
Items are derived from the verified, committed blocks (:mod:`kyodo.events._derive`),
so the hub keeps no copy of them: only each subscription's declaration and its
**checkpoint**, the position of the last item its consumer acknowledged. That is
all a restart needs: delivery resumes with the first item after the checkpoint,
so every item is delivered at least once, in ledger order, and one is delivered
twice only when the consumer processed it but its acknowledgement was lost (a
crash, a restart, a failover) - and then it carries the same idempotency key.

* **Pull** (gRPC ``Events``, WebSocket, SSE): a session sends up to ``window``
  items ahead of the consumer's acknowledgements; an acknowledgement is cumulative
  and reaches the disk (one synced batch, off the event loop) within ``FLUSH_S``.
  A subscription has one consumer at a time: a new session supersedes the old one
  (a consumer restarted on another connection must not wait for the dead one's
  TCP timeout).
* **Webhook**: a worker per subscription POSTs each item as JSON, signed with
  HMAC-SHA256 of the subscription's secret (:func:`sign_webhook`). A 2xx answer
  acknowledges it; anything else is retried with exponential backoff, and after
  ``max_attempts`` the item goes to the dead-letter list (visible in the
  subscription's status) and the worker moves on.
* **Inline streams** (no name) keep nothing on the node: the consumer brings its
  own checkpoint (the SDK's checkpointers).

Subscriptions belong to the organization of the member that created them: only
members of that organization see, consume, acknowledge or delete them. Names are
unique per organization on a node. A consumer failing over to another node of
its organization declares the same subscription there and brings its last
checkpoint: the later of that and the node's own is where delivery resumes.

The subscription table is a small RocksDB database of its own (``events/`` in
the node home), apart from the ledger store, which may be set aside and rebuilt
from peers without losing consumers' places.

Why written here: delivery semantics tied to ledger positions; no library
streams a ledger's derived items.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import structlog
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from kyodo.codec import DecodeError, decode_record, encode, record
from kyodo.events._derive import Write, item_json, items_of_block
from kyodo.ledger import Block
from kyodo.wire import (
    EVENT_KINDS,
    MAX_STREAM_WINDOW,
    DeadLetter,
    EventFilter,
    ReplicaEntry,
    StreamBatch,
    StreamItem,
    StreamOpen,
    SubscriptionInfo,
    SubscriptionReplica,
    SubscriptionSpec,
    check_position,
)

__all__ = [
    "SIGNATURE_HEADER",
    "EventHub",
    "EventsError",
    "LedgerReader",
    "Session",
    "check_filter",
    "sign_webhook",
    "verify_webhook",
]

log = structlog.get_logger("kyodo.events")

Position = tuple[int, int, int]
START = (0, -1, -1)
MAX_NAME = 64
MAX_SUBSCRIPTIONS_PER_ORG = 256
MAX_DEAD_LETTERS = 1000
HEARTBEAT_S = 15.0
SCAN_BLOCKS = 64
"""Most blocks one read scans: a consumer far behind still yields the reader threads."""
SIGNATURE_HEADER = "Kyodo-Signature"
MAX_WEBHOOK_BACKOFF_S = 30.0
MAX_STREAMS_PER_IDENTITY = 8
"""Open streams one identity may hold on a node (named and inline together)."""
MAX_STREAMS = 256
"""Open streams a node serves in all."""
MAX_DELETED = 4096
"""Deletions remembered (the newest), against replicas from before them."""
TURN_POLL_S = 1.0
TAKEOVER_S = 60.0
"""A node whose turn it is not delivers a webhook anyway when the one whose turn it is
sent nothing of it for this long while items wait (it refused the declaration, say). The
deliverer reports each attempt, and waits at most MAX_WEBHOOK_BACKOFF_S plus a timeout
between two."""
"""How often a webhook worker whose node does not deliver checks whether its turn came."""
_DELETED = b"~deleted/"
"""Key prefix of remembered deletions in the table (an organization id has no ``~``)."""
FLUSH_S = 0.2
"""Acknowledged checkpoints reach the disk (synced) within this: a crash in between
means those items come again (at least once), never that one is skipped."""


class EventsError(Exception):
    """A refused subscription operation; ``code`` is ``events.<reason>``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = f"events.{reason}"
        self.reason = reason


class LedgerReader(Protocol):
    """What the hub needs of the node (implemented in kyodo.node)."""

    def tip(self) -> int:
        """Height of the last committed block (event loop thread)."""
        ...

    def block(self, height: int) -> Block:
        """The verified block at ``height`` (reader thread)."""
        ...

    def writes(self, height: int) -> Sequence[Write] | None:
        """The state changes of that block (reader thread); None if not indexed."""
        ...

    def in_reader(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        """Run ``fn`` on a reader thread."""
        ...


@record(96)
@dataclass(frozen=True, slots=True, kw_only=True)
class _Stored:
    """One subscription as the hub keeps it."""

    spec: SubscriptionSpec
    owner: str
    checkpoint: tuple[int, ...]
    created_ms: int
    acked: int = 0
    dead_letters: tuple[DeadLetter, ...] = ()
    failures: int = 0
    last_error: str = ""


def sign_webhook(secret: bytes, timestamp_ms: int, body: bytes) -> str:
    """The ``Kyodo-Signature`` header value: ``t=<ms>,v1=<hex HMAC-SHA256 of
    "<ms>." + body>``. The timestamp lets a receiver refuse old replays."""
    mac = hmac.new(secret, f"{timestamp_ms}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_ms},v1={mac}"


def verify_webhook(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    now_ms: int | None = None,
    tolerance_ms: int = 300_000,
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance_ms``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - ts) > tolerance_ms:
        return False
    expected = sign_webhook(secret, ts, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, given)


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_filter(flt: EventFilter) -> None:
    """Refuse a filter that names an unknown kind or is malformed."""
    if flt.kind not in EVENT_KINDS:
        raise EventsError("invalid", f"kind must be one of {', '.join(EVENT_KINDS)}")
    if len(flt.contracts) > 64 or len(flt.names) > 64:
        raise EventsError("invalid", "a filter names at most 64 contracts and 64 event names")
    if flt.include_state and flt.kind != "events":
        raise EventsError("invalid", "include_state applies to the events kind only")
    if flt.names and flt.kind != "events":
        raise EventsError("invalid", "event names filter the events kind only")


class Session:
    """One consumer's pull stream of a subscription (named or inline)."""

    def __init__(
        self,
        hub: EventHub,
        *,
        key: str,
        flt: EventFilter,
        after: Position,
        window: int,
        until: int = -1,
    ) -> None:
        self._hub = hub
        self._until = until
        self.key = key  # "" for an inline stream
        self._filter = flt
        self._cursor: Position = after
        self._window = window
        self._sent: deque[Position] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = asyncio.Event()
        self.superseded = False
        self.deleted = False
        self.transport = ""
        """``grpc``, ``sse`` or ``ws``: REST acknowledgements reach SSE sessions only."""

    @property
    def closed(self) -> bool:
        """Whether the session ended (closed, or superseded by a newer one)."""
        return self._closed.is_set()

    def close(self, *, superseded: bool = False, deleted: bool = False) -> None:
        """End the session; ``batches`` stops."""
        self.superseded = self.superseded or superseded
        self.deleted = self.deleted or deleted
        self._closed.set()
        self._room.set()

    async def batches(self, *, idle_s: float | None = None) -> AsyncIterator[StreamBatch]:
        """Items in ledger order, at most ``window`` unacknowledged; an empty batch
        carrying the tip every :data:`HEARTBEAT_S` while there is nothing to send.
        ``idle_s``: end once nothing new came for that long (0: after the backlog)."""
        heartbeat = HEARTBEAT_S if idle_s is None else min(HEARTBEAT_S, idle_s)
        while not self.closed:
            room = self._window - len(self._sent)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            items, cursor = await self._hub.read_items(self._filter, self._cursor, room)
            if self.closed:
                break
            self._cursor = cursor
            if self._until >= 0:
                items = [i for i in items if i.height <= self._until]
                if cursor[0] > self._until:  # the last block of a replay was read
                    if items:
                        self._sent.extend(item.position for item in items)
                        yield StreamBatch(items=tuple(items), tip=self._hub.ledger.tip())
                    # the end, said: an empty batch at or past `until` (a heartbeat of a
                    # replay is always before it), so the consumer closes its side first
                    yield StreamBatch(items=(), tip=max(self._hub.ledger.tip(), self._until))
                    return
            if items:
                self._sent.extend(item.position for item in items)
                yield StreamBatch(items=tuple(items), tip=self._hub.ledger.tip())
                continue
            waited = await self._hub.wait_for_height(cursor[0], heartbeat, self._closed)
            if not waited and idle_s is not None:
                return
            if not waited and not self.closed:
                yield StreamBatch(items=(), tip=self._hub.ledger.tip())

    def ack(self, position: Any) -> None:
        """Acknowledge every sent item up to ``position`` (for a named subscription, on
        disk within FLUSH_S). A position beyond what was sent is refused."""
        try:
            pos = check_position(tuple(position))
        except (TypeError, ValueError) as exc:
            raise EventsError("invalid", str(exc)) from exc
        if not self._sent or pos < self._sent[0]:
            return  # nothing outstanding at or before it: an old or repeated ack
        if pos > self._sent[-1]:
            raise EventsError(
                "invalid_ack", f"position {list(pos)} was not delivered on this stream"
            )
        count = 0
        while self._sent and self._sent[0] <= pos:
            self._sent.popleft()
            count += 1
        if self.key and not self.closed:  # a superseded or deleted session moves nothing
            self._hub.record_ack(self.key, pos, count)
        self._room.set()


class EventHub:
    """The node's subscriptions: declarations, checkpoints, sessions, webhook workers."""

    def __init__(
        self,
        path: Path,
        ledger: LedgerReader,
        *,
        webhook_allowed_hosts: Sequence[str] = (),
        webhook_timeout_s: float = 10.0,
        webhook_backoff_s: float = 0.5,
        org: str = "",
        replicate: Callable[[SubscriptionReplica], None] | None = None,
        turn_rank: Callable[[], int | None] = lambda: 0,
    ) -> None:
        """``org``: this node's organization, the only one whose subscriptions a replica
        may carry. ``replicate``: sends a replica to the other nodes of the
        organization. ``turn_rank``: this node's place in line to deliver the
        organization's webhooks has come (the first of its live nodes)."""
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), Options(raw_mode=True))
        self._sync = WriteOptions()
        self._sync.sync = True
        self.ledger = ledger
        self._allowed_hosts = tuple(webhook_allowed_hosts)
        self._timeout_s = webhook_timeout_s
        self._backoff_s = webhook_backoff_s
        self._org = org
        self._replicate = replicate
        self._turn_rank = turn_rank
        self._table = asyncio.Lock()
        """Declarations, deletions and merges, one at a time (each awaits its write)."""
        self._heard_at: dict[str, float] = {}
        """When another node last sent news of a subscription (monotonic s)."""
        self._waiting_since: dict[str, float] = {}
        """Since when items of a subscription this node does not deliver have waited."""
        self._took_over: set[str] = set()
        """Webhooks this node delivers out of turn (``_stalled``)."""
        self._scan: dict[str, tuple[Position, Position]] = {}
        """Per webhook this node does not deliver: (the checkpoint, how far ``_stalled``
        found no item after it)."""
        self._ahead: dict[str, ReplicaEntry] = {}
        """The newest replica of each subscription whose checkpoint is beyond this node's
        tip (it is catching up): merged when the tip gets there."""
        self._ahead_task: asyncio.Task[None] | None = None
        self._subs: dict[str, _Stored] = {}
        self._deleted: dict[str, int] = {}
        """Deleted subscriptions and when (ms): a replica from before a deletion, from a
        node that was down when it happened, must not bring one back."""
        for key, value in self._db.items():
            try:
                assert isinstance(key, bytes) and isinstance(value, bytes)
                if key.startswith(_DELETED):
                    self._deleted[key[len(_DELETED) :].decode()] = int(value)
                else:
                    self._subs[key.decode()] = decode_record(_Stored, value)
            except (DecodeError, UnicodeDecodeError, ValueError) as exc:
                log.error("subscription_unreadable", key=repr(key), error=str(exc))
        self._sessions: dict[str, Session] = {}
        """The current session of each named subscription."""
        self._live: dict[object, str] = {}
        """Open streams (sessions, and other long-lived calls: ``watching``) by owner."""
        """Every open session (named or inline) and its owner, for the stream caps."""
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        """Subscriptions whose acknowledged checkpoint is not on disk yet."""
        self._flusher: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="events-writer")
        self._tip_event = asyncio.Event()
        self._closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the checkpoint flusher and the webhook workers of stored subscriptions
        (on the event loop)."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        for key, stored in self._subs.items():
            if stored.spec.webhook_url:
                self._start_worker(key)

    async def _flush_loop(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Write the acknowledged checkpoints not on disk yet, in one synced batch (on a
        worker thread: the event loop never waits for the disk)."""
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        batch = WriteBatch(raw_mode=True)
        for key in keys:
            if (stored := self._subs.get(key)) is not None:
                batch.put(key.encode(), encode(stored))
        await self._write(self._db.write, batch, self._sync)
        self._share(keys)

    async def close(self) -> None:
        """Stop sessions and workers, close the table."""
        self._closing.set()
        for session in list(self._sessions.values()):
            session.close()
        for task in list(self._workers.values()):
            task.cancel()
        for task in list(self._workers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        await self.flush()
        self._writer.shutdown()
        self._db.close()

    def notify(self, height: int) -> None:
        """A block was committed (event loop): wake the waiting sessions and workers."""
        if self._closing.is_set():
            return
        if self._ahead and self._ahead_task is None:  # first, so that a worker woken
            loop = asyncio.get_running_loop()  # below reads the checkpoint it brings
            self._ahead_task = loop.create_task(self._merge_ahead())
        self._tip_event.set()
        self._tip_event = asyncio.Event()

    async def _merge_ahead(self) -> None:
        """Replicas whose checkpoint was beyond this node's tip, now that it grew: until
        none is due (the tip may grow again while one is merged)."""
        try:
            while not self._closing.is_set():
                due = [e for e in self._ahead.values() if _reached(e, self.ledger.tip())]
                if not due:
                    return
                for entry in due:
                    del self._ahead[entry.key]
                await self.merge(SubscriptionReplica(entries=tuple(due)), news=False)
        except Exception:  # a bug: said, and the next block tries again
            log.exception("subscription_replica_failed")
        finally:
            self._ahead_task = None

    async def wait_for_height(
        self, height: int, timeout_s: float, cancel: asyncio.Event | None = None
    ) -> bool:
        """Wait until block ``height`` is committed; False on timeout or cancel."""
        deadline = time.monotonic() + timeout_s
        while self.ledger.tip() < height:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.is_set() or (cancel and cancel.is_set()):
                return False
            waiters = [asyncio.ensure_future(self._tip_event.wait())]
            if cancel is not None:
                waiters.append(asyncio.ensure_future(cancel.wait()))
            waiters.append(asyncio.ensure_future(self._closing.wait()))
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        return True

    # -- reading ---------------------------------------------------------------------

    async def read_items(
        self, flt: EventFilter, after: Position, limit: int
    ) -> tuple[list[StreamItem], Position]:
        """Up to ``limit`` items after ``after``, and the cursor to read on from."""
        ledger = self.ledger
        tip = ledger.tip()

        def read() -> tuple[list[StreamItem], Position]:
            items: list[StreamItem] = []
            cursor = after
            h = after[0]
            scanned = 0
            while h <= tip and len(items) < limit and scanned < SCAN_BLOCKS:
                block = ledger.block(h)
                writes = ledger.writes(h) if flt.include_state else None
                got = items_of_block(block, flt, writes, after=cursor)
                room = limit - len(items)
                if len(got) > room:
                    items.extend(got[:room])
                    return items, items[-1].position
                items.extend(got)
                cursor = (h + 1, -1, -1)
                h += 1
                scanned += 1
            return items, cursor

        return await ledger.in_reader(read)  # type: ignore[no-any-return]

    # -- declarations ------------------------------------------------------------------

    async def declare(
        self, spec: SubscriptionSpec, owner: str, *, after: Any = None
    ) -> SubscriptionInfo:
        """Create the subscription, or accept the same declaration again.

        ``after``: the consumer's own checkpoint (it fails over from another node of
        its organization); a new subscription starts after it instead of at ``start``,
        an existing one moves up to it if it is later.
        """
        async with self._table:
            return await self._declare(spec, owner, after)

    async def _declare(self, spec: SubscriptionSpec, owner: str, after: Any) -> SubscriptionInfo:
        resume = self._resume_position(after)
        org = owner.split("/", 1)[0]
        self._check_spec(spec)
        key = f"{org}/{spec.name}"
        existing = self._subs.get(key)
        if existing is not None:
            if _comparable(existing.spec) != _comparable(spec):
                raise EventsError(
                    "conflict",
                    f"subscription {spec.name!r} exists with another filter, start or "
                    "delivery; delete it first or choose another name",
                )
            if spec.webhook_url and spec.webhook_secret != existing.spec.webhook_secret:
                raise EventsError(
                    "conflict", f"subscription {spec.name!r} exists with another secret"
                )
            return self._info(key)  # `after` moves nothing: only acknowledgements do
        if sum(1 for k in self._subs if k.startswith(org + "/")) >= MAX_SUBSCRIPTIONS_PER_ORG:
            raise EventsError(
                "limit", f"{org} has {MAX_SUBSCRIPTIONS_PER_ORG} subscriptions on this node"
            )
        if spec.start == "oldest":
            checkpoint: Position = START
        elif spec.start == "latest":
            checkpoint = (self.ledger.tip() + 1, -1, -1)
        else:
            checkpoint = (spec.start_height, -1, -1)
        if resume is not None:
            checkpoint = resume
        created = max(_now_ms(), self._deleted.get(key, 0) + 1)  # newer than a deletion
        stored = _Stored(spec=spec, owner=owner, checkpoint=checkpoint, created_ms=created)
        self._subs[key] = stored
        self._dirty.discard(key)
        await self._write(self._db.put, key.encode(), encode(stored), self._sync)
        self._share([key])
        log.info(
            "subscription_created",
            subscription=key,
            owner=owner,
            kind=spec.filter.kind,
            webhook=bool(spec.webhook_url),
        )
        if spec.webhook_url:
            self._start_worker(key)
        return self._info(key)

    def _resume_position(self, after: Any) -> Position | None:
        """A consumer's own checkpoint, checked: a position, not beyond the next block."""
        if after is None:
            return None
        try:
            position = check_position(tuple(after))
        except (TypeError, ValueError) as exc:
            raise EventsError("invalid", str(exc)) from exc
        if position > (self.ledger.tip() + 1, -1, -1):
            raise EventsError(
                "invalid", f"position {list(position)} is beyond the tip ({self.ledger.tip()})"
            )
        return position

    def _check_spec(self, spec: SubscriptionSpec) -> None:
        if not _valid_name(spec.name):
            raise EventsError(
                "invalid", f"a subscription name is 1 to {MAX_NAME} of A-Z a-z 0-9 - _ ."
            )
        check_filter(spec.filter)
        if spec.start not in ("oldest", "latest", "height"):
            raise EventsError("invalid", "start is oldest, latest or height")
        if spec.start == "height" and spec.start_height < 0:
            raise EventsError("invalid", "start_height is a height (>= 0)")
        if not 1 <= spec.max_attempts <= 100:
            raise EventsError("invalid", "max_attempts is 1 to 100")
        if spec.webhook_url:
            self._check_webhook_url(spec.webhook_url)
            if len(spec.webhook_secret) < 16:
                raise EventsError("invalid", "a webhook secret is at least 16 bytes")

    def _check_webhook_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EventsError("invalid", "a webhook URL is http(s)://host[:port]/path")
        host = parts.hostname
        if self._allowed_hosts and host not in self._allowed_hosts:
            raise EventsError(
                "webhook_host",
                f"webhook host {host!r} is not in this node's webhook_allowed_hosts",
            )
        with contextlib.suppress(ValueError):  # names are resolved and checked per POST
            if _unroutable(ipaddress.ip_address(host)):
                raise EventsError("webhook_host", f"webhook host {host} is not addressable")

    def get(self, name: str, org: str) -> SubscriptionInfo:
        """A subscription of ``org`` and where it stands."""
        key = f"{org}/{name}"
        if key not in self._subs:
            raise EventsError("not_found", f"no subscription {name!r} of {org} on this node")
        return self._info(key)

    def list(self, org: str) -> list[SubscriptionInfo]:
        """Every subscription of ``org`` on this node, by name."""
        return [self._info(k) for k in sorted(self._subs) if k.startswith(org + "/")]

    async def delete(self, name: str, org: str) -> None:
        """Remove a subscription: its session ends, its worker stops."""
        async with self._table:
            await self._delete(name, org)

    async def _delete(self, name: str, org: str) -> None:
        key = f"{org}/{name}"
        if key not in self._subs:
            raise EventsError("not_found", f"no subscription {name!r} of {org} on this node")
        deleted_ms = max(_now_ms(), self._subs[key].created_ms)
        await self._remove(key, deleted_ms)
        self._share([key])
        log.info("subscription_deleted", subscription=key)

    async def _remove(self, key: str, deleted_ms: int) -> None:
        """Forget a subscription, keeping when it was deleted."""
        self._subs.pop(key, None)
        self._dirty.discard(key)
        self._ahead.pop(key, None)
        self._stop_delivery(key)
        self._deleted[key] = deleted_ms
        batch = WriteBatch(raw_mode=True)
        batch.delete(key.encode())
        batch.put(_DELETED + key.encode(), str(deleted_ms).encode())
        for old in sorted(self._deleted, key=self._deleted.__getitem__)[:-MAX_DELETED]:
            del self._deleted[old]  # the oldest go, on disk too
            batch.delete(_DELETED + old.encode())
        await self._write(self._db.write, batch, self._sync)

    def _stop_delivery(self, key: str) -> None:
        """End a subscription's session and worker, and forget how it was delivered."""
        if (session := self._sessions.pop(key, None)) is not None:
            session.close(deleted=True)  # its consumer is told, and must not re-declare it
        if (task := self._workers.pop(key, None)) is not None:
            task.cancel()
        self._heard_at.pop(key, None)
        self._waiting_since.pop(key, None)
        self._scan.pop(key, None)
        self._took_over.discard(key)

    # -- replication within the organization -----------------------------------------

    def _share(self, keys: Iterable[str]) -> None:
        """Send these subscriptions (or their deletions) to the organization's other
        nodes."""
        if self._replicate is None:
            return
        for key in keys:  # one per frame: a record with its dead letters can be large
            self._replicate(SubscriptionReplica(entries=(self._entry(key),)))

    def _entry(self, key: str) -> ReplicaEntry:
        stored = self._subs.get(key)
        if stored is None:
            return ReplicaEntry(key=key, stored=b"", deleted_ms=self._deleted.get(key, 0))
        return ReplicaEntry(key=key, stored=encode(stored))

    def snapshot(self) -> tuple[SubscriptionReplica, ...]:
        """Everything this node knows, for a node of the organization that (re)connects:
        declarations and deletions made while it was down reach it. One replica per
        subscription (a frame stays small)."""
        keys = sorted({*self._subs, *self._deleted})
        return tuple(SubscriptionReplica(entries=(self._entry(k),)) for k in keys)

    async def merge(self, replica: SubscriptionReplica, *, news: bool = True) -> int:
        """Take what another node of the organization knows: a subscription new here, a
        later checkpoint of the same one, a newer declaration of the same name, or a
        deletion. Returns how many entries changed something. An entry of another
        organization, or one this node would not accept from a member (a name that is
        not its key, an owner of another organization, a checkpoint that is not a
        position here, a declaration it refuses, one too many), is refused (logged).

        ``news``: it comes from the node whose turn it is to deliver webhooks (a node that
        took one over hands it back then).
        """
        if self._closing.is_set():
            return 0
        async with self._table:
            return await self._merge(replica, news)

    async def _merge(self, replica: SubscriptionReplica, news: bool) -> int:
        changed = 0
        for entry in replica.entries:
            key = entry.key
            org, _, name = key.partition("/")
            if not self._org or org != self._org or not _valid_name(name):
                log.warning("subscription_replica_refused", key=key[:80], error="key")
                continue
            local = self._subs.get(key)
            if not entry.stored:  # a deletion
                if entry.deleted_ms > self._deleted.get(key, 0) and (
                    local is None or local.created_ms <= entry.deleted_ms
                ):
                    await self._remove(key, entry.deleted_ms)
                    changed += 1
                continue
            try:
                theirs = decode_record(_Stored, entry.stored, max_size=len(entry.stored))
                self._check_spec(theirs.spec)
                if theirs.spec.name != name or not theirs.owner.startswith(org + "/"):
                    raise EventsError("invalid", "the record is not the key's")
                position = check_position(tuple(theirs.checkpoint))
            except (DecodeError, EventsError, TypeError, ValueError) as exc:
                log.warning("subscription_replica_refused", key=key[:80], error=str(exc))
                continue
            if news and local is not None and local.created_ms == theirs.created_ms:
                self._heard_at[key] = time.monotonic()  # the deliverer is at work: a
                self._took_over.discard(key)  # node that took it over hands it back
            if position > (self.ledger.tip() + 1, -1, -1):  # beyond what this node holds:
                if key in self._ahead or len(self._ahead) < MAX_SUBSCRIPTIONS_PER_ORG:
                    self._ahead[key] = entry  # it is catching up; taken when it gets there
                else:
                    log.warning("subscription_replica_refused", key=key[:80], error="ahead")
                continue
            if theirs.created_ms <= self._deleted.get(key, 0):
                continue  # declared before its deletion here
            if local is not None and local.created_ms > theirs.created_ms:
                continue  # ours is the newer declaration
            if local is not None and local.created_ms == theirs.created_ms:
                if tuple(theirs.checkpoint) <= tuple(local.checkpoint):
                    continue  # nothing new: the same one, no further
                theirs = replace(theirs, acked=max(theirs.acked, local.acked))
            elif local is not None:  # a newer declaration of the same name replaces ours
                self._stop_delivery(key)
            elif sum(1 for k in self._subs if k.startswith(org + "/")) >= (
                MAX_SUBSCRIPTIONS_PER_ORG
            ):
                log.warning("subscription_replica_refused", key=key[:80], error="limit")
                continue
            self._subs[key] = theirs
            self._dirty.discard(key)
            if news or local is None:
                self._heard_at[key] = time.monotonic()
            await self._write(self._db.put, key.encode(), encode(theirs), self._sync)
            if theirs.spec.webhook_url:
                self._start_worker(key)
            changed += 1
        return changed

    def _info(self, key: str) -> SubscriptionInfo:
        st = self._subs[key]
        spec = st.spec
        return SubscriptionInfo(
            name=spec.name,
            owner=st.owner,
            filter=spec.filter,
            start=spec.start,
            start_height=spec.start_height,
            webhook_url=spec.webhook_url,
            max_attempts=spec.max_attempts,
            checkpoint=tuple(st.checkpoint),
            created_ms=st.created_ms,
            acked=st.acked,
            connected=key in self._sessions
            or (key in self._workers and not self._workers[key].done() and self._my_turn(key)),
            dead_letters=st.dead_letters,
            failures=st.failures,
            last_error=st.last_error,
        )

    async def _write(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a synced write on the hub's one writer thread: the event loop never
        waits for the disk, and writes land in the order they were asked for (a flush
        of a checkpoint can never resurrect a subscription deleted after it)."""
        await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def _advance(self, key: str, stored: _Stored) -> None:
        """Record progress (a checkpoint, webhook failures): on disk within FLUSH_S."""
        self._subs[key] = stored
        self._dirty.add(key)

    # -- pull sessions -----------------------------------------------------------------

    def _check_stream_caps(self, owner: str) -> None:
        if len(self._live) >= MAX_STREAMS:
            raise EventsError("limit", f"this node serves {MAX_STREAMS} streams already")
        if sum(1 for who in self._live.values() if who == owner) >= MAX_STREAMS_PER_IDENTITY:
            raise EventsError(
                "limit", f"{owner} has {MAX_STREAMS_PER_IDENTITY} streams open on this node"
            )

    def hold_stream(self, owner: str) -> object:
        """Count a stream that is not an event stream (gRPC ``Health.Watch``) in the same
        caps as the event streams until ``release_stream``; EventsError ``limit`` if one
        more would pass them."""
        self._check_stream_caps(owner)
        token = object()
        self._live[token] = owner
        return token

    def release_stream(self, token: object) -> None:
        """The stream ``hold_stream`` counted has ended."""
        self._live.pop(token, None)

    def open(self, request: StreamOpen, owner: str) -> Session:
        """A pull session: a named subscription of the caller's organization (which must
        not deliver by webhook), or an inline filter with the consumer's checkpoint."""
        org = owner.split("/", 1)[0]
        window = request.window
        if not 1 <= window <= MAX_STREAM_WINDOW:
            raise EventsError("invalid", f"window is 1 to {MAX_STREAM_WINDOW}")
        after = self._resume_position(request.after)
        self._check_stream_caps(owner)
        if not request.subscription:
            if request.filter is None:
                raise EventsError("invalid", "name a subscription or give a filter")
            check_filter(request.filter)
            session = Session(
                self,
                key="",
                flt=request.filter,
                after=after or START,
                window=window,
                until=request.until_height,
            )
            self._live[session] = owner
            return session
        key = f"{org}/{request.subscription}"
        stored = self._subs.get(key)
        if stored is None:
            raise EventsError(
                "not_found", f"no subscription {request.subscription!r} of {org} on this node"
            )
        if stored.spec.webhook_url:
            raise EventsError(
                "invalid", f"subscription {request.subscription!r} delivers by webhook"
            )
        checkpoint = check_position(stored.checkpoint)
        if after is not None and after > checkpoint:  # a consumer failing over brings its
            checkpoint = after  # own: where this stream starts; only acks move the record
        if (old := self._sessions.get(key)) is not None:
            old.close(superseded=True)
        session = Session(
            self,
            key=key,
            flt=stored.spec.filter,
            after=checkpoint,
            window=window,
            until=request.until_height,
        )
        self._sessions[key] = session
        self._live[session] = owner
        return session

    def ack(self, name: str, org: str, position: Any) -> None:
        """Acknowledge on the open session of a named subscription (SSE consumers, whose
        stream has no way back)."""
        session = self._sessions.get(f"{org}/{name}")
        if session is None or session.transport != "sse":
            raise EventsError(
                "no_session", f"subscription {name!r} has no open SSE stream on this node"
            )
        session.ack(position)

    def release(self, session: Session) -> None:
        """The session's transport ended."""
        session.close()
        self._live.pop(session, None)
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    def record_ack(self, key: str, position: Position, count: int) -> None:
        """Persist a named subscription's new checkpoint (synced)."""
        stored = self._subs.get(key)
        if stored is None or position <= tuple(stored.checkpoint):
            return
        self._advance(key, replace(stored, checkpoint=position, acked=stored.acked + count))

    # -- webhooks ----------------------------------------------------------------------

    def _start_worker(self, key: str) -> None:
        if key not in self._subs or self._closing.is_set():
            return
        task = self._workers.get(key)
        if task is None or task.done():
            self._workers[key] = asyncio.get_running_loop().create_task(self._webhook(key))

    def _my_turn(self, key: str) -> bool:
        """Whether this node delivers ``key`` now: its turn in the organization came, or
        it took the subscription over (``_stalled``)."""
        rank = self._turn_rank()
        return rank == 0 or (rank is not None and key in self._took_over)

    async def _stalled(self, key: str) -> bool:
        """Whether items of ``key`` have waited with no news of it from the node whose
        turn it is (that node refused the declaration, or is stuck) for TAKEOVER_S
        times this node's place in line: it then delivers them until news comes again.
        The next in line goes first; a node out of the line (removed, just started)
        never does."""
        rank = self._turn_rank()
        if not rank:
            return False
        stored = self._subs[key]
        checkpoint = check_position(stored.checkpoint)
        base, cursor = self._scan.get(key, (checkpoint, checkpoint))
        if base != checkpoint:  # the deliverer moved on: scan from there
            cursor = checkpoint
        items, cursor = await self.read_items(stored.spec.filter, cursor, 1)
        self._scan[key] = (checkpoint, cursor)  # a sparse filter is scanned once
        if not items:
            self._waiting_since.pop(key, None)
            return False
        self._scan[key] = (checkpoint, checkpoint)
        now = time.monotonic()
        since = max(self._waiting_since.setdefault(key, now), self._heard_at.get(key, 0.0))
        if now - since <= TAKEOVER_S * rank:
            return False
        self._took_over.add(key)
        log.warning("webhook_taken_over", subscription=key, idle_s=round(now - since, 1))
        return True

    async def _webhook(self, key: str) -> None:
        """Deliver a webhook subscription's items in order, for as long as it exists. A
        failure of the node's own (a store fault, quarantine) is waited out, never fatal:
        the worker backs off and reads again."""
        import httpx  # imported here: only nodes with webhook subscriptions need it

        async with httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False) as http:
            cursor: Position | None = None
            while not self._closing.is_set() and key in self._subs:
                try:
                    if not self._my_turn(key) and not await self._stalled(key):
                        cursor = None  # another node of the organization delivers; its
                        with contextlib.suppress(TimeoutError):  # checkpoints reach us
                            await asyncio.wait_for(self._closing.wait(), timeout=TURN_POLL_S)
                        continue
                    checkpoint = check_position(self._subs[key].checkpoint)
                    if cursor is None or cursor < checkpoint:
                        cursor = checkpoint
                    filter_ = self._subs[key].spec.filter
                    items, next_cursor = await self.read_items(filter_, cursor, 16)
                    if not items:
                        cursor = next_cursor
                        await self.wait_for_height(next_cursor[0], HEARTBEAT_S)
                        continue
                    for item in items:
                        if key not in self._subs or self._closing.is_set():
                            return
                        if not self._my_turn(key) or not await self._deliver(http, key, item):
                            cursor = None  # the turn passed: from the checkpoint again
                            break
                        cursor = item.position
                except Exception as exc:  # the node's own trouble: wait, read again
                    log.warning("webhook_worker_paused", subscription=key, error=repr(exc))
                    if (stored := self._subs.get(key)) is not None:
                        self._advance(key, replace(stored, last_error="node unavailable"))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), timeout=5.0)

    async def _target(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Where to send a webhook: the URL with its host resolved and every address
        checked now (no rebinding between the check and the connection), the Host
        header, and the TLS server name. Raises _Refused."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if self._allowed_hosts and host not in self._allowed_hosts:
            raise _Refused("host not allowed")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise _Refused("unresolvable") from exc
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if _unroutable(ip):
                raise _Refused("address not allowed")
            addresses.append(ip)
        if not addresses:
            raise _Refused("unresolvable")
        chosen = addresses[0]
        netloc = f"[{chosen}]:{port}" if chosen.version == 6 else f"{chosen}:{port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return pinned, {"Host": host_header}, extensions

    async def _deliver(self, http: Any, key: str, item: StreamItem) -> bool:
        """POST one item until a 2xx or ``max_attempts``; then dead-letter it. What a
        member sees of a failure is coarse (``HTTP 503``, ``unreachable``, ``timeout``):
        the node's network is not theirs to map; the node's log has the details. False
        if this node gave the item up: the turn passed to another node, or the
        subscription is gone."""
        import httpx

        attempt = 0
        while key in self._subs:
            spec = self._subs[key].spec
            body = json.dumps(item_json(item, spec.name), separators=(",", ":")).encode()
            attempt += 1
            error = ""
            try:
                url, host, extensions = await self._target(spec.webhook_url)
                ts = _now_ms()
                headers = {
                    **host,
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign_webhook(spec.webhook_secret, ts, body),
                    "Kyodo-Idempotency-Key": item.idempotency_key,
                    "Kyodo-Subscription": spec.name,
                }
                response = await http.post(
                    url, content=body, headers=headers, extensions=extensions
                )
                if 200 <= response.status_code < 300:
                    stored = self._subs.get(key)
                    if stored is not None and item.position > tuple(stored.checkpoint):
                        self._advance(  # (another node may have gone further meanwhile)
                            key,
                            replace(
                                stored,
                                checkpoint=item.position,
                                acked=stored.acked + 1,
                                failures=0,
                                last_error="",
                            ),
                        )
                    return True
                error = f"HTTP {response.status_code}"
            except _Refused as exc:
                error = f"refused: {exc}"
            except httpx.TimeoutException:
                error = "timeout"
            except Exception as exc:  # connection refused, TLS, reset: all retried
                log.info("webhook_error", subscription=key, error=type(exc).__name__)
                error = "unreachable"
            log.warning(
                "webhook_failed",
                subscription=key,
                item=item.idempotency_key,
                attempt=attempt,
                error=error,
            )
            stored = self._subs.get(key)
            if stored is None:
                return False
            if item.position <= tuple(stored.checkpoint):
                return True  # another node of the organization delivered it meanwhile
            if not self._my_turn(key):
                return False  # the turn passed: the node that has it takes the item over
            if attempt >= spec.max_attempts:
                letters = (
                    *stored.dead_letters,
                    DeadLetter(
                        key=item.idempotency_key,
                        position=item.position,
                        attempts=attempt,
                        error=error,
                        at_ms=_now_ms(),
                    ),
                )[-MAX_DEAD_LETTERS:]
                self._advance(
                    key,
                    replace(
                        stored,
                        checkpoint=item.position,
                        dead_letters=letters,
                        failures=0,
                        last_error=error,
                    ),
                )
                log.error("webhook_dead_letter", subscription=key, item=item.idempotency_key)
                return True
            self._advance(key, replace(stored, failures=attempt, last_error=error))
            delay = min(MAX_WEBHOOK_BACKOFF_S, self._backoff_s * 2 ** (attempt - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=delay)
            if self._closing.is_set():
                return False
        return False


class _Refused(Exception):
    """A webhook target this node will not send to."""


def _unroutable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses a webhook never goes to, whatever the allowlist: link-local (cloud
    metadata services), multicast, unspecified, reserved."""
    return ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved


def _valid_name(name: str) -> bool:
    """1 to MAX_NAME of A-Z a-z 0-9 - _ ."""
    return (
        0 < len(name) <= MAX_NAME
        and name.isascii()
        and all(c.isalnum() or c in "-_." for c in name)
    )


def _reached(entry: ReplicaEntry, tip: int) -> bool:
    """Whether the checkpoint an entry carries is within ``tip`` (or it does not decode:
    merge refuses it then)."""
    try:
        stored = decode_record(_Stored, entry.stored, max_size=len(entry.stored))
        return tuple(stored.checkpoint) <= (tip + 1, -1, -1)
    except (DecodeError, TypeError):
        return True


def _comparable(spec: SubscriptionSpec) -> SubscriptionSpec:
    """The declaration without its secret (compared separately)."""
    return replace(spec, webhook_secret=b"")
