"""Mirror chosen contracts' events and state changes into PostgreSQL, exactly once.

A :class:`PostgresMirror` reads a Kyodo event stream (contract events and state
changes, in ledger order) and keeps four tables in one PostgreSQL schema:

* ``events``: every contract event, one row per event;
* ``state_changes``: every state write and deletion, one row per change;
* ``state``: the current value of every key (a deleted key has no row);
* ``checkpoints``: per mirror ``name``, the position of the last item applied.

Theory of operation. A stream item has a position ``(height, tx_index, index)``
that is the same on every node and every delivery, and the stream delivers items
in position order, at least once. The mirror writes a batch of items in ONE
PostgreSQL transaction that (1) reads its checkpoint row with ``FOR UPDATE``,
(2) drops the items at or before the checkpoint, (3) writes the rows of the
others, and (4) moves the checkpoint to the batch's last position. Rows and
checkpoint commit together or not at all, so after any crash the checkpoint says
exactly which items are in the tables:

* a batch that did not commit left nothing, and its items come again because
  the stream restarts after the stored checkpoint;
* a batch that committed (even if the acknowledgement of the COMMIT was lost
  with the connection and the batch is sent again) is skipped item by item by
  step 2;
* two writers with the same ``name`` are serialised by the row lock of step 1,
  and the second one sees the first one's checkpoint.

Every item is therefore written exactly once, whatever the redeliveries, the
batch boundaries or the moment of a crash. :meth:`PostgresMirror.run` only has
to start the stream at the stored checkpoint and retry a batch after a
transient failure.

Why hand-written: change-data-capture tools (Debezium, Kafka Connect sinks)
mirror databases and message brokers, and none reads a Kyodo stream; what the
mirror needs - one transaction per batch with the checkpoint inside - is a few
statements, less than the glue a general framework would require.

Payloads are canonical CBOR values (None, bool, int, str, bytes, lists, maps
with string keys) and become ``jsonb``: bytes as ``{"$bytes": "<base64>"}``,
everything else as itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import inspect
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from kyodo.client._events import LedgerEvent
from kyodo.connectors.errors import ConnectorError

__all__ = ["MirrorProgress", "MirrorRows", "PostgresMirror", "Source", "compute_rows", "to_json"]

log = structlog.get_logger("kyodo.connectors.postgres")

Position = tuple[int, int, int]
"""``(height, tx_index, index)``: where an item stands in the ledger."""

Source = Callable[[Position | None], AsyncIterator[LedgerEvent]]
"""A stream: called with a position (None: the beginning), yields the items strictly
after it in ledger order, and waits for new blocks at the end. With the SDK:
``lambda after: network.events(filter, after=after)``."""

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's identifier length (NAMEDATALEN - 1); longer names are cut silently."""

MAX_BATCH = 10_000
"""The largest ``batch_max`` run() accepts: one transaction stays a few MB."""

BACKOFF_INITIAL_S = 0.05
"""The first wait after a transient failure; each further failure doubles it."""

DEFAULT_CONNECTION_OPTIONS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
"""libpq options the mirror sets unless the DSN does: connecting, and noticing a
silently dead server, take bounded time."""

# Server messages (in the server's language: English by default) of connection
# failures that retrying cannot cure. Connection failures carry no SQLSTATE.
_CONFIG_FAILURES = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "password is missing",
    "no password supplied",
)

# SQLSTATEs of failures that retrying cannot cure.
_CONFIG_SQLSTATES = {
    "42501": "permission",  # insufficient_privilege
    "42P01": "not_set_up",  # undefined_table
    "3F000": "not_set_up",  # invalid_schema_name
    "3D000": "connection",  # invalid_catalog_name
    "28000": "connection",  # invalid_authorization_specification
    "28P01": "connection",  # invalid_password
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorProgress:
    """What one batch did, as :meth:`PostgresMirror.run` reports it to ``on_progress``."""

    checkpoint: Position
    """The stored checkpoint after the batch: the position of its last item."""
    items: int
    """Items in the batch, including those skipped (already mirrored, other contracts,
    other kinds)."""
    rows: int
    """Rows written to ``events`` and ``state_changes`` (0 for a redelivered batch)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorRows:
    """The rows one batch writes, in column order of the statements below."""

    events: list[tuple[Any, ...]]
    """``events`` rows: (idempotency_key, height, tx_index, idx, tx_id, contract, name,
    payload, block_time)."""
    changes: list[tuple[Any, ...]]
    """``state_changes`` rows: (idempotency_key, contract, key, value, deleted, height,
    tx_index, idx, tx_id, block_time)."""
    upserts: list[tuple[Any, ...]]
    """``state`` rows to insert or replace: (contract, key, value, height, tx_id); the
    last write of each key in the batch."""
    deletes: list[tuple[str, str]]
    """``state`` keys to delete: (contract, key); keys whose last change is a deletion."""


def to_json(value: Any) -> Any:
    """A canonical CBOR value as a JSON value: bytes become ``{"$bytes": base64}``.

    Raises ValueError for what jsonb cannot hold: another type, a map key that is not
    a string, a string with a NUL character.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a string holds a NUL character, which jsonb cannot store")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("a map has a key that is not a string")
        return {to_json(k): to_json(v) for k, v in value.items()}
    raise ValueError(f"a value of type {type(value).__name__} is not canonical CBOR")


def compute_block_time(timestamp_ms: int) -> datetime:
    """The block's timestamp (ms since the Unix epoch) as an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=timestamp_ms)


def is_after(position: Position, checkpoint: Position | None) -> bool:
    """Whether an item at ``position`` comes after ``checkpoint`` (None: the beginning)."""
    return checkpoint is None or position > checkpoint


def check_order(items: Sequence[LedgerEvent]) -> None:
    """Raise ConnectorError unless the items' positions strictly increase."""
    for before, after in itertools.pairwise(items):
        if not before.position < after.position:
            raise ConnectorError(
                f"items out of ledger order: {before.position} then {after.position}",
                reason="order",
            )


def compute_rows(items: Sequence[LedgerEvent], contracts: frozenset[str]) -> MirrorRows:
    """The rows to write for ``items`` (in ledger order), keeping only events and state
    changes of ``contracts`` (empty: every contract). Pure: no I/O."""
    events: list[tuple[Any, ...]] = []
    changes: list[tuple[Any, ...]] = []
    last_change: dict[tuple[str, str], LedgerEvent] = {}
    for item in items:
        if contracts and item.contract not in contracts:
            continue
        if item.kind == "event":
            events.append(_event_row(item))
        elif item.kind == "state":
            changes.append(_change_row(item))
            last_change[(item.contract, item.key)] = item
    upserts: list[tuple[Any, ...]] = []
    deletes: list[tuple[str, str]] = []
    for key, item in last_change.items():
        if item.payload is None:
            deletes.append(key)
        else:
            upserts.append((item.contract, item.key, _json_or_none(item), item.height, item.tx_id))
    return MirrorRows(events=events, changes=changes, upserts=upserts, deletes=deletes)


def _event_row(item: LedgerEvent) -> tuple[Any, ...]:
    _check_text(item, item.contract, item.name, item.tx_id)
    return (
        item.idempotency_key, item.height, item.tx_index, item.index, item.tx_id,
        item.contract, item.name, Jsonb(_payload_json(item)),
        compute_block_time(item.timestamp_ms),
    )  # fmt: skip


def _change_row(item: LedgerEvent) -> tuple[Any, ...]:
    _check_text(item, item.contract, item.key, item.tx_id)
    return (
        item.idempotency_key, item.contract, item.key, _json_or_none(item),
        item.payload is None, item.height, item.tx_index, item.index, item.tx_id,
        compute_block_time(item.timestamp_ms),
    )  # fmt: skip


def _json_or_none(item: LedgerEvent) -> Jsonb | None:
    """A state change's new value as jsonb; None (SQL NULL) for a deletion."""
    return None if item.payload is None else Jsonb(_payload_json(item))


def _payload_json(item: LedgerEvent) -> Any:
    try:
        return to_json(item.payload)
    except ValueError as exc:
        raise ConnectorError(f"item {item.idempotency_key}: {exc}", reason="payload") from exc


def _check_text(item: LedgerEvent, *texts: str) -> None:
    if any("\x00" in text for text in texts):
        raise ConnectorError(
            f"item {item.idempotency_key}: a name holds a NUL character, which text "
            "columns cannot store",
            reason="payload",
        )


def _lock_key(schema: str) -> int:
    """A 64-bit advisory lock id for ``setup()`` of one schema (same in every process)."""
    digest = hashlib.sha256(f"kyodo.connectors.postgres:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _config_error(exc: psycopg.Error) -> ConnectorError | None:
    """The ConnectorError a driver error amounts to, or None if it may be transient."""
    reason = _CONFIG_SQLSTATES.get(exc.sqlstate or "")
    if reason is not None:
        return ConnectorError(f"PostgreSQL: {exc}", reason=reason)
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        message = str(exc)
        if any(failure in message for failure in _CONFIG_FAILURES):
            return ConnectorError(f"PostgreSQL refuses the connection: {exc}", reason="connection")
    return None


class _Statements:
    """The mirror's SQL, with the schema's identifiers quoted once."""

    def __init__(self, schema: str) -> None:
        def table(name: str) -> sql.Identifier:
            return sql.Identifier(schema, name)

        names = {
            "schema": sql.Identifier(schema),
            "events": table("events"),
            "state": table("state"),
            "state_changes": table("state_changes"),
            "checkpoints": table("checkpoints"),
        }

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(**names)

        self.create = [
            q("CREATE SCHEMA IF NOT EXISTS {schema}"),
            q(
                "CREATE TABLE IF NOT EXISTS {events} ("
                " idempotency_key text PRIMARY KEY,"
                " height bigint NOT NULL, tx_index bigint NOT NULL, idx bigint NOT NULL,"
                " tx_id text NOT NULL, contract text NOT NULL, name text NOT NULL,"
                " payload jsonb NOT NULL, block_time timestamptz NOT NULL)"
            ),
            q(
                "CREATE INDEX IF NOT EXISTS events_by_contract"
                " ON {events} (contract, name, height, tx_index, idx)"
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {state} ("
                " contract text NOT NULL, key text NOT NULL, value jsonb NOT NULL,"
                " height bigint NOT NULL, tx_id text NOT NULL,"
                " PRIMARY KEY (contract, key))"
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {state_changes} ("
                " idempotency_key text PRIMARY KEY,"
                " contract text NOT NULL, key text NOT NULL, value jsonb,"
                " deleted boolean NOT NULL,"
                " height bigint NOT NULL, tx_index bigint NOT NULL, idx bigint NOT NULL,"
                " tx_id text NOT NULL, block_time timestamptz NOT NULL,"
                " CHECK (deleted = (value IS NULL)))"
            ),
            q(
                "CREATE INDEX IF NOT EXISTS state_changes_by_key"
                " ON {state_changes} (contract, key, height, tx_index, idx)"
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {checkpoints} ("
                " name text PRIMARY KEY, contracts text[] NOT NULL,"
                " height bigint, tx_index bigint, idx bigint,"
                " updated_at timestamptz NOT NULL DEFAULT now(),"
                " CHECK ((height IS NULL) = (tx_index IS NULL)"
                " AND (height IS NULL) = (idx IS NULL)))"
            ),
        ]
        self.lock_setup = sql.SQL("SELECT pg_advisory_xact_lock(%s)")
        self.registrations = q("SELECT name, contracts FROM {checkpoints} ORDER BY name")
        self.register = q("INSERT INTO {checkpoints} (name, contracts) VALUES (%s, %s)")
        self.checkpoint = q("SELECT height, tx_index, idx FROM {checkpoints} WHERE name = %s")
        self.lock_checkpoint = q(
            "SELECT contracts, height, tx_index, idx FROM {checkpoints} WHERE name = %s FOR UPDATE"
        )
        self.save_checkpoint = q(
            "UPDATE {checkpoints} SET height = %s, tx_index = %s, idx = %s,"
            " updated_at = now() WHERE name = %s"
        )
        self.insert_event = q(
            "INSERT INTO {events} (idempotency_key, height, tx_index, idx, tx_id, contract,"
            " name, payload, block_time) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        self.insert_change = q(
            "INSERT INTO {state_changes} (idempotency_key, contract, key, value, deleted,"
            " height, tx_index, idx, tx_id, block_time)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        self.upsert_state = q(
            "INSERT INTO {state} (contract, key, value, height, tx_id)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (contract, key) DO UPDATE SET"
            " value = excluded.value, height = excluded.height, tx_id = excluded.tx_id"
        )
        self.delete_state = q("DELETE FROM {state} WHERE contract = %s AND key = %s")


@dataclass(frozen=True, slots=True)
class _StreamEnd:
    """The source stopped: ``error`` is what it raised (None: it simply ended)."""

    error: Exception | None


class _Stopped(Exception):
    """``stop`` was set while run() waited to retry: leave the batch uncommitted."""


class PostgresMirror:
    """Mirrors the events and state changes of ``contracts`` (empty: all) into the
    tables of ``schema``, keeping its place as checkpoint ``name``.

    The contract set is part of a mirror's identity: :meth:`setup` records it with
    the checkpoint and refuses a different one later (items of a newly added contract
    before the checkpoint would be missing), and refuses a set that overlaps another
    mirror's in the same schema (both would write the same ``state`` rows).

    Methods are thread-safe and use one connection, opened on first use and again
    after a failure; :meth:`close` closes it.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = "default",
        contracts: Sequence[str] = (),
        schema: str = "kyodo",
    ) -> None:
        if isinstance(contracts, str):
            raise ConnectorError("contracts must be a sequence of names", reason="options")
        try:
            options = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConnectorError(f"the DSN does not parse: {exc}", reason="dsn") from exc
        _check_name("name", name)
        _check_name("schema", schema)
        if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
            raise ConnectorError(
                f"schema name longer than {MAX_IDENTIFIER_BYTES} bytes", reason="options"
            )
        for contract in contracts:
            _check_name("contract", contract)
        self.name = name
        self.schema = schema
        self.contracts: tuple[str, ...] = tuple(sorted(set(contracts)))
        self._contract_set = frozenset(self.contracts)
        self._conninfo = make_conninfo(
            "",
            **{
                **DEFAULT_CONNECTION_OPTIONS,
                "application_name": f"kyodo-mirror-{name}"[:MAX_IDENTIFIER_BYTES],
                **options,
            },
        )
        self._sql = _Statements(schema)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    # -- connection -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (waiting for a batch under way in another thread)."""
        with self._lock:
            self._drop_connection()

    def __enter__(self) -> PostgresMirror:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The connection, exclusively; driver errors that retrying cannot cure become
        ConnectorError, and a failed connection is dropped to be reopened next time."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._conninfo, autocommit=True)
                yield self._conn
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._drop_connection()
                config = _config_error(exc)
                if config is not None:
                    raise config from exc
                raise

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- the three database operations ------------------------------------------------

    def setup(self) -> None:
        """Create the schema, tables and indexes if missing, and register this mirror's
        checkpoint row with its contract set. Idempotent.

        Raises ConnectorError (``contracts``) if the mirror was set up with another
        contract set, or another mirror in the schema mirrors one of the same
        contracts; (``permission``) if the role may not create them.
        """
        with self._session() as conn, conn.transaction():
            conn.execute(self._sql.lock_setup, (_lock_key(self.schema),))
            for statement in self._sql.create:
                conn.execute(statement)
            registered = {
                name: tuple(contracts)
                for name, contracts in conn.execute(self._sql.registrations).fetchall()
            }
            self._check_registrations(registered)
            if self.name not in registered:
                conn.execute(self._sql.register, (self.name, list(self.contracts)))

    def checkpoint(self) -> Position | None:
        """The position of the last item applied, or None if nothing has been applied."""
        with self._session() as conn:
            row = conn.execute(self._sql.checkpoint, (self.name,)).fetchone()
        if row is None or row[0] is None:
            return None
        return (row[0], row[1], row[2])

    def apply(self, events: Sequence[LedgerEvent]) -> int:
        """Write ``events`` (in ledger order) in one transaction, with the checkpoint.

        Items at or before the stored checkpoint are skipped (they were applied
        before: redelivery is harmless); of the others, the events and state changes
        of the chosen contracts are written, and the checkpoint moves to the last
        item's position. Returns the rows written to ``events`` and ``state_changes``.
        """
        items = list(events)
        if not items:
            return 0
        check_order(items)
        with self._session() as conn, conn.transaction():
            row = conn.execute(self._sql.lock_checkpoint, (self.name,)).fetchone()
            if row is None:
                raise ConnectorError(
                    f"mirror {self.name!r} is not set up in schema {self.schema!r}: "
                    "call setup() first",
                    reason="not_set_up",
                )
            self._check_contracts(tuple(row[0]))
            stored = None if row[1] is None else (row[1], row[2], row[3])
            fresh = [item for item in items if is_after(item.position, stored)]
            if not fresh:
                return 0
            written = self._write_rows(conn, compute_rows(fresh, self._contract_set))
            last = fresh[-1].position
            assert stored is None or last > stored
            saved = conn.execute(self._sql.save_checkpoint, (*last, self.name))
            assert saved.rowcount == 1, saved.rowcount
        return written

    def _write_rows(self, conn: psycopg.Connection[tuple[Any, ...]], rows: MirrorRows) -> int:
        """Execute the batch's inserts, upserts and deletions; the rows added."""
        with conn.cursor() as cur:
            if rows.events:
                cur.executemany(self._sql.insert_event, rows.events)
            if rows.changes:
                cur.executemany(self._sql.insert_change, rows.changes)
            if rows.upserts:
                cur.executemany(self._sql.upsert_state, rows.upserts)
            if rows.deletes:
                cur.executemany(self._sql.delete_state, rows.deletes)
        return len(rows.events) + len(rows.changes)

    def _check_registrations(self, registered: dict[str, tuple[str, ...]]) -> None:
        """Refuse a changed contract set, or one that overlaps another mirror's."""
        if self.name in registered:
            self._check_contracts(registered[self.name])
        for other, contracts in registered.items():
            if other == self.name:
                continue
            overlap = not contracts or not self.contracts or set(contracts) & set(self.contracts)
            if overlap:
                raise ConnectorError(
                    f"mirror {other!r} in schema {self.schema!r} already mirrors "
                    f"{_describe(contracts)}; {self.name!r} would write the same rows: "
                    "give it another schema",
                    reason="contracts",
                )

    def _check_contracts(self, registered: tuple[str, ...]) -> None:
        if tuple(sorted(registered)) != self.contracts:
            raise ConnectorError(
                f"mirror {self.name!r} was set up for {_describe(registered)}, not "
                f"{_describe(self.contracts)}: items before its checkpoint would be "
                "missing; use a new name and schema",
                reason="contracts",
            )

    # -- the run loop -----------------------------------------------------------------

    async def run(
        self,
        source: Source,
        *,
        batch_max: int = 500,
        linger_s: float = 0.2,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[MirrorProgress], object] | None = None,
        backoff_max_s: float = 5.0,
        retry_limit_s: float = 600.0,
    ) -> None:
        """Mirror ``source`` until it ends, ``stop`` is set, or the task is cancelled.

        Sets up the tables, starts ``source`` after the stored checkpoint, and applies
        its items in batches: a batch is written when it holds ``batch_max`` items or
        no item came for ``linger_s`` seconds. A transient failure (PostgreSQL down,
        a connection cut) is retried with a backoff doubling up to ``backoff_max_s``;
        after ``retry_limit_s`` seconds of failures in a row the driver's error is
        raised. ``on_progress`` is called after each batch. When ``stop`` is set the
        batch collected so far is written (unless PostgreSQL is unreachable) and
        run() returns. When the task is cancelled, a batch being written is let
        finish, so nothing of this mirror is in flight once run() has returned.

        Raises ConnectorError for a configuration error, and what ``source`` raises
        (after writing the items it yielded before).
        """
        if not 1 <= batch_max <= MAX_BATCH:
            raise ConnectorError(f"batch_max must be in 1..{MAX_BATCH}", reason="options")
        if linger_s < 0 or backoff_max_s < BACKOFF_INITIAL_S or retry_limit_s < 0:
            raise ConnectorError(
                f"linger_s and retry_limit_s must be >= 0, backoff_max_s >= {BACKOFF_INITIAL_S}",
                reason="options",
            )

        async def call(fn: Callable[[], T]) -> T:
            return await self._call_retrying(fn, stop, backoff_max_s, retry_limit_s)

        try:
            await call(self.setup)
            after = await call(self.checkpoint)
        except _Stopped:
            return
        log.info("mirror_started", name=self.name, schema=self.schema, after=after)
        queue: asyncio.Queue[LedgerEvent | _StreamEnd] = asyncio.Queue(maxsize=batch_max)
        pump = asyncio.create_task(_pump(source, after, queue))
        try:
            while True:
                batch, end = await _collect(queue, batch_max, linger_s, stop)
                if batch:
                    rows = await call(functools.partial(self.apply, batch))
                    # committed: let the stream move on (its window of unacknowledged
                    # items is flow control; the checkpoint of record is PostgreSQL's)
                    acked = batch[-1].ack()
                    if inspect.isawaitable(acked):
                        await acked
                    if on_progress is not None:
                        on_progress(
                            MirrorProgress(
                                checkpoint=batch[-1].position, items=len(batch), rows=rows
                            )
                        )
                if end is not None and end.error is not None:
                    raise end.error
                if end is not None or (stop is not None and stop.is_set()):
                    return
        except _Stopped:
            return
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _call_retrying(
        self,
        fn: Callable[[], T],
        stop: asyncio.Event | None,
        backoff_max_s: float,
        retry_limit_s: float,
    ) -> T:
        """Run ``fn`` in a thread until it does not fail transiently; raise _Stopped if
        ``stop`` is set while waiting to retry."""
        delay_s = BACKOFF_INITIAL_S
        first_failure = None
        while True:
            try:
                return await _in_thread(fn)
            except psycopg.OperationalError as exc:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure >= retry_limit_s:
                    raise
                log.warning(
                    "postgres_unavailable", name=self.name, error=str(exc), retry_in_s=delay_s
                )
            if await _wait_stop(stop, delay_s):
                raise _Stopped
            delay_s = min(delay_s * 2, backoff_max_s)


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConnectorError(
            f"{what} must be a non-empty string without NUL characters", reason="options"
        )


def _describe(contracts: Sequence[str]) -> str:
    return "every contract" if not contracts else "contracts " + ", ".join(contracts)


async def _in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread. If the caller is cancelled, wait for the thread to
    finish before passing the cancellation on: a batch is never left being written."""
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


async def _wait_stop(stop: asyncio.Event | None, timeout_s: float) -> bool:
    """Wait ``timeout_s`` seconds, or less if ``stop`` is set; whether it is set."""
    if stop is None:
        await asyncio.sleep(timeout_s)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
    return stop.is_set()


async def _pump(
    source: Source, after: Position | None, queue: asyncio.Queue[LedgerEvent | _StreamEnd]
) -> None:
    """Copy the stream into ``queue`` (bounded: the stream waits while it is full), then
    a _StreamEnd. Reading the stream in its own task lets the batcher time out on the
    queue, never inside the stream."""
    stream = None
    last = after
    try:
        stream = source(after)
        async for item in stream:
            # a stream that reconnects (failover) resumes after its last acknowledged
            # item, so items already queued come again: pass each position once, in order
            if last is not None and item.position <= last:
                continue
            last = item.position
            await queue.put(item)
    except Exception as exc:
        await queue.put(_StreamEnd(exc))
    else:
        await queue.put(_StreamEnd(None))
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _collect(
    queue: asyncio.Queue[LedgerEvent | _StreamEnd],
    batch_max: int,
    linger_s: float,
    stop: asyncio.Event | None,
) -> tuple[list[LedgerEvent], _StreamEnd | None]:
    """The next batch: up to ``batch_max`` items, ended early when no item comes for
    ``linger_s``, when ``stop`` is set, or by the end of the stream (returned)."""
    batch: list[LedgerEvent] = []
    while len(batch) < batch_max:
        if stop is not None and stop.is_set():
            break
        item = await _next_item(queue, linger_s if batch else None, stop)
        if item is None:
            if batch:
                break
            continue
        if isinstance(item, _StreamEnd):
            return batch, item
        batch.append(item)
    return batch, None


async def _next_item(
    queue: asyncio.Queue[T], timeout_s: float | None, stop: asyncio.Event | None
) -> T | None:
    """The next queued item; None if ``timeout_s`` passes or ``stop`` is set first."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    waiters: set[asyncio.Future[Any]] = {getter}
    if stop is not None:
        waiters.add(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = [w for w in waiters if not w.done()]
        for waiter in pending:
            # a cancelled Queue.get leaves its item in the queue
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None
