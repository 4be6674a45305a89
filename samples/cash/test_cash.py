"""Tests of the cash sample, on an in-process ledger (``kyodo contract test cash.py``)."""

from pathlib import Path

import pytest

from kyodo.contract.testing import LocalLedger, TxFailed, TxStatus

CONTRACT = Path(__file__).with_name("cash.py")


def test_issue_and_transfer_between_identities() -> None:
    ledger = LocalLedger(orgs=("bank1", "bank2"))
    ledger.deploy(CONTRACT)
    alice, bob = ledger.member("bank1", "alice"), ledger.member("bank2", "bob")
    ledger.submit(alice, "cash", "create_account", "a")
    ledger.submit(bob, "cash", "create_account", "b")
    ledger.submit(ledger.admin("bank1"), "cash", "issue", "a", 100)
    moved = ledger.submit(alice, "cash", "transfer", "a", "b", 30)
    assert moved == {"source_balance": 70, "version": "1"}
    assert ledger.query(bob, "cash", "balance", "b") == 30
    with pytest.raises(TxFailed, match="not owned by bank2/bob"):
        ledger.submit(bob, "cash", "transfer", "a", "b", 1)
    with pytest.raises(TxFailed) as info:
        ledger.submit(alice, "cash", "issue", "a", 5)
    assert info.value.status == TxStatus.ACCESS_DENIED


def test_an_upgrade_keeps_balances() -> None:
    ledger = LocalLedger(orgs=("bank1", "bank2"))
    ledger.deploy(CONTRACT)
    alice = ledger.member("bank1", "alice")
    ledger.submit(alice, "cash", "create_account", "a")
    ledger.submit(alice, "cash", "create_account", "b")
    ledger.submit(ledger.admin("bank1"), "cash", "issue", "a", 10)
    v2 = CONTRACT.read_text().replace('VERSION = "1"', 'VERSION = "2"')
    ledger.deploy(v2, name="cash", version="2.0.0")
    assert ledger.submit(alice, "cash", "transfer", "a", "b", 4) == {
        "source_balance": 6,
        "version": "2",
    }
