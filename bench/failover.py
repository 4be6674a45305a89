"""Failover benchmark: time from SIGKILL of the leader to the next committed block.

    .venv/bin/python bench/failover.py [--orgs 4] [--rounds 3] [--clients 4] [--json]

Starts a fresh local network in a temporary folder (real node processes, mutual
TLS), puts it under continuous signed-transfer load, then in each round
SIGKILLs the validator that proposes the next height and measures, from the
client side, the time until a surviving validator reports a committed block
ordered in a later view (a view change replaced the dead leader). The victim
is restarted and the network converges before the next round. Prints each
round, the median and the setup; the network is stopped afterwards.

A round where the kill raced leader rotation (the next block still committed
in the old view, so no view change was needed) is reported as ``missed`` and
not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kyodo.cli._network import LocalNetwork, NodeEntry, create_network
from kyodo.client import KyodoError
from kyodo.codec import decode_record
from kyodo.ledger import Block

POLL_S = 0.01


def _status(net: LocalNetwork, node: NodeEntry) -> Any:
    try:
        return net.status(node, timeout_s=2)
    except KyodoError:
        return None


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise SystemExit(f"failover bench: timed out after {timeout_s} s waiting for {what}")


def _converged(net: LocalNetwork) -> Any:
    all_status = [_status(net, n) for n in net.nodes]
    if any(s is None or not s.healthy for s in all_status):
        return None
    tips = {(s.height, s.tip_hash, s.state_root) for s in all_status}
    return all_status if len(tips) == 1 else None


class _Load:
    """Clients submitting transfers until stopped; counts commits and failures."""

    def __init__(self, net: LocalNetwork, clients: int) -> None:
        self.net = net
        self.stop = threading.Event()
        self.committed = 0
        self.failures: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        org = self.net.orgs[i % len(self.net.orgs)]
        pair = [f"failover-{os.getpid()}-{i}-a", f"failover-{os.getpid()}-{i}-b"]
        with self.net.gateway(org) as gw, self.net.gateway(org, "admin") as admin:
            contract = gw.contract("asset_transfer")
            try:
                for account in pair:
                    contract.submit("create_account", account)
                admin.contract("asset_transfer").submit("issue", pair[0], 1_000_000)
            except KyodoError as exc:
                self._failed(f"setup: {exc.code}", str(exc))
                return
            while not self.stop.is_set():
                try:
                    contract.submit("transfer", pair[0], pair[1], 1)
                except KyodoError as exc:  # the gateway's own node may be the victim
                    self._failed(exc.code, str(exc))
                    self.stop.wait(0.05)
                    self._resync(contract, pair)
                    continue
                pair.reverse()
                with self.lock:
                    self.committed += 1

    @staticmethod
    def _resync(contract: Any, pair: list[str]) -> None:
        """A failed submit's outcome is unknown (its node may have ordered it before it
        died): send from whichever account holds the funds now."""
        try:
            if contract.evaluate("balance", pair[0]) == 0:
                pair.reverse()
        except KyodoError:
            pass  # still unreachable: try again with the next submit

    def _failed(self, code: str, message: str) -> None:
        with self.lock:
            self.failures[code] = self.failures.get(code, 0) + 1
            self.examples.setdefault(code, message)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _one_round(net: LocalNetwork) -> dict[str, Any]:
    _wait(lambda: _converged(net), 60, "all nodes at the same tip")
    leader = next(n for n in net.nodes if (s := _status(net, n)) is not None and s.role == "leader")
    witness = next(n for n in net.nodes if n.node_id != leader.node_id)
    before = _status(net, witness)
    killed = time.monotonic()
    net.stop(leader, kill=True)

    def next_view_block() -> Any:
        """The first block after the kill that is not the dead leader's in-flight one:
        ("view", header) if a view change ordered it, ("missed", header) if not."""
        status = _status(net, witness)
        if status is None or status.height <= before.height:
            return None
        with net.gateway(witness.org_id, node=witness) as gw:
            for height in range(before.height + 1, status.height + 1):
                header = decode_record(Block, gw.block(height)).header
                if header.view > before.view:
                    return ("view", header)
                if header.proposer != leader.node_id:
                    return ("missed", header)
        return None

    outcome, header = _wait(next_view_block, 120, "a block after the leader was killed")
    seconds = time.monotonic() - killed
    net.start(leader)
    _wait(lambda: _converged(net), 120, "the restarted node to catch up")
    missed = outcome == "missed"
    return {
        "killed": leader.node_id,
        "height": before.height,
        "view_before": before.view,
        "view_after": header.view,
        "seconds_to_next_block": None if missed else round(seconds, 3),
        "missed": missed,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kyodo-failover-") as tmp:
        folder = Path(tmp) / "net"
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("creating the network", total=None)
            net = create_network(
                folder, orgs=args.orgs, progress=lambda m: progress.update(task, description=m)
            )
            load: _Load | None = None
            try:
                progress.update(task, description="starting nodes")
                for node in net.nodes:
                    net.start(node)
                _wait(lambda: _converged(net), 60, "every node healthy")
                load = _Load(net, args.clients)
                load.start()
                progress.update(task, description="waiting for the load to run")
                _wait(lambda: load is not None and load.committed >= args.clients, 60, "load")
                for n in range(args.rounds):
                    progress.update(task, description=f"round {n + 1}/{args.rounds}")
                    rounds.append(_one_round(net))
            finally:
                if load is not None:
                    load.finish()
                for node in net.nodes:
                    net.stop(node, kill=True)
    counted = [r["seconds_to_next_block"] for r in rounds if not r["missed"]]
    result = {
        "median_seconds_to_next_block": statistics.median(counted) if counted else None,
        "rounds": rounds,
        "load": {
            "committed": load.committed if load else 0,
            "failures": load.failures if load else {},
            "examples": load.examples if load else {},
        },
        "setup": {
            "orgs": args.orgs,
            "validators": len(net.nodes),
            "clients": args.clients,
            "measure": "client-side: SIGKILL of the leader to the first block of a later view",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        for r in rounds:
            figure = (
                "missed (kill raced rotation)" if r["missed"] else f"{r['seconds_to_next_block']} s"
            )
            print(f"killed {r['killed']} at height {r['height']}: next block after {figure}")
        print(f"median: {result['median_seconds_to_next_block']} s  setup: {result['setup']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KyodoError as exc:
        sys.exit(f"failover bench: {exc} [{exc.code}]")
