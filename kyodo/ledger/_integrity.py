"""Checks of a node's own stored data against what the validators certified.

A node must notice by itself when the data it stores was falsified or
corrupted: a flipped byte, a block rewritten with recomputed hashes, a changed
state value or tree node, a deleted block, an edited history entry, a store
rolled back to an older copy. Everything the store holds can be checked
against a root that a quorum of validators signed:

* a **block**: it decodes at its height, its transactions and results match
  its header's roots, its header carries a commit certificate of a quorum of
  the validators in force at its height, and it links to its parent by hash.
  Rewriting a transaction changes the transactions root, the root changes the
  block hash, and no quorum signed that hash: without the validators' keys a
  falsified block cannot pass.
* the **transaction index**: each entry points at a block holding that
  transaction at that position.
* **state tree nodes**: content-addressed; a node's SHA-256 is its key.
* the **flat state**: each record's hash is the leaf of its key in the tree
  under the tip's certified state root, and every leaf has its record.
* the **history index**: each entry names a transaction that is in its block
  at its position, and the last write of a key in a block is the leaf of that
  key under that block's certified state root (old tree nodes are kept, so
  every historical root is provable). An earlier write of the same key in
  the same block is superseded within the block; only its transaction link
  is checked.
* the **configurations**: each stored configuration is the one a certified
  configuration block carries.

Each check raises :class:`IntegrityFault` naming what is wrong and where: the
node quarantines itself and repairs exactly that (``kyodo/node/_integrity.py``).
These functions only read; the caller decides which thread runs them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from kyodo.codec import DecodeError, decode_record, decode_value
from kyodo.crypto import sha256
from kyodo.ledger._epochs import ConfigView
from kyodo.ledger._state_tree import NodeReader, get_value_hash
from kyodo.ledger._store import LedgerStore, encode_state_record
from kyodo.ledger._types import Block
from kyodo.ledger._verify import verify_block_contents
from kyodo.ledger.errors import (
    BlockVerificationError,
    LedgerError,
    StateCorruptionError,
    StoredDataError,
    UnreadableStoreError,
)

__all__ = [
    "IntegrityFault",
    "check_block",
    "check_history_entries",
    "check_history_key",
    "check_state_key",
    "check_tree_node",
    "check_writes_index",
    "iter_history_keys",
    "read_history",
    "split_history_key",
]

_LOCATION = struct.Struct(">QI")
ViewAt = Callable[[int], ConfigView]


@dataclass(frozen=True, slots=True)
class Fault:
    """What is wrong, precisely enough to repair it."""

    kind: str
    """``block``, ``txindex``, ``tree``, ``state``, ``state_missing``, ``history``,
    ``writes`` (the per-block index of writes, rebuilt from the history index),
    ``config``, ``rollback`` (the store is older than this node's own record of its tip),
    ``unreadable`` (the database files are damaged: the store is rebuilt from peers)."""
    height: int | None = None
    key: bytes | None = None
    """The state key (``state``, ``history``), node hash (``tree``) or tx id (``txindex``)."""


class IntegrityFault(LedgerError):
    """Stored data does not match what the validators certified."""

    def __init__(self, message: str, fault: Fault) -> None:
        where = f"height {fault.height}: " if fault.height is not None else ""
        super().__init__(f"{fault.kind}: {where}{message}")
        self.fault = fault


def _fault(
    kind: str, message: str, *, height: int | None = None, key: bytes | None = None
) -> IntegrityFault:
    return IntegrityFault(message, Fault(kind, height, key))


def check_block(
    store: LedgerStore,
    height: int,
    view_at: ViewAt,
    *,
    genesis_hash: bytes,
    parent_hash: bytes | None = None,
    with_index: bool = True,
) -> Block:
    """The stored block at ``height``, if it is what the validators certified.

    Checks that it decodes at its height, its contents match its header's roots,
    and (above genesis) a quorum of the validators in force at ``height`` signed
    its hash; genesis must be the network's. With ``parent_hash``, it must link to
    it. With ``with_index``, every transaction's index entry points back at it.
    """
    try:
        raw = store.get_block_bytes(height)
    except UnreadableStoreError as exc:
        raise _fault("unreadable", f"cannot be read: {exc}", height=height) from exc
    except StoredDataError as exc:
        raise _fault("block", f"cannot be read: {exc}", height=height) from exc
    if raw is None:
        raise _fault("block", "is missing", height=height)
    try:
        block = decode_record(Block, raw, max_size=len(raw))
    except DecodeError as exc:
        raise _fault("block", f"does not decode: {exc}", height=height) from exc
    if block.header.height != height:
        raise _fault("block", f"says height {block.header.height}", height=height)
    try:
        verify_block_contents(block)
        if height == 0:
            if block.block_hash() != genesis_hash:
                raise _fault("block", "is not the network's genesis block", height=0)
        else:
            view_at(height).check_certificate(block)
    except BlockVerificationError as exc:
        raise _fault("block", f"is not certified as stored: {exc}", height=height) from exc
    if parent_hash is not None and block.header.prev_hash != parent_hash:
        raise _fault("block", "does not link to its parent by hash", height=height)
    if with_index:
        for index, envelope in enumerate(block.txs):
            tx_id = envelope.tx_id()
            try:
                location = store.get_tx_location(tx_id)
            except StoredDataError as exc:
                raise _fault("txindex", str(exc), height=height, key=tx_id) from exc
            if location != (height, index):
                raise _fault(
                    "txindex",
                    f"the index entry of transaction {tx_id.hex()} points at {location}, "
                    f"not ({height}, {index})",
                    height=height,
                    key=tx_id,
                )
    return block


def check_tree_node(node_hash: bytes, node: bytes) -> None:
    """A stored state-tree node must hash to its key."""
    if sha256(node) != node_hash or len(node) != 65 or node[0] not in (0, 1):
        raise _fault("tree", f"node {node_hash.hex()} does not hash to its key", key=node_hash)


def check_state_key(store: LedgerStore, state_key: bytes, root: bytes) -> None:
    """The flat record of ``state_key`` (or its absence) must match the tree under ``root``."""
    try:
        record = store.get_state_record(state_key)
        leaf = get_value_hash(store, root, sha256(state_key))
    except StateCorruptionError as exc:
        raise _fault("tree", str(exc), key=bytes.fromhex(exc.node_hash)) from exc
    except StoredDataError as exc:
        raise _fault("state", str(exc), key=state_key) from exc
    actual = None if record is None else sha256(record)
    if actual != leaf:
        what = (
            "is missing"
            if record is None
            else "is not in the certified state"
            if leaf is None
            else "does not match the certified state"
        )
        raise _fault("state", f"the value of {state_key!r} {what}", key=state_key)


def split_history_key(history_key: bytes) -> tuple[bytes, int, int]:
    """(state key, height, tx index) of a history index key."""
    if len(history_key) < 14 or history_key[-13] != 0:
        raise ValueError("not a history key")
    height, index = _LOCATION.unpack(history_key[-12:])
    return history_key[:-13], height, index


def _history_locations(store: LedgerStore) -> Iterator[tuple[bytes, int, int]]:
    """(state key, height, tx index) of every history entry, in key order; a malformed
    index key is a ``history`` fault."""
    for history_key, _ in store.iter_raw("history"):
        try:
            yield split_history_key(history_key)
        except ValueError:
            raise _fault(
                "history", f"malformed index key {history_key!r}", key=history_key
            ) from None


def iter_history_keys(store: LedgerStore) -> Iterator[bytes]:
    """Each state key that has history, once, in order."""
    last = None
    for state_key, _, _ in _history_locations(store):
        if state_key != last:
            last = state_key
            yield state_key


def check_writes_index(
    store: LedgerStore, tip: int, *, tick: Callable[[], None] | None = None
) -> int:
    """The ``writes`` index up to ``tip`` lists each write of the history index once, in
    the executor's order (transaction index, then state key); returns how many.

    Each entry's writes are looked up in the history (``get_writes``), none twice; the
    totals must then match, so nothing was left out either. A store whose index is not
    complete yet (it is rebuilt at start) has nothing to check. ``tick`` is called
    every few blocks (the verifier's CPU share).
    """
    if not store.writes_complete():
        return 0
    listed = 0
    for height in range(tip + 1):
        try:
            writes = store.get_writes(height)
        except UnreadableStoreError as exc:
            raise _fault("unreadable", f"cannot be read: {exc}", height=height) from exc
        except StoredDataError as exc:
            raise _fault("writes", str(exc), height=height) from exc
        order = [(index, state_key) for state_key, index, _ in writes or ()]
        if order != sorted(set(order)):
            raise _fault("writes", "the index repeats or reorders writes", height=height)
        listed += len(order)
        if tick is not None and height % 64 == 63:
            tick()
    held = sum(1 for _, height, _ in _history_locations(store) if height <= tip)
    if held != listed:
        raise _fault(
            "writes", f"the index lists {listed} writes up to {tip}; the history holds {held}"
        )
    return listed


def check_history_key(
    store: LedgerStore,
    state_key: bytes,
    *,
    state_root_at: Callable[[int], bytes],
    tx_id_at: Callable[[int, int], bytes | None],
    tip: int,
) -> int:
    """Every stored history entry of ``state_key`` up to ``tip`` (see the module docs);
    the number of entries checked."""
    entries = read_history(store.iter_raw("history", state_key + b"\x00"), state_key)
    check_history_entries(
        store,
        state_key,
        [e for e in entries if e[0] <= tip],
        state_root_at=state_root_at,
        tx_id_at=tx_id_at,
    )
    return len(entries)


HistoryItem = tuple[int, int, bytes, object]


def read_history(items: Iterable[tuple[bytes, bytes]], state_key: bytes) -> list[HistoryItem]:
    """(height, tx index, tx id, value) of raw history index items of ``state_key``."""
    entries: list[HistoryItem] = []
    for history_key, raw in items:
        try:
            owner, height, index = split_history_key(history_key)
            tx_id, value = decode_value(raw)
        except (ValueError, TypeError, DecodeError) as exc:
            raise _fault(
                "history", f"entry {history_key!r} does not decode", key=state_key
            ) from exc
        if owner != state_key or not isinstance(tx_id, bytes):
            raise _fault("history", f"entry {history_key!r} is not of this key", key=state_key)
        entries.append((height, index, tx_id, value))
    return sorted(entries, key=lambda e: (e[0], e[1]))


def check_history_entries(
    reader: NodeReader,
    state_key: bytes,
    entries: Sequence[HistoryItem],
    *,
    state_root_at: Callable[[int], bytes],
    tx_id_at: Callable[[int, int], bytes | None],
) -> None:
    """History entries of ``state_key`` (sorted) against the blocks and the certified
    state roots."""
    for position, (height, index, tx_id, value) in enumerate(entries):
        if tx_id_at(height, index) != tx_id:
            raise _fault(
                "history",
                f"entry ({height}, {index}) of {state_key!r} names a transaction that is not there",
                height=height,
                key=state_key,
            )
        last_in_block = position + 1 == len(entries) or entries[position + 1][0] != height
        if not last_in_block:
            continue
        expected = None if value is None else sha256(encode_state_record(value, height, index))
        try:
            leaf = get_value_hash(reader, state_root_at(height), sha256(state_key))
        except StateCorruptionError as exc:
            raise _fault("tree", str(exc), key=bytes.fromhex(exc.node_hash)) from exc
        if leaf != expected:
            raise _fault(
                "history",
                f"entry ({height}, {index}) of {state_key!r} differs from the state certified "
                f"at height {height}",
                height=height,
                key=state_key,
            )
