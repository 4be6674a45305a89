"""Access control lists (kyodo.policy.AclTable) and their enforcement by the executor."""

from __future__ import annotations

from typing import Any

import pytest

from kyodo.contract import Context, Contract, function
from kyodo.contract.testing import LocalLedger, TxFailed
from kyodo.contracts import AccessDeniedError
from kyodo.ledger import TxStatus
from kyodo.policy import (
    DEFAULT_ACLS,
    RESOURCES,
    AccessRefused,
    AclTable,
    Identity,
    PolicyError,
    check_resource_name,
)

ALICE = Identity("org1", "client", "alice")
BOB = Identity("org2", "client", "bob")
AUDITOR = Identity("org3", "auditor", "ann")
ADMIN = Identity("org2", "admin", "admin")


def test_every_resource_has_a_default_rule():
    table = AclTable()
    for resource in RESOURCES:
        assert table.rule_for(resource)[0] == resource
    assert set(RESOURCES) <= set(DEFAULT_ACLS)


def test_the_most_specific_rule_decides():
    table = AclTable([("submit/cash", "'org1.member'"), ("submit/cash/mint", "'org1.admin'")])
    assert table.rule_for("submit/cash/mint") == ("submit/cash/mint", "'org1.admin'")
    assert table.rule_for("submit/cash/transfer") == ("submit/cash", "'org1.member'")
    assert table.rule_for("submit/other/f") == ("submit", "'*.member'")
    # a function name with a slash cannot climb out of a narrower rule
    assert table.rule_for("submit/cash/mint/x") == ("submit/cash/mint", "'org1.admin'")
    table.check("submit/cash/transfer", ALICE)
    with pytest.raises(AccessRefused) as refused:
        table.check("submit/cash/mint", ALICE)
    assert refused.value.rule == "submit/cash/mint"
    assert "org1.client/alice" in str(refused.value)
    assert "'org1.admin'" in str(refused.value)


def test_defaults_keep_the_audit_log_to_auditors_and_admins_and_admin_ops_to_admins():
    table = AclTable()
    table.check("audit.read", AUDITOR)
    table.check("audit.read", ADMIN)
    with pytest.raises(AccessRefused, match=r"audit\.read"):
        table.check("audit.read", ALICE)
    for admin_op in ("submit/_config/update", "submit/_lifecycle/approve"):
        table.check(admin_op, ADMIN)
        with pytest.raises(AccessRefused, match=admin_op.rsplit("/", 1)[0]):
            table.check(admin_op, ALICE)


@pytest.mark.parametrize(
    "name", ["blocks.write", "submit/", "submit/a/b/c", "evaluate/a b", "", "audit"]
)
def test_unknown_resource_names_are_refused(name):
    with pytest.raises(PolicyError, match="unknown ACL resource"):
        check_resource_name(name)
    with pytest.raises(PolicyError):
        AclTable([(name, "'*.member'")])


def test_a_rule_that_does_not_parse_names_its_resource():
    with pytest.raises(PolicyError, match=r"'blocks\.read'"):
        AclTable([("blocks.read", "OR(")])


class Vault(Contract):
    name = "vault"

    @function()
    def put(self, ctx: Context, key: str, value: int) -> None:
        ctx.put(key, value)

    @function(read_only=True)
    def get(self, ctx: Context, key: str) -> Any:
        return ctx.get(key)


def test_the_executor_applies_the_network_acl_to_transactions_and_queries():
    ledger = LocalLedger(
        builtins={"vault": Vault},
        acls={"submit/vault/put": "'org1.member'", "evaluate/vault": "'org2.member'"},
    )
    alice, bob = ledger.member("org1", "alice"), ledger.member("org2", "bob")
    ledger.submit(alice, "vault", "put", "k", 1)
    with pytest.raises(TxFailed) as failed:
        ledger.submit(bob, "vault", "put", "k", 2)
    assert failed.value.status is TxStatus.ACCESS_DENIED
    assert "ACL rule 'submit/vault/put'" in failed.value.reason
    assert ledger.get("vault", "k") == 1  # nothing written by the refused one
    assert ledger.query(bob, "vault", "get", "k") == 1
    with pytest.raises(AccessDeniedError, match="ACL rule 'evaluate/vault'"):
        ledger.query(alice, "vault", "get", "k")


VAULT_SOURCE = """
from kyodo.contract import Context, Contract, function


class Store(Contract):
    @function()
    def put(self, ctx: Context, key: str, value: int) -> None:
        ctx.put(key, value)
"""

PROXY_SOURCE = """
from kyodo.contract import Context, Contract, function


class Proxy(Contract):
    @function()
    def forward(self, ctx: Context, key: str, value: int) -> None:
        ctx.invoke("store", "put", key, value)
"""


def test_an_invocation_from_another_contract_is_checked_like_a_direct_call():
    ledger = LocalLedger(acls={"submit/store/put": "'org1.member'"})
    ledger.deploy(VAULT_SOURCE, name="store")
    ledger.deploy(PROXY_SOURCE, name="proxy")
    alice, bob = ledger.member("org1", "alice"), ledger.member("org2", "bob")
    ledger.submit(alice, "proxy", "forward", "k", 1)
    assert ledger.get("store", "k") == 1
    with pytest.raises(TxFailed) as failed:  # a forwarding contract opens no back door
        ledger.submit(bob, "proxy", "forward", "k", 2)
    assert failed.value.status is TxStatus.ACCESS_DENIED
    assert "ACL rule 'submit/store/put'" in failed.value.reason
    assert ledger.get("store", "k") == 1
