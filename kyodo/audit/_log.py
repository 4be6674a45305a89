"""The tamper-evident audit log: every API call and admin action, hash-chained and Merkle-rooted.

Theory of operation
-------------------
Each audited event is one :class:`AuditRecord` (who, from where, over which
transport, what, about which subject, the decision and the rule behind it,
and the SHA-256 of the response, never the data itself). Records are numbered
``seq = 0, 1, 2, ...`` with no gaps. A record's *hash* is the SHA-256 of its
canonical encoding (:func:`kyodo.codec.encode`). Two structures are built over
these hashes, and they protect against different things:

* a **hash chain**: each record carries ``prev_hash``, the hash of the record
  before it (32 zero bytes for record 0). Anyone holding a contiguous run of
  records sees that nothing inside the run was changed, removed, inserted or
  reordered without trusting anything else, and the background verifier
  (:meth:`AuditLog.verify_chain`) checks the stored log the same way;
* an **RFC 6962 / RFC 9162 Merkle tree** whose leaves are the record hashes
  (leaf ``i`` is ``SHA-256(0x00 || hash(record i))``, see
  :mod:`kyodo.crypto._merkle`). Its root over records ``[0, n)`` commits to
  all of them with 32 bytes. A node signs (size, root) in an
  :class:`AuditCheckpoint` and the lead anchors checkpoints on the ledger. An
  inclusion proof then ties a single exported record to a signed root, and a
  consistency proof shows that the log of a later checkpoint extends the log
  of an earlier one (nothing was rewritten, only appended).

**The frontier.** The tree of ``n`` leaves is the fold of the complete
subtrees that the binary digits of ``n`` give (for 13 = 8 + 4 + 1: the
subtrees over ``[0, 8)``, ``[8, 12)``, ``[12, 13)``). The log keeps these
O(log n) hashes in memory as a stack. Appending a leaf pushes it and merges
the top two while they have the same height, as a binary counter carries, so
an append costs amortized one extra hash. ``root()`` folds the stack from the
right in O(log n).

**Stored subtrees.** Every complete subtree the frontier ever builds is also
written, keyed by (height, index), in the same batch as its record. The tree
hash of *any* aligned range is then the fold of at most log n stored nodes.
So ``root(size)`` of an older size, inclusion proofs and consistency proofs
are O(log n) to O(log^2 n) reads, however long the log is. Proofs follow the
recursive definitions of RFC 9162 sections 2.1.3.1 and 2.1.4.1, evaluated
over stored nodes. Verification uses :mod:`kyodo.crypto` unchanged.

Storage
-------
One RocksDB database (through ``rocksdict``, as :mod:`kyodo.ledger._store`)
at ``path``, with column families:

* ``records``     seq (8 bytes big-endian) -> canonical record bytes
* ``nodes``       height (1) + index (8) -> 32-byte subtree hash (height 0 = leaf hash)
* ``by_time``     time_ms (8) + seq (8) -> empty (query index)
* ``by_identity`` len(identity) (2) + identity (UTF-8) + time_ms (8) + seq (8) -> empty
* ``meta``        ``head`` -> size (8) + hash of the last record (32)

An append writes all of these in **one atomic WriteBatch**, under a lock, so
records reach the write-ahead log in seq order. The database is opened with
point-in-time WAL recovery, so after a crash it reopens at a prefix of the
appended records, never with a hole. By default the batch is not fsynced:
a killed process loses nothing (the WAL is written to the OS on every
append), and a power loss can lose only the unsynced tail. A synced write
costs about 50 us on this machine, as much as the whole append budget.
:meth:`AuditLog.sync` fsyncs the WAL, :meth:`AuditLog.checkpoint` syncs
before it signs (a node must never sign a root over records it could lose),
and ``sync_writes=True`` syncs every append.

The indexes only speed up :meth:`AuditLog.query`. A query re-checks every
record it returns against the filter, so a falsified index entry can hide a
record from a query but never add one. :meth:`AuditLog.verify_chain` checks
that each record has its index entries. Queries are for operators; proof
comes from exports.

Threads
-------
Appends come from the asyncio loop thread (the gateway) and from worker
threads. One lock orders them: it assigns ``seq``, chains ``prev_hash``,
updates the frontier and writes the batch. Reads (``get``, ``iter``,
``query``, proofs over sizes already appended, ``verify_chain``) take the
lock only to read the current size, because stored records and nodes never
change once written.

Export and verification
-----------------------
:meth:`AuditLog.export` produces a JSON document (format
``kyodo-audit-export/v1``, documented on :meth:`AuditLog.export`).
:func:`verify_export` checks it strictly: exact key sets, lowercase hex,
canonical encodings, fields equal to the encoding, contiguous seqs, inclusion
proofs against the root, chain links, and, given a checkpoint or a public
key, the signed root. A changed, removed, reordered or inserted record raises
:class:`~kyodo.audit.errors.AuditVerificationError` naming the record. Any
other malformed input raises the same error, never another exception.

Why this is hand-written
------------------------
The primitives already exist: canonical CBOR in :mod:`kyodo.codec`, RFC 9162
proofs and Ed25519 in :mod:`kyodo.crypto`. What this module adds is the
record layout, the storage keys and the export document. Those are Kyodo's
own, and no library provides them. A transparency-log server such as
Trillian or Tessera would be a separate Go service to run, for a few hundred
lines of Python. :mod:`kyodo.crypto`'s proof functions take the whole leaf
list, which would make every proof O(n) over a log of millions of records.
So the same RFC definitions are evaluated here over stored subtrees. The
tests check them against :mod:`kyodo.crypto`'s functions on every size up to
a few dozen leaves.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

from rocksdict import DBRecoveryMode, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from kyodo.audit.errors import AuditStoreError, AuditVerificationError
from kyodo.codec import DecodeError, decode_record, encode, encode_value, record
from kyodo.crypto import (
    ED25519,
    HASH_SIZE,
    ZERO_HASH,
    InvalidSignatureError,
    MerkleProofError,
    Signer,
    hash_children,
    hash_leaf,
    merkle_root,
    merkle_root_of_hashes,
    sha256,
    verify_inclusion_hash,
    verify_signature,
)

__all__ = [
    "CHECKPOINT_DOMAIN",
    "DECISIONS",
    "EXPORT_FORMAT",
    "MAX_EXPORT_RECORDS",
    "MAX_QUERY_LIMIT",
    "MAX_RECORD_BYTES",
    "TEXT_LIMITS",
    "TRANSPORTS",
    "AuditCheckpoint",
    "AuditLog",
    "AuditRecord",
    "ExportReport",
    "checkpoint_message",
    "compute_record_hash",
    "verify_checkpoint",
    "verify_export",
]

EXPORT_FORMAT: Final = "kyodo-audit-export/v1"
"""The ``format`` of an export document."""

CHECKPOINT_DOMAIN: Final = b"kyodo/audit-checkpoint/v1\x00"
"""Prefix of the signed checkpoint message: no other Kyodo signature can pass for one."""

DECISIONS: Final = ("allowed", "refused")
"""The possible ``decision`` values of a record."""

TRANSPORTS: Final = ("grpc", "rest", "admin")
"""The possible ``transport`` values of a record. A new transport is added here.
The encoding does not change, because the field is a string."""

TEXT_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "identity": 512,
        "tls_identity": 512,
        "peer": 256,
        "operation": 128,
        "subject": 1024,
        "rule": 256,
        "detail": 1024,
    }
)
"""Longest value, in characters, of each text field. :meth:`AuditLog.append`
truncates longer values (a refused client's presented subject is chosen by
the client), and a record holding a longer value does not decode."""

MAX_RECORD_BYTES: Final = 16 * 1024
"""Largest canonical encoding of a record (the text limits keep records far below it)."""

MAX_EXPORT_RECORDS: Final = 100_000
"""Most records in one export document; export a longer range in pages."""

MAX_QUERY_LIMIT: Final = 10_000
"""Largest ``limit`` of :meth:`AuditLog.query`."""

_MAX_SEQ = 2**63 - 1
_MAX_PROOF_HASHES = 64
_TRUNCATION_MARK = "…"
_EMPTY_ROOT = merkle_root_of_hashes([])
_HEX = re.compile(r"(?:[0-9a-f]{2})*")

_SEQ = struct.Struct(">Q")
_NODE = struct.Struct(">BQ")
_TIME_SEQ = struct.Struct(">QQ")
_LEN = struct.Struct(">H")
_HEAD_KEY = b"head"
_CFS = ("records", "nodes", "by_time", "by_identity", "meta")


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def _check_text(name: str, value: object) -> None:
    if type(value) is not str:
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > TEXT_LIMITS[name]:
        raise ValueError(f"{name} is longer than {TEXT_LIMITS[name]} characters")


def _check_count(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _MAX_SEQ:
        raise ValueError(f"{name} must be in [0, 2**63), got {value}")


@record(80)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One audited event: an API call (allowed or refused) or an admin action."""

    seq: int
    """Position in the log: 0 for the first record, then each record is the last + 1."""
    time_ms: int
    """When the node recorded the event, in ms since the epoch (the node's clock)."""
    identity: str
    """Who acted. ``org/role/name`` of an authenticated caller, ``anonymous``, or
    ``presented:<certificate subject>`` for a certificate that did not authenticate."""
    tls_identity: str
    """``org/role/name`` of the TLS client certificate (may differ from a request's signer)."""
    peer: str
    """The caller's network address, as the transport reports it."""
    transport: str
    """How the call arrived: one of :data:`TRANSPORTS`."""
    operation: str
    """The method or admin action (``submit``, ``get_block``, ``config.update``...)."""
    subject: str
    """What the call was about (``tx:<hex>``, ``height:5``, ``contract:name/fn``,
    ``keys:...``), or empty."""
    decision: str
    """``allowed`` or ``refused``."""
    rule: str
    """The ACL rule that allowed the call, or the refusal code; may be empty."""
    detail: str
    """A short free-text detail (a refusal's message); may be empty."""
    response_sha256: bytes
    """SHA-256 of the response body (32 bytes), or empty when there was none."""
    prev_hash: bytes
    """Hash of record ``seq - 1`` (32 bytes); 32 zero bytes for record 0."""

    def __post_init__(self) -> None:
        _check_count("seq", self.seq)
        _check_count("time_ms", self.time_ms)
        for name in TEXT_LIMITS:
            _check_text(name, getattr(self, name))
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if type(self.response_sha256) is not bytes or len(self.response_sha256) not in (0, 32):
            raise ValueError("response_sha256 must be 32 bytes or empty")
        if type(self.prev_hash) is not bytes or len(self.prev_hash) != HASH_SIZE:
            raise ValueError(f"prev_hash must be {HASH_SIZE} bytes")
        if self.seq == 0 and self.prev_hash != ZERO_HASH:
            raise ValueError("record 0 must have 32 zero bytes as prev_hash")


@record(81)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditCheckpoint:
    """A node's signed statement that its audit log of ``size`` records has ``root``."""

    node_id: str
    """The node whose log this is."""
    size: int
    """Number of records covered: the records ``[0, size)``."""
    root: bytes
    """RFC 6962 Merkle root over the hashes of records ``[0, size)`` (32 bytes)."""
    time_ms: int
    """When the node signed, in ms since the epoch."""
    signature: bytes
    """Ed25519 signature (64 bytes) over :func:`checkpoint_message` of the fields above."""

    def __post_init__(self) -> None:
        if type(self.node_id) is not str or len(self.node_id) > 256:
            raise ValueError("node_id must be a str of at most 256 characters")
        _check_count("size", self.size)
        _check_count("time_ms", self.time_ms)
        if type(self.root) is not bytes or len(self.root) != HASH_SIZE:
            raise ValueError(f"root must be {HASH_SIZE} bytes")
        if type(self.signature) is not bytes or len(self.signature) != 64:
            raise ValueError("signature must be 64 bytes (Ed25519)")


def compute_record_hash(rec: AuditRecord) -> bytes:
    """The hash of a record: SHA-256 of its canonical encoding."""
    return sha256(encode(rec))


def checkpoint_message(*, node_id: str, size: int, root: bytes, time_ms: int) -> bytes:
    """The bytes an :class:`AuditCheckpoint` signature covers.

    ``CHECKPOINT_DOMAIN`` followed by the canonical encoding of
    ``[node_id, size, root, time_ms]``. The domain prefix keeps a checkpoint
    signature from ever being taken for a signature over anything else a node
    signs.
    """
    return CHECKPOINT_DOMAIN + encode_value([node_id, size, root, time_ms])


def verify_checkpoint(cp: AuditCheckpoint, public_key: bytes) -> None:
    """Check a checkpoint's Ed25519 signature under ``public_key`` (32 raw bytes).

    Raises:
        AuditVerificationError: ``reason`` ``public_key`` when the key is not
            32 bytes, ``checkpoint`` when ``cp`` is not a checkpoint, and
            ``checkpoint_signature`` when the signature does not verify.
            ``seq`` is None.
    """
    if type(public_key) is not bytes or len(public_key) != 32:
        raise AuditVerificationError(
            "the public key must be 32 raw Ed25519 bytes", seq=None, reason="public_key"
        )
    if not isinstance(cp, AuditCheckpoint):
        raise AuditVerificationError(
            f"expected an AuditCheckpoint, got {type(cp).__name__}", seq=None, reason="checkpoint"
        )
    message = checkpoint_message(node_id=cp.node_id, size=cp.size, root=cp.root, time_ms=cp.time_ms)
    try:
        verify_signature(ED25519, public_key, message, cp.signature)
    except InvalidSignatureError as exc:
        raise AuditVerificationError(
            f"the checkpoint of {cp.node_id!r} at size {cp.size} is not signed by this key",
            seq=None,
            reason="checkpoint_signature",
        ) from exc


def _clean_text(value: str, limit: int) -> str:
    """``value`` made encodable (lone surrogates escaped) and cut to ``limit`` characters."""
    if type(value) is not str:
        raise TypeError(f"expected a str, got {type(value).__name__}")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    if len(value) > limit:
        value = value[: limit - 1] + _TRUNCATION_MARK
    return value


# --------------------------------------------------------------------------
# The Merkle tree over stored complete subtrees
# --------------------------------------------------------------------------


def _largest_power_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _frontier_spans(size: int) -> list[tuple[int, int]]:
    """(height, index) of the complete subtrees whose fold is the tree of ``size`` leaves."""
    spans: list[tuple[int, int]] = []
    start = 0
    for height in range(size.bit_length() - 1, -1, -1):
        if size >> height & 1:
            spans.append((height, start >> height))
            start += 1 << height
    return spans


def _fold(hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 hash of consecutive complete subtrees, largest first (the right fold)."""
    if not hashes:
        return _EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = hash_children(left, root)
    return root


class _Tree:
    """RFC 9162 tree hashes and proofs, evaluated over stored complete subtrees.

    ``node(height, index)`` returns the hash of the complete subtree over leaves
    ``[index * 2**height, (index + 1) * 2**height)``. Reads are memoized, since
    the proofs of neighbouring leaves share most of their nodes.
    """

    def __init__(self, read_node: Callable[[int, int], bytes]) -> None:
        self._read = read_node
        self._memo: dict[tuple[int, int], bytes] = {}

    def node(self, height: int, index: int) -> bytes:
        key = (height, index)
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = self._read(height, index)
        return value

    def range_hash(self, start: int, count: int) -> bytes:
        """MTH(D[start:start + count]); ``start`` is aligned as the RFC's recursion has it."""
        assert count >= 1 and start >= 0, (start, count)
        parts: list[bytes] = []
        while count & (count - 1):
            split = _largest_power_below(count)
            height = split.bit_length() - 1
            assert start % split == 0, (start, count)
            parts.append(self.node(height, start >> height))
            start += split
            count -= split
        height = count.bit_length() - 1
        assert start % count == 0, (start, count)
        parts.append(self.node(height, start >> height))
        return _fold(parts)

    def root(self, size: int) -> bytes:
        """The root of the tree of the first ``size`` leaves."""
        return _EMPTY_ROOT if size == 0 else self.range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf first."""
        assert 0 <= index < size, (index, size)
        top_down: list[bytes] = []
        start, count = 0, size
        while count > 1:
            split = _largest_power_below(count)
            if index < start + split:
                top_down.append(self.range_hash(start + split, count - split))
                count = split
            else:
                top_down.append(self.range_hash(start, split))
                start += split
                count -= split
        top_down.reverse()
        return top_down

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 section 2.1.4.1.

        Same unrolled recursion as :func:`kyodo.crypto.compute_consistency_proof`.
        """
        assert 0 <= old_size <= new_size, (old_size, new_size)
        if old_size in (0, new_size):
            return []
        top_down: list[bytes] = []
        start, remaining, size, have_old_root = 0, old_size, new_size, True
        while remaining != size:
            split = _largest_power_below(size)
            if remaining <= split:
                top_down.append(self.range_hash(start + split, size - split))
                size = split
            else:
                top_down.append(self.range_hash(start, split))
                start += split
                remaining -= split
                size -= split
                have_old_root = False
        if not have_old_root:
            top_down.append(self.range_hash(start, size))
        top_down.reverse()
        return top_down


# --------------------------------------------------------------------------
# The log
# --------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _identity_prefix(identity: str) -> bytes:
    """Key prefix of an identity's index entries. Stored identities are valid UTF-8
    (appends escape the rest), so a queried identity with lone surrogates matches none."""
    raw = identity.encode("utf-8", "surrogatepass")
    return _LEN.pack(len(raw)) + raw


class AuditLog:
    """The audit log of one node, in its own RocksDB database at ``path``.

    ``node_id`` names the node in its checkpoints. ``clock_ms`` gives the time
    of records appended without one (default: the system clock).
    ``sync_writes`` fsyncs every append (see the module documentation for the
    cost). Close the log with :meth:`close`, or use it as a context manager.

    Raises:
        AuditStoreError: the database cannot be opened (another process holds
            it, or it is not an audit log).
        AuditVerificationError: the stored head or tree is inconsistent.
    """

    def __init__(
        self,
        path: Path,
        *,
        node_id: str = "",
        clock_ms: Callable[[], int] | None = None,
        sync_writes: bool = False,
    ) -> None:
        self.path = path
        self.node_id = node_id
        self._clock = clock_ms or _now_ms
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_paranoid_checks(True)
        options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
        families = {name: Options(raw_mode=True) for name in _CFS}
        try:
            self._db = Rdict(str(path), options, column_families=families)
        except Exception as exc:
            raise AuditStoreError(f"cannot open the audit log at {path}: {exc}") from exc
        self._cf = {name: self._db.get_column_family(name) for name in _CFS}
        self._handles = {name: self._db.get_column_family_handle(name) for name in _CFS}
        self._write_options = WriteOptions()
        self._write_options.sync = sync_writes
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._size, self._head = self._load_head()
            self._frontier: list[tuple[int, bytes]] = [
                (height, self._read_node(height, index))
                for height, index in _frontier_spans(self._size)
            ]
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Release the database (appends are in its write-ahead log already)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cf.clear()
            self._handles.clear()
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sync(self) -> None:
        """Fsync the write-ahead log: every record appended so far survives a power loss."""
        with self._lock:
            self._check_open()
            try:
                self._db.flush_wal(True)
            except Exception as exc:
                raise AuditStoreError(f"cannot sync the audit log: {exc}") from exc

    # -- appending ---------------------------------------------------------------------

    def append(
        self,
        *,
        identity: str,
        transport: str,
        operation: str,
        decision: str,
        tls_identity: str = "",
        peer: str = "",
        subject: str = "",
        rule: str = "",
        detail: str = "",
        response_sha256: bytes = b"",
        time_ms: int | None = None,
    ) -> AuditRecord:
        """Append one record and return it (with its ``seq``, ``prev_hash`` and time).

        Text fields longer than :data:`TEXT_LIMITS` are cut (ending in ``…``),
        and characters that cannot be encoded in UTF-8 are escaped, so content
        chosen by a caller never makes an append fail.

        Raises:
            ValueError, TypeError: a field has the wrong type, or ``decision``
                or ``transport`` is not one of the known values (a bug in the
                caller). Nothing is written.
            AuditStoreError: the log is closed or the write failed. Nothing is
                written.
        """
        limits = TEXT_LIMITS
        identity = _clean_text(identity, limits["identity"])
        tls_identity = _clean_text(tls_identity, limits["tls_identity"])
        peer = _clean_text(peer, limits["peer"])
        operation = _clean_text(operation, limits["operation"])
        subject = _clean_text(subject, limits["subject"])
        rule = _clean_text(rule, limits["rule"])
        detail = _clean_text(detail, limits["detail"])
        with self._lock:
            self._check_open()
            seq = self._size
            rec = AuditRecord(
                seq=seq,
                time_ms=self._clock() if time_ms is None else time_ms,
                identity=identity,
                tls_identity=tls_identity,
                peer=peer,
                transport=transport,
                operation=operation,
                subject=subject,
                decision=decision,
                rule=rule,
                detail=detail,
                response_sha256=response_sha256,
                prev_hash=self._head,
            )
            raw = encode(rec)
            record_hash = sha256(raw)
            h = self._handles
            batch = WriteBatch(raw_mode=True)
            batch.put(_SEQ.pack(seq), raw, h["records"])
            frontier = self._frontier.copy()
            height, index, node = 0, seq, hash_leaf(record_hash)
            batch.put(_NODE.pack(0, seq), node, h["nodes"])
            while frontier and frontier[-1][0] == height:
                node = hash_children(frontier.pop()[1], node)
                height += 1
                index >>= 1
                batch.put(_NODE.pack(height, index), node, h["nodes"])
            frontier.append((height, node))
            time_seq = _TIME_SEQ.pack(rec.time_ms, seq)
            batch.put(time_seq, b"", h["by_time"])
            batch.put(_identity_prefix(rec.identity) + time_seq, b"", h["by_identity"])
            batch.put(_HEAD_KEY, _SEQ.pack(seq + 1) + record_hash, h["meta"])
            try:
                self._db.write(batch, self._write_options)
            except Exception as exc:
                raise AuditStoreError(f"cannot append audit record {seq}: {exc}") from exc
            self._size = seq + 1
            self._head = record_hash
            self._frontier = frontier
        return rec

    # -- reading -----------------------------------------------------------------------

    def size(self) -> int:
        """Number of records in the log (the next record's ``seq``)."""
        with self._lock:
            return self._size

    def head_hash(self) -> bytes:
        """Hash of the last record (32 zero bytes for an empty log)."""
        with self._lock:
            return self._head

    def root(self, size: int | None = None) -> bytes:
        """Merkle root over records ``[0, size)`` (default: the whole log).

        The current size costs O(log n) hashes; an older size O(log n) reads.

        Raises:
            ValueError: ``size`` is negative or larger than the log.
        """
        with self._lock:
            current = self._size
            if size is None or size == current:
                return _fold([node for _, node in self._frontier])
        self._check_size(size, current)
        return self._tree().root(size)

    def inclusion_proof(self, seq: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of record ``seq``'s hash in the tree of ``size`` records.

        Check it with ``kyodo.crypto.verify_inclusion(hash(record), seq, size,
        proof, root(size))``.

        Raises:
            ValueError: ``seq`` is not below ``size``, or ``size`` exceeds the log.
        """
        current = self.size()
        size = current if size is None else size
        self._check_size(size, current)
        if type(seq) is not int or not 0 <= seq < size:
            raise ValueError(f"record {seq} is not in a tree of {size} records")
        return self._tree().inclusion_proof(seq, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the tree of ``old_size`` records is a prefix of that of ``new_size``.

        Check it with ``kyodo.crypto.verify_consistency(old_size, new_size,
        root(old_size), root(new_size), proof)``.

        Raises:
            ValueError: the sizes are not ``0 <= old_size <= new_size <= size()``.
        """
        current = self.size()
        new_size = current if new_size is None else new_size
        self._check_size(new_size, current)
        self._check_size(old_size, new_size)
        return self._tree().consistency_proof(old_size, new_size)

    def get(self, seq: int) -> AuditRecord | None:
        """Record ``seq``, or None if the log has no such record.

        Raises:
            AuditVerificationError: the stored record does not decode or is not
                record ``seq``.
        """
        if type(seq) is not int or not 0 <= seq < self.size():
            return None
        raw = self._read("records", _SEQ.pack(seq), seq)
        if raw is None:
            raise AuditVerificationError(
                f"record {seq} is missing from the store", seq=seq, reason="missing"
            )
        return self._decode_stored(raw, seq)

    def iter(self, from_seq: int = 0, to_seq: int | None = None) -> Iterator[AuditRecord]:
        """Records ``[from_seq, to_seq)`` in seq order (``to_seq`` defaults to the size).

        Raises:
            ValueError: the range is not within the log.
            AuditVerificationError: a stored record is missing or does not decode.
        """
        current = self.size()
        to_seq = current if to_seq is None else to_seq
        self._check_size(to_seq, current)
        self._check_size(from_seq, to_seq)
        for seq, raw in self._iter_raw(from_seq, to_seq):
            yield self._decode_stored(raw, seq)

    def query(
        self,
        *,
        identity: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        subject_contains: str | None = None,
        operation: str | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        """Records matching every filter given, in (time_ms, seq) order.

        ``identity`` and ``operation`` match exactly, ``subject_contains`` is a
        substring of ``subject``, and the time range is ``since_ms <= time_ms <
        until_ms``. At most ``limit`` records are returned: the oldest ones,
        or the newest (still listed newest first) with ``newest_first``. An
        identity or time range is answered from an index. The other filters
        are checked on each record of that range.

        Raises:
            ValueError: ``limit`` is not in ``[1, MAX_QUERY_LIMIT]``, or a
                time bound is not a non-negative int.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be in [1, {MAX_QUERY_LIMIT}], got {limit!r}")
        for name, bound in (("since_ms", since_ms), ("until_ms", until_ms)):
            if bound is not None:
                _check_count(name, bound)
        if identity is not None and (
            type(identity) is not str or len(identity) > TEXT_LIMITS["identity"]
        ):
            return []  # no stored record has such an identity
        low = 0 if since_ms is None else since_ms
        if identity is None:
            family, prefix = "by_time", b""
        else:
            family, prefix = "by_identity", _identity_prefix(identity)
        lower = prefix + _SEQ.pack(low)
        if until_ms is not None:
            upper: bytes | None = prefix + _SEQ.pack(until_ms)
        else:  # past every entry of the prefix: entries are the prefix + 16 bytes
            upper = prefix + b"\xff" * (_TIME_SEQ.size + 1) if prefix else None

        def matches(rec: AuditRecord) -> bool:
            return (
                (identity is None or rec.identity == identity)
                and low <= rec.time_ms
                and (until_ms is None or rec.time_ms < until_ms)
                and (operation is None or rec.operation == operation)
                and (subject_contains is None or subject_contains in rec.subject)
            )

        out: list[AuditRecord] = []
        for seq in self._scan_index(family, prefix, lower, upper, reverse=newest_first):
            rec = self.get(seq)
            if rec is not None and matches(rec):
                out.append(rec)
                if len(out) == limit:
                    break
        return out

    # -- checkpoints and exports -------------------------------------------------------

    def checkpoint(self, signer: Signer, *, size: int | None = None) -> AuditCheckpoint:
        """Sign (size, root) of the log with ``signer`` (an Ed25519 key).

        The write-ahead log is fsynced first, so the node never signs a root
        over records a power loss could take back.

        Raises:
            ValueError: the signer is not Ed25519, or ``size`` exceeds the log.
        """
        if signer.key_type != ED25519:
            raise ValueError(f"audit checkpoints are signed with Ed25519, not {signer.key_type}")
        self.sync()
        size = self.size() if size is None else size
        root = self.root(size)
        time_ms = self._clock()
        message = checkpoint_message(node_id=self.node_id, size=size, root=root, time_ms=time_ms)
        return AuditCheckpoint(
            node_id=self.node_id,
            size=size,
            root=root,
            time_ms=time_ms,
            signature=signer.sign(message),
        )

    def export(
        self,
        from_seq: int,
        to_seq: int,
        *,
        with_proofs: bool,
        checkpoint: AuditCheckpoint | None = None,
    ) -> dict[str, Any]:
        """Records ``[from_seq, to_seq)`` as a JSON-serializable document.

        The document is::

            {"format": "kyodo-audit-export/v1",
             "from": from_seq, "to": to_seq,
             "tree_size": n, "root": "<hex>",       # the tree the proofs are in
             "with_proofs": true | false,
             "records": [{"seq": 5, "time_ms": ..., "identity": "...", ...,
                          "response_sha256": "<hex>", "prev_hash": "<hex>",
                          "hash": "<hex>",          # SHA-256 of the encoding
                          "encoding": "<hex>",      # canonical CBOR, authoritative
                          "proof": ["<hex>", ...]}, # with_proofs only
                         ...],
             "prev": {"seq": from_seq - 1, "hash": "<hex>", "proof": [...]} | null,
                                                    # with_proofs only
             "checkpoint": {"node_id": "...", "size": n, "root": "<hex>",
                            "time_ms": ..., "signature": "<hex>"}}   # optional

        Hex is lowercase. Each ``proof`` is the RFC 9162 inclusion proof of the
        record's hash (leaf data) at index ``seq`` in the tree of
        ``tree_size`` records with ``root``. ``prev`` proves the hash of the
        record before the range, so that the first record's ``prev_hash`` is
        checked too (null when the range starts at 0). With a ``checkpoint``,
        the tree is the checkpoint's: ``tree_size`` and ``root`` are its size
        and root, and the checkpoint is included. Without one, the tree is the
        whole log as it is now.

        Raises:
            ValueError: the range is not within the tree, is longer than
                :data:`MAX_EXPORT_RECORDS`, or the checkpoint is not of this log.
        """
        current = self.size()
        if checkpoint is None:
            tree_size = current
            root = self.root(tree_size)
        else:
            tree_size = checkpoint.size
            self._check_size(tree_size, current)
            root = self.root(tree_size)
            if root != checkpoint.root:
                raise ValueError(f"the checkpoint's root is not this log's root at {tree_size}")
        self._check_size(to_seq, tree_size)
        self._check_size(from_seq, to_seq)
        if to_seq - from_seq > MAX_EXPORT_RECORDS:
            raise ValueError(f"export at most {MAX_EXPORT_RECORDS} records at a time")
        tree = self._tree()
        records: list[dict[str, Any]] = []
        for seq, raw in self._iter_raw(from_seq, to_seq):
            entry = _record_to_json(self._decode_stored(raw, seq), raw)
            if with_proofs:
                entry["proof"] = [p.hex() for p in tree.inclusion_proof(seq, tree_size)]
            records.append(entry)
        doc: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "from": from_seq,
            "to": to_seq,
            "tree_size": tree_size,
            "root": root.hex(),
            "with_proofs": with_proofs,
            "records": records,
        }
        if with_proofs:
            doc["prev"] = None
            if from_seq > 0:
                before = from_seq - 1
                raw_before = self._read("records", _SEQ.pack(before), before)
                if raw_before is None:
                    raise AuditVerificationError(
                        f"record {before} is missing from the store", seq=before, reason="missing"
                    )
                doc["prev"] = {
                    "seq": before,
                    "hash": sha256(raw_before).hex(),
                    "proof": [p.hex() for p in tree.inclusion_proof(before, tree_size)],
                }
        if checkpoint is not None:
            doc["checkpoint"] = _checkpoint_to_json(checkpoint)
        return doc

    # -- self-verification -------------------------------------------------------------

    def verify_chain(self, from_seq: int = 0, to_seq: int | None = None) -> int:
        """Check the stored records ``[from_seq, to_seq)`` and return ``to_seq``.

        For each record: it is stored under its own seq with none missing, it
        decodes canonically, its leaf in the stored tree is its hash, its
        ``prev_hash`` is the hash of the record before, its index entries
        exist, and every subtree it completes is the hash of its two children.
        When the range reaches the end of the log, the last hash must be the
        stored head, and nothing may be stored beyond it. ``to_seq`` defaults
        to the current size. Appends may go on meanwhile. The background
        verifier can check a long log in pieces, each starting where the last
        one ended.

        Raises:
            ValueError: the range is not within the log.
            AuditVerificationError: naming the first bad record's ``seq``.
        """
        with self._lock:
            self._check_open()
            size, head = self._size, self._head
        to_seq = size if to_seq is None else to_seq
        self._check_size(to_seq, size)
        self._check_size(from_seq, to_seq)
        if from_seq == 0:
            prev_hash = ZERO_HASH
        else:
            raw_before = self._read("records", _SEQ.pack(from_seq - 1), from_seq - 1)
            if raw_before is None:
                raise AuditVerificationError(
                    f"record {from_seq - 1} is missing", seq=from_seq - 1, reason="missing"
                )
            prev_hash = sha256(raw_before)
        frontier = [
            (height, self._read_node(height, index)) for height, index in _frontier_spans(from_seq)
        ]
        expected = from_seq
        for seq, raw in self._iter_raw(from_seq, to_seq, check_gaps=False):
            if seq != expected:
                raise AuditVerificationError(
                    f"record {expected} is missing: the store jumps from {expected - 1} to {seq}",
                    seq=expected,
                    reason="missing",
                )
            rec = self._decode_stored(raw, seq)
            record_hash = sha256(raw)
            if rec.prev_hash != prev_hash:
                self._blame_broken_link(seq, record_hash, size, head)
            self._verify_stored(rec, record_hash, frontier)
            prev_hash = record_hash
            expected += 1
        if expected != to_seq:
            raise AuditVerificationError(
                f"record {expected} is missing: the store ends before record {to_seq - 1}",
                seq=expected,
                reason="missing",
            )
        if to_seq == size and size > 0 and prev_hash != head:
            raise AuditVerificationError(
                f"record {size - 1} was changed: its hash is not the log's stored head",
                seq=size - 1,
                reason="head",
            )
        if to_seq == size:
            with self._lock:  # records appended meanwhile are not strays
                self._check_no_record_beyond(self._size)
        return to_seq

    def _check_no_record_beyond(self, size: int) -> None:
        for seq, _ in self._iter_raw(size, None, check_gaps=False):
            raise AuditVerificationError(
                f"record {seq} is stored beyond the end of the log ({size} records)",
                seq=seq,
                reason="stray",
            )

    def _blame_broken_link(self, seq: int, record_hash: bytes, size: int, head: bytes) -> NoReturn:
        """Raise for record ``seq``, whose prev_hash is not the hash of record ``seq - 1``.

        Either record may have been rewritten (with its leaf, so the leaf check
        passed). What follows decides: if record ``seq + 1`` (or the stored
        head) still links to record ``seq``, record ``seq`` is intact and
        ``seq - 1`` changed; otherwise ``seq`` itself changed.
        """
        if seq + 1 < size:
            raw = self._read("records", _SEQ.pack(seq + 1), seq + 1)
            try:
                follows = raw is not None and (
                    decode_record(AuditRecord, raw, max_size=MAX_RECORD_BYTES).prev_hash
                    == record_hash
                )
            except DecodeError:
                follows = False
        else:
            follows = record_hash == head
        culprit = seq - 1 if follows else seq
        raise AuditVerificationError(
            f"record {culprit} was changed: record {seq}'s prev_hash is not the hash of "
            f"record {seq - 1}",
            seq=culprit,
            reason="chain",
        )

    def _verify_stored(
        self,
        rec: AuditRecord,
        record_hash: bytes,
        frontier: list[tuple[int, bytes]],
    ) -> None:
        """Check one stored record against its leaf and its indexes (its link is checked).

        Updates ``frontier`` with the record's leaf, comparing every subtree it
        completes with the stored one.
        """
        seq = rec.seq
        node = hash_leaf(record_hash)
        if self._read_node(0, seq) != node:
            raise AuditVerificationError(
                f"record {seq} was changed: its hash is no longer the tree's leaf {seq}",
                seq=seq,
                reason="changed",
            )
        height, index = 0, seq
        while frontier and frontier[-1][0] == height:
            node = hash_children(frontier.pop()[1], node)
            height += 1
            index >>= 1
            if self._read_node(height, index) != node:
                raise AuditVerificationError(
                    f"the tree node at height {height}, index {index} (completed by record "
                    f"{seq}) is not the hash of its children",
                    seq=seq,
                    reason="tree_node",
                )
        frontier.append((height, node))
        time_seq = _TIME_SEQ.pack(rec.time_ms, seq)
        if (
            self._read("by_time", time_seq, seq) is None
            or self._read("by_identity", _identity_prefix(rec.identity) + time_seq, seq) is None
        ):
            raise AuditVerificationError(
                f"record {seq} is missing from the query indexes", seq=seq, reason="index"
            )

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AuditStoreError(f"the audit log at {self.path} is closed")

    def _family(self, name: str) -> Any:
        family = self._cf.get(name)
        if family is None:
            raise AuditStoreError(f"the audit log at {self.path} is closed")
        return family

    @staticmethod
    def _check_size(size: object, limit: int) -> None:
        if type(size) is not int or not 0 <= size <= limit:
            raise ValueError(f"expected an int in [0, {limit}], got {size!r}")

    def _tree(self) -> _Tree:
        return _Tree(self._read_node)

    def _load_head(self) -> tuple[int, bytes]:
        raw = self._read("meta", _HEAD_KEY, None)
        if raw is None:
            for seq, _ in self._iter_raw(0, None, check_gaps=False):
                raise AuditStoreError(
                    f"{self.path} holds record {seq} but no log head: not an audit log"
                )
            return 0, ZERO_HASH
        if len(raw) != _SEQ.size + HASH_SIZE:
            raise AuditVerificationError(
                "the stored log head is malformed", seq=None, reason="head"
            )
        (size,) = _SEQ.unpack(raw[: _SEQ.size])
        return size, raw[_SEQ.size :]

    def _read(self, family: str, key: bytes, seq: int | None) -> bytes | None:
        cf = self._family(family)
        try:
            value = cf.get(key)
        except Exception as exc:  # RocksDB reports checksum mismatches as exceptions
            raise AuditVerificationError(
                f"storage read failed in {family}: {exc}", seq=seq, reason="storage"
            ) from exc
        assert value is None or isinstance(value, bytes)
        return value

    def _read_node(self, height: int, index: int) -> bytes:
        node = self._read("nodes", _NODE.pack(height, index), None)
        if node is None or len(node) != HASH_SIZE:
            last_leaf = ((index + 1) << height) - 1
            raise AuditVerificationError(
                f"the tree node at height {height}, index {index} (completed by record "
                f"{last_leaf}) is missing or malformed",
                seq=last_leaf,
                reason="tree_node",
            )
        return node

    def _iter_raw(
        self, from_seq: int, to_seq: int | None, *, check_gaps: bool = True
    ) -> Iterator[tuple[int, bytes]]:
        """(seq, stored bytes) of the records in ``[from_seq, to_seq)`` (None: to the end).

        With ``check_gaps``, a seq missing from the range raises.
        """
        options = ReadOptions()
        if to_seq is not None:
            options.set_iterate_upper_bound(_SEQ.pack(to_seq))
        expected = from_seq
        cf = self._family("records")
        try:
            it = cf.iter(options)
            it.seek(_SEQ.pack(from_seq))
            while it.valid():
                key, value = it.key(), it.value()
                if len(key) != _SEQ.size:
                    raise AuditVerificationError(
                        f"a stray key {key.hex()} is stored among the records",
                        seq=expected,
                        reason="stray",
                    )
                (seq,) = _SEQ.unpack(key)
                if check_gaps and seq != expected:
                    raise AuditVerificationError(
                        f"record {expected} is missing from the store",
                        seq=expected,
                        reason="missing",
                    )
                yield seq, value
                expected = seq + 1
                it.next()
            it.status()
        except AuditVerificationError:
            raise
        except Exception as exc:
            raise AuditVerificationError(
                f"storage read failed near record {expected}: {exc}",
                seq=expected,
                reason="storage",
            ) from exc
        if check_gaps and to_seq is not None and expected != to_seq:
            raise AuditVerificationError(
                f"record {expected} is missing from the store", seq=expected, reason="missing"
            )

    def _scan_index(
        self, family: str, prefix: bytes, lower: bytes, upper: bytes | None, *, reverse: bool
    ) -> Iterator[int]:
        """Seqs of the index entries with ``prefix`` in ``[lower, upper)``, in key order."""
        entry_size = len(prefix) + _TIME_SEQ.size
        it = self._family(family).iter(ReadOptions())
        if not reverse:
            it.seek(lower)
        elif upper is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(upper)
        while it.valid():
            key = it.key()
            if upper is not None and key >= upper:
                if not reverse:
                    return
            elif key < lower:
                if reverse:
                    return
            elif len(key) == entry_size and key.startswith(prefix):
                yield _TIME_SEQ.unpack(key[len(prefix) :])[1]
            if reverse:
                it.prev()
            else:
                it.next()

    def _decode_stored(self, raw: bytes, seq: int) -> AuditRecord:
        try:
            rec = decode_record(AuditRecord, raw, max_size=MAX_RECORD_BYTES)
        except DecodeError as exc:
            raise AuditVerificationError(
                f"record {seq} was changed: its stored bytes do not decode ({exc})",
                seq=seq,
                reason="changed",
            ) from exc
        if rec.seq != seq:
            raise AuditVerificationError(
                f"record {seq} was changed: the record stored there says seq {rec.seq}",
                seq=seq,
                reason="changed",
            )
        return rec


# --------------------------------------------------------------------------
# JSON forms
# --------------------------------------------------------------------------

_BYTES_FIELDS = frozenset({"response_sha256", "prev_hash"})
_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))
_RECORD_KEYS = frozenset(_RECORD_FIELDS) | {"hash", "encoding"}
_CHECKPOINT_KEYS = frozenset({"node_id", "size", "root", "time_ms", "signature"})
_DOC_KEYS = frozenset({"format", "from", "to", "tree_size", "root", "with_proofs", "records"})
_PREV_KEYS = frozenset({"seq", "hash", "proof"})


def _record_to_json(rec: AuditRecord, raw: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for name in _RECORD_FIELDS:
        value = getattr(rec, name)
        entry[name] = value.hex() if name in _BYTES_FIELDS else value
    entry["hash"] = sha256(raw).hex()
    entry["encoding"] = raw.hex()
    return entry


def _checkpoint_to_json(cp: AuditCheckpoint) -> dict[str, Any]:
    return {
        "node_id": cp.node_id,
        "size": cp.size,
        "root": cp.root.hex(),
        "time_ms": cp.time_ms,
        "signature": cp.signature.hex(),
    }


# --------------------------------------------------------------------------
# Verifying an export
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    """What :func:`verify_export` established about an export document."""

    from_seq: int
    """First record of the range."""
    to_seq: int
    """End of the range (exclusive)."""
    tree_size: int
    """Size of the tree the records were checked against."""
    root: bytes
    """Root of that tree."""
    records: int
    """Number of records checked (``to_seq - from_seq``)."""
    proofs_checked: bool
    """Every record's inclusion proof verified against ``root``."""
    root_bound: bool
    """Every record is tied to ``root``, by its proof or, for an export of the
    whole tree without proofs, by recomputing the root from all the records."""
    chain_anchored: bool
    """The first record's ``prev_hash`` was checked: the range starts at 0, or the
    export proves the hash of the record before it."""
    checkpoint: AuditCheckpoint | None
    """The checkpoint ``tree_size`` and ``root`` were checked against, if any."""
    signature_checked: bool
    """The checkpoint's signature verified under the given public key."""


def _fail(message: str, *, seq: int | None, reason: str) -> NoReturn:
    raise AuditVerificationError(message, seq=seq, reason=reason)


def _expect_dict(value: object, keys: frozenset[str], what: str, seq: int | None) -> dict[str, Any]:
    if type(value) is not dict:
        _fail(f"{what} is not a JSON object", seq=seq, reason="malformed")
    if set(value) != keys:
        missing = sorted(keys - set(value))
        extra = sorted(str(k) for k in set(value) - keys)
        _fail(
            f"{what} has missing keys {missing} or unknown keys {extra}",
            seq=seq,
            reason="malformed",
        )
    return value


def _expect_int(value: object, what: str, seq: int | None) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_SEQ:
        _fail(f"{what} is not an integer in [0, 2**63)", seq=seq, reason="malformed")
    return value


def _expect_hex(value: object, what: str, seq: int | None, *, size: int | None = None) -> bytes:
    limit = 2 * (size if size is not None else MAX_RECORD_BYTES)
    if type(value) is not str or len(value) > limit or not _HEX.fullmatch(value):
        _fail(
            f"{what} is not lowercase hex of at most {limit // 2} bytes",
            seq=seq,
            reason="malformed",
        )
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        _fail(f"{what} is not {size} bytes", seq=seq, reason="malformed")
    return data


def _expect_proof(value: object, what: str, seq: int) -> list[bytes]:
    if type(value) is not list or len(value) > _MAX_PROOF_HASHES:
        _fail(
            f"{what} is not a list of at most {_MAX_PROOF_HASHES} hashes",
            seq=seq,
            reason="malformed",
        )
    return [_expect_hex(p, f"{what}[{i}]", seq, size=HASH_SIZE) for i, p in enumerate(value)]


def _parse_checkpoint(value: object) -> AuditCheckpoint:
    obj = _expect_dict(value, _CHECKPOINT_KEYS, "the checkpoint", None)
    node_id = obj["node_id"]
    if type(node_id) is not str:
        _fail("the checkpoint's node_id is not a string", seq=None, reason="malformed")
    try:
        return AuditCheckpoint(
            node_id=node_id,
            size=_expect_int(obj["size"], "the checkpoint's size", None),
            root=_expect_hex(obj["root"], "the checkpoint's root", None, size=HASH_SIZE),
            time_ms=_expect_int(obj["time_ms"], "the checkpoint's time_ms", None),
            signature=_expect_hex(obj["signature"], "the checkpoint's signature", None, size=64),
        )
    except ValueError as exc:
        raise AuditVerificationError(
            f"the checkpoint is malformed: {exc}", seq=None, reason="malformed"
        ) from exc


def _check_inclusion(
    record_hash: bytes, seq: int, tree_size: int, proof: list[bytes], root: bytes
) -> None:
    try:
        verify_inclusion_hash(hash_leaf(record_hash), seq, tree_size, proof, root)
    except MerkleProofError as exc:
        raise AuditVerificationError(
            f"record {seq} was changed or is not in the log: its inclusion proof does not "
            f"lead to the root of the tree of {tree_size} records ({exc})",
            seq=seq,
            reason="proof",
        ) from exc


@dataclass(frozen=True, slots=True)
class _Checked:
    seq: int
    hash: bytes
    prev_hash: bytes


def _check_seq(seqs: list[object], position: int, first: int, end: int) -> int:
    """The seq at ``position``, which must be ``first + position``; otherwise name the fault.

    A seq found twice, or outside ``[first, end)``, is an inserted record. A
    seq from later in the range, with the expected one still to come, is a
    reordering. Otherwise the expected record is missing.
    """
    expected = first + position
    seq = seqs[position]
    if type(seq) is not int:
        _fail(f"record {expected}: its seq is not an integer", seq=expected, reason="malformed")
    if seq == expected:
        return expected
    copies = sum(1 for other in seqs if type(other) is int and other == seq)
    if copies > 1 or not first <= seq < end:
        _fail(
            f"record {seq} was inserted at position {position} (where record {expected} "
            "belongs): "
            + ("it appears more than once" if copies > 1 else "it is outside the export's range"),
            seq=seq,
            reason="inserted",
        )
    if any(type(other) is int and other == expected for other in seqs[position + 1 :]):
        _fail(
            f"records out of order at {expected}: record {seq} comes before record {expected}",
            seq=expected,
            reason="order",
        )
    _fail(
        f"record {expected} is missing: seq jumps from {expected - 1} to {seq}",
        seq=expected,
        reason="missing",
    )


def _check_record_entry(entry_value: object, seq: int, with_proofs: bool) -> tuple[_Checked, Any]:
    """Parse one exported record; check its encoding, fields and hash. Returns its proof."""
    keys = _RECORD_KEYS | {"proof"} if with_proofs else _RECORD_KEYS
    entry = _expect_dict(entry_value, keys, f"record {seq}", seq)
    raw = _expect_hex(entry["encoding"], f"record {seq}'s encoding", seq)
    try:
        rec = decode_record(AuditRecord, raw, max_size=MAX_RECORD_BYTES)
    except DecodeError as exc:
        raise AuditVerificationError(
            f"record {seq} was changed: its encoding is not a canonical AuditRecord ({exc})",
            seq=seq,
            reason="encoding",
        ) from exc
    for name in _RECORD_FIELDS:
        value = getattr(rec, name)
        shown = entry[name]
        if name in _BYTES_FIELDS:
            same = type(shown) is str and shown == value.hex()
        else:
            same = type(shown) is type(value) and shown == value
        if not same:
            _fail(
                f"record {seq} was changed: its {name} does not match its encoding",
                seq=seq,
                reason="fields",
            )
    record_hash = sha256(raw)
    if _expect_hex(entry["hash"], f"record {seq}'s hash", seq, size=HASH_SIZE) != record_hash:
        _fail(
            f"record {seq} was changed: its hash does not match its encoding",
            seq=seq,
            reason="hash",
        )
    proof = entry["proof"] if with_proofs else None
    return _Checked(seq=seq, hash=record_hash, prev_hash=rec.prev_hash), proof


def _check_links(checked: list[_Checked], blame_self: bool) -> None:
    """Each record's prev_hash must be the hash of the record before it.

    When a link breaks and the proofs could not say which side changed, the
    next link decides: a record whose own hash changed breaks only the link
    after it, while a record whose prev_hash changed breaks both.
    """
    for i in range(1, len(checked)):
        if checked[i].prev_hash == checked[i - 1].hash:
            continue
        seq = checked[i].seq
        next_breaks = i + 1 < len(checked) and checked[i + 1].prev_hash != checked[i].hash
        if blame_self or next_breaks:
            _fail(
                f"record {seq} was changed: its prev_hash is not the hash of record {seq - 1}",
                seq=seq,
                reason="chain",
            )
        _fail(
            f"record {seq - 1} was changed: its hash does not match the chain "
            f"(record {seq}'s prev_hash)",
            seq=seq - 1,
            reason="chain",
        )


def _resolve_checkpoint(
    doc: dict[str, Any],
    checkpoint: AuditCheckpoint | None,
    public_key: bytes | None,
    tree_size: int,
    root: bytes,
) -> tuple[AuditCheckpoint | None, bool]:
    """The checkpoint the export is checked against, and whether its signature verified."""
    embedded = _parse_checkpoint(doc["checkpoint"]) if "checkpoint" in doc else None
    if checkpoint is not None and not isinstance(checkpoint, AuditCheckpoint):
        _fail("the checkpoint given is not an AuditCheckpoint", seq=None, reason="checkpoint")
    if checkpoint is not None and embedded is not None and embedded != checkpoint:
        _fail(
            "the export's checkpoint differs from the checkpoint given",
            seq=None,
            reason="checkpoint",
        )
    cp = checkpoint if checkpoint is not None else embedded
    if public_key is not None:
        if cp is None:
            _fail(
                "a public key was given but there is no checkpoint to verify",
                seq=None,
                reason="checkpoint",
            )
        verify_checkpoint(cp, public_key)
    if cp is not None and (cp.size != tree_size or cp.root != root):
        _fail(
            f"the export's tree (size {tree_size}) is not the checkpoint's (size {cp.size})",
            seq=None,
            reason="checkpoint",
        )
    return cp, public_key is not None


def verify_export(
    doc: object,
    *,
    public_key: bytes | None = None,
    checkpoint: AuditCheckpoint | None = None,
) -> ExportReport:
    """Check an export document (:meth:`AuditLog.export`) and report what it proves.

    In order: the document's shape, the checkpoint (``checkpoint`` if given,
    else the one in the document; with ``public_key``, its signature must
    verify and its size and root must be the document's), then each record in
    order (its seq is the next one, its encoding is a canonical
    :class:`AuditRecord` whose fields the JSON repeats exactly, its hash, its
    inclusion proof), the record before the range (``prev``), and finally the
    chain links. An export of the whole tree without proofs is tied to the
    root by recomputing it.

    Without a checkpoint whose signature was checked, ``tree_size`` and
    ``root`` are only the exporter's word. The report says what was checked.

    Raises:
        AuditVerificationError: for any failure or malformed input, naming the
            record concerned in ``seq`` (None for the document or checkpoint
            as a whole).
    """
    try:
        return _verify_export(doc, public_key, checkpoint)
    except AuditVerificationError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # Every check above is explicit; this only keeps the promise that malformed
        # input never escapes as another exception type.
        raise AuditVerificationError(
            f"the export is malformed ({type(exc).__name__}: {exc})", seq=None, reason="malformed"
        ) from exc


def _verify_export(
    doc: object, public_key: bytes | None, checkpoint: AuditCheckpoint | None
) -> ExportReport:
    if type(doc) is not dict:
        _fail("the export is not a JSON object", seq=None, reason="malformed")
    with_proofs = doc.get("with_proofs")
    if type(with_proofs) is not bool:
        _fail("the export's with_proofs is not true or false", seq=None, reason="malformed")
    keys = _DOC_KEYS | {"prev"} if with_proofs else _DOC_KEYS
    if "checkpoint" in doc:
        keys = keys | {"checkpoint"}
    _expect_dict(doc, frozenset(keys), "the export", None)
    if doc["format"] != EXPORT_FORMAT:
        _fail(f"the export's format is not {EXPORT_FORMAT}", seq=None, reason="malformed")
    first = _expect_int(doc["from"], "the export's from", None)
    end = _expect_int(doc["to"], "the export's to", None)
    tree_size = _expect_int(doc["tree_size"], "the export's tree_size", None)
    root = _expect_hex(doc["root"], "the export's root", None, size=HASH_SIZE)
    if not first <= end <= tree_size or end - first > MAX_EXPORT_RECORDS:
        _fail(
            f"the export's range [{first}, {end}) is not within its tree of {tree_size} "
            f"records, or is longer than {MAX_EXPORT_RECORDS}",
            seq=None,
            reason="range",
        )
    records = doc["records"]
    if type(records) is not list or len(records) > MAX_EXPORT_RECORDS:
        _fail(
            f"the export's records are not a list of at most {MAX_EXPORT_RECORDS}",
            seq=None,
            reason="malformed",
        )
    cp, signature_checked = _resolve_checkpoint(doc, checkpoint, public_key, tree_size, root)

    seqs: list[object] = [r.get("seq") if type(r) is dict else None for r in records]
    checked: list[_Checked] = []
    for position in range(min(len(records), end - first)):
        seq = _check_seq(seqs, position, first, end)
        item, proof_value = _check_record_entry(records[position], seq, with_proofs)
        if with_proofs:
            proof = _expect_proof(proof_value, f"record {seq}'s proof", seq)
            _check_inclusion(item.hash, seq, tree_size, proof, root)
        checked.append(item)
    if len(records) > end - first:
        extra = seqs[end - first]
        named = extra if type(extra) is int else end
        _fail(
            f"record {named} was inserted: the export says it ends before record {end}",
            seq=named,
            reason="inserted",
        )
    if len(records) < end - first:
        missing = first + len(records)
        _fail(
            f"record {missing} is missing: the export ends at record {missing - 1} "
            f"but says it runs to record {end - 1}",
            seq=missing,
            reason="missing",
        )

    chain_anchored = first == 0
    if with_proofs:
        chain_anchored = _check_prev(doc["prev"], first, checked, tree_size, root)
    _check_links(checked, blame_self=with_proofs)

    root_bound = with_proofs
    if not with_proofs and first == 0 and end == tree_size:
        if merkle_root([c.hash for c in checked]) != root:
            _fail(
                f"the records do not hash to the export's root of {tree_size} records",
                seq=None,
                reason="root",
            )
        root_bound = True
    return ExportReport(
        from_seq=first,
        to_seq=end,
        tree_size=tree_size,
        root=root,
        records=len(checked),
        proofs_checked=with_proofs,
        root_bound=root_bound,
        chain_anchored=chain_anchored,
        checkpoint=cp,
        signature_checked=signature_checked,
    )


def _check_prev(
    value: object, first: int, checked: list[_Checked], tree_size: int, root: bytes
) -> bool:
    """Check the proven hash of the record before the range; True (the chain is anchored)."""
    if first == 0:
        if value is not None:
            _fail(
                "the export starts at record 0 but proves a record before it",
                seq=0,
                reason="malformed",
            )
        return True
    before = first - 1
    prev = _expect_dict(value, _PREV_KEYS, f"the proof of record {before}", before)
    if prev["seq"] != before or type(prev["seq"]) is not int:
        _fail(
            f"the export proves record {prev['seq']!r} instead of record {before}",
            seq=before,
            reason="malformed",
        )
    prev_hash = _expect_hex(prev["hash"], f"record {before}'s hash", before, size=HASH_SIZE)
    proof = _expect_proof(prev["proof"], f"record {before}'s proof", before)
    _check_inclusion(prev_hash, before, tree_size, proof, root)
    if checked and checked[0].prev_hash != prev_hash:
        _fail(
            f"record {first} was changed: its prev_hash is not the hash of record {before}",
            seq=first,
            reason="chain",
        )
    return True
