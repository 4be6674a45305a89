"""Byzantine fault tolerant ordering on real processes (4 organizations, 4 validators).

Each test runs under client load and ends by checking that every node has the
same tip and state root, and that every transaction a client saw as final is
in the ledger.
"""

from __future__ import annotations

import itertools
import threading
import time

from kyodo.cli._network import LocalNetwork
from kyodo.codec import decode_record
from kyodo.ledger import Block
from tests.integration.conftest import node_status, wait_converged, wait_until
from tests.integration.test_network import open_accounts, transfer_load


def leader_of(network: LocalNetwork) -> str:
    """The node proposing the next block (leadership rotates every few heights)."""
    wait_converged(network)
    for node in network.nodes:
        status = node_status(network, node)
        if status is not None and status.role == "leader":
            return node.node_id
    raise AssertionError("no node reports itself leader")


def load_in_background(
    network: LocalNetwork,
    orgs: list[str],
    prefix: str,
    per_client: int,
) -> tuple[threading.Thread, dict[str, object]]:
    pairs = open_accounts(network, clients=2 * len(orgs), prefix=prefix, orgs=orgs)
    out: dict[str, object] = {}

    def run() -> None:
        out["result"] = transfer_load(network, pairs, per_client=per_client)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, out


def assert_all_final_everywhere(network: LocalNetwork, final_ids: list[str]) -> None:
    tip = wait_converged(network, timeout_s=60)
    for node in network.nodes:
        with network.gateway(node.org_id, node=node) as gw:
            for tx_id in final_ids:
                assert gw.transaction(bytes.fromhex(tx_id)).height <= tip.height


def test_leader_killed_under_load_is_replaced_and_no_final_transaction_is_lost(network):
    """SIGKILL the validator proposing now. Leadership rotates, so its turn comes again
    within 4 x decisions_per_leader heights: from then on only a view change lets the
    chain go on. The stall shows as the largest gap between consecutive blocks."""
    victim = leader_of(network)
    survivors = [n.org_id for n in network.nodes if n.node_id != victim]
    worker, out = load_in_background(network, survivors, "leader-kill", per_client=40)
    first = network.node(survivors[0])
    wait_until(lambda: node_status(network, first).height > 3, timeout_s=30, what="load")
    killed_ms = time.time_ns() // 1_000_000
    assert network.stop(network.node(victim), kill=True)
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and len(final_ids) == 40 * 2 * len(survivors)
    with network.gateway(survivors[0]) as gw:  # go on until the dead node's turn came
        contract = gw.contract("asset_transfer")
        for n in range(60):
            if node_status(network, first).view > 0:
                break
            contract.submit("create_account", f"push-{n}")
        assert node_status(network, first).view > 0, "the dead leader was never replaced"
        tip = decode_record(Block, gw.block(-1)).header.height
        headers = [decode_record(Block, gw.block(h)).header for h in range(1, tip + 1)]
    after = [h for h in headers if h.timestamp_ms >= killed_ms]
    assert all(h.proposer != victim for h in after)
    stall_ms = max(b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(after))
    network.start(network.node(victim))
    assert_all_final_everywhere(network, final_ids)
    print(f"leader {victim} killed: longest gap between blocks {stall_ms} ms")


def test_a_whole_organization_stops_and_the_other_three_go_on(network):
    leader = leader_of(network)
    stopped = next(n for n in network.nodes if n.node_id != leader)  # a follower's org
    assert network.stop(stopped)
    rest = [n.org_id for n in network.nodes if n != stopped]
    worker, out = load_in_background(network, rest, "org-down", per_client=20)
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and final_ids
    network.start(stopped)
    assert_all_final_everywhere(network, final_ids)


def test_restart_of_all_nodes_resumes_from_disk(network):
    worker, out = load_in_background(network, network.orgs, "restart-all", per_client=10)
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == []
    tip = wait_converged(network)
    for node in network.nodes:
        assert network.stop(node)
    for node in network.nodes:
        network.start(node)
    resumed = wait_converged(network, timeout_s=60)
    assert resumed.height == tip.height and resumed.tip_hash == tip.tip_hash
    with network.gateway("org3") as gw:  # and it orders new transactions
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "after")
    assert outcome.height == tip.height + 1
    assert_all_final_everywhere(network, final_ids)
