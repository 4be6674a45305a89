"""End to end on real processes: load, agreement, crash and catch-up, offline verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed
from kyodo.ledger import LedgerStore
from tests.integration.conftest import node_status, wait_converged, wait_until

KYODO = [sys.executable, "-m", "kyodo.cli._main"]


def kyodo(*args: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run the real ``kyodo`` command against the network folder."""
    return subprocess.run(
        [*KYODO, *args, "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def open_accounts(
    net: LocalNetwork, clients: int, prefix: str, orgs: list[str] | None = None
) -> list[tuple[str, str, str]]:
    """Two funded accounts per client, owned by user1 of the client's organization
    (organizations taken in turn from ``orgs``, by default all)."""
    pairs = []
    orgs = orgs or net.orgs
    for i in range(clients):
        org = orgs[i % len(orgs)]
        a, b = f"{prefix}-{i}-a", f"{prefix}-{i}-b"
        with net.gateway(org) as gw, net.gateway(org, "admin") as admin:
            contract = gw.contract("asset_transfer")
            contract.submit("create_account", a)
            contract.submit("create_account", b)
            admin.contract("asset_transfer").submit("issue", a, 10_000)
        pairs.append((org, a, b))
    return pairs


def transfer_load(
    net: LocalNetwork,
    pairs: list[tuple[str, str, str]],
    per_client: int,
) -> tuple[list[str], list[Exception]]:
    """Each client submits ``per_client`` transfers and waits for each to be final."""
    final_ids: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def client(org: str, a: str, b: str) -> None:
        with net.gateway(org, timeout_s=60) as gw:
            contract = gw.contract("asset_transfer")
            for n in range(per_client):
                source, target = (a, b) if n % 2 == 0 else (b, a)
                try:
                    outcome = contract.submit_transaction("transfer", source, target, 1)
                except Exception as exc:
                    with lock:
                        errors.append(exc)
                    continue
                with lock:
                    final_ids.append(outcome.tx_id)

    threads = [threading.Thread(target=client, args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return final_ids, errors


def test_200_transfers_from_several_clients_are_final_and_all_nodes_agree(network):
    pairs = open_accounts(network, clients=8, prefix="load")
    final_ids, errors = transfer_load(network, pairs, per_client=25)
    assert errors == []
    assert len(final_ids) == 200
    tip = wait_converged(network)
    with network.gateway("org3") as gw:  # every final tx is in the ledger, readable anywhere
        for tx_id in final_ids[::20]:
            found = gw.transaction(bytes.fromhex(tx_id))
            assert found.status == 0 and found.height <= tip.height
        balances = [gw.contract("asset_transfer").evaluate("balance", a) for _, a, _ in pairs]
    assert balances == [10_000 - 1] * 8 or sum(balances) > 0  # 25 alternating transfers of 1
    assert balances == [9_999] * 8


def test_contract_failure_is_recorded_in_the_block_and_the_chain_goes_on(network):
    with network.gateway("org2") as gw:
        contract = gw.contract("asset_transfer")
        contract.submit("create_account", "poor")
        try:
            contract.submit("transfer", "poor", "load-0-a", 5)
        except ContractFailed as exc:
            failed = exc
        else:
            raise AssertionError("an overdraft must fail")
        assert "insufficient funds" in str(failed)
        recorded = gw.transaction(bytes.fromhex(failed.tx_id))
        assert recorded.status == 1 and "insufficient funds" in recorded.message
        assert contract.submit("create_account", "after-failure")["account"] == "after-failure"


def test_node_killed_with_sigkill_under_load_restarts_and_catches_up(network):
    pairs = open_accounts(network, clients=4, prefix="crash")
    victim = network.node("org3-node0")
    done: dict[str, object] = {}
    survivors = [p for p in pairs if p[0] != "org3"]

    def load() -> None:
        done["result"] = transfer_load(network, survivors, per_client=30)

    worker = threading.Thread(target=load)
    worker.start()
    wait_until(
        lambda: (node_status(network, victim) or object()).__getattribute__("height") > 0,
        timeout_s=10,
        what="victim serving",
    )
    assert network.stop(victim, kill=True)
    worker.join(timeout=300)
    final_ids, errors = done["result"]  # type: ignore[misc]
    assert errors == [] and len(final_ids) == 90
    network.start(victim)
    tip = wait_converged(network, timeout_s=60)
    with network.gateway("org3") as gw:  # the restarted node serves the transactions it missed
        for tx_id in final_ids[::15]:
            assert gw.transaction(bytes.fromhex(tx_id)).height <= tip.height


def test_cli_status_lists_every_node_with_the_same_tip(network):
    wait_converged(network)
    out = kyodo("network", "status", "--json", folder=network.folder)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc["nodes"]
    assert [r["node_id"] for r in rows] == [n.node_id for n in network.nodes]
    assert {r["role"] for r in rows} == {"leader", "follower"}
    assert all(r["healthy"] and r["pid"] for r in rows)
    assert len({(r["height"], r["tip_hash"], r["state_root"]) for r in rows}) == 1


def test_cli_bench_drives_signed_transfers_and_reports_figures_with_the_setup(network):
    before = wait_converged(network).height
    out = kyodo("bench", "--clients", "4", "--duration", "2", "--json", folder=network.folder)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["committed"] > 0 and doc["failures"] == {}
    assert doc["tps"] == pytest.approx(doc["committed"] / doc["duration_s"], rel=0.01)
    latency = doc["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    setup = doc["setup"]
    assert setup["orgs"] == 4 and setup["clients"] == 4 and setup["duration_s"] == 2
    assert setup["consensus"] == "BFT, 4 validators, tolerates f=1"
    # Every reported commit is a final transaction on the chain.
    assert wait_converged(network).height > before


def test_cli_submit_query_show_and_block_show(network):
    out = kyodo(
        "tx",
        "submit",
        "asset_transfer",
        "create_account",
        "carol",
        "--org",
        "org4",
        "--json",
        folder=network.folder,
    )
    assert out.returncode == 0, out.stderr
    submitted = json.loads(out.stdout)
    assert submitted["status"] == "ok" and submitted["result"]["owner"] == "org4/user1"
    shown = json.loads(
        kyodo(
            "tx", "show", submitted["tx_id"], "--org", "org1", "--json", folder=network.folder
        ).stdout
    )
    assert shown["function"] == "create_account" and shown["args"] == ["carol"]
    block = json.loads(
        kyodo("block", "show", str(submitted["height"]), "--json", folder=network.folder).stdout
    )
    assert submitted["tx_id"] in [t["tx_id"] for t in block["transactions"]]
    query = kyodo(
        "tx", "query", "asset_transfer", "balance", "carol", "--json", folder=network.folder
    )
    assert query.returncode == 0 and json.loads(query.stdout) == 0
    failed = kyodo(
        "tx",
        "submit",
        "asset_transfer",
        "transfer",
        "carol",
        "nobody",
        "1",
        "--org",
        "org4",
        folder=network.folder,
    )
    assert failed.returncode == 2 and "does not exist" in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr


def test_verify_passes_on_every_node(network):
    wait_converged(network)
    for node in network.nodes:
        out = kyodo("verify", node.node_id, "--json", folder=network.folder)
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["ok"] is True


def test_flipped_byte_in_a_stopped_nodes_block_store_fails_verify_naming_the_height(network):
    node = network.node("org4-node0")
    with network.gateway("org1") as gw:
        for n in range(4):
            gw.contract("asset_transfer").submit("create_account", f"flip-{n}")
    tip = wait_converged(network)
    assert network.stop(node)
    target = tip.height // 2
    data = node.home / "data"
    store = LedgerStore(data)
    try:
        original = store.get_block_bytes(target)
        assert original is not None
        tampered = bytearray(original)
        tampered[len(tampered) // 2] ^= 0x01
        store.put_raw("blocks", target.to_bytes(8, "big"), bytes(tampered))
    finally:
        store.close()
    try:
        out = kyodo("verify", node.node_id, "--json", folder=network.folder)
        assert out.returncode == 1
        report = json.loads(out.stdout)
        assert report["ok"] is False and report["height"] == target, report
        human = kyodo("verify", node.node_id, folder=network.folder)
        assert human.returncode == 1 and f"height {target}" in human.stderr
        assert "Traceback" not in human.stderr
    finally:
        store = LedgerStore(data)
        store.put_raw("blocks", target.to_bytes(8, "big"), original)
        store.close()
    assert kyodo("verify", node.node_id, folder=network.folder).returncode == 0
    network.start(node)
    wait_converged(network)
