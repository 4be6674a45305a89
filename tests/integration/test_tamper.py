"""Falsified data on one node, under load (real processes): the node detects it by
itself, quarantines, repairs from its peers and ends on the same tip and state root as
the others; clients never receive the falsified value; no other node is affected.

Each case stops one node, edits its database files (with RocksDB, or raw bytes of a
table file), starts it again while the other three keep ordering a transfer load, and
watches. The time from the node's start to ``integrity_fault_detected`` is printed
(``-s``); ``bench/tamper.py`` reports the same figures.
"""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kyodo.cli._network import LocalNetwork, NodeEntry
from kyodo.client import KyodoError
from kyodo.codec import decode_value, encode, encode_value
from kyodo.ledger import LedgerStore, encode_state_key
from kyodo.ledger._verify import compute_results_root, compute_txs_root
from tests.integration.conftest import node_status, wait_converged, wait_until
from tests.integration.test_bft_network import load_in_background

VICTIM = "org2-node0"
ACCOUNT = "tamper-acct"
BALANCE = 100
FALSE_BALANCE = 1000


@pytest.fixture(scope="module")
def prepared(network: LocalNetwork) -> LocalNetwork:
    with network.gateway("org1") as gw, network.gateway("org1", "admin") as admin:
        gw.contract("asset_transfer").submit("create_account", ACCOUNT)
        admin.contract("asset_transfer").submit("issue", ACCOUNT, BALANCE)
        for i in range(6):
            gw.contract("asset_transfer").submit("create_account", f"tamper-filler-{i}")
    wait_converged(network)
    return network


def events(node: NodeEntry, names: set[str]) -> list[dict[str, Any]]:
    out = []
    for line in (node.home / "node.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") in names:
            out.append(record)
    return out


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


class Watcher:
    """Reads the victim's copy of the account through its own gateway, all along."""

    def __init__(self, network: LocalNetwork) -> None:
        self.network = network
        self.seen: set[Any] = set()
        self.errors: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        node = self.network.node(VICTIM)
        while not self._stop.is_set():
            try:
                with self.network.gateway("org2", node=node, retries=0, timeout_s=2) as gw:
                    self.seen.add(gw.contract("asset_transfer").evaluate("balance", ACCOUNT))
            except KyodoError as exc:
                self.errors.add(exc.code)
            self._stop.wait(0.05)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def tamper_and_watch(network: LocalNetwork, name: str, edit: Callable[[Path], None]) -> float:
    """Stop the victim, ``edit`` its data folder, start it under load; return the
    seconds from its start to the detection. Asserts the whole story."""
    victim = network.node(VICTIM)
    others = [n for n in network.nodes if n.node_id != VICTIM]
    before = {n.node_id: len(events(n, {"integrity_fault_detected"})) for n in network.nodes}
    seen_repairs = len(events(victim, {"integrity_repaired"}))
    assert network.stop(victim)
    edit(victim.home / "data")
    worker, out = load_in_background(
        network, [n.org_id for n in others], f"tamper-{name}", per_client=10
    )
    with Watcher(network) as watcher:
        started = time.time()
        network.start(victim)
        detected = wait_until(
            lambda: events(victim, {"integrity_fault_detected"})[before[VICTIM] :],
            timeout_s=60,
            what=f"{name}: the victim to detect the falsification",
        )

        def repaired() -> bool:
            if network.pid(victim) is None:  # damaged files met at run time: the node
                for child in network._children.values():  # stopped (status 75); started
                    child.poll()  # again, as a supervisor would, it rebuilds the store
                network.start(victim)
            return len(events(victim, {"integrity_repaired"})) > seen_repairs

        wait_until(repaired, timeout_s=90, what=f"{name}: the victim to repair itself")
        worker.join(timeout=300)
        wait_converged(network, timeout_s=60)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and final_ids, errors
    took = _ts(detected[0]) - started
    print(f"\n{name}: detected after {took:.3f} s ({detected[0].get('kind')})")
    # clients never received the falsified value (errors while it was quarantined)
    assert FALSE_BALANCE not in watcher.seen, watcher.seen
    assert watcher.seen <= {BALANCE}, watcher.seen
    assert watcher.errors <= {"quarantined", "unavailable"}, watcher.errors
    # no other node found anything, and all agree
    for node in others:
        assert len(events(node, {"integrity_fault_detected"})) == before[node.node_id]
    status = node_status(network, victim)
    assert status is not None and status.healthy, status
    with network.gateway("org2", node=victim) as gw:
        assert gw.contract("asset_transfer").evaluate("balance", ACCOUNT) == BALANCE
    return took


def _with_store(data: Path, fn: Callable[[LedgerStore], None]) -> None:
    store = LedgerStore(data)
    try:
        fn(store)
    finally:
        store.close()


def test_a_changed_state_value(prepared):
    key = encode_state_key("asset_transfer", f"account/{ACCOUNT}")

    def edit(store: LedgerStore) -> None:
        record = store.get_state_record(key)
        assert record is not None and b"\x18\x64" in record
        store.put_raw("state", key, record.replace(b"\x18\x64", b"\x19\x03\xe8"))  # 100 -> 1000

    tamper_and_watch(prepared, "state value", lambda d: _with_store(d, edit))


def test_a_changed_state_tree_node(prepared):
    def edit(store: LedgerStore) -> None:
        root = store.state_root()
        node = store.get_node(root)
        assert node is not None
        store.put_raw("tree", root, node[:-1] + bytes([node[-1] ^ 0x01]))

    tamper_and_watch(prepared, "state tree node", lambda d: _with_store(d, edit))


def test_a_deleted_block(prepared):
    tamper_and_watch(
        prepared,
        "deleted block",
        lambda d: _with_store(d, lambda s: s.delete_raw("blocks", struct.pack(">Q", 2))),
    )


def test_a_rewritten_transaction_with_its_hashes_recomputed(prepared):
    """Everything a forger without the validators' keys can recompute is recomputed:
    the transaction, its result's id, both roots. Only the certificate is left."""

    def edit(store: LedgerStore) -> None:
        block = store.get_block(2)
        assert block is not None and block.txs
        envelope = block.txs[0]
        forged = replace(
            envelope, payload=envelope.payload.replace(ACCOUNT.encode(), b"forged-acct!")
        )
        assert forged.payload != envelope.payload
        txs = (forged, *block.txs[1:])
        results = (replace(block.results[0], tx_id=forged.tx_id()), *block.results[1:])
        header = replace(
            block.header, txs_root=compute_txs_root(txs), results_root=compute_results_root(results)
        )
        store.put_raw(
            "blocks",
            struct.pack(">Q", 2),
            encode(replace(block, header=header, txs=txs, results=results)),
        )

    tamper_and_watch(prepared, "rewritten transaction", lambda d: _with_store(d, edit))


def test_a_changed_history_entry(prepared):
    key = encode_state_key("asset_transfer", f"account/{ACCOUNT}")

    def edit(store: LedgerStore) -> None:
        history_key, value = list(store.iter_raw("history", key + b"\x00"))[-1]
        assert b"\x18\x64" in value
        store.put_raw("history", history_key, value.replace(b"\x18\x64", b"\x19\x03\xe8"))

    tamper_and_watch(prepared, "history index", lambda d: _with_store(d, edit))


def test_a_write_left_out_of_the_writes_index(prepared):
    """Event streams read state changes from this index: a write left out would never
    reach a consumer. Every entry it still lists exists, so only the verifier's count
    against the history finds it; the index is rebuilt from the history."""

    def edit(store: LedgerStore) -> None:
        height = next(h for h in range(1, 20) if store.get_writes(h))
        listed = decode_value(store.get_raw("writes", struct.pack(">Q", height)))
        store.put_raw("writes", struct.pack(">Q", height), encode_value(listed[1:]))

    tamper_and_watch(prepared, "writes index", lambda d: _with_store(d, edit))


def test_a_forged_transaction_index_entry(prepared):
    """An index entry for a transaction that never happened, pointing into a real block:
    served, it would report a ghost transaction as final."""

    def edit(store: LedgerStore) -> None:
        store.put_raw("txindex", b"\x99" * 32, struct.pack(">QI", 2, 0))

    tamper_and_watch(prepared, "forged index entry", lambda d: _with_store(d, edit))
    victim = prepared.node(VICTIM)
    with prepared.gateway("org2", node=victim) as gw, pytest.raises(KyodoError) as ghost:
        gw.transaction(b"\x99" * 32)
    assert ghost.value.code == "not_found"


def test_a_flipped_byte_in_a_table_file(prepared):
    """Below the values: one bit of a RocksDB table file. RocksDB's own checksums refuse
    the read; the node sets the store aside and rebuilds it from its peers."""

    def edit(data: Path) -> None:
        tables = sorted(data.glob("*.sst"), key=lambda p: p.stat().st_size)
        assert tables
        target = tables[-1]
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 3] ^= 0x01
        target.write_bytes(bytes(raw))

    victim = prepared.node(VICTIM)
    tamper_and_watch(prepared, "flipped byte", edit)
    assert list(victim.home.glob("data.damaged-*")), "the damaged store is kept aside"


def test_a_store_rolled_back_to_an_older_copy(prepared, tmp_path):
    victim = prepared.node(VICTIM)
    assert prepared.stop(victim)
    shutil.copytree(victim.home / "data", tmp_path / "old")
    prepared.start(victim)
    with prepared.gateway("org1") as gw:
        for i in range(5):
            gw.contract("asset_transfer").submit("create_account", f"after-copy-{i}")
    wait_converged(prepared)

    def edit(data: Path) -> None:
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "old", data)

    tamper_and_watch(prepared, "rolled back store", edit)


def test_a_damaged_state_tree_met_by_consensus_before_any_verifier_pass(prepared):
    """With no background verifier, the first to meet the damaged tree is consensus
    itself, verifying the next proposal or appending the next certified block. That is
    the node's own fault, not the leader's: it quarantines, repairs, then verifies or
    appends the same block again and follows the others (an append left waiting stalls
    the node for good; a proposal refused as the leader's fault accuses an honest one)."""
    victim = prepared.node(VICTIM)
    config_file = victim.home / "node.json"
    original = config_file.read_text()
    faults = len(events(victim, {"integrity_fault_detected"}))
    repairs = len(events(victim, {"integrity_repaired"}))
    rejected = len(events(victim, {"block_rejected"}))
    assert prepared.stop(victim)
    config = json.loads(original)
    config["verify_cpu_share"] = 0  # no verifier pass: consensus meets the damage first
    config_file.write_text(json.dumps(config))

    def edit(store: LedgerStore) -> None:
        root = store.state_root()
        node = store.get_node(root)
        assert node is not None
        store.put_raw("tree", root, node[:-1] + bytes([node[-1] ^ 0x01]))

    _with_store(victim.home / "data", edit)
    try:
        prepared.start(victim)
        with prepared.gateway("org1") as gw:
            for i in range(3):
                gw.contract("asset_transfer").submit("create_account", f"consensus-meets-{i}")
        found = wait_until(
            lambda: events(victim, {"integrity_fault_detected"})[faults:],
            timeout_s=60,
            what="the victim to find the damaged tree",
        )
        assert found[0]["kind"] == "tree", found
        wait_until(
            lambda: len(events(victim, {"integrity_repaired"})) > repairs,
            timeout_s=60,
            what="the victim to repair its tree",
        )
        wait_converged(prepared, timeout_s=60)
        accused = [
            r for r in events(victim, {"block_rejected"})[rejected:] if "state node" in r["detail"]
        ]
        assert accused == [], "the node blamed a peer's block for its own damaged tree"
        with prepared.gateway("org2", node=victim) as gw:
            assert gw.contract("asset_transfer").evaluate("balance", ACCOUNT) == BALANCE
    finally:
        assert prepared.stop(victim)
        config_file.write_text(original)
        prepared.start(victim)
        wait_converged(prepared, timeout_s=60)
