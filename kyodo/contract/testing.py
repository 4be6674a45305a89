"""Test contracts in one process: ``from kyodo.contract.testing import LocalLedger``.

    ledger = LocalLedger(orgs=("bank1", "bank2"))
    ledger.deploy(Path("payments.py"))
    alice = ledger.member("bank1", "alice")
    ledger.submit(alice, "payments", "submit", "p-1", "bank2", "EUR", 100, "invoice 7")

Runs the node's executor, sandbox and lifecycle over an in-memory state; see
``kyodo/contracts/_testing.py``. ``kyodo contract test FILE`` runs a contract's
tests with pytest.
"""

from kyodo.contracts._testing import Call, InMemoryState, LocalLedger, TxFailed
from kyodo.ledger import TxStatus

__all__ = ["Call", "InMemoryState", "LocalLedger", "TxFailed", "TxStatus"]
