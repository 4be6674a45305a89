"""Deployed contracts on a real 4-organization network: lifecycle, load, determinism.

Each test drives real node processes over mutual TLS through the ``kyodo``
command or the SDK, as an operator or an application would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kyodo.cli._lifecycle import Lifecycle, build_package
from kyodo.cli._network import LocalNetwork, hash_seed_of
from kyodo.client import AccessDenied, ContractFailed
from kyodo.codec import decode_record
from kyodo.ledger import Block
from tests.integration.conftest import wait_converged, wait_until
from tests.integration.test_network import KYODO, kyodo

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TOKEN = SAMPLES / "cash" / "cash.py"
PAYMENTS = SAMPLES / "payments" / "payments.py"


def deploy(net: LocalNetwork, source: Path, *, name: str, version: str = "1.0.0") -> dict[str, Any]:
    package = build_package(source, name=name, version=version)
    return Lifecycle(net).deploy_everywhere(package, lambda _m: None)


def test_governed_deploy_through_the_cli_says_who_is_missing(network, tmp_path):
    folder = network.folder
    pkg = tmp_path / "payments.kpkg"
    made = subprocess.run(
        [*KYODO, "contract", "package", str(PAYMENTS), "--out", str(pkg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    digest = json.loads(made.stdout)["hash"]
    approved = kyodo("contract", "approve", str(pkg), "--org", "org1", "--json", folder=folder)
    assert approved.returncode == 0, approved.stderr
    status = json.loads(approved.stdout)
    assert status["approved_by"] == ["org1"] and status["needed"] == 3 and not status["ready"]
    assert status["hash"] == digest
    early = kyodo("contract", "commit", str(pkg), folder=folder)
    assert early.returncode == 1
    assert "1 of 3 approvals" in early.stderr and "org2, org3, org4" in early.stderr
    more = kyodo("contract", "approve", str(pkg), "--org", "org2", "--org", "org4", folder=folder)
    assert more.returncode == 0 and "ready to commit" in more.stdout, more.stderr
    done = kyodo("contract", "commit", str(pkg), "--org", "org3", "--json", folder=folder)
    assert done.returncode == 0, done.stderr
    committed = json.loads(done.stdout)
    assert committed["approved_by"] == ["org1", "org2", "org4"] and committed["sequence"] == 1
    listed = json.loads(kyodo("contract", "list", "--json", folder=folder).stdout)
    assert {"name": "payments", "status": "active", "hash": digest}.items() <= listed[0].items()
    shown = json.loads(kyodo("contract", "show", "payments", "--json", folder=folder).stdout)
    functions = {f["function"]: f for f in shown["functions"]}
    assert functions["set_limit"]["allow"] == ["*.admin"] and functions["steps"]["read_only"]


def test_terminated_contract_answers_queries_only_and_keeps_its_history(network):
    deploy(network, TOKEN, name="old_token")
    with network.gateway("org1") as gw:
        gw.contract("old_token").submit("create_account", "t-1")
    lifecycle = Lifecycle(network)
    for org in ("org1", "org2", "org3"):
        lifecycle.approve_termination(org, "old_token")
    done = kyodo("contract", "terminate", "old_token", "--org", "org2", folder=network.folder)
    assert done.returncode == 0 and "queries only" in done.stdout, done.stderr
    with network.gateway("org1") as gw:
        token = gw.contract("old_token")
        with pytest.raises(ContractFailed) as info:
            token.submit("create_account", "t-2")
        assert info.value.code == "contract_terminated"
        assert token.evaluate("account", "t-1")["owner"] == "org1/user1"


def test_access_rules_and_resource_limits_are_typed_failures_on_the_network(network):
    deploy(network, TOKEN, name="guarded_token")
    runaway = Path(__file__).with_name("_runaway.py")
    deploy(network, runaway, name="runaway")
    with network.gateway("org2") as gw:
        with pytest.raises(AccessDenied, match=r"allows \*\.admin .* org2\.client"):
            gw.contract("guarded_token").submit("issue", "x", 1)
        with pytest.raises(ContractFailed) as info:
            gw.contract("runaway").submit("spin")
        assert info.value.code == "resource_limit" and "steps exceeded" in str(info.value)
        assert gw.contract("runaway").submit("ok") == "still here"
    wait_converged(network)


def test_upgrade_under_bench_load_fails_no_transaction_and_splits_at_one_height(network):
    deploy(network, TOKEN, name="token")
    bench = subprocess.Popen(
        [
            *KYODO,
            *("bench", "--contract", "token", "--clients", "8", "--duration", "12", "--json"),
            *("--dir", str(network.folder)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = network.status(network.nodes[0]).height
        wait_until(
            lambda: network.status(network.nodes[0]).height > start + 30,
            timeout_s=60,
            what="the bench's transfers being committed",
        )
        v2 = TOKEN.read_text().replace('VERSION = "1"', 'VERSION = "2"')
        v2_file = network.folder / "token_v2.py"
        v2_file.write_text(v2)
        v2_pkg = network.folder / "token-2.kpkg"
        packaged = subprocess.run(
            [
                *(*KYODO, "contract", "package", str(v2_file), "--name", "token"),
                *("--version", "2.0.0", "--out", str(v2_pkg)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert packaged.returncode == 0, packaged.stderr
        approved = kyodo("contract", "approve", str(v2_pkg), "--all-orgs", folder=network.folder)
        assert approved.returncode == 0 and "ready to commit" in approved.stdout, approved.stderr
        done = kyodo("contract", "upgrade", str(v2_pkg), "--json", folder=network.folder)
        assert done.returncode == 0, done.stderr
        upgraded = json.loads(done.stdout)
        assert upgraded["action"] == "upgrade" and upgraded["version"] == "2.0.0"
        out, errors = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, errors
    figures = json.loads(out)
    assert figures["failures"] == {} and figures["committed"] > 100, figures
    switch = upgraded["since_height"]
    versions_by_height: dict[int, set[str]] = {}
    with network.gateway("org1") as gw:
        tip = network.status(network.nodes[0]).height
        for height in range(max(1, switch - 15), min(tip, switch + 15) + 1):
            block = decode_record(Block, gw.block(height))
            for result in block.results:
                if isinstance(result.result, dict) and "source_balance" in result.result:
                    versions_by_height.setdefault(height, set()).add(result.result["version"])
    before = {v for h, vs in versions_by_height.items() if h < switch for v in vs}
    after = {v for h, vs in versions_by_height.items() if h >= switch for v in vs}
    assert before == {"1"} and after == {"2"}, versions_by_height


def test_1000_concurrent_instructions_read_one_master_record_without_conflict(network):
    deploy(network, PAYMENTS, name="payments_load")
    with network.gateway("org1", "admin") as admin:
        contract = admin.contract("payments_load")
        first = contract.submit_transaction("set_limit", "org2", "EUR", 1_000)
    update: dict[str, Any] = {}
    submitted = threading.Semaphore(0)

    def instruct(i: int) -> tuple[int, int, dict[str, Any]]:
        with network.gateway(network.orgs[0]) as gw:  # every payer is org1
            outcome = gw.contract("payments_load").submit_transaction(
                "submit", f"load-{i}", "org2", "EUR", 100 + i % 7, f"invoice {i}"
            )
        submitted.release()
        return outcome.height, outcome.tx_index, outcome.result

    def change_master_data() -> None:
        for _ in range(500):
            submitted.acquire()
        with network.gateway("org1", "admin") as admin:
            done = admin.contract("payments_load").submit_transaction(
                "set_limit", "org2", "EUR", 2_000
            )
        update.update(height=done.height, tx_index=done.tx_index, tx=done.tx_id)

    changer = threading.Thread(target=change_master_data)
    changer.start()
    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(instruct, range(1000)))
    changer.join(timeout=60)
    assert update, "the master-data update did not commit"
    assert len(outcomes) == 1000
    assert all(r["status"] == "pending" for _, _, r in outcomes), "an instruction failed a check"
    position = (update["height"], update["tx_index"])
    after = [r for h, i, r in outcomes if (h, i) > position]
    before = [r for h, i, r in outcomes if (h, i) < position]
    assert before and after
    assert {r["limit_seen"] for r in before} == {1_000}
    assert {r["limit_tx"] for r in before} == {first.tx_id}
    assert {r["limit_seen"] for r in after} == {2_000}
    assert {r["limit_tx"] for r in after} == {update["tx"]}
    wait_converged(network)


def test_nodes_run_with_different_hash_seeds_and_agree_on_every_state_root(network):
    seeds = set()
    for node in network.nodes:
        pid = network.pid(node)
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        seed = next(e for e in environ if e.startswith(b"PYTHONHASHSEED="))
        assert seed == f"PYTHONHASHSEED={hash_seed_of(node.node_id)}".encode()
        seeds.add(seed)
    assert len(seeds) == len(network.nodes)
    mixer = Path(__file__).with_name("_mixer.py")
    deploy(network, mixer, name="mixer")
    with network.gateway("org3") as gw:
        for i in range(5):
            words = [f"w{(i * 13 + j) % 29}" for j in range(120)]
            assert gw.contract("mixer").submit("mix", words)["distinct"] == len(set(words))
    wait_converged(network)


def test_contract_dev_reloads_on_save_and_keeps_the_state(network, tmp_path):
    source = tmp_path / "notes.py"
    source.write_text(NOTES.replace("SUFFIX", "v1"))
    dev = subprocess.Popen(
        [*KYODO, "contract", "dev", str(source), "--dir", str(network.folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: list[str] = []
    assert dev.stdout is not None
    stream = dev.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")))
    reader.start()
    lifecycle = Lifecycle(network)
    try:
        wait_until(lambda: lifecycle.definition("notes"), timeout_s=60, what="the first deploy")
        with network.gateway("org1") as gw:
            assert gw.contract("notes").submit("add", "a") == "a:v1"
        first = lifecycle.definition("notes")
        assert first is not None
        source.write_text(NOTES.replace("SUFFIX", "v2"))
        wait_until(
            lambda: (lifecycle.definition("notes") or {}).get("sequence") == 2,
            timeout_s=60,
            what="the upgrade after saving",
        )
        with network.gateway("org1") as gw:
            assert gw.contract("notes").submit("add", "b") == "b:v2"
            assert gw.contract("notes").evaluate("count") == 2  # state kept
        source.write_text(NOTES.replace("SUFFIX", "v3") + "\nimport socket\n")
        wait_until(
            lambda: any("verifier refused" in line for line in lines),
            timeout_s=30,
            what="the refusal of a bad save",
        )
        assert (lifecycle.definition("notes") or {}).get("sequence") == 2
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            dev.kill()
        reader.join(timeout=5)
        stream.close()
    assert any("socket" in line and "network access" in line for line in lines), lines


NOTES = """
from kyodo.contract import Context, Contract, function


class Notes(Contract):
    @function
    def add(self, ctx: Context, text: str) -> str:
        count = (ctx.get("count") or 0) + 1
        ctx.put("count", count)
        ctx.put(f"note/{count:06d}", text)
        return f"{text}:SUFFIX"

    @function(read_only=True)
    def count(self, ctx: Context) -> int:
        return ctx.get("count") or 0
"""

if __name__ == "__main__":  # pragma: no cover - a helper for running one test by hand
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-x"]))


def test_make_demo_payments_script_runs_the_whole_workflow(network):
    script = Path(__file__).resolve().parents[2] / "examples" / "payments_demo.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dir", str(network.folder)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "deployed, in force from block" in out or "already deployed" in out
    assert "-> pending" in out and "over the EUR limit 10000" in out
    assert "refused (only org2 may decide" in out
    assert "rejected by org2/user1 (no matching purchase order)" in out


def test_the_lifecycle_quorum_changes_by_approval_through_the_cli(network):
    # last in this module: it leaves the quorum at 4 of 4
    folder = network.folder
    shown = json.loads(kyodo("contract", "policy", "--json", folder=folder).stdout)
    assert shown == {"quorum": 3, "members": 4, "default": True}
    early = kyodo("contract", "policy", "--set", "4", folder=folder)
    assert early.returncode == 1 and "0 of 3 approvals" in early.stderr
    approved = kyodo(
        "contract", "policy", "--approve", "4", "--org", "org1", "--org", "org2",
        "--org", "org3", folder=folder,
    )  # fmt: skip
    assert approved.returncode == 0 and "ready to commit" in approved.stdout, approved.stderr
    done = kyodo("contract", "policy", "--set", "4", folder=folder)
    assert done.returncode == 0 and "is 4 organizations" in done.stdout, done.stderr
    shown = json.loads(kyodo("contract", "policy", "--json", folder=folder).stdout)
    assert shown == {"quorum": 4, "members": 4, "default": False}
