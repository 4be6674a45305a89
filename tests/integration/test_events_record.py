"""The event stream's test of record (issue 7).

Under continuous load, the consumer process is killed (SIGKILL) and restarted again
and again, then the node it is connected to is killed - twice, so it fails over to
the other node of its organization and back. Every event the ledger holds is
delivered, in ledger order, none lost; an event is delivered twice only across a
consumer restart, and then with the same idempotency key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kyodo.cli._network import LocalNetwork
from kyodo.client import Subscription
from tests.integration.conftest import statuses, wait_until

SUBSCRIPTION = "record"


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def delivered(path: Path) -> int:
    return sum(1 for line in read_lines(path) if "key" in line)


class Load:
    """Accounts created continuously through org2's gateways (never killed here)."""

    def __init__(self, net: LocalNetwork) -> None:
        self.net = net
        self.created: list[str] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        addresses = [n.gateway for n in self.net.nodes if n.org_id == "org2"]
        with self.net.user("org2").connect(addresses, timeout_s=20) as gw:
            contract = gw.contract("asset_transfer")
            n = 0
            while not self._stop.is_set():
                name = f"rec-{n}"
                try:
                    contract.submit("create_account", name)
                    self.created.append(name)
                except Exception as exc:
                    self.errors.append(exc)
                n += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def start_consumer(net: LocalNetwork, output: Path) -> subprocess.Popen[bytes]:
    with open(output.with_suffix(".err"), "ab") as errors:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.event_consumer", str(net.folder), "org1",
             str(output), SUBSCRIPTION],
            stdout=subprocess.DEVNULL, stderr=errors, cwd=Path(__file__).parents[2],
        )  # fmt: skip


def kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def grows(output: Path, by: int, *, timeout_s: float = 60) -> None:
    target = delivered(output) + by
    wait_until(lambda: delivered(output) >= target, timeout_s=timeout_s, what=f"{by} more events")


def test_every_event_delivered_in_order_across_consumer_and_node_kills(
    pair_network: LocalNetwork, tmp_path: Path
) -> None:
    net = pair_network
    org1 = [n for n in net.nodes if n.org_id == "org1"]
    output = tmp_path / "consumed.jsonl"
    spec = Subscription(name=SUBSCRIPTION, contracts=("asset_transfer",), names=("AccountCreated",))
    with net.gateway("org1", node=org1[0]) as gw:
        start = tuple(gw.network().subscribe(spec).checkpoint)

    with Load(net) as load:
        consumer = start_consumer(net, output)
        try:
            # 1. the consumer is killed and restarted, again and again
            for _ in range(4):
                grows(output, 5)
                kill(consumer)
                consumer = start_consumer(net, output)
            # 2. the node it follows is killed: it fails over to org1's other node, and back
            for victim in (org1[0], org1[1]):
                grows(output, 5)
                net.stop(victim, kill=True)
                grows(output, 5)  # delivered through org1's other node
                net.start(victim)
                wait_until(
                    lambda: all(s is not None and s.healthy for s in statuses(net)),
                    timeout_s=60,
                    what="the restarted node healthy",
                )
            grows(output, 5)
        except BaseException:
            kill(consumer)
            raise
    assert len(load.created) > 40, load.errors[:3]
    try:
        wait_until(  # the consumer reaches the last account the load created
            lambda: load.created[-1] in {x.get("account") for x in read_lines(output)},
            timeout_s=60,
            what="the last event delivered",
        )
    finally:
        kill(consumer)

    # what the ledger holds, read back from a node of the other organization
    with net.gateway("org2") as gw:
        tip = gw.status().height
        with gw.network().events(
            contracts=("asset_transfer",), names=("AccountCreated",), after=start, until=tip
        ) as stream:
            expected = [e.idempotency_key for e in stream]
    assert expected, "the ledger holds no events"
    index = {key: i for i, key in enumerate(expected)}

    segments: list[list[int]] = []
    for line in read_lines(output):
        if "start" in line:
            segments.append([])
        else:
            assert line["key"] in index, f"delivered an event the ledger does not hold: {line}"
            segments[-1].append(index[line["key"]])
    segments = [s for s in segments if s]
    assert len(segments) >= 5  # one per consumer process that delivered something
    covered = -1
    duplicates = 0
    for segment in segments:
        # within one consumer process: consecutive ledger positions, no repeat, no gap -
        # even across the two node failovers
        assert segment == list(range(segment[0], segment[0] + len(segment))), segment[:20]
        # across a restart: it resumes at or before the next undelivered event (a repeat
        # of what was processed but not yet acknowledged), never after it (a loss)
        assert segment[0] <= covered + 1, (segment[0], covered)
        duplicates += max(0, covered + 1 - segment[0])
        covered = max(covered, segment[-1])
    assert (covered >= index[next(k for k in expected if k)] and covered == len(expected) - 1) or (
        covered >= len(expected) - 1
    )
    # both nodes of org1 served the consumer: each holds acknowledgements of it
    for node in org1:
        with net.gateway("org1", node=node) as gw:
            assert gw.network().subscription(SUBSCRIPTION).acked > 0, node.node_id
    delivered_accounts = [x["account"] for x in read_lines(output) if "account" in x]
    assert set(load.created) <= set(delivered_accounts)
    print(f"\n{len(expected)} events, {len(segments)} consumer runs, {duplicates} redelivered")
