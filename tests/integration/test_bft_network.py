"""Byzantine fault tolerant ordering on real processes (4 organizations, 4 validators).

Each test runs under client load and ends by checking that every node has the
same tip and state root, and that every transaction a client saw as final is
in the ledger.
"""

from __future__ import annotations

import threading
import time

from kyodo.cli._network import LocalNetwork
from tests.integration.conftest import node_status, wait_converged, wait_until
from tests.integration.test_network import open_accounts, transfer_load


def leader_of(network: LocalNetwork) -> str:
    status = wait_converged(network)
    return network.nodes[status.view % len(network.nodes)].node_id


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
    leader = leader_of(network)
    survivors = [n.org_id for n in network.nodes if n.node_id != leader]
    worker, out = load_in_background(network, survivors, "leader-kill", per_client=40)
    wait_until(
        lambda: node_status(network, network.node(survivors[0])).height > 8,
        timeout_s=30,
        what="load running",
    )
    killed_at = time.monotonic()
    before = node_status(network, network.node(survivors[0])).height
    assert network.stop(network.node(leader), kill=True)
    after = wait_until(
        lambda: (
            (s := node_status(network, network.node(survivors[0]))) is not None
            and s.height > before + 1
            and s
        ),
        timeout_s=30,
        what="a block after the leader died",
    )
    recovery_s = time.monotonic() - killed_at
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and len(final_ids) == 40 * len(
        [p for p in survivors for _ in range(2)]
    )  # two clients per surviving org
    assert after.view > 0 and leader_of_view(network, after.view) != leader
    network.start(network.node(leader))
    assert_all_final_everywhere(network, final_ids)
    print(f"leader {leader} killed: next block after {recovery_s:.2f} s")


def leader_of_view(network: LocalNetwork, view: int) -> str:
    return network.nodes[view % len(network.nodes)].node_id


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
