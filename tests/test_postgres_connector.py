"""The PostgreSQL mirror against a real PostgreSQL server (tests/postgres.py).

Streams are synthetic: lists of LedgerEvent built here, served by an in-memory
source with the SDK's interface (``source(after)`` yields the items after
``after``). The oracle for "exactly once" is a clean pass: the same items applied
in one batch to a fresh schema; every other way of delivering them must leave
the same tables.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from kyodo.client._events import LedgerEvent
from kyodo.connectors import ConnectorError, MirrorProgress, PostgresMirror
from kyodo.connectors.postgres import is_after, to_json
from tests.postgres import PostgresServer, postgres_dsn, postgres_server

__all__ = ["postgres_dsn", "postgres_server"]  # the fixtures, imported to be found

Position = tuple[int, int, int]
TIMEOUT_S = 30.0
_schemas = itertools.count()


def fresh_schema(label: str = "t") -> str:
    """A schema name no other test uses."""
    return f"{label}_{os.getpid()}_{next(_schemas)}"


def item(
    kind: str,
    position: Position,
    *,
    contract: str = "bank",
    name: str = "",
    key: str = "",
    payload: Any = None,
) -> LedgerEvent:
    height, tx_index, index = position
    return LedgerEvent(
        kind=kind,
        height=height,
        tx_index=tx_index,
        index=index,
        tx_id="" if tx_index < 0 else f"{height:04x}{tx_index:04x}" * 4,
        contract=contract,
        name=name,
        key=key,
        payload=payload,
        status="OK" if kind == "transaction" else "",
        message="",
        timestamp_ms=1_767_225_600_000 + height * 250,
        idempotency_key=f"{kind}:{height}:{tx_index}:{index}",
    )


def make_stream(blocks: int = 12) -> list[LedgerEvent]:
    """A ledger of ``blocks`` blocks, three transactions each: a block item, then per
    transaction a state write or deletion in ``bank``, a ``bank`` event with bytes in
    its payload, a ``notes`` write and event, and the transaction item."""
    items: list[LedgerEvent] = []
    for h in range(1, blocks + 1):
        items.append(item("block", (h, -1, 0), contract="", payload={"tx_count": 3}))
        for t in range(3):
            account = f"acct-{(h + t) % 5}"
            value = None if (h + t) % 7 == 0 else {"balance": h * 10 + t, "owner": f"org{t}"}
            items += [
                item("state", (h, t, 0), key=account, payload=value),
                item(
                    "event",
                    (h, t, 1),
                    name="Transferred",
                    payload={"to": account, "amount": h, "memo": bytes([h, t, 0, 255])},
                ),
                item("state", (h, t, 2), contract="notes", key=f"n{t}", payload=f"note {h}"),
                item("event", (h, t, 3), contract="notes", name="Noted", payload=[h, t, None]),
                item("transaction", (h, t, 4), name="transfer", payload=True),
            ]
    return items


class ListSource:
    """A stream over a fixed list: yields the items after ``after``, then either ends
    or waits forever for more, like the SDK's stream at the ledger's tip."""

    def __init__(self, items: Sequence[LedgerEvent], *, forever: bool = True) -> None:
        self.items = list(items)
        self.forever = forever
        self.calls: list[Position | None] = []

    def __call__(self, after: Position | None) -> AsyncIterator[LedgerEvent]:
        self.calls.append(after)
        return self._stream(after)

    async def _stream(self, after: Position | None) -> AsyncIterator[LedgerEvent]:
        for it in self.items:
            if is_after(it.position, after):
                yield it
        if self.forever:
            await asyncio.Event().wait()


class FeedSource:
    """A stream the test feeds item by item while run() reads it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[LedgerEvent] = asyncio.Queue()
        self.calls: list[Position | None] = []

    def feed(self, items: Sequence[LedgerEvent]) -> None:
        for it in items:
            self.queue.put_nowait(it)

    def __call__(self, after: Position | None) -> AsyncIterator[LedgerEvent]:
        self.calls.append(after)
        return self._stream(after)

    async def _stream(self, after: Position | None) -> AsyncIterator[LedgerEvent]:
        while True:
            it = await self.queue.get()
            if is_after(it.position, after):
                yield it


class Progress:
    """Collects on_progress reports; lets a test wait for a checkpoint."""

    def __init__(self) -> None:
        self.reports: list[MirrorProgress] = []
        self.changed = asyncio.Event()

    def __call__(self, report: MirrorProgress) -> None:
        self.reports.append(report)
        self.changed.set()

    async def wait_checkpoint(self, position: Position, timeout_s: float = TIMEOUT_S) -> None:
        async def reached() -> None:
            while not (self.reports and self.reports[-1].checkpoint >= position):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(reached(), timeout_s)


def dump(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the mirror's tables, in key order (``updated_at`` left out)."""
    queries = {
        "events": "SELECT * FROM {}.events ORDER BY idempotency_key",
        "state": "SELECT * FROM {}.state ORDER BY contract, key",
        "state_changes": "SELECT * FROM {}.state_changes ORDER BY idempotency_key",
        "checkpoints": "SELECT name, contracts, height, tx_index, idx FROM {}.checkpoints"
        " ORDER BY name",
    }
    with psycopg.connect(dsn) as conn:
        return {
            table: conn.execute(sql.SQL(query).format(sql.Identifier(schema))).fetchall()
            for table, query in queries.items()
        }


def clean_pass(
    dsn: str, items: Sequence[LedgerEvent], contracts: Sequence[str] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """The tables after applying ``items`` in one batch to a fresh schema."""
    schema = fresh_schema("ref")
    try:
        with PostgresMirror(dsn, schema=schema, contracts=contracts) as mirror:
            mirror.setup()
            mirror.apply(items)
        return dump(dsn, schema)
    finally:
        drop_schema(dsn, schema)


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def run_until(
    mirror: PostgresMirror,
    source: Callable[[Position | None], AsyncIterator[LedgerEvent]],
    last: Position,
    **options: Any,
) -> Progress:
    """Run the mirror until its checkpoint reaches ``last``, then stop it."""

    async def main() -> Progress:
        progress = Progress()
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(source, stop=stop, on_progress=progress, **options))
        await progress.wait_checkpoint(last)
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)
        return progress

    return asyncio.run(main())


# -- tables and batches ---------------------------------------------------------------


def test_setup_is_idempotent_and_quotes_the_schema_name(postgres_dsn: str) -> None:
    schema = fresh_schema('Odd "schema"; DROP')
    with PostgresMirror(postgres_dsn, schema=schema, contracts=["bank"]) as mirror:
        mirror.setup()
        mirror.setup()
        assert mirror.checkpoint() is None
    with PostgresMirror(postgres_dsn, schema=schema, contracts=["bank"]) as again:
        again.setup()
        assert again.checkpoint() is None
    tables = dump(postgres_dsn, schema)
    assert tables["checkpoints"] == [("default", ["bank"], None, None, None)]
    assert all(not rows for table, rows in tables.items() if table != "checkpoints")


def test_apply_writes_events_state_and_state_changes(postgres_dsn: str) -> None:
    items = make_stream()
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        mirror.setup()
        written = mirror.apply(items)
        assert mirror.checkpoint() == items[-1].position
    events = [it for it in items if it.kind == "event"]
    changes = [it for it in items if it.kind == "state"]
    assert written == len(events) + len(changes)

    tables = dump(postgres_dsn, schema)
    assert [row[0] for row in tables["events"]] == sorted(e.idempotency_key for e in events)
    first = next(row for row in tables["events"] if row[0] == "event:1:0:1")
    _key, height, tx_index, idx, tx_id, contract, name, payload, block_time = first
    assert (height, tx_index, idx, contract, name) == (1, 0, 1, "bank", "Transferred")
    assert tx_id == items[2].tx_id
    assert payload == {"to": "acct-1", "amount": 1, "memo": {"$bytes": "AQAA/w=="}}
    assert block_time.timestamp() * 1000 == items[2].timestamp_ms

    model: dict[tuple[str, str], LedgerEvent] = {}
    for change in changes:
        model[(change.contract, change.key)] = change
    expected_state = sorted(
        (c, k, to_json(it.payload), it.height, it.tx_id)
        for (c, k), it in model.items()
        if it.payload is not None
    )
    assert tables["state"] == expected_state
    assert len(tables["state_changes"]) == len(changes)
    assert tables["checkpoints"] == [("default", [], *items[-1].position)]


def test_a_redelivered_overlapping_batch_writes_nothing_twice(postgres_dsn: str) -> None:
    items = make_stream()
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        mirror.setup()
        mirror.apply(items[:40])
        before = dump(postgres_dsn, schema)
        with psycopg.connect(postgres_dsn) as conn:
            stamp = sql.SQL("SELECT updated_at FROM {}.checkpoints").format(sql.Identifier(schema))
            updated_at = conn.execute(stamp).fetchall()
        assert mirror.apply(items[10:40]) == 0
        assert mirror.apply(items[:1]) == 0
        assert dump(postgres_dsn, schema) == before
        with psycopg.connect(postgres_dsn) as conn:
            assert conn.execute(stamp).fetchall() == updated_at

        fresh = [it for it in items[40:60] if it.kind in ("event", "state")]
        assert mirror.apply(items[20:60]) == len(fresh)
        mirror.apply(items)
    assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items)


def test_a_deletion_removes_the_key_and_is_recorded(postgres_dsn: str) -> None:
    items = [
        item("state", (1, 0, 0), key="k", payload={"v": 1}),
        item("state", (2, 0, 0), key="k", payload=None),
        item("state", (3, 0, 0), key="gone-in-one-batch", payload=1),
        item("state", (3, 0, 1), key="gone-in-one-batch", payload=None),
    ]
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        mirror.setup()
        mirror.apply(items[:1])
        assert dump(postgres_dsn, schema)["state"] == [("bank", "k", {"v": 1}, 1, items[0].tx_id)]
        mirror.apply(items[1:])
    tables = dump(postgres_dsn, schema)
    assert tables["state"] == []
    deleted = {row[0]: (row[3], row[4]) for row in tables["state_changes"]}
    assert deleted == {
        "state:1:0:0": ({"v": 1}, False),
        "state:2:0:0": (None, True),
        "state:3:0:0": (1, False),
        "state:3:0:1": (None, True),
    }


def test_only_the_chosen_contracts_are_mirrored(postgres_dsn: str) -> None:
    items = [*make_stream(4), item("event", (5, 0, 0), contract="notes", name="Last")]
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema, contracts=["bank"]) as mirror:
        mirror.setup()
        mirror.apply(items)
        # the last item is another contract's: the checkpoint still moves past it
        assert mirror.checkpoint() == (5, 0, 0)
    tables = dump(postgres_dsn, schema)
    assert {row[5] for row in tables["events"]} == {"bank"}
    assert {row[0] for row in tables["state"]} == {"bank"}
    assert {row[1] for row in tables["state_changes"]} == {"bank"}


def test_two_writers_with_the_same_name_write_each_item_once(postgres_dsn: str) -> None:
    items = make_stream()
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as setup:
        setup.setup()
    mirrors = [PostgresMirror(postgres_dsn, schema=schema) for _ in range(2)]
    try:

        def deliver(mirror: PostgresMirror, step: int) -> None:
            for end in range(step, len(items) + step, step):
                mirror.apply(items[max(0, end - 2 * step) : end])

        with ThreadPoolExecutor(max_workers=2) as pool:
            done = [
                pool.submit(deliver, mirror, step)
                for mirror, step in zip(mirrors, (7, 11), strict=True)
            ]
            for future in done:
                future.result(timeout=TIMEOUT_S)
    finally:
        for mirror in mirrors:
            mirror.close()
    assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items)


def test_bytes_payloads_round_trip_as_tagged_base64(postgres_dsn: str) -> None:
    raw = bytes(range(256))
    items = [
        item("event", (1, 0, 0), name="Raw", payload=raw),
        item("state", (1, 0, 1), key="blob", payload={"nested": [b"", b"\x00\x01", "text"]}),
    ]
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        mirror.setup()
        mirror.apply(items)
    tables = dump(postgres_dsn, schema)
    stored = tables["events"][0][7]
    assert stored == {"$bytes": base64.b64encode(raw).decode()}
    assert base64.b64decode(stored["$bytes"]) == raw
    assert tables["state"][0][2] == {"nested": [{"$bytes": ""}, {"$bytes": "AAE="}, "text"]}


# -- configuration errors -------------------------------------------------------------


def test_configuration_errors_are_typed(postgres_dsn: str) -> None:
    schema = fresh_schema()
    with pytest.raises(ConnectorError) as bad_dsn:
        PostgresMirror("host=localhost port", schema=schema)
    assert bad_dsn.value.reason == "dsn"
    with pytest.raises(ConnectorError) as options:
        PostgresMirror(postgres_dsn, schema="")
    assert options.value.reason == "options"

    with PostgresMirror(postgres_dsn, schema=schema) as not_set_up:
        with pytest.raises(ConnectorError) as missing:
            not_set_up.checkpoint()
        assert missing.value.reason == "not_set_up"

    missing_db = postgres_dsn.replace("dbname=postgres", "dbname=no_such_db")
    with PostgresMirror(missing_db, schema=schema) as nowhere:
        with pytest.raises(ConnectorError) as refused:
            nowhere.setup()
        assert refused.value.reason == "connection"
        with pytest.raises(ConnectorError):
            asyncio.run(nowhere.run(ListSource([])))

    with PostgresMirror(postgres_dsn, schema=schema, contracts=["bank"]) as mirror:
        mirror.setup()
        with pytest.raises(ConnectorError) as order:
            mirror.apply([item("event", (2, 0, 0)), item("event", (1, 0, 0))])
        assert order.value.reason == "order"
        with pytest.raises(ConnectorError) as nul:
            mirror.apply([item("event", (1, 0, 0), payload="a\x00b")])
        assert nul.value.reason == "payload"
        assert mirror.checkpoint() is None
    with PostgresMirror(postgres_dsn, schema=schema, contracts=["bank", "notes"]) as changed:
        with pytest.raises(ConnectorError) as contracts:
            changed.setup()
        assert contracts.value.reason == "contracts"
    with PostgresMirror(postgres_dsn, schema=schema, name="second") as overlapping:
        with pytest.raises(ConnectorError) as overlap:
            overlapping.setup()
        assert overlap.value.reason == "contracts"
    with PostgresMirror(postgres_dsn, schema=schema, name="second", contracts=["notes"]) as ok:
        ok.setup()


# -- the run loop ---------------------------------------------------------------------


def test_run_mirrors_a_stream_and_resumes_after_its_checkpoint(postgres_dsn: str) -> None:
    items = make_stream()
    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        source = ListSource(items[:50])
        run_until(mirror, source, items[49].position, batch_max=7, linger_s=0.01)
        again = ListSource(items)
        progress = run_until(mirror, again, items[-1].position, batch_max=500, linger_s=0.01)
    assert source.calls == [None]
    assert again.calls == [items[49].position]
    assert sum(report.items for report in progress.reports) == len(items) - 50
    assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items)


def test_run_writes_what_a_failing_source_yielded_then_raises(postgres_dsn: str) -> None:
    items = make_stream(3)

    async def failing(after: Position | None) -> AsyncIterator[LedgerEvent]:
        for it in items:
            yield it
        raise RuntimeError("stream broken")

    schema = fresh_schema()
    with PostgresMirror(postgres_dsn, schema=schema) as mirror:
        with pytest.raises(RuntimeError, match="stream broken"):
            asyncio.run(mirror.run(failing, batch_max=1000, linger_s=5.0))
        assert mirror.checkpoint() == items[-1].position
        finite = ListSource(items, forever=False)
        asyncio.run(mirror.run(finite))  # returns when the stream ends
        assert finite.calls == [items[-1].position]


def test_a_crash_between_batches_resumes_at_the_stored_checkpoint(postgres_dsn: str) -> None:
    items = make_stream()
    schema = fresh_schema()

    async def crash() -> Position | None:
        with PostgresMirror(postgres_dsn, schema=schema) as first:
            progress = Progress()
            task = asyncio.create_task(
                first.run(ListSource(items), batch_max=5, linger_s=0.01, on_progress=progress)
            )
            await progress.wait_checkpoint(items[9].position)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return first.checkpoint()

    stored = asyncio.run(crash())
    assert stored is not None and items[9].position <= stored < items[-1].position
    with PostgresMirror(postgres_dsn, schema=schema) as second:
        replay = ListSource(items)
        run_until(second, replay, items[-1].position, batch_max=5, linger_s=0.01)
    assert replay.calls == [stored]
    assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items)


def test_postgres_restarting_under_a_running_mirror_loses_and_duplicates_nothing(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    items = make_stream(16)
    half = len(items) // 2
    schema = fresh_schema()

    async def main(mirror: PostgresMirror, logs: list[MutableMapping[str, Any]]) -> None:
        feed = FeedSource()
        progress = Progress()
        stop = asyncio.Event()
        task = asyncio.create_task(
            mirror.run(
                feed, batch_max=10, linger_s=0.01, stop=stop, on_progress=progress,
                backoff_max_s=0.2,
            )
        )  # fmt: skip
        feed.feed(items[:half])
        await progress.wait_checkpoint(items[half - 1].position)
        await asyncio.to_thread(postgres_server.stop)
        feed.feed(items[half:])

        async def failed_once() -> None:
            while not any(entry["event"] == "postgres_unavailable" for entry in logs):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(failed_once(), TIMEOUT_S)
        assert progress.reports[-1].checkpoint == items[half - 1].position
        await asyncio.to_thread(postgres_server.start)
        await progress.wait_checkpoint(items[-1].position)
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)
        assert feed.calls == [None]

    try:
        with (
            PostgresMirror(postgres_dsn, schema=schema) as mirror,
            structlog.testing.capture_logs() as logs,
        ):
            asyncio.run(main(mirror, logs))
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
    assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items)


# -- property: batching and redelivery do not matter ----------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["event", "state", "state", "transaction"]),
        st.sampled_from(["bank", "notes"]),
        st.sampled_from(["a", "b", "c"]),
        VALUES,
    ),
    min_size=1,
    max_size=30,
)


def stream_of(ops: list[tuple[str, str, str, Any]]) -> list[LedgerEvent]:
    """Items at strictly increasing positions: two transactions of two items per block."""
    return [
        item(kind, (1 + i // 4, (i // 2) % 2, i % 2), contract=contract, key=key, payload=value)
        for i, (kind, contract, key, value) in enumerate(ops)
    ]


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=OPS, contracts=st.sampled_from([(), ("bank",)]), data=st.data())
def test_any_batching_with_redeliveries_equals_one_pass(
    postgres_dsn: str,
    ops: list[tuple[str, str, str, Any]],
    contracts: tuple[str, ...],
    data: st.DataObject,
) -> None:
    items = stream_of(ops)
    schema = fresh_schema("prop")
    try:
        with PostgresMirror(postgres_dsn, schema=schema, contracts=contracts) as mirror:
            mirror.setup()
            delivered = 0
            while delivered < len(items):
                # a batch starts anywhere up to what was delivered (a redelivery
                # overlaps it) and ends anywhere after its start
                start = data.draw(st.integers(0, delivered), label="start")
                end = data.draw(st.integers(start + 1, len(items)), label="end")
                mirror.apply(items[start:end])
                delivered = max(delivered, end)
            assert mirror.checkpoint() == items[-1].position
        assert dump(postgres_dsn, schema) == clean_pass(postgres_dsn, items, contracts)
    finally:
        drop_schema(postgres_dsn, schema)
