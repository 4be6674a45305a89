"""Errors raised by :mod:`kyodo.ledger` for bad or corrupted data.

A block from a peer that does not verify, a proof that does not check, or
stored data whose hash no longer matches raise one of these typed errors,
carrying the fields an operator needs (height, expected and actual values).
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error raised by kyodo.ledger."""


class StateProofError(LedgerError):
    """A proof of a key's value (or absence) does not verify against a state root."""


class StateCorruptionError(LedgerError):
    """A stored state-tree node does not hash to the key it is stored under.

    Attributes:
        node_hash: the hash the node was looked up by (hex).
    """

    def __init__(self, message: str, *, node_hash: str) -> None:
        super().__init__(message)
        self.node_hash = node_hash


class StoredDataError(LedgerError):
    """Data read from this node's own store is corrupt or falsified.

    Attributes:
        height: the block height concerned, when known.
        state_key: the flat-state key whose record is damaged, when that is what it is.
        tx_id: the transaction whose index entry is damaged, when that is what it is.
    """

    def __init__(
        self,
        message: str,
        *,
        height: int | None = None,
        state_key: bytes | None = None,
        tx_id: bytes | None = None,
    ) -> None:
        super().__init__(message if height is None else f"height {height}: {message}")
        self.height = height
        self.state_key = state_key
        self.tx_id = tx_id


class UnreadableStoreError(StoredDataError):
    """The database itself refused a read (a checksum mismatch in its files, an I/O
    error): the files are damaged below the level a single value can be replaced at."""


class BlockVerificationError(LedgerError):
    """A block (from a peer, or re-read from disk) does not verify.

    Attributes:
        height: the block's height.
        reason: a short machine-readable reason (``prev_hash``, ``txs_root``,
            ``results_root``, ``state_root``, ``certificate``, ``tx_signature``...).
    """

    def __init__(self, message: str, *, height: int, reason: str) -> None:
        super().__init__(f"block {height}: {message}")
        self.height = height
        self.reason = reason


class TransactionRejectedError(LedgerError):
    """A transaction envelope is refused before ordering.

    Attributes:
        reason: ``malformed``, ``wrong_chain``, ``bad_signature``, ``unknown_identity``,
            ``expired``, ``duplicate``, ``too_large``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
