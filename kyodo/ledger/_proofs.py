"""Self-contained proofs for auditors: a block, a transaction, or a key's value.

Theory of operation
-------------------
A *proof document* is a JSON object that lets someone who holds only the
network's genesis block check one statement offline, without trusting the
node that produced it:

* ``block``: the block at height h has this header (so these roots, this
  time, this proposer);
* ``tx``: transaction ``tx_id`` was ordered in block h, with this result;
* ``key``: at height h, ``namespace/key`` held this value, written at
  (height, tx index), or was absent.

The genesis block is the root of trust: its configuration (epoch 0) names the
validators and their signing keys. Everything else in the document is
untrusted and is checked in this order:

1. **Trust path.** Every configuration block before the target height, whole
   (canonical block bytes), oldest first. Each must be certified by a quorum
   of the validator set in force at its height (the configuration block of
   epoch e+1 is still ordered and certified under epoch e), say the epoch in
   force in its header, match its body (roots, ``config_hash``), and carry
   one configuration change that passes the admin policy of the epoch in
   force (:func:`~kyodo.ledger.verify_configuration_block`, the check every
   validator runs before it votes). Only then is its configuration adopted,
   in force from the next height. A forged configuration therefore needs both
   a quorum of the old validators and the admins' approvals.
2. **Target header.** The header of the block at the target height and its
   commit certificate: the header's epoch must be the one the trust path led
   to, its proposer one of that epoch's validators, and the certificate must
   hold signatures of a quorum of distinct validators of that epoch over the
   header's hash (:func:`~kyodo.ledger.verify_certificate`). Height 0 is the
   genesis header itself, with no certificate.
3. **Statement.** For ``tx``: RFC 6962 inclusion proofs of the envelope's
   canonical bytes under the header's ``txs_root`` and of the result's under
   its ``results_root`` (:mod:`kyodo.crypto._merkle`), at the same index, and
   the result naming the transaction. For ``key``: a state-tree proof
   (:class:`~kyodo.ledger.StateProof`) under the header's ``state_root`` of the
   key hash ``SHA-256(namespace 0x00 key)`` holding ``SHA-256(record)``, where
   the record is the flat-state record ``[value, height, tx_index]``, or of
   the key's absence. Old state-tree nodes are never deleted, so any historic
   root is provable.

Every value read from the document is type- and bounds-checked before use,
and every refusal raises :class:`ProofError` with a machine-readable
``reason``; no other exception leaves :func:`verify_proof_document`.

What a proof cannot show. The trust path is only as complete as its producer
made it: a proof that leaves out a later configuration block verifies only if
the target header says the older epoch and a quorum of that older validator
set signed it, which needs that old quorum's keys (the usual limit of a
light client; keep validator keys of past epochs safe or destroyed). The
header commits to the transactions' root but not to their number, and an
RFC 6962 path proves a leaf's position only relative to the tree size the
verifier assumes (see :mod:`kyodo.crypto._merkle`); so a ``tx`` proof shows
that the transaction and its result are in the block, and that the result is
that transaction's, but its index is not part of what is proven. An absence
proof that ends in an empty subtree, or at another key's leaf, also shows
the absence of every other key on the same path; that is a true statement,
not a weakness.

Document format (``"format": "kyodo-proof/v1"``), all bytes as lowercase hex::

    format, kind ("block" | "tx" | "key"), chain_id, genesis_hash,
    height, block_hash,
    trust_path:  [canonical configuration block, ...]   (oldest first)
    header:      canonical BlockHeader of the target
    certificate: [{"signer": node id, "signature": hex}, ...]
    tx:  {tx_id, index, tx_count, envelope, result, txs_path: [hash...],
          results_path: [hash...]}                              (kind "tx")
    key: {namespace, key, record (or null: absent),
          proof: {siblings, leaf_key_hash, leaf_value_hash}}     (kind "key")
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kyodo.codec import DecodeError, decode_record, decode_value, encode
from kyodo.crypto import MerkleProofError, compute_inclusion_proof, sha256, verify_inclusion
from kyodo.ledger._config_update import verify_configuration_block
from kyodo.ledger._epochs import ConfigView
from kyodo.ledger._state_tree import StateProof, compute_proof, verify_proof
from kyodo.ledger._store import LedgerStore, encode_state_key, encode_state_record
from kyodo.ledger._types import (
    Block,
    BlockHeader,
    CommitSignature,
    Transaction,
    TxEnvelope,
    TxResult,
)
from kyodo.ledger._verify import (
    CheckedTx,
    check_envelope,
    verify_block_contents,
    verify_certificate,
)
from kyodo.ledger.errors import (
    BlockVerificationError,
    LedgerError,
    StateProofError,
    StoredDataError,
    TransactionRejectedError,
)

__all__ = [
    "PROOF_FORMAT",
    "ProofError",
    "VerifiedProof",
    "build_block_proof",
    "build_key_proof",
    "build_tx_proof",
    "verify_proof_document",
]

PROOF_FORMAT = "kyodo-proof/v1"
"""The ``format`` of every proof document this module builds and verifies."""

_KINDS = ("block", "tx", "key")

# Limits on what a document may hold; anything larger is refused before it is decoded.
MAX_TRUST_PATH = 4096
"""Most configuration blocks in a trust path."""
MAX_BLOCK_BYTES = 8 * 1024 * 1024
"""Largest configuration block (canonical bytes)."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest block header (canonical bytes)."""
MAX_CERTIFICATE = 1024
"""Most commit signatures in a certificate."""
MAX_NAME_CHARS = 1024
"""Longest signer id."""
MAX_SIGNATURE_BYTES = 512
"""Largest commit signature."""
MAX_ENVELOPE_BYTES = 2 * 1024 * 1024
"""Largest transaction envelope (canonical bytes)."""
MAX_RESULT_BYTES = 16 * 1024 * 1024
"""Largest transaction result or state record (canonical bytes)."""
MAX_TX_COUNT = 1 << 32
"""Largest transaction count a ``tx`` proof may claim for its block."""
MAX_MERKLE_PATH = 64
"""Most hashes in an RFC 6962 inclusion path (a tree of up to 2**64 leaves)."""
MAX_KEY_CHARS = 64 * 1024
"""Longest namespace or key."""
MAX_HEIGHT = 2**63 - 1
"""Largest block height."""

_HASH_LEN = 32
_R = TypeVar("_R")
_COMMON_FIELDS = frozenset(
    {
        "format",
        "kind",
        "chain_id",
        "genesis_hash",
        "height",
        "block_hash",
        "trust_path",
        "header",
        "certificate",
    }
)
_TX_FIELDS = frozenset(
    {"tx_id", "index", "tx_count", "envelope", "result", "txs_path", "results_path"}
)
_KEY_FIELDS = frozenset({"namespace", "key", "record", "proof"})


class ProofError(LedgerError):
    """A proof document does not prove what it claims, or cannot be built.

    Attributes:
        reason: what failed, machine-readable: ``malformed`` (types, sizes, hex,
            encoding, fields), ``format`` (an unknown format or kind), ``genesis``
            (another network's genesis, or an unusable genesis block),
            ``chain_id``, ``config`` (a trust-path configuration block that does not
            check), ``certificate`` (a commit certificate or proposer that does not
            check), ``epoch`` (the target header's epoch is not the one in force),
            ``stale`` (heights or hashes that do not belong together), ``inclusion``
            (a transaction or result not under the header's roots), ``state`` (a
            state proof that does not lead to the header's state root),
            ``wrong_key`` (a proof of another key), ``not_found`` (builders: no such
            block, transaction or height), ``unexpected`` (a failure the checks did
            not classify; still a refusal).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedProof:
    """What a verified proof document proves: every field is certified."""

    kind: str
    """``block``, ``tx`` or ``key``."""
    chain_id: str
    height: int
    """The height of the block the statement is about."""
    block_hash: bytes
    """That block's hash (of its certified header)."""
    header: BlockHeader
    """That block's certified header."""
    tx_id: bytes | None = None
    """``tx``: the transaction id (SHA-256 of its payload)."""
    status: int | None = None
    """``tx``: the transaction's :class:`~kyodo.ledger.TxStatus` value."""
    result: Any = None
    """``tx``: the function's return value (None unless OK). ``key``: unused."""
    transaction: Transaction | None = None
    """``tx``: the decoded, signed transaction (contract, function, args, creator)."""
    tx_result: TxResult | None = None
    """``tx``: the whole result record (status, result, message, events)."""
    namespace: str | None = None
    """``key``: the contract namespace."""
    key: str | None = None
    """``key``: the key within the namespace."""
    value: Any = None
    """``key``: the value at ``height``, or None if the key was absent."""
    version: tuple[int, int] | None = None
    """``key``: (height, tx index) of the write that set ``value``; None if absent."""

    def to_dict(self) -> dict[str, Any]:
        """The statement as JSON-ready data (bytes as ``{"hex": ...}`` inside values)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "chain_id": self.chain_id,
            "height": self.height,
            "block_hash": self.block_hash.hex(),
            "epoch": self.header.epoch,
            "timestamp_ms": self.header.timestamp_ms,
            "proposer": self.header.proposer,
            "txs_root": self.header.txs_root.hex(),
            "results_root": self.header.results_root.hex(),
            "state_root": self.header.state_root.hex(),
        }
        if self.kind == "tx":
            assert self.tx_id is not None and self.tx_result is not None
            assert self.transaction is not None
            out.update(
                tx_id=self.tx_id.hex(),
                contract=self.transaction.contract,
                function=self.transaction.function,
                args=_jsonable(list(self.transaction.args)),
                status=self.status,
                result=_jsonable(self.result),
                message=self.tx_result.message,
            )
        elif self.kind == "key":
            out.update(
                namespace=self.namespace,
                key=self.key,
                present=self.version is not None,
                value=_jsonable(self.value),
                version=None if self.version is None else list(self.version),
            )
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# Building proofs from a store


def build_block_proof(store: LedgerStore, height: int) -> dict[str, Any]:
    """A ``block`` proof of the header at ``height`` (raises ProofError ``not_found``)."""
    block = _stored_block(store, height)
    return _document(store, "block", block)


def build_tx_proof(store: LedgerStore, tx_id: bytes) -> dict[str, Any]:
    """A ``tx`` proof that ``tx_id`` was ordered, with its result.

    Raises ProofError (``not_found``) if the transaction is not in the store.
    """
    location = store.get_tx_location(bytes(tx_id))
    if location is None:
        raise ProofError(
            f"transaction {bytes(tx_id).hex()} is not in the ledger", reason="not_found"
        )
    height, index = location
    block = _stored_block(store, height)
    if index >= len(block.txs) or block.txs[index].tx_id() != tx_id:
        raise StoredDataError(
            f"the transaction index points at transaction {index}, which is not {tx_id.hex()}",
            height=height,
        )
    tx_leaves = [encode(envelope) for envelope in block.txs]
    result_leaves = [encode(result) for result in block.results]
    section = {
        "tx_id": bytes(tx_id).hex(),
        "index": index,
        "tx_count": len(tx_leaves),
        "envelope": tx_leaves[index].hex(),
        "result": result_leaves[index].hex(),
        "txs_path": [h.hex() for h in compute_inclusion_proof(tx_leaves, index)],
        "results_path": [h.hex() for h in compute_inclusion_proof(result_leaves, index)],
    }
    doc = _document(store, "tx", block)
    doc["tx"] = section
    return doc


def build_key_proof(
    store: LedgerStore, namespace: str, key: str, at_height: int | None = None
) -> dict[str, Any]:
    """A ``key`` proof of ``namespace/key`` at ``at_height`` (default: the tip).

    The record is the key's flat-state record if its last write is at or before
    ``at_height``, else rebuilt from the key's history (the last write at or
    before ``at_height``; a deleting write, or none, means absent). It is checked
    against the state tree's leaf under that height's state root before it is
    returned. Raises ProofError (``not_found`` for a height past the tip,
    ``wrong_key`` for a namespace or key containing NUL).
    """
    if "\x00" in namespace or "\x00" in key:
        raise ProofError("a namespace or key cannot contain NUL", reason="wrong_key")
    tip = store.height()
    height = tip if at_height is None else at_height
    if tip is None or height is None or not 0 <= height <= tip:
        raise ProofError(f"no block at height {at_height} (tip {tip})", reason="not_found")
    block = _stored_block(store, height)
    state_key = encode_state_key(namespace, key)
    key_hash = sha256(state_key)
    proof = compute_proof(store, block.header.state_root, key_hash)
    record = _record_at(store, namespace, key, height)
    proven = proof.leaf_value_hash if proof.leaf_key_hash == key_hash else None
    if proven != (None if record is None else sha256(record)):
        raise StoredDataError(
            f"the stored value of {namespace}/{key} does not match the certified state tree",
            height=height,
        )
    doc = _document(store, "key", block)
    doc["key"] = {
        "namespace": namespace,
        "key": key,
        "record": None if record is None else record.hex(),
        "proof": proof.to_dict(),
    }
    return doc


def _record_at(store: LedgerStore, namespace: str, key: str, height: int) -> bytes | None:
    """The flat-state record ``namespace/key`` had after block ``height``, or None."""
    current = store.get_state_record(encode_state_key(namespace, key))
    if current is not None:
        try:
            _value, written_at, _index = decode_value(current)
        except (DecodeError, ValueError, TypeError) as exc:
            raise StoredDataError(f"state record of {namespace}/{key} does not decode") from exc
        if written_at <= height:  # no write since: the current record was in force then
            return current
    last = None
    for entry in store.get_history(namespace, key, limit=sys.maxsize):
        if entry.height > height:
            break
        last = entry
    if last is None or last.value is None:
        return None
    return encode_state_record(last.value, last.height, last.tx_index)


def _stored_block(store: LedgerStore, height: int) -> Block:
    block = store.get_block(height) if 0 <= height <= MAX_HEIGHT else None
    if block is None:
        raise ProofError(f"no block at height {height}", reason="not_found")
    return block


def _document(store: LedgerStore, kind: str, block: Block) -> dict[str, Any]:
    """The fields every proof has: identity of the network, trust path, target header."""
    genesis_hash = store.genesis_hash()
    assert genesis_hash is not None, "a store with a block has a genesis block"
    header = block.header
    return {
        "format": PROOF_FORMAT,
        "kind": kind,
        "chain_id": header.chain_id,
        "genesis_hash": genesis_hash.hex(),
        "height": header.height,
        "block_hash": header.block_hash().hex(),
        "trust_path": [raw.hex() for raw in _trust_path(store, header.height)],
        "header": encode(header).hex(),
        "certificate": [
            {"signer": c.signer, "signature": c.signature.hex()} for c in block.certificate
        ],
    }


def _trust_path(store: LedgerStore, height: int) -> list[bytes]:
    """Canonical bytes of every configuration block below ``height``, oldest first."""
    out: list[bytes] = []
    for first, config in store.get_configs():
        if config.epoch == 0 or first > height:
            continue
        raw = store.get_block_bytes(first - 1)
        block = store.get_block(first - 1)
        if raw is None or block is None or block.config != config:
            raise StoredDataError(
                f"configuration epoch {config.epoch} is not carried by block {first - 1}",
                height=first - 1,
            )
        out.append(raw)
    return out


# ---------------------------------------------------------------------------
# Verifying a document


def verify_proof_document(doc: Mapping[str, Any], genesis: Block) -> VerifiedProof:
    """Check a proof document against ``genesis`` alone; return what it proves.

    Raises :class:`ProofError` (and nothing else, whatever ``doc`` holds) if any
    check fails; see the module documentation for the checks and their order.
    """
    try:
        return _verify(doc, genesis)
    except ProofError:
        raise
    except Exception as exc:
        # Every check above raises ProofError itself; this keeps the contract (a
        # verdict, never a crash) should a library below raise a type it does not
        # document for hostile input. A refusal is the safe direction.
        raise ProofError(
            f"the proof could not be checked: {type(exc).__name__}: {exc}", reason="unexpected"
        ) from exc


def _verify(doc: Mapping[str, Any], genesis: Block) -> VerifiedProof:
    genesis_view = _genesis_view(genesis)
    chain_id = genesis_view.config.chain_id
    if not isinstance(doc, Mapping):
        raise ProofError("a proof document must be a JSON object", reason="malformed")
    if doc.get("format") != PROOF_FORMAT:
        raise ProofError(
            f"unknown proof format {_show(doc.get('format'))}; expected {PROOF_FORMAT}",
            reason="format",
        )
    kind = doc.get("kind")
    if kind not in _KINDS:
        raise ProofError(f"unknown proof kind {_show(kind)}", reason="format")
    _require_fields(doc, _COMMON_FIELDS | ({kind} if kind != "block" else set()), "proof")
    claimed_chain = _text(doc["chain_id"], "chain_id", MAX_NAME_CHARS)
    if claimed_chain != chain_id:
        raise ProofError(
            f"the proof is for network {claimed_chain!r}, the genesis block for {chain_id!r}",
            reason="chain_id",
        )
    if _hex(doc["genesis_hash"], "genesis_hash", exact=_HASH_LEN) != genesis.block_hash():
        raise ProofError("the proof is for another genesis block", reason="genesis")
    height = _integer(doc["height"], "height", 0, MAX_HEIGHT)
    block_hash = _hex(doc["block_hash"], "block_hash", exact=_HASH_LEN)
    header = _decode(BlockHeader, _hex(doc["header"], "header", MAX_HEADER_BYTES), "header")
    certificate = _certificate(doc["certificate"])
    if header.height != height:
        raise ProofError(
            f"the proof claims height {height} but its header is of height {header.height}",
            reason="stale",
        )
    if header.block_hash() != block_hash:
        raise ProofError("the proof's block hash is not its header's hash", reason="stale")
    if header.chain_id != chain_id:
        raise ProofError(f"the header is for network {header.chain_id!r}", reason="chain_id")
    view, last_time = _follow_trust_path(doc["trust_path"], genesis, genesis_view, height)
    _check_target(header, certificate, view, genesis, last_time)
    proven = VerifiedProof(
        kind="block", chain_id=chain_id, height=height, block_hash=block_hash, header=header
    )
    if kind == "tx":
        return _verify_tx(doc["tx"], proven)
    if kind == "key":
        return _verify_key(doc["key"], proven)
    return proven


def _genesis_view(genesis: Block) -> ConfigView:
    """The trusted genesis configuration, checked to be a usable genesis block."""
    if not isinstance(genesis, Block) or genesis.config is None or genesis.header.height != 0:
        raise ProofError("the trusted genesis is not a genesis block", reason="genesis")
    if sha256(encode(genesis.config)) != genesis.header.config_hash:
        raise ProofError("the genesis configuration does not match its header", reason="genesis")
    if not genesis.config.validators():
        raise ProofError("the genesis configuration has no validators", reason="genesis")
    try:
        return ConfigView.of(genesis.config)
    except LedgerError as exc:
        raise ProofError(f"the genesis configuration is unusable: {exc}", reason="genesis") from exc


def _follow_trust_path(
    raw_path: object, genesis: Block, view: ConfigView, target: int
) -> tuple[ConfigView, int]:
    """The configuration in force at ``target`` and the last trusted block time."""
    items = _list(raw_path, "trust_path", MAX_TRUST_PATH)
    previous = 0
    last_time = genesis.header.timestamp_ms
    for position, item in enumerate(items):
        where = f"trust_path[{position}]"
        raw = _hex(item, where, MAX_BLOCK_BYTES)
        block = _decode(Block, raw, where)
        header = block.header
        if header.chain_id != view.config.chain_id:
            raise ProofError(f"{where} is for network {header.chain_id!r}", reason="config")
        if block.config is None:
            raise ProofError(
                f"{where} (height {header.height}) is not a configuration block", reason="config"
            )
        if not previous < header.height < target:
            raise ProofError(
                f"{where} is at height {header.height}; configuration blocks must be in "
                f"height order and before the target height {target}",
                reason="config",
            )
        if header.timestamp_ms < last_time:
            raise ProofError(f"{where} is timed before the block before it", reason="config")
        view = _next_view(block, view, where)
        previous = header.height
        last_time = header.timestamp_ms
    return view, last_time


def _next_view(block: Block, view: ConfigView, where: str) -> ConfigView:
    """Check a configuration block under ``view`` and return the view it brings."""
    header = block.header
    config = block.config
    assert config is not None
    if header.epoch != view.config.epoch:
        raise ProofError(
            f"{where} says epoch {header.epoch}, but epoch {view.config.epoch} is in force",
            reason="config",
        )
    _check_proposer(header, view, where)
    try:
        view.check_certificate(block)
    except BlockVerificationError as exc:
        raise ProofError(f"{where}: {exc}", reason="certificate") from exc
    if config.epoch != view.config.epoch + 1 or config.chain_id != view.config.chain_id:
        raise ProofError(
            f"{where} brings epoch {config.epoch} of {config.chain_id!r}; epoch "
            f"{view.config.epoch + 1} of {view.config.chain_id!r} is next",
            reason="config",
        )
    if not config.validators():
        raise ProofError(f"{where} brings a configuration without validators", reason="config")
    try:
        verify_block_contents(block)
        checked = [_check_config_tx(envelope, block, view) for envelope in block.txs]
        verify_configuration_block(block, checked, view)
        return ConfigView.of(config)
    except (BlockVerificationError, TransactionRejectedError, LedgerError) as exc:
        raise ProofError(f"{where}: {exc}", reason="config") from exc


def _check_config_tx(envelope: TxEnvelope, block: Block, view: ConfigView) -> CheckedTx:
    """The transaction of a configuration block, checked as validators checked it."""
    return check_envelope(
        envelope,
        membership=view.membership,
        chain_id=view.config.chain_id,
        now_ms=block.header.timestamp_ms,
        max_age_ms=view.config.consensus.tx_max_age_ms,
    )


def _check_proposer(header: BlockHeader, view: ConfigView, where: str) -> None:
    if header.proposer not in view.validators:
        raise ProofError(
            f"{where}: proposer {header.proposer!r} is not a validator of epoch "
            f"{view.config.epoch}",
            reason="certificate",
        )


def _check_target(
    header: BlockHeader,
    certificate: tuple[CommitSignature, ...],
    view: ConfigView,
    genesis: Block,
    last_time: int,
) -> None:
    """The target header is certified by the validators in force at its height."""
    if header.height == 0:
        if header != genesis.header or certificate:
            raise ProofError("the header of height 0 is not the genesis header", reason="genesis")
        return
    if header.epoch != view.config.epoch:
        raise ProofError(
            f"the header says epoch {header.epoch}, but the trust path leads to epoch "
            f"{view.config.epoch} at height {header.height}",
            reason="epoch",
        )
    if header.timestamp_ms < last_time:
        raise ProofError("the header is timed before the last configuration block", reason="stale")
    _check_proposer(header, view, "header")
    try:
        verify_certificate(
            header,
            certificate,
            config=view.config,
            signer_keys=view.signer_keys,
            quorum=view.quorum,
        )
    except BlockVerificationError as exc:
        raise ProofError(str(exc), reason="certificate") from exc


def _verify_tx(section: object, proven: VerifiedProof) -> VerifiedProof:
    fields = _require_fields(section, _TX_FIELDS, "tx")
    header = proven.header
    tx_id = _hex(fields["tx_id"], "tx.tx_id", exact=_HASH_LEN)
    count = _integer(fields["tx_count"], "tx.tx_count", 1, MAX_TX_COUNT)
    index = _integer(fields["index"], "tx.index", 0, count - 1)
    raw_envelope = _hex(fields["envelope"], "tx.envelope", MAX_ENVELOPE_BYTES)
    raw_result = _hex(fields["result"], "tx.result", MAX_RESULT_BYTES)
    txs_path = _hash_list(fields["txs_path"], "tx.txs_path")
    results_path = _hash_list(fields["results_path"], "tx.results_path")
    envelope = _decode(TxEnvelope, raw_envelope, "tx.envelope")
    result = _decode(TxResult, raw_result, "tx.result")
    if envelope.tx_id() != tx_id:
        raise ProofError("the envelope is not the transaction tx_id names", reason="inclusion")
    if result.tx_id != tx_id:
        raise ProofError("the result is for another transaction", reason="inclusion")
    try:
        verify_inclusion(raw_envelope, index, count, txs_path, header.txs_root)
    except MerkleProofError as exc:
        raise ProofError(
            f"the transaction is not under the header's transactions root: {exc}",
            reason="inclusion",
        ) from exc
    try:
        verify_inclusion(raw_result, index, count, results_path, header.results_root)
    except MerkleProofError as exc:
        raise ProofError(
            f"the result is not under the header's results root: {exc}", reason="inclusion"
        ) from exc
    try:
        transaction = envelope.transaction()
    except DecodeError as exc:
        raise ProofError(f"the transaction does not decode: {exc}", reason="malformed") from exc
    return VerifiedProof(
        kind="tx",
        chain_id=proven.chain_id,
        height=proven.height,
        block_hash=proven.block_hash,
        header=header,
        tx_id=tx_id,
        status=result.status,
        result=result.result,
        transaction=transaction,
        tx_result=result,
    )


def _verify_key(section: object, proven: VerifiedProof) -> VerifiedProof:
    fields = _require_fields(section, _KEY_FIELDS, "key")
    header = proven.header
    namespace = _text(fields["namespace"], "key.namespace", MAX_KEY_CHARS)
    key = _text(fields["key"], "key.key", MAX_KEY_CHARS)
    if "\x00" in namespace or "\x00" in key:
        raise ProofError("a namespace or key cannot contain NUL", reason="malformed")
    raw_record = fields["record"]
    record = None if raw_record is None else _hex(raw_record, "key.record", MAX_RESULT_BYTES)
    try:
        proof = StateProof.from_dict(fields["proof"])
    except StateProofError as exc:
        raise ProofError(f"key.proof: {exc}", reason="malformed") from exc
    key_hash = sha256(encode_state_key(namespace, key))
    value: Any = None
    version: tuple[int, int] | None = None
    value_hash: bytes | None = None
    if record is not None:
        value, version = _state_record(record, header.height)
        value_hash = sha256(record)
        if proof.leaf_key_hash is not None and proof.leaf_key_hash != key_hash:
            raise ProofError(
                f"the proof is for another key than {namespace}/{key}", reason="wrong_key"
            )
    try:
        verify_proof(header.state_root, key_hash, value_hash, proof)
    except StateProofError as exc:
        raise ProofError(str(exc), reason="state") from exc
    return VerifiedProof(
        kind="key",
        chain_id=proven.chain_id,
        height=proven.height,
        block_hash=proven.block_hash,
        header=header,
        namespace=namespace,
        key=key,
        value=value,
        version=version,
    )


def _state_record(record: bytes, height: int) -> tuple[Any, tuple[int, int]]:
    """(value, (height, tx index)) of a flat-state record, checked."""
    try:
        plain = decode_value(record, max_size=MAX_RESULT_BYTES)
    except DecodeError as exc:
        raise ProofError(f"key.record does not decode: {exc}", reason="malformed") from exc
    if type(plain) is not list or len(plain) != 3:
        raise ProofError("key.record is not [value, height, tx_index]", reason="malformed")
    value, written_at, index = plain
    if type(written_at) is not int or type(index) is not int or written_at < 0 or index < 0:
        raise ProofError("key.record has no valid (height, tx_index)", reason="malformed")
    if value is None:
        raise ProofError("key.record holds no value (a deleted key is absent)", reason="malformed")
    if written_at > height:
        raise ProofError(
            f"key.record was written at height {written_at}, after the proof's height {height}",
            reason="stale",
        )
    return value, (written_at, index)


# ---------------------------------------------------------------------------
# Reading untrusted document fields


def _show(value: object) -> str:
    """A short description of an untrusted value for a message (never its whole repr)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
    if value is None or (isinstance(value, bool | int) and abs(value) < 2**64):
        return repr(value)
    return f"a {type(value).__name__}"


def _require_fields(
    section: object, expected: frozenset[str] | set[str], where: str
) -> Mapping[str, Any]:
    if not isinstance(section, Mapping):
        raise ProofError(f"{where} must be a JSON object", reason="malformed")
    keys = set(section)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(_show(k) for k in keys - expected)
        raise ProofError(
            f"{where} fields differ from the format: missing {missing}, unexpected {extra}",
            reason="malformed",
        )
    return section


def _text(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or len(value) > max_chars:
        raise ProofError(
            f"{what} must be a string of at most {max_chars} characters", reason="malformed"
        )
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ProofError(f"{what} is not valid Unicode", reason="malformed") from None
    return value


def _integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ProofError(f"{what} must be an integer in [{low}, {high}]", reason="malformed")
    return value


def _hex(value: object, what: str, max_bytes: int = 0, *, exact: int | None = None) -> bytes:
    """Lowercase hex of at most ``max_bytes`` (or exactly ``exact``) bytes, decoded."""
    limit = exact if exact is not None else max_bytes
    if not isinstance(value, str) or len(value) > 2 * limit or len(value) % 2:
        raise ProofError(f"{what} must be hex of at most {limit} bytes", reason="malformed")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ProofError(f"{what} is not hex", reason="malformed") from None
    if raw.hex() != value:  # refuses upper case and whitespace: one spelling per document
        raise ProofError(f"{what} must be lowercase hex", reason="malformed")
    if exact is not None and len(raw) != exact:
        raise ProofError(f"{what} must be {exact} bytes", reason="malformed")
    return raw


def _list(value: object, what: str, max_items: int) -> Sequence[Any]:
    if not isinstance(value, list | tuple) or len(value) > max_items:
        raise ProofError(f"{what} must be a list of at most {max_items} items", reason="malformed")
    return value


def _hash_list(value: object, what: str) -> list[bytes]:
    items = _list(value, what, MAX_MERKLE_PATH)
    return [_hex(item, f"{what}[{i}]", exact=_HASH_LEN) for i, item in enumerate(items)]


def _certificate(value: object) -> tuple[CommitSignature, ...]:
    out = []
    for i, item in enumerate(_list(value, "certificate", MAX_CERTIFICATE)):
        fields = _require_fields(item, {"signer", "signature"}, f"certificate[{i}]")
        out.append(
            CommitSignature(
                signer=_text(fields["signer"], f"certificate[{i}].signer", MAX_NAME_CHARS),
                signature=_hex(
                    fields["signature"], f"certificate[{i}].signature", MAX_SIGNATURE_BYTES
                ),
            )
        )
    return tuple(out)


def _decode(cls: type[_R], raw: bytes, what: str) -> _R:
    try:
        return decode_record(cls, raw, max_size=len(raw))
    except DecodeError as exc:
        raise ProofError(f"{what} does not decode: {exc}", reason="malformed") from exc
