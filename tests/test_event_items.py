"""Event-stream building blocks: the store's writes index, items derived from blocks,
positions and idempotency keys, webhook signatures, consumer checkpointers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kyodo.client import FileCheckpointer, SqliteCheckpointer
from kyodo.codec import encode_value
from kyodo.events import items_of_block, sign_webhook, verify_webhook
from kyodo.ledger import LedgerStore, StoredDataError, encode_state_key
from kyodo.wire import EventFilter, check_position, idempotency_key
from tests._factories import append_genesis, append_writes, make_network


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    db = LedgerStore(tmp_path / "db")
    yield db
    db.close()


def test_writes_index_lists_each_blocks_writes_in_order(store: LedgerStore) -> None:
    net = make_network()
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1, ("kv", "b"): 2}, {("kv", "a"): None})
    writes = store.get_writes(1)
    assert writes == [
        (encode_state_key("kv", "a"), 0, 1),
        (encode_state_key("kv", "b"), 0, 2),
        (encode_state_key("kv", "a"), 1, None),
    ]
    assert store.get_writes(0) == []
    assert store.get_writes(2) is None  # no such block


def test_a_forged_writes_entry_is_a_store_fault(store: LedgerStore) -> None:
    net = make_network()
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1})
    forged = encode_value([[encode_state_key("kv", "never"), 0]])
    store.put_raw("writes", (1).to_bytes(8, "big"), forged)
    with pytest.raises(StoredDataError):
        store.get_writes(1)


def test_the_writes_index_is_rebuilt_from_the_history_byte_for_byte(
    store: LedgerStore,
) -> None:
    net = make_network()
    append_genesis(store, net)
    append_writes(store, net, {("kv", "b"): 1, ("kv", "a"): 2}, {("kv", "a"): None})
    append_writes(store, net, {("other", "z"): 3})
    before = dict(store.iter_raw("writes"))
    for key in before:  # a store from before the index: no entries, not complete
        store.delete_raw("writes", key)
    store.delete_raw("meta", b"writes_complete")
    assert not store.writes_complete() and store.get_writes(1) is None
    assert store.rebuild_writes() == 3
    assert dict(store.iter_raw("writes")) == before and store.writes_complete()
    store.delete_raw("writes", (2).to_bytes(8, "big"))  # complete, yet an entry is gone
    with pytest.raises(StoredDataError):
        store.get_writes(2)


def test_items_of_a_block_by_kind_in_position_order(store: LedgerStore) -> None:
    net = make_network()
    append_genesis(store, net)
    block = append_writes(store, net, {("kv", "a"): 1}, {("kv", "b"): 2, ("other", "c"): 3})
    writes = store.get_writes(1)
    (only,) = items_of_block(block, EventFilter(kind="blocks"), None)
    assert only.position == (1, -1, 0) and only.payload["tx_count"] == 2
    txs = items_of_block(block, EventFilter(kind="transactions"), None)
    assert [t.position for t in txs] == [(1, 0, 0), (1, 1, 0)]
    assert all(t.status == "OK" and t.name == "put" for t in txs)
    state = items_of_block(block, EventFilter(contracts=("kv",), include_state=True), writes)
    assert [(s.kind, s.key, s.payload, s.position) for s in state] == [
        ("state", "a", 1, (1, 0, 0)),
        ("state", "b", 2, (1, 1, 0)),
    ]
    after = items_of_block(block, EventFilter(include_state=True), writes, after=(1, 1, 0))
    assert [s.key for s in after] == ["c"]  # only what comes after the position
    assert items_of_block(block, EventFilter(), writes) == []  # no events, state not asked


@given(st.tuples(st.integers(0, 10**9), st.integers(-1, 10**6), st.integers(-1, 10**6)))
def test_positions_and_keys(position: tuple[int, int, int]) -> None:
    assert check_position(position) == position
    assert check_position(list(position)) == position
    key = idempotency_key("event", position)
    assert key == "event:{}:{}:{}".format(*position)


@pytest.mark.parametrize("bad", [(1, 2), (1, 2, 3, 4), (-1, 0, 0), (1, -2, 0), (1, 0, True), "x"])
def test_bad_positions_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        check_position(bad)


def test_webhook_signature_verifies_and_refuses_tampering_and_replay() -> None:
    secret = b"k" * 32
    now = int(time.time() * 1000)
    header = sign_webhook(secret, now, b'{"a":1}')
    assert verify_webhook(secret, header, b'{"a":1}')
    assert not verify_webhook(secret, header, b'{"a":2}')  # body changed
    assert not verify_webhook(b"other" * 8, header, b'{"a":1}')  # wrong secret
    old = sign_webhook(secret, now - 10 * 60_000, b'{"a":1}')
    assert not verify_webhook(secret, old, b'{"a":1}')  # too old: a replay
    assert not verify_webhook(secret, "garbage", b'{"a":1}')


def test_file_checkpointer(tmp_path: Path) -> None:
    checkpoint = FileCheckpointer(tmp_path / "cp.json")
    assert checkpoint.load() is None
    checkpoint.save((5, 2, 1))
    assert FileCheckpointer(tmp_path / "cp.json").load() == (5, 2, 1)
    with pytest.raises(ValueError):
        checkpoint.save((5, 2))  # type: ignore[arg-type]
    assert not (tmp_path / "cp.json.tmp").exists()


def test_sqlite_checkpointer_keeps_one_row_per_consumer(tmp_path: Path) -> None:
    a = SqliteCheckpointer(tmp_path / "app.db", "billing")
    b = SqliteCheckpointer(tmp_path / "app.db", "reports")
    try:
        assert a.load() is None
        a.save((3, 0, 0))
        a.save((4, 1, 2))
        b.save((1, -1, -1))
        assert a.load() == (4, 1, 2) and b.load() == (1, -1, -1)
    finally:
        a.close()
        b.close()
    again = SqliteCheckpointer(tmp_path / "app.db", "billing")
    try:
        assert again.load() == (4, 1, 2)
    finally:
        again.close()
