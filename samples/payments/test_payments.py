"""Tests of the payments sample, on an in-process ledger (``kyodo contract test payments.py``)."""

from pathlib import Path

import pytest

from kyodo.contract.testing import Call, LocalLedger, TxFailed, TxStatus

CONTRACT = Path(__file__).with_name("payments.py")


@pytest.fixture
def ledger() -> LocalLedger:
    ledger = LocalLedger(orgs=("bank1", "bank2", "bank3"))
    ledger.deploy(CONTRACT)
    ledger.submit(ledger.admin("bank1"), "payments", "set_limit", "bank2", "EUR", 1_000)
    return ledger


def test_a_payment_within_the_limit_is_pending_until_the_payee_approves(
    ledger: LocalLedger,
) -> None:
    alice, bob = ledger.member("bank1", "alice"), ledger.member("bank2", "bob")
    submitted = ledger.submit(alice, "payments", "submit", "p-1", "bank2", "EUR", 600, "invoice 7")
    assert submitted["status"] == "pending" and submitted["limit_seen"] == 1_000
    assert ledger.query(bob, "payments", "pending_for", "bank2") == ["p-1"]
    decided = ledger.submit(bob, "payments", "approve", "p-1", "checked against PO 12")
    assert decided["status"] == "approved" and decided["decided_by"] == "bank2/bob"
    steps = ledger.query(alice, "payments", "steps", "p-1")
    assert [(s["action"], s["by"]) for s in steps] == [
        ("submitted", "bank1/alice"),
        ("approved", "bank2/bob"),
    ]
    assert steps[0]["at_ms"] < steps[1]["at_ms"]
    versions = ledger.history("payments", "instruction/p-1")
    assert [v.value["status"] for v in versions] == ["pending", "approved"]


def test_the_automatic_check_records_a_refusal_with_its_reason(ledger: LocalLedger) -> None:
    alice = ledger.member("bank1", "alice")
    over = ledger.submit(alice, "payments", "submit", "p-2", "bank2", "EUR", 1_001, "too much")
    assert over["status"] == "auto_rejected" and "over the EUR limit 1000" in over["reason"]
    no_limit = ledger.submit(alice, "payments", "submit", "p-3", "bank3", "EUR", 1, "none")
    assert "no EUR limit for bank3" in no_limit["reason"]
    ledger.submit(ledger.admin("bank1"), "payments", "block", "bank2", "sanctions review")
    blocked = ledger.submit(alice, "payments", "submit", "p-4", "bank2", "EUR", 5, "blocked")
    assert "blocked payments to bank2" in blocked["reason"]


def test_only_the_payee_decides_and_only_once(ledger: LocalLedger) -> None:
    alice, carol = ledger.member("bank1", "alice"), ledger.member("bank3", "carol")
    bob = ledger.member("bank2", "bob")
    ledger.submit(alice, "payments", "submit", "p-5", "bank2", "EUR", 10, "x")
    with pytest.raises(TxFailed, match="only bank2 may decide"):
        ledger.submit(carol, "payments", "approve", "p-5", "")
    ledger.submit(bob, "payments", "reject", "p-5", "duplicate of p-1")
    with pytest.raises(TxFailed, match="already rejected"):
        ledger.submit(bob, "payments", "approve", "p-5", "")


def test_master_data_is_set_by_admins_of_their_own_organization(ledger: LocalLedger) -> None:
    with pytest.raises(TxFailed) as info:
        ledger.submit(ledger.member("bank1", "alice"), "payments", "set_limit", "bank2", "EUR", 5)
    assert info.value.status == TxStatus.ACCESS_DENIED
    with pytest.raises(TxFailed, match="not another member"):
        ledger.submit(ledger.admin("bank1"), "payments", "set_limit", "bank9", "EUR", 5)


def test_a_limit_change_is_seen_by_exactly_the_instructions_ordered_after_it(
    ledger: LocalLedger,
) -> None:
    alice = ledger.member("bank1", "alice")
    calls = [
        Call(alice, "payments", "submit", (f"q-{i}", "bank2", "EUR", 800, "")) for i in range(6)
    ]
    calls.insert(3, Call(ledger.admin("bank1"), "payments", "set_limit", ("bank2", "EUR", 500)))
    results = ledger.block(calls)
    assert all(r.status == TxStatus.OK for r in results)
    statuses = [ledger.get("payments", f"instruction/q-{i}")["status"] for i in range(6)]
    assert statuses == ["pending"] * 3 + ["auto_rejected"] * 3
