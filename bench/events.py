"""Event-stream delivery: throughput and latency of a consumer at the tip, and the
rate a consumer catches up on a backlog.

Starts a local 4-organization network (or uses ``--dir``), opens a named
subscription on org1's node for every ``asset_transfer`` event, and runs
``kyodo bench`` transfers for ``--load-s`` seconds while one consumer (the sync
SDK, acknowledging every item) follows the stream. Reports:

* events delivered per second while the load runs, and the delay from the
  block's timestamp (set by its proposer) to the consumer's receipt: p50, p99;
* a second consumer replaying the whole backlog from block 0 afterwards
  (``until=`` the tip): events per second.

    .venv/bin/python bench/events.py [--load-s 15] [--dir kyodo-network]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from kyodo.cli._network import LocalNetwork, create_network
from kyodo.client import Subscription

console = Console()
KYODO = [str(Path(sys.executable).parent / "kyodo")]


def _ready(net: LocalNetwork) -> bool:
    try:
        return all(net.status(n).healthy for n in net.nodes)
    except Exception:
        return False


def _network(folder: Path | None) -> tuple[LocalNetwork, Path | None]:
    if folder is not None and (folder / "network.json").exists():
        return LocalNetwork(folder), None
    scratch = Path(tempfile.mkdtemp(prefix="kyodo-events-bench-"))
    net = create_network(scratch / "net", orgs=4, progress=lambda m: console.print(f"  {m}"))
    for node in net.nodes:
        net.start(node)
    deadline = time.monotonic() + 60
    while not _ready(net):
        if time.monotonic() > deadline:
            raise SystemExit("the network did not become ready within 60 s")
        time.sleep(0.2)  # polling the nodes' status until ready, with a deadline
    return net, scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-s", type=float, default=15.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    console.print(
        f"[bold]event-stream bench[/]: {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"4 organizations, one consumer (sync SDK, ack per item) on org1's node"
    )
    net, scratch = _network(args.dir)
    try:
        name = f"bench-{int(time.time())}"
        delays: list[float] = []
        received = 0
        stop = threading.Event()
        with net.gateway("org1") as gw:
            sub = Subscription(name=name, contracts=("asset_transfer",))
            gw.network().subscribe(sub)
            stream = gw.network().events(sub, window=1024)

            def consume() -> None:
                nonlocal received
                for event in stream:
                    delays.append(time.time() * 1000 - event.timestamp_ms)
                    received += 1
                    event.ack()
                    if stop.is_set():
                        break

            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            console.print(f"load: kyodo bench --clients 16 for {args.load_s:.0f} s ...")
            started = time.monotonic()
            subprocess.run(
                [*KYODO, "bench", "--clients", "16", "--duration", str(int(args.load_s)),
                 "--dir", str(net.folder)],
                check=True, capture_output=True,
            )  # fmt: skip
            loaded_s = time.monotonic() - started
            tip = gw.status().height
            deadline = time.monotonic() + 60
            while stream.acked is None or stream.acked[0] < tip:  # the consumer drains
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # polling the consumer's position, with a deadline
            stop.set()
            stream.close()
            at_tip = received / loaded_s
            ordered = sorted(delays)
            p50 = statistics.median(ordered)
            p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0

            console.print(f"replaying the backlog: blocks 0..{tip} ...")
            started = time.monotonic()
            replayed = 0
            with gw.network().events(
                contracts=("asset_transfer",), after=(0, -1, -1), until=tip, window=1024
            ) as replay:
                for event in replay:
                    replayed += 1
                    event.ack()
            replay_s = time.monotonic() - started
        console.print(
            f"at the tip: {received} events in {loaded_s:.1f} s = [bold]{at_tip:,.0f} events/s[/]"
            f"; block timestamp to receipt p50 [bold]{p50:.0f} ms[/], p99 {p99:.0f} ms"
        )
        console.print(
            f"backlog: {replayed} events of {tip + 1} blocks in {replay_s:.2f} s = "
            f"[bold]{replayed / replay_s:,.0f} events/s[/]"
        )
    finally:
        if scratch is not None:
            for node in net.nodes:
                net.stop(node, kill=True)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
