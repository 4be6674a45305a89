"""Faults in a node's own store, as the checks name them: each names what to repair
(the writes index against the history; a damaged flat-state record by its key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kyodo.codec import encode_value
from kyodo.ledger import LedgerStore, StoredDataError, encode_state_key
from kyodo.ledger._integrity import IntegrityFault, check_writes_index
from kyodo.node._integrity import repair_tx_index
from kyodo.node._node import _as_fault
from tests._factories import append_genesis, append_writes, make_network


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    db = LedgerStore(tmp_path / "db")
    yield db
    db.close()


@pytest.mark.parametrize(
    "forge",
    ["omitted", "repeated", "reordered", "foreign"],
)
def test_the_verifier_finds_every_kind_of_forged_writes_entry(
    store: LedgerStore, forge: str
) -> None:
    """A write left out is invisible to ``get_writes`` (everything it lists exists); the
    whole-index check counts against the history and finds it, like the others."""
    net = make_network()
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1, ("kv", "b"): 2}, {("kv", "a"): None})
    append_writes(store, net, {("other", "z"): 3})
    assert check_writes_index(store, 2) == 4
    a, b = encode_state_key("kv", "a"), encode_state_key("kv", "b")
    entry = {
        "omitted": [[a, 0], [a, 1]],
        "repeated": [[a, 0], [a, 0], [b, 0], [a, 1]],
        "reordered": [[b, 0], [a, 0], [a, 1]],
        "foreign": [[a, 0], [b, 0], [a, 1], [encode_state_key("other", "z"), 1]],
    }[forge]
    store.put_raw("writes", (1).to_bytes(8, "big"), encode_value(entry))
    with pytest.raises(IntegrityFault) as found:
        check_writes_index(store, 2)
    assert found.value.fault.kind == "writes"
    store.rebuild_writes()  # the repair: rebuilt from the history, then clean
    assert check_writes_index(store, 2) == 4


def test_an_undecodable_state_record_is_a_state_fault_with_its_key(store: LedgerStore) -> None:
    """Met by consensus (a block's execution reads it), a damaged flat-state record
    names its key, so the node repairs that record; a fault with no place to check
    would be called repaired at once and come back for ever."""
    net = make_network()
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1})
    key = encode_state_key("kv", "a")
    store.put_raw("state", key, b"\xff\x00")
    with pytest.raises(StoredDataError) as damaged:
        store.get_state("kv", "a")
    assert damaged.value.state_key == key
    fault = _as_fault(damaged.value).fault
    assert (fault.kind, fault.key) == ("state", key)


def test_a_malformed_transaction_index_entry_is_a_fault_with_its_id(store: LedgerStore) -> None:
    """Read by the duplicate check of every block, a damaged index entry used to stop
    the node (an unpacking error); it is a ``txindex`` fault the node repairs."""
    net = make_network()
    append_genesis(store, net)
    block = append_writes(store, net, {("kv", "a"): 1})
    tx_id = block.txs[0].tx_id()
    store.put_raw("txindex", tx_id, b"\x00\x01")
    with pytest.raises(StoredDataError) as damaged:
        store.get_tx_location(tx_id)
    fault = _as_fault(damaged.value).fault
    assert (fault.kind, fault.key) == ("txindex", tx_id)
    assert repair_tx_index(store, tx_id) and store.get_tx_location(tx_id) == (1, 0)
