"""The admin policy for configuration changes (kyodo.ledger.check_config_update)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from kyodo.cli._network import LocalNetwork, create_network
from kyodo.client import KyodoError
from kyodo.codec import encode
from kyodo.crypto import Ed25519Signer
from kyodo.ledger import (
    AclEntry,
    ConfigView,
    NetworkConfig,
    TransactionRejectedError,
    approval_message,
    check_config_update,
    load_genesis,
)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> LocalNetwork:
    return create_network(tmp_path_factory.mktemp("cfg") / "net", orgs=4, progress=lambda _m: None)


@pytest.fixture(scope="module")
def current(net: LocalNetwork) -> NetworkConfig:
    config = load_genesis(net.folder / "genesis.block").config
    assert config is not None
    return config


def approvals(
    net: LocalNetwork, raw: bytes, chain: str, orgs: list[str], user: str = "admin"
) -> list[list[bytes]]:
    out = []
    for org in orgs:
        creds = net.user(org, user)
        out.append([creds.identity.certificate, creds.signer.sign(approval_message(chain, raw))])
    return out


def next_config(current: NetworkConfig, **changes: object) -> NetworkConfig:
    fields = {"epoch": current.epoch + 1, "created_ms": time.time_ns() // 1_000_000}
    fields.update(changes)
    return replace(current, **fields)  # type: ignore[arg-type]


def check(current: NetworkConfig, raw: bytes, approved: list[list[bytes]]) -> NetworkConfig:
    return check_config_update(
        ConfigView.of(current), (raw, approved), now_ms=time.time_ns() // 1_000_000
    )


def test_a_majority_of_organizations_admins_can_change_the_configuration(net, current):
    new = next_config(current, consensus=replace(current.consensus, max_batch_txs=123))
    raw = encode(new)
    assert (
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"])) == new
    )


def test_too_few_approvals_are_refused_naming_what_is_missing(net, current):
    raw = encode(next_config(current))
    with pytest.raises(TransactionRejectedError) as refused:
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2"]))
    assert refused.value.reason == "config_rejected"
    assert "2 organization(s)" in str(refused.value) and "3 are required" in str(refused.value)
    assert "1 more of org3, org4" in str(refused.value)


def test_two_approvals_by_one_organization_count_once(net, current):
    raw = encode(next_config(current))
    twice = approvals(net, raw, current.chain_id, ["org1", "org1", "org2"])
    with pytest.raises(TransactionRejectedError, match="2 organization"):
        check(current, raw, twice)


def test_an_approval_by_a_non_admin_is_refused(net, current):
    raw = encode(next_config(current))
    mixed = approvals(net, raw, current.chain_id, ["org1", "org2"]) + approvals(
        net, raw, current.chain_id, ["org3"], user="user1"
    )
    with pytest.raises(TransactionRejectedError, match="is not an admin"):
        check(current, raw, mixed)


def test_a_forged_approval_is_refused(net, current):
    raw = encode(next_config(current))
    forged = approvals(net, raw, current.chain_id, ["org1", "org2"])
    cert = net.user("org3", "admin").identity.certificate
    forged.append([cert, Ed25519Signer.generate().sign(approval_message(current.chain_id, raw))])
    with pytest.raises(TransactionRejectedError, match="does not verify"):
        check(current, raw, forged)


def test_an_approval_of_other_bytes_does_not_count(net, current):
    raw = encode(next_config(current))
    other = encode(next_config(current, allow_fragile_topology=False, created_ms=1))
    with pytest.raises(TransactionRejectedError, match="does not verify"):
        check(current, raw, approvals(net, other, current.chain_id, ["org1", "org2", "org3"]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"epoch": 5}, "says epoch 5; 1 is next"), ({"chain_id": "other"}, "for network .other.")],
)
def test_a_configuration_out_of_sequence_is_refused(net, current, changes, message):
    raw = encode(next_config(current, **changes))
    with pytest.raises(TransactionRejectedError, match=message):
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))


def test_a_change_to_a_fragile_topology_is_refused(net, current):
    org1_node = current.node("org1-node0")
    assert org1_node is not None
    second = replace(org1_node, node_id="org1-node1")  # org1 would hold 2 of 5 votes, f = 1
    raw = encode(next_config(current, nodes=(*current.nodes, second)))
    with pytest.raises(TransactionRejectedError, match="losing org1"):
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))


def test_malformed_arguments_are_refused(current):
    view = ConfigView.of(current)
    for args in [(b"not a config", []), ("text", []), (b"", "x"), ()]:
        with pytest.raises(TransactionRejectedError):
            check_config_update(view, args, now_ms=time.time_ns() // 1_000_000)  # type: ignore[arg-type]


def test_an_admin_policy_in_the_configuration_decides_who_approves(net, current):
    policy = "AND('org1.admin', OR('org2.admin', 'org3.admin'))"
    governed = replace(current, admin_policy=policy)
    raw = encode(next_config(governed, admin_policy=policy))
    assert check(governed, raw, approvals(net, raw, current.chain_id, ["org1", "org3"]))
    with pytest.raises(TransactionRejectedError) as refused:
        check(governed, raw, approvals(net, raw, current.chain_id, ["org2", "org3", "org4"]))
    assert "the admin policy is not satisfied" in str(refused.value)
    assert "'org1.admin'" in str(refused.value)


def test_a_change_to_an_admin_policy_that_does_not_parse_is_refused(net, current):
    raw = encode(next_config(current, admin_policy="AND('org1.boss')"))
    with pytest.raises(TransactionRejectedError, match="admin policy does not parse"):
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))


def test_the_admin_policy_changes_with_the_configuration(net, current):
    strict = "OutOf(4, 'org1.admin', 'org2.admin', 'org3.admin', 'org4.admin')"
    raw = encode(next_config(current, admin_policy=strict))
    tightened = check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))
    raw2 = encode(next_config(tightened))
    with pytest.raises(TransactionRejectedError, match="needs 4 of 4"):
        check(tightened, raw2, approvals(net, raw2, current.chain_id, ["org1", "org2", "org3"]))


def test_a_network_can_start_with_an_admin_policy_and_refuses_one_that_does_not_parse(tmp_path):
    policy = "OutOf(2, 'org1.admin', 'org2.admin', 'org3.admin')"
    made = create_network(tmp_path / "a", orgs=4, progress=lambda _m: None, admin_policy=policy)
    config = load_genesis(made.folder / "genesis.block").config
    assert config is not None and config.admin_policy == policy
    with pytest.raises(KyodoError, match="--admin-policy"):
        create_network(
            tmp_path / "b", orgs=4, progress=lambda _m: None, admin_policy="OutOf(2, 'x')"
        )


def test_access_rules_travel_in_the_configuration_and_bad_ones_are_refused(net, current):
    rules = (AclEntry(resource="blocks.read", policy="'*.auditor'"),)
    raw = encode(next_config(current, acls=rules))
    new = check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))
    assert ConfigView.of(new).acl.rule_for("blocks.read") == ("blocks.read", "'*.auditor'")
    for bad, says in (
        (AclEntry(resource="blocks.write", policy="'*.admin'"), "unknown ACL resource"),
        (AclEntry(resource="submit/cash", policy="AND('org1.boss')"), "'submit/cash'"),
    ):
        raw = encode(next_config(current, acls=(bad,)))
        with pytest.raises(TransactionRejectedError, match=says):
            check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))


def test_removing_an_organization_the_admin_policy_needs_is_refused(net, current):
    policy = "AND('org1.admin', 'org4.admin')"
    governed = replace(current, admin_policy=policy)
    remaining = tuple(o for o in current.orgs if o.org_id != "org4")
    raw = encode(
        next_config(
            governed,
            orgs=remaining,
            nodes=tuple(n for n in current.nodes if n.org_id != "org4"),
        )
    )
    with pytest.raises(TransactionRejectedError, match="could never satisfy"):
        check(governed, raw, approvals(net, raw, current.chain_id, ["org1", "org4"]))
    # with a policy the remaining organizations can meet, org4 can be removed
    raw = encode(
        next_config(
            governed,
            orgs=remaining,
            nodes=tuple(n for n in current.nodes if n.org_id != "org4"),
            admin_policy="OutOf(2, 'org1.admin', 'org2.admin', 'org3.admin')",
            allow_fragile_topology=True,  # 3 organizations: losing one leaves no tolerance
        )
    )
    new = check(governed, raw, approvals(net, raw, current.chain_id, ["org1", "org4"]))
    assert [o.org_id for o in new.orgs] == ["org1", "org2", "org3"]


def test_a_configuration_without_validators_is_refused_not_a_crash(net, current):
    raw = encode(next_config(current, nodes=()))
    with pytest.raises(TransactionRejectedError, match="no validator"):
        check(current, raw, approvals(net, raw, current.chain_id, ["org1", "org2", "org3"]))
