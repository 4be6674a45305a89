"""Self-verification, quarantine and repair: a node that finds its data falsified.

Theory of operation
-------------------
Three things look at the store (checks in :mod:`kyodo.ledger._integrity`):

* **start-up**: every block from the last fully verified height (``meta``
  ``verified_height``, advanced by the background verifier) to the tip, the
  tip's hash and state root, and the store's height against the node's
  *high-water mark*, a small file next to the store (``tip.mark``) that the
  node rewrites as it appends. A store rolled back to an older copy is lower
  than its mark. A store that is merely behind the network (the node was down)
  catches up without alarm.
* the **background verifier** (:class:`Verifier`, one low-priority thread):
  passes over every block, the transaction index, every state tree node, the
  flat state in both directions, the history index and the configurations,
  then starts again after ``verify_interval_s``. It spends at most
  ``verify_cpu_share`` of one core: after each slice of work it sleeps in
  proportion. A pass's duration is a metric, so "how long until a change is
  noticed" has a measured bound.
* **serving**: a block is checked (contents, certificate) before it is given
  to a client or a peer. Every state value a query reads is checked against
  the tree under the tip's certified root (:class:`VerifiedState`).

A fault puts the node in **quarantine**. It stops voting and proposing (it
still follows the certified chain), its gateways refuse to serve
(``quarantined``), and the fault is logged as ``integrity_fault_detected``,
counted in ``kyodo_integrity_faults{kind}``, shown in the node's status, and
posted to ``alert_webhook`` if one is set. Then the node **repairs**. It asks
its peers for exactly what is wrong: blocks by height, tree nodes by hash,
state records by key, a key's history. It verifies what they send against
what the validators certified (a block's certificate and hash links; a
node's hash; a record against the certified state root) and writes it in one
atomic batch. A peer checks its own data before it sends anything, so
falsified data never propagates. When every fault is repaired and checked
again, the node leaves quarantine (``integrity_repaired``).

Why hand-written: the checks are the ledger's own invariants; no library knows
them.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kyodo.codec import DecodeError, decode_record, decode_value, record
from kyodo.crypto import sha256
from kyodo.ledger import (
    Block,
    BlockVerificationError,
    ConfigView,
    HistoryEntry,
    LedgerError,
    LedgerStore,
    StateEntry,
    StoredDataError,
    UnreadableStoreError,
    encode_state_key,
    encode_state_record,
    get_value_hash,
    verify_block_contents,
)
from kyodo.ledger._integrity import (
    Fault,
    IntegrityFault,
    check_block,
    check_history_entries,
    check_history_key,
    check_state_key,
    check_tree_node,
    check_writes_index,
    iter_history_keys,
    read_history,
    split_history_key,
)
from kyodo.ledger.errors import StateCorruptionError

__all__ = [
    "HighWaterMark",
    "RepairRequest",
    "RepairResponse",
    "VerifiedState",
    "Verifier",
]

log = structlog.get_logger("kyodo.integrity")
_HEIGHT = struct.Struct(">Q")
_LOCATION = struct.Struct(">QI")
VERIFIED_HEIGHT = b"verified_height"


@record(74)
@dataclass(frozen=True, slots=True, kw_only=True)
class RepairRequest:
    """Ask a peer for certified data to replace what this node found falsified."""

    request_id: bytes
    heights: tuple[int, ...] = ()
    node_hashes: tuple[bytes, ...] = ()
    state_keys: tuple[bytes, ...] = ()
    history_keys: tuple[bytes, ...] = ()


@record(75)
@dataclass(frozen=True, slots=True, kw_only=True)
class RepairResponse:
    """What the peer could vouch for (it checked each item against its certified roots)."""

    request_id: bytes
    height: int
    """The peer's tip height."""
    blocks: tuple[bytes, ...] = ()
    """Canonical bytes of the requested blocks it holds (certified; checked)."""
    nodes: tuple[bytes, ...] = ()
    """Encodings of the requested tree nodes it holds (each hashes to its key)."""
    state_keys: tuple[bytes, ...] = ()
    """Requested state keys it holds, with ``state_records`` at the same positions, each
    checked against its tip's root; a key it does not hold is left out."""
    state_records: tuple[bytes, ...] = ()
    history_keys: tuple[bytes, ...] = ()
    """History index keys of the requested state keys, with ``history_values``; checked."""
    history_values: tuple[bytes, ...] = ()

    @property
    def state(self) -> list[tuple[bytes, bytes]]:
        return list(zip(self.state_keys, self.state_records, strict=False))

    @property
    def history(self) -> list[tuple[bytes, bytes]]:
        return list(zip(self.history_keys, self.history_values, strict=False))


class HighWaterMark:
    """The highest height this node has appended, kept outside the store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[int, str] | None:
        """(height, tip hash hex) last written, or None."""
        try:
            doc = json.loads(self.path.read_text())
            return int(doc["height"]), str(doc["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, height: int, tip_hash: bytes) -> None:
        """Record ``height`` (atomically: a temporary file renamed over the mark)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"height": height, "hash": tip_hash.hex()}))
        os.replace(tmp, self.path)


class VerifiedState:
    """The store as a contract's StateReader, every value checked against the tree
    under the tip's certified state root before a query sees it."""

    def __init__(self, store: LedgerStore, root: bytes) -> None:
        self._store = store
        self._root = root

    def _check(self, state_key: bytes) -> None:
        check_state_key(self._store, state_key, self._root)

    def get_state(self, namespace: str, key: str) -> StateEntry | None:
        self._check(encode_state_key(namespace, key))
        return self._store.get_state(namespace, key)

    def iter_state(
        self, namespace: str, start: str = "", end: str | None = None
    ) -> Iterator[tuple[str, StateEntry]]:
        for key, entry in self._store.iter_state(namespace, start, end):
            self._check(encode_state_key(namespace, key))
            yield key, entry

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> list[HistoryEntry]:
        return self._store.get_history(namespace, key, limit=limit)


@dataclass
class PassReport:
    """What one pass of the background verifier covered."""

    blocks: int = 0
    nodes: int = 0
    state_keys: int = 0
    history_keys: int = 0
    bytes_read: int = 0
    seconds: float = 0.0


class Verifier:
    """Background verification of the whole store (see the module docs)."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        view_at: Callable[[int], ConfigView],
        genesis_hash: bytes,
        configs_of_chain: Callable[[], list[Any]],
        on_fault: Callable[[IntegrityFault], None],
        on_pass: Callable[[PassReport, int], None],
        cpu_share: float,
        interval_s: float,
        extra_checks: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._store = store
        self._extra_checks = tuple(extra_checks)
        """Run at the end of each pass (the audit log's own chain, say); they report
        their own findings."""
        self._view_at = view_at
        self._genesis_hash = genesis_hash
        self._configs_of_chain = configs_of_chain
        self._on_fault = on_fault
        self._on_pass = on_pass
        self._share = min(1.0, max(0.01, cpu_share))
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verifier", daemon=True)
        self._slice_started = time.thread_time()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_now(self) -> None:
        """Start a pass without waiting for the interval (after a repair, say)."""
        self._wake.set()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            os.nice(10)  # below the ledger and consensus work
        while not self._stop.is_set():
            try:
                report, tip = self.run_pass()
            except IntegrityFault as fault:
                self._on_fault(fault)
            except UnreadableStoreError as exc:
                self._on_fault(IntegrityFault(str(exc), Fault("unreadable")))
            except _Stopped:
                return
            except Exception as exc:  # a bug: report it, keep the node running
                log.exception("verifier_error", detail=str(exc))
            else:
                self._on_pass(report, tip)
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def _throttle(self) -> None:
        """Sleep so that this thread uses at most its CPU share (checked per slice)."""
        if self._stop.is_set():
            raise _Stopped
        used = time.thread_time() - self._slice_started
        if used >= 0.02:
            time.sleep(used * (1 - self._share) / self._share)
            self._slice_started = time.thread_time()

    def run_pass(self) -> tuple[PassReport, int]:
        """One whole pass; raise IntegrityFault at the first fault."""
        started = time.monotonic()
        report = PassReport()
        store = self._store
        tip = store.height()
        assert tip is not None
        parent = None
        state_roots: dict[int, bytes] = {}
        tx_ids: dict[int, list[bytes]] = {}
        for height in range(tip + 1):
            block = check_block(
                store,
                height,
                self._view_at,
                genesis_hash=self._genesis_hash,
                parent_hash=parent,
            )
            parent = block.block_hash()
            state_roots[height] = block.header.state_root
            tx_ids[height] = [e.tx_id() for e in block.txs]
            report.blocks += 1
            report.bytes_read += len(store.get_block_bytes(height) or b"")
            self._throttle()
        for tx_id, location in store.iter_raw("txindex"):  # and from the index back
            height, index = _LOCATION.unpack(location) if len(location) == 12 else (-1, -1)
            if 0 <= height <= tip and _at(tx_ids, height, index) == tx_id:
                continue
            if height > tip:
                continue  # appended after this pass started
            raise IntegrityFault(
                f"the index entry of {tx_id.hex()} points at ({height}, {index}), which "
                "does not hold it",
                Fault("txindex", height=None if height < 0 else height, key=tx_id),
            )
        chain_configs = self._configs_of_chain()
        try:
            stored_configs = [config for _, config in store.get_configs()]
        except StoredDataError as exc:
            raise IntegrityFault(str(exc), Fault("config")) from exc
        if stored_configs[: len(chain_configs)] != chain_configs:
            raise IntegrityFault("stored configurations differ from the chain's", Fault("config"))
        for node_hash, node in store.iter_raw("tree"):
            check_tree_node(node_hash, node)
            report.nodes += 1
            report.bytes_read += len(node) + 32
            if report.nodes % 256 == 0:
                self._throttle()
        for state_key, raw in store.iter_raw("state"):
            self._check_state_consistently(state_key)
            report.state_keys += 1
            report.bytes_read += len(state_key) + len(raw)
            if report.state_keys % 64 == 0:
                self._throttle()
        self._check_leaves_have_records()
        for state_key in iter_history_keys(store):
            check_history_key(
                store,
                state_key,
                state_root_at=lambda h: state_roots[h],
                tx_id_at=lambda h, i: _at(tx_ids, h, i),
                tip=tip,
            )
            report.history_keys += 1
            if report.history_keys % 32 == 0:
                self._throttle()
        check_writes_index(store, tip, tick=self._throttle)
        for check in self._extra_checks:
            check()
        report.seconds = time.monotonic() - started
        return report, tip

    def _check_state_consistently(self, state_key: bytes) -> None:
        """A record against the root of the same moment (a block may land meanwhile)."""
        for _ in range(5):
            root = self._store.state_root()
            try:
                check_state_key(self._store, state_key, root)
                return
            except IntegrityFault:
                if self._store.state_root() == root:
                    raise
        check_state_key(self._store, state_key, self._store.state_root())

    def _check_leaves_have_records(self) -> None:
        """Every leaf under the tip's root has its flat record (none was deleted)."""
        root = self._store.state_root()
        leaves = dict(_leaves(self._store, root))
        for state_key, _ in self._store.iter_raw("state"):
            leaves.pop(sha256(state_key), None)
        if leaves and self._store.state_root() == root:
            missing = next(iter(leaves))
            raise IntegrityFault(
                f"{len(leaves)} certified state value(s) missing from the flat state "
                f"(key hash {missing.hex()})",
                Fault("state_missing", key=missing),
            )


class _Stopped(Exception):
    """The verifier was asked to stop in the middle of a pass."""


def _at(tx_ids: dict[int, list[bytes]], height: int, index: int) -> bytes | None:
    ids = tx_ids.get(height)
    return ids[index] if ids is not None and 0 <= index < len(ids) else None


def _leaves(store: LedgerStore, root: bytes) -> Iterator[tuple[bytes, bytes]]:
    from kyodo.ledger import iter_nodes

    try:
        for _, node in iter_nodes(store, root):
            if node[0] == 0:
                yield node[1:33], node[33:65]
    except StateCorruptionError as exc:
        raise IntegrityFault(str(exc), Fault("tree", key=bytes.fromhex(exc.node_hash))) from exc


def read_verified_height(store: LedgerStore) -> int:
    """The height up to which a whole pass last verified the store (0: none)."""
    raw = store.get_raw("meta", VERIFIED_HEIGHT)
    if raw is None:
        return 0
    try:
        value = decode_value(raw)
    except Exception:
        return 0
    return value if isinstance(value, int) and value >= 0 else 0


def state_value_matches(store: LedgerStore, root: bytes, state_key: bytes, record: bytes) -> bool:
    """Whether ``record`` is the certified flat record of ``state_key`` under ``root``."""
    try:
        return get_value_hash(store, root, sha256(state_key)) == sha256(record)
    except StateCorruptionError:
        return False


# -- repair ---------------------------------------------------------------------------

MAX_REPAIR_ITEMS = 256
MAX_REPAIR_BYTES = 8 * 1024 * 1024
"""Most history bytes one repair answer carries (frames are 32 MiB at most)."""


def _block_checker(
    store: LedgerStore, view_at: Callable[[int], ConfigView], genesis_hash: bytes
) -> Callable[[int], Block]:
    """Checked blocks by height, each read and checked once."""
    cache: dict[int, Block] = {}

    def get(height: int) -> Block:
        if height not in cache:
            cache[height] = check_block(
                store, height, view_at, genesis_hash=genesis_hash, with_index=False
            )
        return cache[height]

    return get


def serve_repair(
    store: LedgerStore,
    request: RepairRequest,
    *,
    view_at: Callable[[int], ConfigView],
    genesis_hash: bytes,
) -> tuple[RepairResponse, list[IntegrityFault]]:
    """What this node can vouch for of ``request``, each item checked against its own
    certified data first, and the faults it found in its own store on the way."""
    faults: list[IntegrityFault] = []
    tip = store.height() or 0
    block_at = _block_checker(store, view_at, genesis_hash)
    blocks: list[bytes] = []
    for height in request.heights[:MAX_REPAIR_ITEMS]:
        try:
            block_at(height)
        except IntegrityFault as fault:
            faults.append(fault)
            continue
        raw = store.get_block_bytes(height)
        if raw is not None:
            blocks.append(raw)
    nodes: list[bytes] = []
    for node_hash in request.node_hashes[:MAX_REPAIR_ITEMS]:
        node = store.get_node(node_hash)
        if node is not None and sha256(node) == node_hash:
            nodes.append(node)
    state: list[tuple[bytes, bytes]] = []
    root = store.state_root()
    for state_key in request.state_keys[:MAX_REPAIR_ITEMS]:
        record = store.get_state_record(state_key)
        if record is not None and state_value_matches(store, root, state_key, record):
            state.append((state_key, record))
    history: list[tuple[bytes, bytes]] = []
    budget = MAX_REPAIR_BYTES
    for state_key in request.history_keys[:16]:
        items = list(store.iter_raw("history", state_key + b"\x00"))
        size = sum(len(k) + len(v) for k, v in items)
        if size > budget:
            log.warning("repair_history_too_large", key=repr(state_key), bytes=size)
            continue
        budget -= size
        try:
            entries = read_history(items, state_key)
            check_history_entries(
                store,
                state_key,
                entries,
                state_root_at=lambda h: block_at(h).header.state_root,
                tx_id_at=lambda h, i: _tx_id_in(block_at(h), i),
            )
        except IntegrityFault as fault:
            faults.append(fault)
            continue
        history.extend(items)
    response = RepairResponse(
        request_id=request.request_id,
        height=tip,
        blocks=tuple(blocks),
        nodes=tuple(nodes),
        state_keys=tuple(k for k, _ in state),
        state_records=tuple(v for _, v in state),
        history_keys=tuple(k for k, _ in history),
        history_values=tuple(v for _, v in history),
    )
    return response, faults


def _tx_id_in(block: Block, index: int) -> bytes | None:
    return block.txs[index].tx_id() if 0 <= index < len(block.txs) else None


def apply_repair(
    store: LedgerStore,
    request: RepairRequest,
    responses: Sequence[RepairResponse],
    *,
    view_at: Callable[[int], ConfigView],
    genesis_hash: bytes,
    history_agreement: int,
) -> list[str]:
    """Write what in ``responses`` answers ``request`` and verifies against this node's
    certified data; a line per item repaired. Nothing that was not asked for is taken.
    A key's history is replaced only by a list that checks out and that
    ``history_agreement`` peers (f + 1: one of them honest) sent alike, each at least
    at this node's tip."""
    done: list[str] = []
    puts: list[tuple[str, bytes, bytes]] = []
    deletes: list[tuple[str, bytes]] = []
    tip = store.height() or 0
    wanted_heights = set(request.heights)
    wanted_nodes = set(request.node_hashes)
    wanted_state = set(request.state_keys)
    for response in responses:
        for raw in response.blocks[:MAX_REPAIR_ITEMS]:
            try:
                block = decode_record(Block, raw, max_size=len(raw))
                height = block.header.height
                if height not in wanted_heights or height > tip:
                    continue
                verify_block_contents(block)
                if height == 0:
                    if block.block_hash() != genesis_hash:
                        raise BlockVerificationError("not our genesis", height=0, reason="genesis")
                else:
                    view_at(height).check_certificate(block)
                _check_neighbours(store, block, view_at, genesis_hash)
            except (DecodeError, LedgerError) as exc:
                log.warning("repair_item_refused", kind="block", detail=str(exc))
                continue
            wanted_heights.discard(height)
            puts.append(("blocks", _HEIGHT.pack(height), raw))
            for index, envelope in enumerate(block.txs):
                puts.append(("txindex", envelope.tx_id(), _LOCATION.pack(height, index)))
            done.append(f"block {height}")
        for node in response.nodes[:MAX_REPAIR_ITEMS]:
            node_hash = sha256(node)
            if node_hash in wanted_nodes and len(node) == 65 and node[0] in (0, 1):
                wanted_nodes.discard(node_hash)
                puts.append(("tree", node_hash, node))
                done.append(f"tree node {node_hash.hex()[:16]}")
        root = store.state_root()
        for state_key, flat in response.state[:MAX_REPAIR_ITEMS]:
            if state_key not in wanted_state:
                continue
            if state_value_matches(store, root, state_key, flat):
                wanted_state.discard(state_key)
                puts.append(("state", state_key, flat))
                done.append(f"state {state_key!r}")
            else:
                log.warning("repair_item_refused", kind="state", key=repr(state_key))
    block_at = _block_checker(store, view_at, genesis_hash)
    for state_key in request.history_keys:
        if b"\x00" not in state_key:
            continue  # a namespace alone would name every key in it
        votes: dict[tuple[tuple[bytes, bytes], ...], int] = {}
        for response in responses:
            if response.height < tip:
                continue  # a peer behind us lacks entries we hold
            mine = tuple(
                (k, v)
                for k, v in response.history[: MAX_REPAIR_ITEMS * 64]
                if _history_of(k) == state_key and split_history_key(k)[1] <= tip
            )
            votes[mine] = votes.get(mine, 0) + 1
        for candidate, count in sorted(votes.items(), key=lambda kv: -kv[1]):
            if count < history_agreement or not candidate:
                continue
            try:
                entries = read_history(list(candidate), state_key)
                check_history_entries(
                    store,
                    state_key,
                    entries,
                    state_root_at=lambda h: block_at(h).header.state_root,
                    tx_id_at=lambda h, i: _tx_id_in(block_at(h), i),
                )
            except IntegrityFault as exc:
                log.warning("repair_item_refused", kind="history", detail=str(exc))
                continue
            for history_key, _ in store.iter_raw("history", state_key + b"\x00"):
                if split_history_key(history_key)[1] <= tip:
                    deletes.append(("history", history_key))
            puts.extend(("history", k, v) for k, v in candidate)
            done.append(f"history of {state_key!r} ({count} peers agree)")
            break
    if puts or deletes:
        store.write_repair(puts=puts, deletes=deletes)
    return done


def _history_of(history_key: bytes) -> bytes | None:
    try:
        return split_history_key(history_key)[0]
    except ValueError:
        return None


def _check_neighbours(
    store: LedgerStore,
    block: Block,
    view_at: Callable[[int], ConfigView],
    genesis_hash: bytes,
) -> None:
    """A replacement block must link to its stored neighbours, where they verify."""
    height = block.header.height
    if height > 0:
        with contextlib.suppress(IntegrityFault):
            parent = check_block(
                store, height - 1, view_at, genesis_hash=genesis_hash, with_index=False
            )
            if block.header.prev_hash != parent.block_hash():
                raise BlockVerificationError(
                    "does not link to the stored parent", height=height, reason="prev_hash"
                )
    child_raw = store.get_block_bytes(height + 1)
    if child_raw is not None:
        with contextlib.suppress(IntegrityFault):
            child = check_block(
                store, height + 1, view_at, genesis_hash=genesis_hash, with_index=False
            )
            if child.header.prev_hash != block.block_hash():
                raise BlockVerificationError(
                    "is not the parent of the stored next block", height=height, reason="link"
                )


def local_state_repair(store: LedgerStore, fault: Fault) -> list[str]:
    """Repairs that need nobody: a flat record whose key the certified state does not
    hold is deleted; a missing or wrong one is rebuilt from the key's last history
    entry when that matches the certified leaf. A line per item repaired."""
    root = store.state_root()
    state_key = fault.key
    if fault.kind == "state_missing" and state_key is not None:
        state_key = next((k for k in iter_history_keys(store) if sha256(k) == fault.key), None)
    if state_key is None:
        return []
    leaf = get_value_hash(store, root, sha256(state_key))
    if leaf is None:
        if store.get_state_record(state_key) is not None:
            store.write_repair(deletes=[("state", state_key)])
            return [f"state {state_key!r} (not in the certified state: removed)"]
        return []
    entries = read_history(store.iter_raw("history", state_key + b"\x00"), state_key)
    if entries:
        height, index, _, value = entries[-1]
        if value is not None:
            rebuilt = encode_state_record(value, height, index)
            if sha256(rebuilt) == leaf:
                store.write_repair(puts=[("state", state_key, rebuilt)])
                return [f"state {state_key!r} (from its history, matches the certified leaf)"]
    return []


def repair_tx_index(store: LedgerStore, tx_id: bytes) -> list[str]:
    """An index entry naming the wrong place: point it at the block that holds the
    transaction, or drop it if none does (blocks are checked separately)."""
    tip = store.height() or 0
    for height in range(tip, -1, -1):
        block = store.get_block(height)
        if block is None:
            continue
        for index, envelope in enumerate(block.txs):
            if envelope.tx_id() == tx_id:
                store.write_repair(puts=[("txindex", tx_id, _LOCATION.pack(height, index))])
                return [f"tx index {tx_id.hex()[:16]} -> ({height}, {index})"]
    store.write_repair(deletes=[("txindex", tx_id)])
    return [f"tx index {tx_id.hex()[:16]} (no block holds it: removed)"]
