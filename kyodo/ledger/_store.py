"""The node's durable store: blocks, transaction index, world state, state tree, history.

Theory of operation
-------------------
One RocksDB database (through `rocksdict`) with a column family per kind of
data. Appending a block writes, in **one atomic batch synced to disk**:

* ``blocks``   height (8 bytes big-endian) -> canonical block bytes
* ``txindex``  tx id -> height (8) + index in block (4)
* ``state``    state key -> canonical ``[value, height, tx_index]`` (the flat state)
* ``tree``     node hash -> node encoding (content-addressed state tree nodes)
* ``history``  state key + 0x00 + height (8) + tx_index (4) -> ``[tx_id, value or None]``
* ``writes``   height (8) -> canonical ``[[state key, tx_index], ...]``: which keys the
  block wrote, in execution order (the event stream's state changes; values are read
  from ``history``). Absent for blocks appended before this index existed.
* ``configs``  epoch (8) -> canonical ``[first_height, NetworkConfig]``: the configuration
  in force from ``first_height`` on, written with the block that carries it
* ``meta``     tip height, tip hash, state root, genesis hash, and the consensus
  write-ahead record (``consensus_wal``, replaced on its own, synced)

so a node killed at any instant reopens either before or after a whole block,
never in between, and its flat state always matches its tip's state root.

A *state key* is ``namespace + 0x00 + key`` (UTF-8; neither part may contain
0x00). It is hashed (SHA-256) to place it in the state tree; the leaf's value
hash is the SHA-256 of its flat-state record, so each key's version is
authenticated with its value.

The node gives the store one owner thread for blocks and state (DESIGN.md
section 4: storage never runs on the asyncio loop); the consensus write-ahead
record is written from a second thread (the ``wal`` thread) so a vote never
waits behind a block's execution. RocksDB serializes the two writers; they
touch different keys. Reads may come from any thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from kyodo.codec import DecodeError, decode_record, decode_value, encode, encode_value
from kyodo.crypto import ZERO_HASH, sha256
from kyodo.ledger._state_tree import TreeUpdate
from kyodo.ledger._types import Block, BlockHeader, Height, NetworkConfig, TxId
from kyodo.ledger.errors import LedgerError, StoredDataError, UnreadableStoreError

__all__ = [
    "HistoryEntry",
    "LedgerStore",
    "StateEntry",
    "encode_state_key",
    "split_state_key",
]

_CFS = ("blocks", "txindex", "state", "tree", "history", "meta", "configs", "writes")
_TIP_HEIGHT = b"tip_height"
_TIP_HASH = b"tip_hash"
_STATE_ROOT = b"state_root"
_GENESIS_HASH = b"genesis_hash"
_WRITES_COMPLETE = b"writes_complete"
"""Present once every block of the store has its ``writes`` entry (new stores from
genesis on; older ones after :meth:`LedgerStore.rebuild_writes`)."""
_CONSENSUS_WAL = b"consensus_wal"
_HEIGHT = struct.Struct(">Q")
_LOCATION = struct.Struct(">QI")


def encode_state_key(namespace: str, key: str) -> bytes:
    """The flat-state key of ``key`` in contract ``namespace``."""
    return namespace.encode() + b"\x00" + key.encode()


def split_state_key(state_key: bytes) -> tuple[str, str]:
    """(namespace, key) of a flat-state key."""
    namespace, _, key = state_key.partition(b"\x00")
    return namespace.decode(), key.decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class StateEntry:
    """A key's current value and the version (height, tx index) of its last write."""

    value: Any
    height: int
    tx_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One write of a key: which transaction, where, and the value (None = deleted)."""

    height: int
    tx_index: int
    tx_id: bytes
    value: Any


def encode_state_record(value: Any, height: int, tx_index: int) -> bytes:
    """The flat-state record of a value written at (height, tx_index)."""
    return encode_value([value, height, tx_index])


class LedgerStore:
    """Blocks, state and indexes of one node, in one RocksDB database."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        options = Options(raw_mode=True)
        options.create_if_missing(not read_only)
        options.create_missing_column_families(not read_only)
        options.set_paranoid_checks(True)
        families = {name: Options(raw_mode=True) for name in _CFS}
        access = AccessType.read_only() if read_only else AccessType.read_write()
        try:
            self._db = Rdict(str(path), options, column_families=families, access_type=access)
        except Exception as exc:
            raise LedgerError(f"cannot open ledger store at {path}: {exc}") from exc
        self._cf = {name: self._db.get_column_family(name) for name in _CFS}
        self._handles = {name: self._db.get_column_family_handle(name) for name in _CFS}
        self._sync = WriteOptions()
        self._sync.sync = True
        self._read_only = read_only

    def close(self) -> None:
        """Release the database and its lock (every append is already durable).

        Column-family objects keep the database open, so they are dropped first.
        """
        self._cf.clear()
        self._handles.clear()
        self._db.close()

    # -- tip ---------------------------------------------------------------------------

    def height(self) -> Height | None:
        """Height of the last appended block, or None for an empty store."""
        raw = self._get("meta", _TIP_HEIGHT)
        return None if raw is None else Height(_HEIGHT.unpack(raw)[0])

    def tip_hash(self) -> bytes:
        """Hash of the last appended block (32 zero bytes for an empty store)."""
        return self._get("meta", _TIP_HASH) or ZERO_HASH

    def state_root(self) -> bytes:
        """Root of the world-state tree as of the tip."""
        return self._get("meta", _STATE_ROOT) or ZERO_HASH

    def genesis_hash(self) -> bytes | None:
        """Hash of the genesis block, once appended."""
        return self._get("meta", _GENESIS_HASH)

    # -- blocks ------------------------------------------------------------------------

    def get_block_bytes(self, height: int) -> bytes | None:
        """The stored bytes of the block at ``height``, or None if there is none."""
        return self._get("blocks", _HEIGHT.pack(height))

    def get_block(self, height: int) -> Block | None:
        """The block at ``height`` (decoded and checked to be at that height), or None."""
        raw = self.get_block_bytes(height)
        if raw is None:
            return None
        try:
            block = decode_record(Block, raw, max_size=len(raw))
        except DecodeError as exc:
            raise StoredDataError(f"stored block does not decode: {exc}", height=height) from exc
        if block.header.height != height:
            raise StoredDataError(
                f"block stored at height {height} says height {block.header.height}",
                height=height,
            )
        return block

    def get_header(self, height: int) -> BlockHeader | None:
        """The header of the block at ``height``, or None."""
        block = self.get_block(height)
        return None if block is None else block.header

    def get_tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        """(height, index) of a committed transaction, or None if it was never appended."""
        raw = self._get("txindex", tx_id)
        if raw is None:
            return None
        if len(raw) != _LOCATION.size:
            raise StoredDataError(
                f"the index entry of transaction {tx_id.hex()} is malformed", tx_id=tx_id
            )
        height, index = _LOCATION.unpack(raw)
        return height, index

    # -- state -------------------------------------------------------------------------

    def get_state_record(self, state_key: bytes) -> bytes | None:
        """The raw flat-state record of ``state_key``."""
        return self._get("state", state_key)

    def get_state(self, namespace: str, key: str) -> StateEntry | None:
        """A key's current value and version, or None if absent."""
        raw = self._get("state", encode_state_key(namespace, key))
        return None if raw is None else _decode_state(raw, namespace, key)

    def iter_state(
        self, namespace: str, start: str = "", end: str | None = None
    ) -> Iterator[tuple[str, StateEntry]]:
        """Keys of ``namespace`` in [start, end) in sorted order, with their entries."""
        prefix = namespace.encode() + b"\x00"
        lower = prefix + start.encode()
        upper = prefix + end.encode() if end is not None else namespace.encode() + b"\x01"
        options = ReadOptions()
        options.set_iterate_upper_bound(upper)
        it = self._cf["state"].iter(options)
        it.seek(lower)
        while it.valid():
            state_key = it.key()
            _, key = split_state_key(state_key)
            yield key, _decode_state(it.value(), namespace, key)
            it.next()

    def iter_state_records(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (state key, raw record) of the flat state, sorted (for verification)."""
        it = self._cf["state"].iter(ReadOptions())
        it.seek_to_first()
        while it.valid():
            yield it.key(), it.value()
            it.next()

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> list[HistoryEntry]:
        """Every write of a key, oldest first (at most ``limit``)."""
        prefix = encode_state_key(namespace, key) + b"\x00"
        options = ReadOptions()
        options.set_iterate_upper_bound(prefix[:-1] + b"\x01")
        it = self._cf["history"].iter(options)
        it.seek(prefix)
        out: list[HistoryEntry] = []
        while it.valid() and len(out) < limit:
            height, index = _LOCATION.unpack(it.key()[len(prefix) :])
            tx_id, value = decode_value(it.value())
            out.append(HistoryEntry(height=height, tx_index=index, tx_id=tx_id, value=value))
            it.next()
        return out

    def get_writes(self, height: int) -> list[tuple[bytes, int, Any]] | None:
        """The state changes of the block at ``height`` as (state key, tx_index, value or
        None), in execution order; None if this store has no index for that block.

        Each value is read from the history index, so a forged ``writes`` entry that
        names a write the history does not hold raises StoredDataError.
        """
        raw = self._get("writes", _HEIGHT.pack(height))
        if raw is None:
            tip = self.height()
            if self.writes_complete() and tip is not None and height <= tip:
                raise StoredDataError("the writes index has no entry", height=height)
            return None
        out: list[tuple[bytes, int, Any]] = []
        try:
            listed = decode_value(raw)
            for state_key, index in listed:
                hkey = bytes(state_key) + b"\x00" + _LOCATION.pack(height, int(index))
                entry = self._get("history", hkey)
                if entry is None:
                    raise StoredDataError(
                        f"the writes index of block {height} names a write of "
                        f"{bytes(state_key)!r} the history does not hold"
                    )
                out.append((bytes(state_key), int(index), decode_value(entry)[1]))
        except (DecodeError, TypeError, ValueError) as exc:
            raise StoredDataError(f"the writes index of block {height} is unreadable") from exc
        return out

    def writes_complete(self) -> bool:
        """Whether every block has its ``writes`` entry (else: call rebuild_writes)."""
        return self._get("meta", _WRITES_COMPLETE) is not None

    def rebuild_writes(self, progress: Callable[[int], None] | None = None) -> int:
        """Write every block's ``writes`` entry again from the history index (one pass
        over it), then mark the index complete: for a store from before the index
        existed, and to repair a damaged entry. Returns the number of blocks written.

        The order within a block is the executor's (transaction index, then state key),
        so a rebuilt entry is byte for byte the one the block's append wrote.
        """
        tip = self.height()
        if tip is None:
            return 0
        by_height: dict[int, list[tuple[int, bytes]]] = {}
        for n, (hkey, _) in enumerate(self.iter_raw("history"), 1):
            state_key = hkey[: -(_LOCATION.size + 1)]
            height, index = _LOCATION.unpack(hkey[-_LOCATION.size :])
            by_height.setdefault(height, []).append((index, state_key))
            if progress is not None and n % 100_000 == 0:
                progress(n)
        batch = WriteBatch(raw_mode=True)
        h = self._handles
        for height in range(tip + 1):
            entries = sorted(by_height.get(height, ()))
            value = encode_value([[state_key, index] for index, state_key in entries])
            batch.put(_HEIGHT.pack(height), value, h["writes"])
        batch.put(_WRITES_COMPLETE, b"1", h["meta"])
        self._db.write(batch, self._sync)
        return tip + 1

    def get_node(self, node_hash: bytes) -> bytes | None:
        """A state-tree node by hash (the state tree's NodeReader)."""
        return self._get("tree", node_hash)

    # -- append ------------------------------------------------------------------------

    def append_block(
        self,
        block: Block,
        *,
        state_records: Mapping[bytes, bytes | None],
        history: Sequence[tuple[bytes, int, bytes, Any]],
        tree_update: TreeUpdate,
    ) -> None:
        """Append ``block`` with its state changes, in one synced atomic batch.

        ``state_records`` maps each written state key to its new flat record (None:
        deleted); ``history`` lists every write as (state key, tx_index, tx_id, value).
        The caller has verified the block; this re-checks the chain link
        and the state root before writing (paired with the checks on read).
        """
        header = block.header
        tip = self.height()
        expected_height = 0 if tip is None else tip + 1
        if header.height != expected_height:
            raise AssertionError(f"append of height {header.height}, expected {expected_height}")
        if header.prev_hash != self.tip_hash():
            raise AssertionError(f"block {header.height} does not link to the tip")
        if header.state_root != tree_update.root:
            raise AssertionError(f"block {header.height} state root differs from the tree's")
        block_hash = header.block_hash()
        batch = WriteBatch(raw_mode=True)
        h = self._handles
        batch.put(_HEIGHT.pack(header.height), encode(block), h["blocks"])
        for index, envelope in enumerate(block.txs):
            batch.put(envelope.tx_id(), _LOCATION.pack(header.height, index), h["txindex"])
        for state_key, state_record in state_records.items():
            if state_record is None:
                batch.delete(state_key, h["state"])
            else:
                batch.put(state_key, state_record, h["state"])
        for state_key, index, tx_id, value in history:
            hkey = state_key + b"\x00" + _LOCATION.pack(header.height, index)
            batch.put(hkey, encode_value([tx_id, value]), h["history"])
        writes = encode_value([[state_key, index] for state_key, index, _, _ in history])
        batch.put(_HEIGHT.pack(header.height), writes, h["writes"])
        for node_hash, node in tree_update.new_nodes.items():
            batch.put(node_hash, node, h["tree"])
        batch.put(_TIP_HEIGHT, _HEIGHT.pack(header.height), h["meta"])
        batch.put(_TIP_HASH, block_hash, h["meta"])
        batch.put(_STATE_ROOT, tree_update.root, h["meta"])
        if header.height == 0:
            batch.put(_GENESIS_HASH, block_hash, h["meta"])
            batch.put(_WRITES_COMPLETE, b"1", h["meta"])
        if block.config is not None:  # in force from the next height (genesis: from 0)
            first = 0 if header.height == 0 else header.height + 1
            record = encode_value([first, encode(block.config)])
            batch.put(_HEIGHT.pack(block.config.epoch), record, h["configs"])
        self._db.write(batch, self._sync)

    # -- configurations --------------------------------------------------------------------

    def get_configs(self) -> list[tuple[int, NetworkConfig]]:
        """Every configuration with the height it is in force from, oldest first."""
        out: list[tuple[int, NetworkConfig]] = []
        it = self._cf["configs"].iter(ReadOptions())
        it.seek_to_first()
        while it.valid():
            try:
                first, raw = decode_value(it.value())
                config = decode_record(NetworkConfig, raw)
            except (DecodeError, ValueError, TypeError) as exc:
                raise StoredDataError(f"stored configuration does not decode: {exc}") from exc
            out.append((first, config))
            it.next()
        return out

    # -- consensus write-ahead log --------------------------------------------------------

    def load_consensus_wal(self) -> bytes | None:
        """The consensus core's last write-ahead record (opaque bytes), if any."""
        return self._get("meta", _CONSENSUS_WAL)

    def save_consensus_wal(self, record: bytes) -> None:
        """Durably replace the consensus write-ahead record (synced before returning)."""
        self._db.write(_single("meta", _CONSENSUS_WAL, record, self._handles), self._sync)

    # -- raw access for verification and repair tools ------------------------------------

    def put_raw(self, family: str, key: bytes, value: bytes) -> None:
        """Overwrite one stored value (tests and repair tools only)."""
        self._db.write(_single(family, key, value, self._handles), self._sync)

    def delete_raw(self, family: str, key: bytes) -> None:
        """Delete one stored value (repair and tests only)."""
        batch = WriteBatch(raw_mode=True)
        batch.delete(key, self._handles[family])
        self._db.write(batch, self._sync)

    def get_raw(self, family: str, key: bytes) -> bytes | None:
        """One stored value, as stored (verification and repair)."""
        return self._get(family, key)

    def iter_raw(self, family: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of a column family starting with ``prefix``, sorted. A read
        failure (RocksDB checksum mismatch, I/O error) raises StoredDataError."""
        options = ReadOptions()
        if prefix:
            options.set_iterate_upper_bound(_prefix_end(prefix))
        try:
            it = self._cf[family].iter(options)
            if prefix:
                it.seek(prefix)
            else:
                it.seek_to_first()
            while it.valid():
                yield it.key(), it.value()
                it.next()
            it.status()
        except StoredDataError:
            raise
        except Exception as exc:
            raise UnreadableStoreError(f"storage read failed in {family}: {exc}") from exc

    def write_repair(
        self,
        *,
        puts: Sequence[tuple[str, bytes, bytes]] = (),
        deletes: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Write verified replacements in one synced atomic batch (repair only)."""
        batch = WriteBatch(raw_mode=True)
        for family, key in deletes:
            batch.delete(key, self._handles[family])
        for family, key, value in puts:
            batch.put(key, value, self._handles[family])
        self._db.write(batch, self._sync)

    def _get(self, family: str, key: bytes) -> bytes | None:
        try:
            value = self._cf[family].get(key)
        except Exception as exc:  # RocksDB reports checksum mismatches as exceptions
            raise UnreadableStoreError(f"storage read failed in {family}: {exc}") from exc
        assert value is None or isinstance(value, bytes)
        return value


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\xff" * (len(prefix) + 1)
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _single(family: str, key: bytes, value: bytes, handles: dict[str, Any]) -> WriteBatch:
    batch = WriteBatch(raw_mode=True)
    batch.put(key, value, handles[family])
    return batch


def _decode_state(raw: bytes, namespace: str, key: str) -> StateEntry:
    try:
        value, height, index = decode_value(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise StoredDataError(
            f"state record of {namespace}/{key} does not decode",
            state_key=encode_state_key(namespace, key),
        ) from exc
    return StateEntry(value=value, height=height, tx_index=index)


def state_value_hash(state_record: bytes) -> bytes:
    """The state tree's value hash of a flat-state record."""
    return sha256(state_record)


def state_key_hash(state_key: bytes) -> bytes:
    """The state tree's key hash of a flat-state key."""
    return sha256(state_key)


def tx_location_key(tx_id: TxId) -> bytes:
    """The tx index key of a transaction (its id)."""
    return bytes(tx_id)
