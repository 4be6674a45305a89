"""Checks that every node applies, in the same way, to transactions and blocks.

These are pure functions: given the same block, configuration and parent,
every honest node reaches the same verdict. A peer's block is appended only
after :func:`verify_block_contents`, :func:`verify_link` and
:func:`verify_certificate` pass *and* re-execution reproduces its results
and state root (done by the node, which owns execution).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kyodo.codec import DecodeError, encode
from kyodo.crypto import (
    ED25519,
    ZERO_HASH,
    CryptoError,
    merkle_root,
    merkle_root_of_hashes,
    sha256,
    verify_signature,
)
from kyodo.identity import (
    CertificateExpiredError,
    CertificateRevokedError,
    IdentityError,
    Member,
    Membership,
    Role,
    UnknownCAError,
    UnknownRoleError,
)
from kyodo.ledger._state_tree import NodeReader, TreeUpdate, apply_updates
from kyodo.ledger._store import encode_state_record
from kyodo.ledger._types import (
    Block,
    BlockHeader,
    CommitSignature,
    NetworkConfig,
    Transaction,
    TxEnvelope,
    TxId,
    TxResult,
    commit_message,
)
from kyodo.ledger.errors import BlockVerificationError, TransactionRejectedError
from kyodo.wire import signed_part

__all__ = [
    "MAX_TX_BYTES",
    "NODE_CONTRACTS",
    "CheckedTx",
    "PreparedState",
    "check_creator",
    "check_envelope",
    "compute_results_root",
    "compute_txs_root",
    "prepare_state",
    "quorum_size",
    "recheck_envelope",
    "verify_block_contents",
    "verify_certificate",
    "verify_link",
]

MAX_TX_BYTES = 64 * 1024
"""Largest transaction payload accepted (bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedTx:
    """An envelope whose signature, creator and freshness were checked."""

    tx_id: TxId
    envelope: TxEnvelope
    tx: Transaction
    creator: Member


def check_envelope(
    envelope: TxEnvelope,
    *,
    membership: Membership,
    chain_id: str,
    now_ms: int,
    max_age_ms: int,
    query: bool = False,
) -> CheckedTx:
    """Decode and authenticate a transaction (``query``: a query's envelope, signed over
    ``QUERY_DOMAIN + payload``); raise TransactionRejectedError if refused."""
    if len(envelope.payload) > MAX_TX_BYTES:
        raise TransactionRejectedError(
            f"transaction payload of {len(envelope.payload)} bytes exceeds {MAX_TX_BYTES}",
            reason="too_large",
        )
    try:
        tx = envelope.transaction()
    except DecodeError as exc:
        raise TransactionRejectedError(f"malformed transaction: {exc}", reason="malformed") from exc
    if tx.chain_id != chain_id:
        raise TransactionRejectedError(
            f"transaction is for network {tx.chain_id!r}, not {chain_id!r}", reason="wrong_chain"
        )
    if len(tx.nonce) != 16:
        raise TransactionRejectedError("transaction nonce must be 16 bytes", reason="malformed")
    creator = check_creator(
        tx.creator,
        membership=membership,
        now_ms=now_ms,
        allow_node=tx.contract in NODE_CONTRACTS,
    )
    try:
        verify_signature(
            ED25519,
            creator.public_key,
            signed_part(envelope.payload, query=query),
            envelope.signature,
        )
    except CryptoError as exc:
        raise TransactionRejectedError(
            "transaction signature does not verify against its creator's certificate",
            reason="bad_signature",
        ) from exc
    _check_age(tx, now_ms=now_ms, max_age_ms=max_age_ms)
    return CheckedTx(tx_id=envelope.tx_id(), envelope=envelope, tx=tx, creator=creator)


def recheck_envelope(
    checked: CheckedTx, *, membership: Membership, now_ms: int, max_age_ms: int
) -> CheckedTx:
    """Re-check, at a later time, a transaction that passed :func:`check_envelope`.

    Its bytes and signature cannot have changed; what depends on time can: the
    creator's certificate may have expired, the transaction may have grown too old.
    """
    creator = check_creator(
        checked.tx.creator,
        membership=membership,
        now_ms=now_ms,
        allow_node=checked.tx.contract in NODE_CONTRACTS,
    )
    _check_age(checked.tx, now_ms=now_ms, max_age_ms=max_age_ms)
    return CheckedTx(tx_id=checked.tx_id, envelope=checked.envelope, tx=checked.tx, creator=creator)


_CREATOR_REASONS: tuple[tuple[type[IdentityError], str], ...] = (
    (CertificateRevokedError, "revoked"),
    (UnknownCAError, "unknown_ca"),
    (CertificateExpiredError, "certificate_expired"),
    (UnknownRoleError, "wrong_role"),
)
"""Which refusal a client sees for each kind of unacceptable creator certificate."""


NODE_CONTRACTS = frozenset({"_audit"})
"""Built-in contracts whose transactions nodes sign themselves (a node anchoring its
audit-log root); every other transaction needs a member's certificate."""


def check_creator(
    creator: bytes, *, membership: Membership, now_ms: int, allow_node: bool = False
) -> Member:
    """The member a signing certificate names, if it may sign transactions and requests
    at ``now_ms``; raise TransactionRejectedError with a distinct reason otherwise
    (``unknown_ca``, ``certificate_expired``, ``revoked``, ``wrong_role``,
    ``unknown_identity``)."""
    try:
        member = membership.validate(creator, now=datetime.fromtimestamp(now_ms / 1000, UTC))
    except IdentityError as exc:
        reason = next(
            (r for kind, r in _CREATOR_REASONS if isinstance(exc, kind)), "unknown_identity"
        )
        raise TransactionRejectedError(f"creator not accepted: {exc}", reason=reason) from exc
    if member.role == Role.NODE and not allow_node:
        raise TransactionRejectedError(
            f"creator not accepted: {member.org}/{member.name} is a node; nodes sign blocks "
            "and votes, transactions are signed by members (client, admin, auditor)",
            reason="wrong_role",
        )
    return member


def _check_age(tx: Transaction, *, now_ms: int, max_age_ms: int) -> None:
    if abs(now_ms - tx.created_ms) > max_age_ms:
        raise TransactionRejectedError(
            f"transaction created at {tx.created_ms} ms is outside the {max_age_ms} ms window "
            f"around {now_ms} ms",
            reason="expired",
        )


def compute_txs_root(txs: Iterable[TxEnvelope]) -> bytes:
    """RFC 6962 root over the canonical bytes of each envelope."""
    return merkle_root([encode(env) for env in txs])


def compute_results_root(results: Iterable[TxResult]) -> bytes:
    """RFC 6962 root over the canonical bytes of each result."""
    return merkle_root_of_hashes([_leaf_hash(encode(r)) for r in results])


def _leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data)


def verify_block_contents(block: Block) -> None:
    """The header's roots match the body; results line up with transactions."""
    header = block.header
    if len(block.results) != len(block.txs):
        raise BlockVerificationError(
            f"{len(block.txs)} transactions but {len(block.results)} results",
            height=header.height,
            reason="results_count",
        )
    for index, (env, result) in enumerate(zip(block.txs, block.results, strict=True)):
        if result.tx_id != env.tx_id():
            raise BlockVerificationError(
                f"result {index} is not for transaction {index}",
                height=header.height,
                reason="results_order",
            )
    config_hash = ZERO_HASH if block.config is None else sha256(encode(block.config))
    if config_hash != header.config_hash:
        raise BlockVerificationError(
            "configuration carried by the block does not match the header's config hash",
            height=header.height,
            reason="config_hash",
        )
    txs_root = compute_txs_root(block.txs)
    if txs_root != header.txs_root:
        raise BlockVerificationError(
            f"transactions root {txs_root.hex()} differs from header's {header.txs_root.hex()}",
            height=header.height,
            reason="txs_root",
        )
    results_root = compute_results_root(block.results)
    if results_root != header.results_root:
        raise BlockVerificationError(
            f"results root {results_root.hex()} differs from header's {header.results_root.hex()}",
            height=header.height,
            reason="results_root",
        )


def verify_link(header: BlockHeader, parent: BlockHeader) -> None:
    """``header`` follows ``parent``: next height, parent's hash, same chain, time not back."""
    if header.chain_id != parent.chain_id:
        raise BlockVerificationError("wrong chain id", height=header.height, reason="chain_id")
    if header.height != parent.height + 1:
        raise BlockVerificationError(
            f"does not follow height {parent.height}", height=header.height, reason="height"
        )
    if header.prev_hash != parent.block_hash():
        raise BlockVerificationError(
            f"previous hash {header.prev_hash.hex()} is not the hash of block {parent.height} "
            f"({parent.block_hash().hex()})",
            height=header.height,
            reason="prev_hash",
        )
    if header.view < parent.view:
        raise BlockVerificationError(
            f"view {header.view} is lower than the parent's {parent.view}",
            height=header.height,
            reason="view",
        )
    if header.timestamp_ms < parent.timestamp_ms:
        raise BlockVerificationError(
            "timestamp earlier than the parent's", height=header.height, reason="timestamp"
        )


def quorum_size(validators: int) -> int:
    """q = ceil((n + f + 1) / 2) with f = (n - 1) // 3: any two quorums of n validators
    share at least f + 1, so at least one honest validator."""
    assert validators >= 1
    f = (validators - 1) // 3
    q = -(-(validators + f + 1) // 2)
    assert 2 * q - validators >= f + 1
    return q


def verify_certificate(
    header: BlockHeader,
    certificate: Iterable[CommitSignature],
    *,
    config: NetworkConfig,
    signer_keys: Mapping[str, bytes],
    quorum: int,
) -> None:
    """At least ``quorum`` distinct validators of ``config`` signed this header's hash."""
    block_hash = header.block_hash()
    message = commit_message(header.chain_id, block_hash)
    signers: set[str] = set()
    validators = {n.node_id for n in config.validators()}
    for commit in certificate:
        if commit.signer not in validators:
            raise BlockVerificationError(
                f"certificate signed by {commit.signer!r}, not a validator",
                height=header.height,
                reason="certificate",
            )
        if commit.signer in signers:
            raise BlockVerificationError(
                f"certificate has two signatures by {commit.signer}",
                height=header.height,
                reason="certificate",
            )
        try:
            verify_signature(ED25519, signer_keys[commit.signer], message, commit.signature)
        except CryptoError as exc:
            raise BlockVerificationError(
                f"commit signature of {commit.signer} does not verify",
                height=header.height,
                reason="certificate",
            ) from exc
        signers.add(commit.signer)
    if len(signers) < quorum:
        raise BlockVerificationError(
            f"certificate has {len(signers)} valid signatures, {quorum} required",
            height=header.height,
            reason="certificate",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedState:
    """What appending a block does to the state, computed before the atomic write."""

    state_records: dict[bytes, bytes | None]
    history: list[tuple[bytes, int, bytes, Any]]
    tree_update: TreeUpdate


def prepare_state(
    reader: NodeReader,
    root: bytes,
    height: int,
    writes: Mapping[bytes, tuple[int, bytes, Any]],
    history: Sequence[tuple[bytes, int, bytes, Any]],
) -> PreparedState:
    """Turn a block's writes into flat records and the state tree update.

    ``writes`` maps each state key to its final (tx_index, tx_id, value or None) in the
    block; ``history`` lists every transaction's write (state key, tx_index, tx_id, value).
    """
    records: dict[bytes, bytes | None] = {}
    updates: dict[bytes, bytes | None] = {}
    for state_key, (index, _tx_id, value) in writes.items():
        key_hash = sha256(state_key)
        if value is None:
            records[state_key] = None
            updates[key_hash] = None
        else:
            record_bytes = encode_state_record(value, height, index)
            records[state_key] = record_bytes
            updates[key_hash] = sha256(record_bytes)
    tree_update = apply_updates(reader, root, updates)
    return PreparedState(state_records=records, history=list(history), tree_update=tree_update)
