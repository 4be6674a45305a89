"""Validators added and removed while the network runs, under load (real processes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kyodo.cli._network import LocalNetwork
from kyodo.client import TransactionRejected
from kyodo.codec import decode_record, encode
from kyodo.ledger import Block, approval_message
from tests.integration.conftest import node_status, wait_converged, wait_until
from tests.integration.test_bft_network import (
    assert_all_final_everywhere,
    leader_of,
    load_in_background,
)
from tests.integration.test_network import kyodo


def test_a_change_without_a_majority_of_admins_is_refused_at_the_gateway(network):
    current = network.current_config()
    new = encode(replace(current, epoch=current.epoch + 1))
    admin = network.user("org1", "admin")
    lone = [
        [admin.identity.certificate, admin.signer.sign(approval_message(current.chain_id, new))]
    ]
    with network.gateway("org1", "admin") as gw, pytest.raises(TransactionRejected) as refused:
        gw.contract("_config").submit("update", new, lone)
    assert refused.value.reason == "config_rejected" and "3 are required" in str(refused.value)
    assert network.current_config().epoch == current.epoch


def test_a_validator_of_a_new_organization_joins_under_load_and_votes(network: LocalNetwork):
    app = network.gateway("org1")  # an application written before org5 existed
    before = app.contract("asset_transfer")
    before.submit("create_account", "app-before-org5")
    worker, out = load_in_background(network, network.orgs[:4], "join", per_client=15)
    entry = network.add_validator("org5", progress=lambda _m: None)
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and final_ids
    wait_until(
        lambda: (s := node_status(network, entry)) is not None and s.healthy,
        timeout_s=60,
        what="the new validator ready",
    )
    assert network.current_config().epoch == 1
    with network.gateway("org5") as gw:  # its own organization's users work at once
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "org5-acct")
        block = decode_record(Block, gw.block(outcome.height))
    assert len(block.certificate) >= 4  # q = 4 of the 5 validators: the new set certifies
    assert node_status(network, entry).role in ("leader", "follower")
    # the same application object, code and configuration unchanged, after org5 joined
    after = before.submit_transaction("create_account", "app-after-org5")
    block = decode_record(Block, app.block(after.height))
    assert len(block.certificate) >= 4  # certified by the 5-validator set
    app.close()
    wait_converged(network)
    assert_all_final_everywhere(network, final_ids)


def test_a_view_change_after_reconfiguration_uses_the_new_validator_set(network):
    """Five validators now (q=4, f=1): killing whoever proposes still leaves a quorum,
    and the view change runs with the new set."""
    victim = leader_of(network)
    view_before = wait_converged(network).view
    assert network.stop(network.node(victim), kill=True)
    survivor = next(n for n in network.nodes if n.node_id != victim)
    with network.gateway(survivor.org_id) as gw:
        contract = gw.contract("asset_transfer")
        for n in range(45):  # until the dead node's turn forces a view change
            contract.submit("create_account", f"after-reconfig-{n}")
            if node_status(network, survivor).view > view_before:
                break
        assert node_status(network, survivor).view > view_before
        tip = decode_record(Block, gw.block(-1))
    assert len(tip.certificate) >= 4 and victim not in {c.signer for c in tip.certificate}
    network.start(network.node(victim))
    wait_converged(network)


def test_a_validator_is_removed_under_load_and_keeps_following(network: LocalNetwork):
    worker, out = load_in_background(network, network.orgs[:4], "leave", per_client=15)
    new = network.remove_validator("org5-node0", progress=lambda _m: None)
    worker.join(timeout=300)
    final_ids, errors = out["result"]  # type: ignore[misc]
    assert errors == [] and final_ids
    assert [n.node_id for n in new.validators()] == [f"org{i}-node0" for i in range(1, 5)]
    removed = network.node("org5-node0")
    wait_until(
        lambda: node_status(network, removed).role == "observer",
        timeout_s=30,
        what="the removed validator to become an observer",
    )
    with network.gateway("org1") as gw:
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "after")
        block = decode_record(Block, gw.block(outcome.height))
    assert "org5-node0" not in {c.signer for c in block.certificate}
    wait_converged(network)
    assert_all_final_everywhere(network, final_ids)
    for node in network.nodes:  # offline verification follows the validator set's changes
        assert kyodo("verify", node.node_id, "--json", folder=network.folder).returncode == 0


def test_a_validator_key_is_rotated_while_running_and_survives_a_restart(network):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from kyodo.crypto import ED25519, verify_signature
    from kyodo.ledger import commit_message

    stopped = network.node("org4-node0")  # with 3 of 4 validators left, org2 must sign
    assert network.stop(stopped)
    rotated = network.node("org2-node0")
    old_pem = (rotated.home / "signing.pem").read_bytes()
    network.rotate_key("org2-node0", progress=lambda _m: None)
    new_pem = (rotated.home / "signing.pem").read_bytes()
    assert new_pem != old_pem
    new_key = (
        x509.load_pem_x509_certificate(new_pem)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )

    def signed_by_new_key(height: int) -> bool:
        with network.gateway("org1") as gw:
            block = decode_record(Block, gw.block(height))
        sig = {c.signer: c.signature for c in block.certificate}["org2-node0"]
        verify_signature(
            ED25519, new_key, commit_message(block.header.chain_id, block.block_hash()), sig
        )
        return True

    with network.gateway("org3") as gw:
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "rot-1")
    assert signed_by_new_key(outcome.height)
    assert network.stop(rotated)  # the new key is the node's key across restarts too
    network.start(rotated)
    wait_until(
        lambda: (s := node_status(network, rotated)) is not None and s.height > 0,
        timeout_s=30,
        what="the rotated node back",
    )
    with network.gateway("org3") as gw:
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "rot-2")
    assert signed_by_new_key(outcome.height)
    network.start(stopped)
    wait_converged(network)
    for node in network.nodes:
        assert kyodo("verify", node.node_id, "--json", folder=network.folder).returncode == 0


def test_a_change_submitted_through_a_follower_leaves_its_pool(network):
    """The change is ordered in a configuration block; the follower whose gateway took
    it must drop it then, not hold it (and complain about it) until it expires."""
    from tests.integration.test_bad_input import metric

    wait_converged(network)
    follower = next(n for n in network.nodes if node_status(network, n).role == "follower")
    current = network.current_config()
    new = replace(
        current, epoch=current.epoch + 1, consensus=replace(current.consensus, max_batch_txs=400)
    )
    network.propose_config(new, current=current, via_org=follower.org_id)
    wait_until(
        lambda: network.current_config(follower.org_id).epoch == new.epoch,
        timeout_s=10,
        what="the change in force at the follower",
    )
    assert network.current_config(follower.org_id).consensus.max_batch_txs == 400
    wait_until(
        lambda: metric(follower, "kyodo_request_pool") == 0,
        timeout_s=10,
        what="the follower's pool to drop the ordered change",
    )


def test_an_organization_is_removed_while_applications_keep_working(network):
    from kyodo.client import connect

    with network.gateway("org5") as gw:  # org5 holds an account the ledger keeps
        gw.contract("asset_transfer").submit("create_account", "org5-kept")
    org5 = network.user("org5")
    app = network.gateway("org1")  # an application of another organization, unchanged
    contract = app.contract("asset_transfer")
    contract.submit("create_account", "before-org5-left")
    removed = kyodo("network", "remove-org", "org5", folder=network.folder)
    assert removed.returncode == 0 and "org5 left the network" in removed.stdout, removed.stderr
    assert "org5" not in network.__class__(network.folder).orgs
    new = network.current_config()
    assert [o.org_id for o in new.orgs] == ["org1", "org2", "org3", "org4"]
    assert all(n.org_id != "org5" for n in new.nodes)
    contract.submit("create_account", "after-org5-left")  # the same object, still working
    assert contract.evaluate("account", "org5-kept")["owner"] == "org5/user1"
    envelope = connect(org5.identity, org5.signer, "unused:1", tls=org5.tls).sign(
        "asset_transfer", "create_account", ("org5-after",)
    )
    with pytest.raises(TransactionRejected) as refused:  # its members are strangers now
        app.submit_envelope(envelope)
    assert refused.value.reason == "unknown_ca", refused.value
    app.close()
    network.nodes = [n for n in network.nodes if n.org_id != "org5"]
    for child in network._children.values():  # reap the org5 node the command stopped
        child.poll()
    wait_converged(network)
    for node in network.nodes:  # offline verification follows the organization leaving
        assert kyodo("verify", node.node_id, "--json", folder=network.folder).returncode == 0
