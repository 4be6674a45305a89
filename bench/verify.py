"""Cost of self-verification: a whole pass over a node's store, and verified reads.

Starts a local 4-organization network (or uses ``--dir``), fills it with
``kyodo bench`` transfers for ``--load-s`` seconds, stops one node, and on its
store measures:

* one whole background-verifier pass (every block with its certificate, the
  transaction index, every tree node, the flat state both ways, the history
  index, the writes index): blocks/s and MB/s read, at a CPU share of 1.0;
* a state read checked against the certified tree (what a query does) against a
  plain read: microseconds per read, over every account.

    .venv/bin/python bench/verify.py [--load-s 20] [--dir kyodo-network]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from kyodo.cli._network import LocalNetwork, create_network
from kyodo.ledger import Epochs, LedgerStore, load_genesis
from kyodo.ledger._epochs import ConfigView
from kyodo.node._integrity import VerifiedState, Verifier

console = Console()
KYODO = [str(Path(sys.executable).parent / "kyodo")]


def _network(folder: Path | None, load_s: float) -> tuple[LocalNetwork, Path | None]:
    if folder is not None and (folder / "network.json").exists():
        return LocalNetwork(folder), None
    scratch = Path(tempfile.mkdtemp(prefix="kyodo-verify-bench-"))
    net = create_network(scratch / "net", orgs=4, progress=lambda m: console.print(f"  {m}"))
    for node in net.nodes:
        net.start(node)
    deadline = time.monotonic() + 60
    while not all(_ready(net, n) for n in net.nodes):
        if time.monotonic() > deadline:
            raise SystemExit("the network did not become ready within 60 s")
        time.sleep(0.2)  # polling the nodes' status until ready, with a deadline
    console.print(f"loading the network with transfers for {load_s:.0f} s ...")
    subprocess.run(
        [
            *KYODO,
            "bench",
            "--clients",
            "16",
            "--duration",
            str(int(load_s)),
            "--dir",
            str(net.folder),
        ],
        check=True,
        capture_output=True,
    )
    return net, scratch


def _ready(net: LocalNetwork, node: object) -> bool:
    try:
        return bool(net.status(node).healthy)  # type: ignore[arg-type]
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    net, scratch = _network(args.dir, args.load_s)
    node = net.nodes[-1]
    net.stop(node)
    store = LedgerStore(node.home / "data", read_only=True)
    try:
        genesis = load_genesis(net.folder / "genesis.block")
        epochs = Epochs([(0, genesis.config)])  # type: ignore[list-item]
        for first, config in store.get_configs()[1:]:
            epochs.add(first, config)
        views: dict[int, ConfigView] = {}

        def view_at(height: int) -> ConfigView:
            config = epochs.at(height)
            if config.epoch not in views:
                views[config.epoch] = ConfigView.of(config)
            return views[config.epoch]

        verifier = Verifier(
            store,
            view_at=view_at,
            genesis_hash=genesis.block_hash(),
            configs_of_chain=lambda: list(epochs.all()),
            on_fault=lambda f: None,
            on_pass=lambda r, t: None,
            cpu_share=1.0,
            interval_s=3600,
        )
        report, tip = verifier.run_pass()
        keys = [k for k, _ in store.iter_state("asset_transfer")]
        plain = VerifiedState(store, store.state_root())
        started = time.perf_counter()
        for key in keys:
            store.get_state("asset_transfer", key)
        plain_us = (time.perf_counter() - started) / max(1, len(keys)) * 1e6
        started = time.perf_counter()
        for key in keys:
            plain.get_state("asset_transfer", key)
        verified_us = (time.perf_counter() - started) / max(1, len(keys)) * 1e6
    finally:
        store.close()
        if scratch is not None:
            for other in net.nodes:
                net.stop(other, kill=True)
            shutil.rmtree(scratch, ignore_errors=True)
    console.print(
        f"setup: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; store of {node.node_id}: {tip + 1} blocks, "
        f"{report.nodes} tree nodes, {report.state_keys} state keys, "
        f"{report.history_keys} keys with history"
    )
    console.print(
        f"whole pass: {report.seconds:.2f} s = {report.blocks / report.seconds:,.0f} blocks/s, "
        f"{report.bytes_read / 1e6 / report.seconds:.1f} MB/s ({report.bytes_read / 1e6:.1f} MB)"
    )
    console.print(
        f"state read: plain {plain_us:.1f} µs, verified against the certified root "
        f"{verified_us:.1f} µs ({verified_us / plain_us:.1f}x) over {len(keys)} keys"
    )


if __name__ == "__main__":
    main()
