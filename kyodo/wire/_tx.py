"""Transactions and their results: the records applications and nodes exchange.

These live below the ledger so the client SDK can build and read them
without depending on the node's components (DESIGN.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NewType

from kyodo.codec import decode_record, record
from kyodo.crypto import sha256

__all__ = [
    "FAILURE_CODES",
    "QUERY_DOMAIN",
    "Event",
    "Transaction",
    "TxEnvelope",
    "TxId",
    "TxResult",
    "TxStatus",
    "compute_tx_id",
    "signed_part",
]

TxId = NewType("TxId", bytes)
"""SHA-256 of a transaction's canonical payload bytes (32 bytes)."""


class TxStatus(IntEnum):
    """What became of a transaction that was ordered into a block."""

    OK = 0
    """The contract function returned; its writes were applied."""
    CONTRACT_ERROR = 1
    """The contract refused (e.g. insufficient funds); no writes were applied."""
    UNKNOWN_FUNCTION = 2
    """The contract or function does not exist; no writes were applied."""
    RESOURCE_LIMIT = 3
    """The execution budget (steps), call depth or a size limit was exceeded."""
    ACCESS_DENIED = 4
    """The caller's organization and role match none of the function's access rules."""
    CONTRACT_TERMINATED = 5
    """The contract was terminated; only its read-only functions answer."""


@record(10)
@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    """A request to call one contract function, signed by its creator."""

    chain_id: str
    """The network this transaction is for; a node refuses any other (no cross-network replay)."""
    contract: str
    """The contract's name (its state namespace)."""
    function: str
    """The function to call."""
    args: tuple[Any, ...]
    """The call's arguments, canonical values (no floats)."""
    nonce: bytes
    """16 random bytes chosen by the client, so that identical calls get distinct ids."""
    created_ms: int
    """The client's clock when it signed, in ms since the epoch; bounds the replay window."""
    creator: bytes
    """DER X.509 signing certificate of the creator, issued by a member organization's CA."""


@record(11)
@dataclass(frozen=True, slots=True, kw_only=True)
class TxEnvelope:
    """A transaction as sent and stored: canonical payload plus signature over it."""

    payload: bytes
    """``encode(Transaction)``; its SHA-256 is the transaction id."""
    signature: bytes
    """The creator's Ed25519 signature over ``payload``."""

    def tx_id(self) -> TxId:
        """The transaction id: SHA-256 of the payload."""
        return compute_tx_id(self.payload)

    def transaction(self) -> Transaction:
        """Decode the payload (raises DecodeError on malformed or non-canonical bytes)."""
        return decode_record(Transaction, self.payload, max_size=1024 * 1024)


FAILURE_CODES: dict[int, str] = {
    TxStatus.CONTRACT_ERROR: "contract_error",
    TxStatus.UNKNOWN_FUNCTION: "unknown_function",
    TxStatus.RESOURCE_LIMIT: "resource_limit",
    TxStatus.ACCESS_DENIED: "access_denied",
    TxStatus.CONTRACT_TERMINATED: "contract_terminated",
}
"""The stable error code of each failed transaction status (gateways, SDK)."""

QUERY_DOMAIN = b"kyodo/query/v1\x00"
"""Prefix of what a query's (Evaluate's) signature covers: a query can never be replayed
as a transaction, whose signature covers the bare payload."""


def signed_part(payload: bytes, *, query: bool = False) -> bytes:
    """What the creator signs for ``payload``: the payload itself for a transaction,
    ``QUERY_DOMAIN + payload`` for a query."""
    return QUERY_DOMAIN + payload if query else payload


def compute_tx_id(payload: bytes) -> TxId:
    """The id of the transaction whose canonical payload is ``payload``."""
    return TxId(sha256(payload))


@record(12)
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """An event a contract emitted while executing a transaction."""

    contract: str
    name: str
    payload: Any


@record(13)
@dataclass(frozen=True, slots=True, kw_only=True)
class TxResult:
    """The outcome of one transaction, agreed by every validator."""

    tx_id: bytes
    status: int
    """A :class:`TxStatus` value."""
    result: Any
    """The function's return value when status is OK, else None."""
    message: str
    """Why the transaction failed (the contract's message), empty when OK."""
    events: tuple[Event, ...]
    """Events emitted, in emission order; empty unless OK."""
