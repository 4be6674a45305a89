"""A real network partition: 4 validators split 2|2 (real processes, real TCP, iptables).

Each node has its own loopback address (``network up --distinct-hosts``), so
traffic between two groups of nodes can be dropped by the kernel while clients
(on 127.0.0.1) still reach every gateway. With q = 3 of 4, neither side has a
quorum: nothing may be appended, nothing may fork, and once the partition
heals the validators agree on a view again and every transaction submitted
during the split becomes final.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from kyodo.cli._network import LocalNetwork
from kyodo.codec import decode_record
from kyodo.ledger import Block
from tests.integration.conftest import (
    node_status,
    start_network,
    statuses,
    stop_network,
    wait_converged,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None,
    reason="needs root and iptables (.ci/run installs iptables)",
)

CHAIN = "KYODO_PARTITION_TEST"


def iptables(*args: str) -> None:
    subprocess.run(["iptables", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def partition(side_a: list[str], side_b: list[str]) -> Iterator[None]:
    """Drop every packet between the two groups of addresses, both ways, until exit."""
    with contextlib.suppress(subprocess.CalledProcessError):  # a previous run's leftovers
        iptables("-D", "INPUT", "-j", CHAIN)
        iptables("-F", CHAIN)
        iptables("-X", CHAIN)
    iptables("-N", CHAIN)
    iptables("-I", "INPUT", "-j", CHAIN)
    try:
        for a in side_a:
            for b in side_b:
                iptables("-A", CHAIN, "-s", a, "-d", b, "-j", "DROP")
                iptables("-A", CHAIN, "-s", b, "-d", a, "-j", "DROP")
        yield
    finally:
        iptables("-D", "INPUT", "-j", CHAIN)
        iptables("-F", CHAIN)
        iptables("-X", CHAIN)


def host(net: LocalNetwork, org: str) -> str:
    return net.node(org).gateway.rsplit(":", 1)[0]


def test_a_2_2_split_makes_no_progress_and_no_fork_and_heals(tmp_path):
    net = start_network(tmp_path / "kyodo-network", distinct_hosts=True)
    try:
        with net.gateway("org1") as gw:
            gw.contract("asset_transfer").submit("create_account", "before-the-split")
        tip = wait_converged(net)
        final: dict[str, object] = {}

        def submit(org: str) -> None:
            with net.gateway(org, timeout_s=120) as gw:
                final[org] = gw.contract("asset_transfer").submit_transaction(
                    "create_account", f"during-{org}", wait_s=90
                )

        with partition(
            [host(net, "org1"), host(net, "org2")], [host(net, "org3"), host(net, "org4")]
        ):
            clients = [threading.Thread(target=submit, args=(org,)) for org in net.orgs]
            for client in clients:
                client.start()
            deadline = time.monotonic() + 8  # an observation window, not a synchronisation
            while time.monotonic() < deadline:
                heights = [s.height for s in statuses(net) if s is not None]
                assert max(heights) <= tip.height + 1, "a side without a quorum appended"
                time.sleep(0.2)
            during = {n.node_id: node_status(net, n) for n in net.nodes}
            assert final == {}, "a transaction became final without a quorum"
        for client in clients:  # healed: every transaction of the split becomes final
            client.join(timeout=150)
        assert sorted(final) == sorted(net.orgs)
        healed = wait_converged(net, timeout_s=60)
        assert healed.height > tip.height
        with net.gateway("org3") as gw:  # no fork: every node holds the same blocks
            chain = [
                decode_record(Block, gw.block(h)).block_hash() for h in range(healed.height + 1)
            ]
        for node in net.nodes:
            with net.gateway(node.org_id, node=node) as gw:
                assert [
                    decode_record(Block, gw.block(h)).block_hash() for h in range(healed.height + 1)
                ] == chain
        assert all(s is not None and s.height <= tip.height + 1 for s in during.values())
    finally:
        stop_network(net)
