"""Identity on a real network: issuing members, and revocation that every node enforces."""

from __future__ import annotations

import json

import pytest

from kyodo.client import KyodoError, TransactionRejected, Unauthenticated
from tests.integration.conftest import wait_converged, wait_until
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
        error = refused.value  # both of bob's certificates are revoked: TLS is refused first
        assert isinstance(error, Unauthenticated) and "revoked by org2" in str(error), error
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


def test_a_member_who_lost_a_key_is_recovered_and_keeps_the_balance(network, tmp_path):
    import shutil as _shutil

    from kyodo.client import ContractFailed

    folder = network.folder
    user_dir = folder / "orgs" / "org3" / "users" / "carol"
    assert kyodo("ca", "issue", "carol", "--org", "org3", folder=folder).returncode == 0
    assert kyodo("ca", "issue", "officer2", "--org", "org3", "--role", "admin", folder=folder)
    with network.gateway("org3", "carol") as gw:
        gw.contract("asset_transfer").submit("create_account", "carol-acct")
    with network.gateway("org3", "admin") as gw:
        gw.contract("asset_transfer").submit("create_account", "payee-acct")
        gw.contract("asset_transfer").submit("issue", "carol-acct", 100)
    old = tmp_path / "carol-old"
    _shutil.copytree(user_dir, old)  # what an attacker who found the lost key would hold
    (user_dir / "signing.key").unlink()  # carol loses her key

    policy = kyodo(
        "recovery", "policy", "--org", "org3", "--approvals", "2", "--waiting-s", "2",
        folder=folder,
    )  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    asked = kyodo("recovery", "request", "carol", "--org", "org3", "--json", folder=folder)
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)
    early = kyodo("recovery", "complete", request["id"], "--org", "org3", folder=folder)
    assert early.returncode == 1 and "1 of 2 officers" in early.stderr
    approved = kyodo(
        "recovery", "approve", request["id"], "--org", "org3", "--by", "officer2", folder=folder
    )
    assert approved.returncode == 0, approved.stderr

    def completed() -> bool:
        done = kyodo("recovery", "complete", request["id"], "--org", "org3", folder=folder)
        assert done.returncode == 0 or "may object" in done.stderr, done.stderr
        return done.returncode == 0

    wait_until(completed, timeout_s=30, what="the waiting period to pass")
    again = kyodo("recovery", "complete", request["id"], "--org", "org3", folder=folder)
    assert again.returncode == 1 and "already completed" in again.stderr

    with network.gateway("org3", "carol") as gw:  # the new key: same identity, same balance
        contract = gw.contract("asset_transfer")
        assert contract.evaluate("balance", "carol-acct") == 100
        contract.submit("transfer", "carol-acct", "payee-acct", 40)
        assert contract.evaluate("balance", "carol-acct") == 60
    from kyodo.client import load_user

    stale = load_user(
        old,
        passphrase=(folder / "orgs" / "org3" / "passphrase").read_bytes().strip(),
        chain_id=network.chain_id,
        ca_bundle=folder / "ca-bundle.pem",
    )
    with (
        stale.connect(network.node("org3").gateway, retries=0) as gw,
        pytest.raises((TransactionRejected, ContractFailed, KyodoError)) as refused,
    ):
        gw.contract("asset_transfer").submit("transfer", "carol-acct", "payee-acct", 1)
    assert "revoked by org3" in str(refused.value), refused.value
    status = json.loads(
        kyodo("recovery", "status", request["id"], "--org", "org3", "--json", folder=folder).stdout
    )
    assert status["status"] == "approved"
    assert status["approved_by"] == ["org3/admin", "org3/officer2"]


def test_the_owner_can_object_and_the_recovery_cannot_complete(network):
    folder = network.folder
    assert kyodo("ca", "issue", "dave", "--org", "org4", folder=folder).returncode == 0
    kyodo("recovery", "policy", "--org", "org4", "--approvals", "1", "--waiting-s", "0",
          folder=folder)  # fmt: skip
    asked = kyodo("recovery", "request", "dave", "--org", "org4", "--json", folder=folder)
    request = json.loads(asked.stdout)
    objected = kyodo(
        "recovery", "object", request["id"], "--org", "org4", "--user", "dave", folder=folder
    )
    assert objected.returncode == 0 and "objected" in objected.stdout, objected.stderr
    done = kyodo("recovery", "complete", request["id"], "--org", "org4", folder=folder)
    assert done.returncode == 1 and "objected" in done.stderr
    with network.gateway("org4", "dave") as gw:  # dave's key still works
        assert gw.contract("asset_transfer").submit("create_account", "dave-acct")


def test_every_read_is_signed_and_each_bad_request_has_its_own_refusal(network):
    from dataclasses import replace

    from kyodo.client import connect
    from kyodo.codec import encode
    from kyodo.wire import BlockRequest, BlockResponse, EvaluateResponse

    body = encode(BlockRequest(height=0))
    with network.gateway("org1", retries=0) as gw:
        signed = gw.sign_request("GetBlock", body)
        assert gw.call("GetBlock", signed, BlockResponse, retries=0).block
        refusals = {
            "replayed": signed,
            "bad_signature": replace(gw.sign_request("GetBlock", body), signature=b"\0" * 64),
            "wrong_method": gw.sign_request("GetConfig", body),
        }
        for reason, request in refusals.items():
            with pytest.raises(Unauthenticated) as refused:
                gw.call("GetBlock", request, BlockResponse, retries=0)
            assert refused.value.code == f"auth.{reason}", refused.value
        query = gw.sign("asset_transfer", "balance", ("nobody",), query=True)
        with pytest.raises(KyodoError):  # no such account: a contract failure, but heard
            gw.call("Evaluate", query, EvaluateResponse, retries=0)
        with pytest.raises(Unauthenticated) as replayed:
            gw.call("Evaluate", query, EvaluateResponse, retries=0)
        assert replayed.value.code == "auth.replayed"
        # a query's signature is no transaction's, and the other way round
        dry_run = gw.sign("asset_transfer", "create_account", ("dry-run",), query=True)
        with pytest.raises(TransactionRejected) as ordered:
            gw.submit_envelope(dry_run, wait_s=5)
        assert ordered.value.reason == "bad_signature"
        as_query = gw.sign("asset_transfer", "balance", ("nobody",))
        with pytest.raises(TransactionRejected) as queried:
            gw.call("Evaluate", as_query, EvaluateResponse, retries=0)
        assert queried.value.reason == "bad_signature"
    org1, org2 = network.user("org1"), network.user("org2")
    with (  # org1's TLS connection, org2's signature
        connect(org2.identity, org2.signer, network.node("org1").gateway, tls=org1.tls) as gw,
        pytest.raises(KyodoError) as mismatch,
    ):
        gw.block(0)
    assert mismatch.value.code == "auth.identity_mismatch", mismatch.value


def test_acls_set_by_configuration_guard_reads_and_submits_naming_the_rule(network):
    from kyodo.client import AccessDenied

    folder = network.folder
    assert kyodo("ca", "issue", "ann", "--org", "org1", "--role", "auditor", folder=folder)
    changed = kyodo("acl", "set", "blocks.read", "'*.auditor'", folder=folder)
    assert changed.returncode == 0, changed.stderr
    changed = kyodo(
        "acl", "set", "submit/asset_transfer/create_account", "'org1.member'", folder=folder
    )
    assert changed.returncode == 0, changed.stderr
    listed = json.loads(kyodo("acl", "list", "--json", folder=folder).stdout)
    assert {"resource": "blocks.read", "policy": "'*.auditor'", "source": "configuration"} in (
        listed
    )

    def refused_read() -> bool:
        with network.gateway("org1", retries=0) as gw:
            try:
                gw.block(0)
            except AccessDenied as exc:
                assert "ACL rule 'blocks.read'" in str(exc), exc
                return True
            return False

    wait_until(refused_read, timeout_s=30, what="the blocks.read rule in force at org1's gateway")
    with network.gateway("org1", "ann") as gw:  # the auditor reads
        assert gw.block(0)
    with network.gateway("org2", retries=0) as gw, pytest.raises(AccessDenied) as denied:
        gw.contract("asset_transfer").submit("create_account", "org2-denied")
    assert "ACL rule 'submit/asset_transfer/create_account'" in str(denied.value)
    with network.gateway("org1") as gw:
        gw.contract("asset_transfer").submit("create_account", "org1-allowed")
        assert gw.contract("asset_transfer").evaluate("balance", "org1-allowed") == 0
    for resource in ("blocks.read", "submit/asset_transfer/create_account"):
        reset = kyodo("acl", "reset", resource, folder=folder)
        assert reset.returncode == 0, reset.stderr
    bad = kyodo("acl", "set", "blocks.write", "'*.admin'", folder=folder)
    assert bad.returncode == 1 and "unknown ACL resource" in bad.stderr
    wait_until(lambda: not refused_read(), timeout_s=30, what="blocks.read back to its default")
    wait_converged(network)


def test_an_organization_with_an_intermediate_ca_joins_issues_revokes_and_leaves(network):
    from cryptography import x509

    folder = network.folder
    made = kyodo("ca", "init", "--org", "org5", "--intermediate", folder=folder)
    assert made.returncode == 0 and "root and intermediate CA" in made.stdout, made.stderr
    again = kyodo("ca", "init", "--org", "org5", folder=folder)
    assert again.returncode == 1 and "already has a CA" in again.stderr
    bundle = x509.load_pem_x509_certificates((folder / "orgs/org5/ca/ca.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in bundle] == [
        "CN=org5 root CA,O=org5",
        "CN=org5 issuing CA,O=org5",
    ]
    joined = kyodo("network", "add-validator", "--org", "org5", folder=folder)
    assert joined.returncode == 0, joined.stderr
    reload_members(network)  # pick up the new node and organization
    user_cert = x509.load_pem_x509_certificate(
        (folder / "orgs/org5/users/user1/signing.pem").read_bytes()
    )
    assert user_cert.issuer == bundle[1].subject  # issued by the intermediate
    with network.gateway("org5") as gw:  # TLS and signatures chain to org5's root
        assert gw.contract("asset_transfer").submit("create_account", "org5-i")["owner"] == (
            "org5/user1"
        )
    assert kyodo("ca", "issue", "gus", "--org", "org5", folder=folder).returncode == 0
    with network.gateway("org5", "gus") as gw:
        gw.contract("asset_transfer").submit("create_account", "gus-acct")
    revoked = kyodo("ca", "revoke", "gus", "--org", "org5", folder=folder)
    assert revoked.returncode == 0, revoked.stderr
    with (
        network.gateway("org5", "gus", retries=0) as gw,
        pytest.raises(Unauthenticated, match="revoked by org5"),
    ):
        gw.contract("asset_transfer").submit("create_account", "gus-again")
    left = kyodo("network", "remove-org", "org5", folder=folder)
    assert left.returncode == 0, left.stderr
    reload_members(network)
    for child in network._children.values():  # reap the org5 node the command stopped
        child.poll()
    wait_converged(network)


def reload_members(network) -> None:
    """Organizations and nodes as network.json now lists them (keeping child processes)."""
    fresh = type(network)(network.folder)
    network.orgs, network.nodes = fresh.orgs, fresh.nodes
