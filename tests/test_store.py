"""Tests of kyodo.ledger.LedgerStore: appends, reopening, state, history, crash safety."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kyodo.codec import encode, encode_value
from kyodo.crypto import ZERO_HASH, sha256
from kyodo.ledger import (
    EMPTY,
    Block,
    HistoryEntry,
    LedgerError,
    LedgerStore,
    StateEntry,
    StoredDataError,
    compute_root,
    encode_state_key,
    encode_state_record,
    get_value_hash,
    split_state_key,
    verify_store,
)
from tests._factories import (
    NOW_MS,
    LedgerNetwork,
    append,
    append_genesis,
    append_writes,
    build_block,
    make_envelope,
    make_network,
)

ROOT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def net() -> LedgerNetwork:
    return make_network()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    db = LedgerStore(tmp_path / "db")
    yield db
    db.close()


def _flat_root(store: LedgerStore) -> bytes:
    """The state root recomputed from the flat state alone."""
    return compute_root({sha256(key): sha256(record) for key, record in store.iter_state_records()})


def _snapshot(store: LedgerStore, heights: range, keys: list[tuple[str, str]]) -> Any:
    return (
        store.height(),
        store.tip_hash(),
        store.state_root(),
        store.genesis_hash(),
        [store.get_block_bytes(h) for h in heights],
        list(store.iter_state_records()),
        {k: store.get_history(*k) for k in keys},
    )


# -- empty store and genesis -----------------------------------------------------------------


def test_empty_store(store: LedgerStore) -> None:
    assert store.height() is None
    assert store.tip_hash() == ZERO_HASH
    assert store.state_root() == EMPTY
    assert store.genesis_hash() is None
    assert store.get_block(0) is None
    assert store.get_header(0) is None
    assert list(store.iter_state("kv")) == []
    assert list(store.iter_state_records()) == []
    assert store.get_history("kv", "a") == []
    assert store.get_state("kv", "a") is None


def test_genesis(store: LedgerStore, net: LedgerNetwork) -> None:
    append_genesis(store, net)
    assert store.height() == 0
    assert store.tip_hash() == net.genesis.block_hash()
    assert store.genesis_hash() == net.genesis.block_hash()
    assert store.state_root() == EMPTY
    assert store.get_block(0) == net.genesis
    assert store.get_block_bytes(0) == encode(net.genesis)
    assert verify_store(store, net.genesis) == 0


# -- appends and reopening -------------------------------------------------------------------


def _build_chain(store: LedgerStore, net: LedgerNetwork) -> list[Block]:
    """Genesis and four blocks of writes, overwrites and deletes."""
    append_genesis(store, net)
    return [
        append_writes(
            store,
            net,
            {("kv", "a"): 1, ("kv", "b"): {"x": [1, 2]}, ("other", "a"): "other-ns"},
            {("kv", "c"): b"\x00\x01"},
        ),
        append_writes(store, net, {("kv", "a"): 2}, {("kv", "a"): 3, ("kv", "b"): None}),
        append_writes(store, net, {("kv", "b"): "back"}),
        append_writes(store, net, {("kv", "c"): None}, {("kv", "d"): True}),
    ]


def _check_chain(store: LedgerStore, net: LedgerNetwork, blocks: list[Block]) -> None:
    assert store.height() == 4
    assert store.tip_hash() == blocks[-1].block_hash()
    assert store.genesis_hash() == net.genesis.block_hash()
    assert store.state_root() == blocks[-1].header.state_root
    assert store.state_root() == _flat_root(store)
    for block in blocks:
        height = block.header.height
        assert store.get_block(height) == block
        assert store.get_header(height) == block.header
        for index, envelope in enumerate(block.txs):
            assert store.get_tx_location(envelope.tx_id()) == (height, index)
    assert store.get_block(5) is None
    assert store.get_tx_location(b"\x00" * 32) is None

    assert store.get_state("kv", "a") == StateEntry(value=3, height=2, tx_index=1)
    assert store.get_state("kv", "b") == StateEntry(value="back", height=3, tx_index=0)
    assert store.get_state("kv", "c") is None
    assert store.get_state("kv", "d") == StateEntry(value=True, height=4, tx_index=1)
    assert store.get_state("other", "a") == StateEntry(value="other-ns", height=1, tx_index=0)
    assert store.get_state_record(encode_state_key("kv", "a")) == encode_state_record(3, 2, 1)

    def txid(height: int, index: int) -> bytes:
        return blocks[height - 1].txs[index].tx_id()

    assert store.get_history("kv", "a") == [
        HistoryEntry(height=1, tx_index=0, tx_id=txid(1, 0), value=1),
        HistoryEntry(height=2, tx_index=0, tx_id=txid(2, 0), value=2),
        HistoryEntry(height=2, tx_index=1, tx_id=txid(2, 1), value=3),
    ]
    assert store.get_history("kv", "b") == [
        HistoryEntry(height=1, tx_index=0, tx_id=txid(1, 0), value={"x": [1, 2]}),
        HistoryEntry(height=2, tx_index=1, tx_id=txid(2, 1), value=None),
        HistoryEntry(height=3, tx_index=0, tx_id=txid(3, 0), value="back"),
    ]
    assert store.get_history("kv", "c") == [
        HistoryEntry(height=1, tx_index=1, tx_id=txid(1, 1), value=b"\x00\x01"),
        HistoryEntry(height=4, tx_index=0, tx_id=txid(4, 0), value=None),
    ]
    assert store.get_history("other", "a") == [
        HistoryEntry(height=1, tx_index=0, tx_id=txid(1, 0), value="other-ns"),
    ]
    assert [e.value for e in store.get_history("kv", "a", limit=2)] == [1, 2]
    assert store.get_history("kv", "never") == []
    assert [k for k, _ in store.iter_state("kv")] == ["a", "b", "d"]


def test_append_and_read_back(store: LedgerStore, net: LedgerNetwork) -> None:
    blocks = _build_chain(store, net)
    _check_chain(store, net, blocks)
    assert verify_store(store, net.genesis) == 4


def test_reopen_gives_the_same_ledger(tmp_path: Path, net: LedgerNetwork) -> None:
    store = LedgerStore(tmp_path / "db")
    blocks = _build_chain(store, net)
    store.close()

    reopened = LedgerStore(tmp_path / "db")
    try:
        _check_chain(reopened, net, blocks)
        assert verify_store(reopened, net.genesis) == 4
        # and it goes on from where it was
        block = append_writes(reopened, net, {("kv", "e"): 5})
        assert reopened.height() == 5
        assert block.header.prev_hash == blocks[-1].block_hash()
    finally:
        reopened.close()

    read_only = LedgerStore(tmp_path / "db", read_only=True)
    try:
        assert read_only.height() == 5
        assert read_only.get_state("kv", "e") == StateEntry(value=5, height=5, tx_index=0)
    finally:
        read_only.close()


def test_state_tree_matches_flat_state(store: LedgerStore, net: LedgerNetwork) -> None:
    _build_chain(store, net)
    for state_key, record in store.iter_state_records():
        assert get_value_hash(store, store.state_root(), sha256(state_key)) == sha256(record)
    assert get_value_hash(store, store.state_root(), sha256(encode_state_key("kv", "c"))) is None
    # every earlier root stays readable (copy-on-write tree)
    first = store.get_header(1)
    assert first is not None
    key_hash = sha256(encode_state_key("kv", "a"))
    assert get_value_hash(store, first.state_root, key_hash) == sha256(encode_state_record(1, 1, 0))


def test_open_read_only_missing_store(tmp_path: Path) -> None:
    with pytest.raises(LedgerError):
        LedgerStore(tmp_path / "absent", read_only=True)


# -- iter_state --------------------------------------------------------------------------


KEYS = [
    "",
    "a",
    "a\x01",
    "a/1",
    "a/10",
    "a/2",
    "aa",
    "b",
    "B",
    "z",
    "\u00e9",
    "\u6c34",
    "\U0001f600",
]


@pytest.fixture
def ranged(store: LedgerStore, net: LedgerNetwork) -> LedgerStore:
    append_genesis(store, net)
    writes: dict[tuple[str, str], Any] = {("ns", k): i for i, k in enumerate(KEYS) if k}
    writes.update({("n", "x"): "n", ("ns2", "a"): "ns2", ("nt", "a"): "nt"})
    append_writes(store, net, writes)
    return store


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


def test_iter_state_whole_namespace_is_sorted(ranged: LedgerStore) -> None:
    got = list(ranged.iter_state("ns"))
    expected = _utf8_sorted([k for k in KEYS if k])
    assert [k for k, _ in got] == expected
    assert expected == sorted(expected)  # UTF-8 byte order is code point order
    for key, entry in got:
        assert entry == StateEntry(value=KEYS.index(key), height=1, tx_index=0)
    assert [k for k, _ in ranged.iter_state("n")] == ["x"]
    assert [k for k, _ in ranged.iter_state("ns2")] == ["a"]
    assert list(ranged.iter_state("absent")) == []


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("", None),
        ("a", None),
        ("a/", "a0"),
        ("a/1", "a/2"),
        ("a/10", "a/10"),
        ("a/10", "a/10\x00"),
        ("b", "a"),
        ("", "a"),
        ("B", "b"),
        ("zz", None),
        ("\u00e9", "\U0001f600"),
        ("a\x01", "a/"),
    ],
)
def test_iter_state_range_is_half_open(ranged: LedgerStore, start: str, end: str | None) -> None:
    got = [k for k, _ in ranged.iter_state("ns", start, end)]
    expected = [
        k
        for k in _utf8_sorted([k for k in KEYS if k])
        if k.encode() >= start.encode() and (end is None or k.encode() < end.encode())
    ]
    assert got == expected


def test_split_state_key() -> None:
    assert encode_state_key("ns", "a/b") == b"ns\x00a/b"
    assert split_state_key(b"ns\x00a/b") == ("ns", "a/b")
    assert split_state_key(encode_state_key("\u6c34", "\U0001f600")) == ("\u6c34", "\U0001f600")


# -- appends that do not fit the tip -------------------------------------------------------


def test_append_that_does_not_link_writes_nothing(store: LedgerStore, net: LedgerNetwork) -> None:
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1})
    envelope = make_envelope(net.users["user1"], "kv", "put", ["x"], created_ms=NOW_MS + 2000)
    good, prepared = build_block(store, net, [(envelope, {("kv", "a"): 2, ("kv", "n"): 9})])
    keys = [("kv", "a"), ("kv", "n")]
    before = _snapshot(store, range(4), keys)

    header = good.header
    bad_headers = {
        "skips a height": replace(header, height=3),
        "repeats a height": replace(header, height=1),
        "wrong prev_hash": replace(header, prev_hash=b"\x07" * 32),
        "genesis prev_hash": replace(header, prev_hash=ZERO_HASH),
        "state root not the tree's": replace(header, state_root=b"\x09" * 32),
    }
    for name, bad_header in bad_headers.items():
        bad = Block(
            header=bad_header,
            txs=good.txs,
            results=good.results,
            certificate=good.certificate,
            config=None,
        )
        with pytest.raises(AssertionError):
            append(store, bad, prepared)
        assert _snapshot(store, range(4), keys) == before, name
        assert store.get_tx_location(envelope.tx_id()) is None, name
        for node_hash in prepared.tree_update.new_nodes:
            assert store.get_node(node_hash) is None, name

    # a genesis block on a non-empty store does not link either
    with pytest.raises(AssertionError):
        append_genesis(store, net)
    assert _snapshot(store, range(4), keys) == before

    # the well-formed block still appends afterwards
    append(store, good, prepared)
    assert store.height() == 2
    assert store.get_state("kv", "n") == StateEntry(value=9, height=2, tx_index=0)


def test_non_genesis_block_on_empty_store(tmp_path: Path, net: LedgerNetwork) -> None:
    source = LedgerStore(tmp_path / "source")
    append_genesis(source, net)
    block, prepared = build_block(source, net, [])
    source.close()
    empty = LedgerStore(tmp_path / "empty")
    try:
        with pytest.raises(AssertionError):
            append(empty, block, prepared)
        assert empty.height() is None
        assert empty.get_block_bytes(1) is None
    finally:
        empty.close()


# -- corrupted storage ---------------------------------------------------------------------


def test_corrupt_stored_block_is_reported(store: LedgerStore, net: LedgerNetwork) -> None:
    append_genesis(store, net)
    first = append_writes(store, net, {("kv", "a"): 1})
    store.put_raw("blocks", (1).to_bytes(8, "big"), b"\x00garbage")
    with pytest.raises(StoredDataError) as info:
        store.get_block(1)
    assert info.value.height == 1
    # a valid block stored under the wrong height
    store.put_raw("blocks", (1).to_bytes(8, "big"), encode(net.genesis))
    with pytest.raises(StoredDataError, match="says height 0"):
        store.get_block(1)
    store.put_raw("blocks", (1).to_bytes(8, "big"), encode(first))
    assert store.get_block(1) == first


def test_corrupt_state_record_is_reported(store: LedgerStore, net: LedgerNetwork) -> None:
    append_genesis(store, net)
    append_writes(store, net, {("kv", "a"): 1})
    store.put_raw("state", encode_state_key("kv", "a"), encode_value([1, 2]))
    with pytest.raises(StoredDataError):
        store.get_state("kv", "a")
    with pytest.raises(StoredDataError):
        verify_store(store, net.genesis)


# -- crash safety --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, {root_dir!r})
    import tests._factories as f
    from kyodo.ledger import LedgerStore

    net = f.load_network(Path(sys.argv[1]))
    store = LedgerStore(Path(sys.argv[2]))
    if store.height() is None:
        f.append_genesis(store, net)
    print("ready", store.height(), flush=True)
    while True:
        h = store.height() + 1
        big = {{("kv", "k%d" % ((h * 7 + i) % 50)): {{"h": h, "i": i, "pad": b"x" * 300}}
               for i in range(40)}}
        small = {{("kv", "k%d" % ((h * 3) % 50)): None, ("log", "h%06d" % h): h}}
        f.append_writes(store, net, big, small)
        print(h, flush=True)
    """
)

KILL_AFTER = [1, 2, 4, 7, 11]  # acknowledged appends per round, one child process per round


class _Child:
    """A child process appending blocks; reads its acknowledgements with a deadline."""

    def __init__(self, script: Path, net_dir: Path, db: Path, log: Path) -> None:
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(net_dir), str(db)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""

    def read_line(self, deadline: float) -> str:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("child did not acknowledge in time")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    raise AssertionError(f"child exited early with {self.proc.wait()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


def test_sigkill_never_loses_an_acknowledged_block(tmp_path: Path, net: LedgerNetwork) -> None:
    net_dir = tmp_path / "net"
    net.dump(net_dir)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root_dir=str(ROOT_DIR)))
    db = tmp_path / "db"
    log = tmp_path / "child.log"
    acknowledged: list[int] = []

    for kill_after in KILL_AFTER:
        child = _Child(script, net_dir, db, log)
        try:
            deadline = time.monotonic() + 60
            ready = child.read_line(deadline).split()
            assert ready[0] == "ready", log.read_text()
            start = int(ready[1])
            # every block acknowledged before a crash is still there after it
            assert start >= (acknowledged[-1] if acknowledged else 0)
            this_round = []
            while len(this_round) < kill_after:
                this_round.append(int(child.read_line(deadline)))
        finally:
            child.kill()
        assert this_round == list(range(start + 1, start + 1 + kill_after))
        acknowledged.extend(this_round)

        store = LedgerStore(db)
        try:
            tip = store.height()
            assert tip is not None
            assert tip >= acknowledged[-1]
            for height in acknowledged:
                assert store.get_block(height) is not None
            tip_header = store.get_header(tip)
            assert tip_header is not None
            assert store.tip_hash() == tip_header.block_hash()
            assert store.state_root() == tip_header.state_root
            assert _flat_root(store) == store.state_root()
            assert verify_store(store, net.genesis) == tip
            assert [int(k[1:]) for k, _ in store.iter_state("log")] == list(range(1, tip + 1))
        finally:
            store.close()
    assert len(acknowledged) == sum(KILL_AFTER)
