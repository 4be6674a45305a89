"""Identity on a real network: issuing members, and revocation that every node enforces."""

from __future__ import annotations

import json

import pytest

from kyodo.client import KyodoError, TransactionRejected
from tests.integration.conftest import wait_converged
from tests.integration.test_network import kyodo


def test_a_revoked_member_is_refused_by_every_node_and_others_keep_working(network):
    folder = network.folder
    issued = kyodo("ca", "issue", "bob", "--org", "org2", folder=folder)
    assert issued.returncode == 0, issued.stderr
    with network.gateway("org2", "bob") as gw:
        assert gw.contract("asset_transfer").submit("create_account", "bob-acct")["owner"] == (
            "org2/bob"
        )
    revoked = kyodo("ca", "revoke", "bob", "--org", "org2", folder=folder)
    assert revoked.returncode == 0 and "revoked org2/bob" in revoked.stdout, revoked.stderr
    own_nodes = [n for n in network.nodes if n.org_id == "org2"]
    for node in own_nodes:  # the organization's gateways refuse bob, saying why
        with (
            network.gateway("org2", "bob", node=node, retries=0) as gw,
            pytest.raises(KyodoError) as refused,
        ):
            gw.contract("asset_transfer").submit("create_account", f"bob-{node.node_id}")
        error = refused.value
        assert isinstance(error, TransactionRejected) and error.reason == "revoked", error
        assert "revoked by org2" in str(error)
    with network.gateway("org2") as gw:
        assert gw.contract("asset_transfer").submit("create_account", "still-fine")
    listed = json.loads(kyodo("ca", "list", "--org", "org2", "--json", folder=folder).stdout)
    assert {r["name"]: r["revoked"] for r in listed} == {
        "admin": False,
        "bob": True,
        "user1": False,
    }
    again = kyodo("ca", "revoke", "bob", "--org", "org2", folder=folder)
    assert again.returncode == 1 and "already revoked" in again.stderr
    wait_converged(network)


def test_issuing_refuses_bad_names_and_duplicates(network):
    bad = kyodo("ca", "issue", "../evil", "--org", "org1", folder=network.folder)
    assert bad.returncode == 1 and "member name" in bad.stderr
    dup = kyodo("ca", "issue", "user1", "--org", "org1", folder=network.folder)
    assert dup.returncode == 1 and "already has a member" in dup.stderr


def test_a_certificate_near_expiry_shows_in_status_and_metrics(network):
    import urllib.request

    from kyodo.cli._network import replace_config
    from kyodo.node import NodeConfig
    from tests.integration.conftest import node_status, wait_until

    node = network.nodes[3]
    replace_config(NodeConfig.load(node.home), node.home, cert_expiry_warning_days=400)
    network.stop(node)
    network.start(node)
    status = wait_until(
        lambda: (s := node_status(network, node)) is not None and s.healthy and s,
        timeout_s=60,
        what="the restarted node healthy",
    )
    assert "WARNING signing certificate expires in" in status.detail
    assert "WARNING tls certificate expires in" in status.detail
    config = NodeConfig.load(node.home)
    metrics = (
        urllib.request.urlopen(
            f"http://{config.listen_host}:{config.metrics_port}/metrics", timeout=10
        )
        .read()
        .decode()
    )
    assert 'kyodo_certificate_expiry_timestamp_seconds{cert="signing"}' in metrics
