"""Tests for kyodo.ledger._state_tree: the authenticated world-state tree."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kyodo.ledger._state_tree import (
    EMPTY,
    StateProof,
    TreeUpdate,
    apply_updates,
    compute_proof,
    compute_root,
    get_value_hash,
    iter_nodes,
    verify_proof,
)
from kyodo.ledger.errors import StateCorruptionError, StateProofError

VECTORS = Path(__file__).parent / "vectors" / "state_tree.json"


# ---------------------------------------------------------------------------
# Helpers: a dict-backed store and an independent, naive reference tree


class DictReader:
    """A NodeReader over a dict; optionally records every hash it is asked for."""

    def __init__(self, nodes: dict[bytes, bytes] | None = None) -> None:
        self.nodes: dict[bytes, bytes] = {} if nodes is None else nodes
        self.requests: list[bytes] | None = None

    def get_node(self, node_hash: bytes) -> bytes | None:
        if self.requests is not None:
            self.requests.append(node_hash)
        return self.nodes.get(node_hash)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(key: bytes, value: bytes) -> bytes:
    return sha(b"\x00" + key + value)


def internal_hash(left: bytes, right: bytes) -> bytes:
    return sha(b"\x01" + left + right)


def bit(key: bytes, depth: int) -> int:
    return (key[depth // 8] >> (7 - depth % 8)) & 1


def ref_root(items: dict[bytes, bytes]) -> bytes:
    """The root straight from the definition: one leaf is the leaf, else split by bit."""

    def go(pairs: list[tuple[bytes, bytes]], depth: int) -> bytes:
        if not pairs:
            return EMPTY
        if len(pairs) == 1:
            return leaf_hash(*pairs[0])
        left = [p for p in pairs if not bit(p[0], depth)]
        right = [p for p in pairs if bit(p[0], depth)]
        return internal_hash(go(left, depth + 1), go(right, depth + 1))

    return go(list(items.items()), 0)


def h(label: str | int) -> bytes:
    return sha(str(label).encode())


def with_prefix(base: bytes, bits: int, tail: bytes) -> bytes:
    """The first ``bits`` bits of ``base`` followed by the rest of ``tail``."""
    mask = (1 << (256 - bits)) - 1
    value = (int.from_bytes(base, "big") & ~mask) | (int.from_bytes(tail, "big") & mask)
    return value.to_bytes(32, "big")


def flip_bit(key: bytes, depth: int) -> bytes:
    return (int.from_bytes(key, "big") ^ (1 << (255 - depth))).to_bytes(32, "big")


def build(items: dict[bytes, bytes]) -> tuple[DictReader, bytes]:
    reader = DictReader()
    update = apply_updates(reader, EMPTY, items)
    reader.nodes.update(update.new_nodes)
    return reader, update.root


def commit(reader: DictReader, root: bytes, updates: dict[bytes, bytes | None]) -> bytes:
    update = apply_updates(reader, root, updates)
    reader.nodes.update(update.new_nodes)
    return update.root


def mixed_keys(rng: random.Random, count: int) -> list[bytes]:
    """Random key hashes, a third of them sharing 8-40 leading bits with a few bases."""
    bases = [rng.randbytes(32) for _ in range(4)]
    keys: set[bytes] = set()
    while len(keys) < count:
        if rng.random() < 0.33:
            keys.add(with_prefix(rng.choice(bases), rng.randint(8, 40), rng.randbytes(32)))
        else:
            keys.add(rng.randbytes(32))
    return sorted(keys)


@pytest.fixture(scope="module")
def tree() -> tuple[DictReader, bytes, dict[bytes, bytes]]:
    rng = random.Random(7)
    items = {k: rng.randbytes(32) for k in mixed_keys(rng, 300)}
    reader, root = build(items)
    return reader, root, items


def absent_key_ending_at_leaf(reader: DictReader, root: bytes, items: dict[bytes, bytes]) -> bytes:
    """An absent key whose proof ends at another key's leaf (flip a leaf key's last bit)."""
    for key in items:
        probe = flip_bit(key, 255)
        if probe not in items and compute_proof(reader, root, probe).leaf_key_hash is not None:
            return probe
    raise AssertionError("no such key")


def absent_key_ending_in_empty(reader: DictReader, root: bytes) -> bytes:
    for i in range(10_000):
        probe = h(f"absent-{i}")
        proof = compute_proof(reader, root, probe)
        if proof.leaf_key_hash is None and proof.siblings:
            return probe
    raise AssertionError("no such key")


# ---------------------------------------------------------------------------
# Stateful model test


BASES = [bytes(32), b"\xff" * 32, bytes.fromhex("a5" * 32), h("base")]
VALUES = st.sampled_from([h("v1"), h("v2"), h("v3")]) | st.binary(min_size=32, max_size=32)
HASHES32 = st.binary(min_size=32, max_size=32)


@st.composite
def fresh_keys(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(HASHES32)
    return with_prefix(draw(st.sampled_from(BASES)), draw(st.integers(8, 40)), draw(HASHES32))


class StateTreeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reader = DictReader()
        self.root = EMPTY
        self.model: dict[bytes, bytes] = {}
        self.probes: set[bytes] = set()

    def _draw_key(self, data: st.DataObject) -> bytes:
        choice = data.draw(st.integers(0, 3))
        if choice == 0 or not self.model:
            key = data.draw(fresh_keys())
        elif choice == 1:
            key = data.draw(st.sampled_from(sorted(self.model)))
        else:  # near an existing key: shares 8..255 leading bits with it
            base = data.draw(st.sampled_from(sorted(self.model)))
            key = with_prefix(base, data.draw(st.integers(8, 255)), data.draw(HASHES32))
        return key

    def _apply(self, batch: dict[bytes, bytes | None]) -> None:
        self.probes = set(batch)
        reachable = {node for node, _ in iter_nodes(self.reader, self.root)}
        self.reader.requests = []
        update = apply_updates(self.reader, self.root, batch)
        requested = set(self.reader.requests)
        self.reader.requests = None
        assert requested <= reachable, "reader asked for a node not reachable from the root"
        for node, encoding in update.new_nodes.items():
            assert sha(encoding) == node
        overlay = DictReader({**self.reader.nodes, **update.new_nodes})
        new_reachable = {node for node, _ in iter_nodes(overlay, update.root)}
        assert set(update.new_nodes) <= new_reachable, "update created unreachable nodes"
        self.reader.nodes.update(update.new_nodes)
        self.root = update.root
        for key, value in batch.items():
            if value is None:
                self.model.pop(key, None)
            else:
                self.model[key] = value

    @rule(data=st.data())
    def mixed_batch(self, data: st.DataObject) -> None:
        batch: dict[bytes, bytes | None] = {}
        for _ in range(data.draw(st.integers(1, 10))):
            batch[self._draw_key(data)] = data.draw(st.none() | VALUES)
        self._apply(batch)

    @rule(data=st.data())
    def insert_many(self, data: st.DataObject) -> None:
        batch: dict[bytes, bytes | None] = {
            self._draw_key(data): data.draw(VALUES) for _ in range(data.draw(st.integers(5, 30)))
        }
        self._apply(batch)

    @rule(data=st.data())
    def delete_many(self, data: st.DataObject) -> None:
        keys = sorted(self.model)
        doomed = data.draw(st.lists(st.sampled_from(keys), max_size=len(keys))) if keys else []
        batch: dict[bytes, bytes | None] = dict.fromkeys(doomed)
        batch[data.draw(fresh_keys())] = None  # an absent key, most likely
        self._apply(batch)

    @invariant()
    def root_matches_model(self) -> None:
        assert self.root == compute_root(self.model) == ref_root(self.model)
        leaves = [enc for _, enc in iter_nodes(self.reader, self.root) if enc[0] == 0]
        assert sorted(enc[1:33] for enc in leaves) == sorted(self.model)

    @invariant()
    def lookups_and_proofs(self) -> None:
        # Every key the last batch touched (present or now absent), some other keys,
        # and absent neighbours sharing 255 bits with present keys.
        present = sorted(self.model)
        checked = set(self.probes) | set(present[:: max(1, len(present) // 10)])
        checked |= {flip_bit(k, 255) for k in present[:5]} | {h("never-inserted")}
        for key in checked:
            value = self.model.get(key)
            assert get_value_hash(self.reader, self.root, key) == value
            verify_proof(self.root, key, value, compute_proof(self.reader, self.root, key))


StateTreeMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStateTreeMachine = StateTreeMachine.TestCase


# ---------------------------------------------------------------------------
# Shape, order independence, batching


def test_empty_tree() -> None:
    reader = DictReader()
    assert compute_root({}) == EMPTY
    assert apply_updates(reader, EMPTY, {}) == TreeUpdate(root=EMPTY, new_nodes={})
    assert apply_updates(reader, EMPTY, {h(1): None}) == TreeUpdate(root=EMPTY, new_nodes={})
    assert get_value_hash(reader, EMPTY, h(1)) is None
    proof = compute_proof(reader, EMPTY, h(1))
    assert proof == StateProof(siblings=(), leaf_key_hash=None, leaf_value_hash=None)
    verify_proof(EMPTY, h(1), None, proof)
    assert list(iter_nodes(reader, EMPTY)) == []


def test_single_leaf_is_the_root() -> None:
    reader, root = build({h("k"): h("v")})
    assert root == leaf_hash(h("k"), h("v"))
    assert reader.nodes == {root: b"\x00" + h("k") + h("v")}


def test_root_independent_of_order_and_batching() -> None:
    rng = random.Random(1)
    items = {k: rng.randbytes(32) for k in mixed_keys(rng, 400)}
    expected = ref_root(items)
    assert compute_root(items) == expected
    assert build(items)[1] == expected

    for seed in range(3):
        order = list(items)
        random.Random(seed).shuffle(order)
        reader, root = DictReader(), EMPTY
        pos = 0
        while pos < len(order):
            size = random.Random(seed * 1000 + pos).randint(1, 60)
            root = commit(reader, root, {k: items[k] for k in order[pos : pos + size]})
            pos += size
        assert root == expected

    # Insert extra keys (some sharing long prefixes), overwrite values, then undo both.
    reader, root = build(items)
    extra = {
        with_prefix(k, rng.randint(8, 250), rng.randbytes(32)): h("x") for k in list(items)[:80]
    }
    extra = {k: v for k, v in extra.items() if k not in items}
    root = commit(reader, root, {**extra, **{k: h("other") for k in list(items)[:50]}})
    assert root == ref_root({**items, **extra, **{k: h("other") for k in list(items)[:50]}})
    root = commit(reader, root, dict.fromkeys(extra))
    root = commit(reader, root, {k: items[k] for k in list(items)[:50]})
    assert root == expected


def test_delete_everything_and_collapse() -> None:
    rng = random.Random(2)
    items = {k: rng.randbytes(32) for k in mixed_keys(rng, 200)}
    reader, root = build(items)
    keys = list(items)
    rng.shuffle(keys)
    remaining = dict(items)
    while len(remaining) > 1:
        doomed = keys[: max(1, len(remaining) // 3)]
        keys = keys[len(doomed) :]
        for k in doomed:
            del remaining[k]
        root = commit(reader, root, dict.fromkeys(doomed))
        assert root == ref_root(remaining)
    (last,) = remaining.items()
    assert root == leaf_hash(*last)
    assert commit(reader, root, {last[0]: None}) == EMPTY


def test_noop_updates_create_nothing(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    some = list(items)[:40]
    absent = [h(f"nope-{i}") for i in range(40)] + [flip_bit(k, 255) for k in some]
    update = apply_updates(reader, root, {**{k: items[k] for k in some}, **dict.fromkeys(absent)})
    assert update == TreeUpdate(root=root, new_nodes={})


def test_old_roots_stay_provable() -> None:
    rng = random.Random(3)
    items = {k: rng.randbytes(32) for k in mixed_keys(rng, 100)}
    reader, root0 = build(items)
    victim = next(iter(items))
    root1 = commit(reader, root0, {victim: None, h("new"): h("value")})
    assert get_value_hash(reader, root0, victim) == items[victim]
    assert get_value_hash(reader, root1, victim) is None
    verify_proof(root0, victim, items[victim], compute_proof(reader, root0, victim))
    verify_proof(root1, victim, None, compute_proof(reader, root1, victim))
    verify_proof(root0, h("new"), None, compute_proof(reader, root0, h("new")))


def test_max_depth_keys() -> None:
    a = b"\xff" * 31 + b"\xfe"
    b = b"\xff" * 32
    reader, root = build({a: h("a"), b: h("b")})
    proof = compute_proof(reader, root, a)
    assert len(proof.siblings) == 256
    verify_proof(root, a, h("a"), proof)
    root = commit(reader, root, {b: None})
    assert root == leaf_hash(a, h("a"))


def test_bad_arguments_rejected() -> None:
    reader = DictReader()
    with pytest.raises(ValueError):
        apply_updates(reader, EMPTY, {b"short": h(1)})
    with pytest.raises(ValueError):
        apply_updates(reader, EMPTY, {h(1): b"short"})
    with pytest.raises(TypeError):
        apply_updates(reader, EMPTY, {h(1): "x" * 32})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        apply_updates(reader, b"\x00" * 31, {})
    with pytest.raises(ValueError):
        compute_root({h(1): h(2)[:31]})
    with pytest.raises(ValueError):
        get_value_hash(reader, EMPTY, h(1)[:31])
    with pytest.raises(ValueError):
        compute_proof(reader, EMPTY, h(1) + b"\x00")


# ---------------------------------------------------------------------------
# Proof verification: tampering


def expect_reject(root: bytes, key: bytes, value: bytes | None, proof: object) -> None:
    with pytest.raises(StateProofError):
        verify_proof(root, key, value, proof)  # type: ignore[arg-type]


def test_tampered_siblings_rejected(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    for key in [*list(items)[:10], absent_key_ending_at_leaf(reader, root, items)]:
        value = items.get(key)
        proof = compute_proof(reader, root, key)
        verify_proof(root, key, value, proof)
        sibs = proof.siblings
        assert len(sibs) >= 2
        for depth in range(len(sibs)):
            for byte in (0, 17, 31):
                flipped = bytearray(sibs[depth])
                flipped[byte] ^= 0x01
                bad = (*sibs[:depth], bytes(flipped), *sibs[depth + 1 :])
                expect_reject(root, key, value, replace(proof, siblings=bad))
        for bad in (sibs[:-1], sibs[1:], (*sibs, EMPTY), (*sibs, h("x")), (h("x"), *sibs)):
            expect_reject(root, key, value, replace(proof, siblings=bad))


def test_wrong_claims_rejected(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    key_a, key_b = list(items)[:2]
    proof_a = compute_proof(reader, root, key_a)
    # proof for a different key
    expect_reject(root, key_b, items[key_b], proof_a)
    expect_reject(root, key_b, items[key_a], proof_a)
    expect_reject(root, key_b, None, proof_a)
    # absence claimed for a present key
    expect_reject(root, key_a, None, proof_a)
    # wrong value, claimed or in the proof's leaf
    expect_reject(root, key_a, h("wrong"), proof_a)
    expect_reject(root, key_a, h("wrong"), replace(proof_a, leaf_value_hash=h("wrong")))
    expect_reject(root, key_a, items[key_a], replace(proof_a, leaf_value_hash=h("wrong")))
    # presence claimed for an absent key (proof ending at a foreign leaf, or at EMPTY)
    absent = absent_key_ending_at_leaf(reader, root, items)
    proof_absent = compute_proof(reader, root, absent)
    verify_proof(root, absent, None, proof_absent)
    expect_reject(root, absent, proof_absent.leaf_value_hash, proof_absent)
    expect_reject(root, absent, items[key_a], proof_absent)
    empty_end = absent_key_ending_in_empty(reader, root)
    proof_empty = compute_proof(reader, root, empty_end)
    verify_proof(root, empty_end, None, proof_empty)
    expect_reject(root, empty_end, h("v"), proof_empty)
    # an absence proof with the leaf dropped or swapped for this key's leaf
    expect_reject(
        root, absent, None, replace(proof_absent, leaf_key_hash=None, leaf_value_hash=None)
    )
    expect_reject(root, absent, None, replace(proof_absent, leaf_key_hash=absent))
    # stale root: proof against the old root, verified against a newer one
    newer_reader = DictReader(dict(reader.nodes))
    newer = commit(newer_reader, root, {h("unrelated"): h("v")})
    expect_reject(newer, key_a, items[key_a], proof_a)
    expect_reject(newer, absent, None, proof_absent)
    stale = commit(newer_reader, newer, {key_a: h("changed")})
    expect_reject(stale, key_a, items[key_a], compute_proof(newer_reader, newer, key_a))


def test_malformed_proofs_rejected(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    key = next(iter(items))
    value = items[key]
    proof = compute_proof(reader, root, key)
    sibs = proof.siblings
    expect_reject(root, key, value, replace(proof, siblings=(*sibs[:-1], sibs[-1][:31])))
    expect_reject(root, key, value, replace(proof, siblings=(*sibs[:-1], sibs[-1] + b"\x00")))
    expect_reject(root, key, value, replace(proof, siblings=(*sibs[:-1], 5)))  # type: ignore[arg-type]
    expect_reject(root, key, value, replace(proof, siblings=(EMPTY,) * 256 + (h(1),)))
    expect_reject(root, key, value, replace(proof, leaf_value_hash=None))
    expect_reject(root, key, value, replace(proof, leaf_key_hash=key[:31]))
    expect_reject(root, key, value, replace(proof, siblings=None))  # type: ignore[arg-type]
    expect_reject(root[:31], key, value, proof)
    expect_reject(root, key[:31], value, proof)
    expect_reject(root, key, value[:31], proof)
    expect_reject(root, key, value, proof.to_dict())
    # a proof with no leaf but a value
    expect_reject(
        EMPTY, key, None, StateProof(siblings=(), leaf_key_hash=None, leaf_value_hash=value)
    )


def test_absence_proof_with_off_path_leaf_rejected() -> None:
    # Hand-made root in which a leaf sits where its key cannot be: the root recomputes,
    # so only the prefix check stands between this proof and a false absence claim.
    key = bytes(32)  # bit 0 = 0
    sibling = h("sibling")
    on_path = b"\x7f" + bytes(31)  # bit 0 = 0, like key
    off_path = b"\x80" + bytes(31)  # bit 0 = 1
    for leaf_key, ok in ((on_path, True), (off_path, False)):
        root = internal_hash(leaf_hash(leaf_key, h("v")), sibling)
        proof = StateProof(siblings=(sibling,), leaf_key_hash=leaf_key, leaf_value_hash=h("v"))
        if ok:
            verify_proof(root, key, None, proof)
        else:
            with pytest.raises(StateProofError, match="does not share"):
                verify_proof(root, key, None, proof)


def test_non_canonical_proof_rejected() -> None:
    # (leaf, EMPTY) and (EMPTY, EMPTY) never occur in the tree; refuse proofs implying them.
    key = bytes(32)
    leaf_root = internal_hash(leaf_hash(key, h("v")), EMPTY)
    proof = StateProof(siblings=(EMPTY,), leaf_key_hash=key, leaf_value_hash=h("v"))
    with pytest.raises(StateProofError, match="canonical"):
        verify_proof(leaf_root, key, h("v"), proof)
    empty_proof = StateProof(siblings=(EMPTY,), leaf_key_hash=None, leaf_value_hash=None)
    with pytest.raises(StateProofError, match="canonical"):
        verify_proof(internal_hash(EMPTY, EMPTY), key, None, empty_proof)


def test_proof_dict_round_trip(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    for key in [next(iter(items)), absent_key_ending_at_leaf(reader, root, items)]:
        proof = compute_proof(reader, root, key)
        data = json.loads(json.dumps(proof.to_dict()))
        assert StateProof.from_dict(data) == proof
        verify_proof(root, key, items.get(key), StateProof.from_dict(data))
    empty = StateProof(siblings=(), leaf_key_hash=None, leaf_value_hash=None)
    assert StateProof.from_dict(empty.to_dict()) == empty


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("siblings"),
        lambda d: d.update(extra=1),
        lambda d: d.update(siblings="00" * 32),
        lambda d: d.update(siblings=["00" * 32] * 257),
        lambda d: d["siblings"].append("00" * 31),
        lambda d: d["siblings"].append("AB" * 32),
        lambda d: d["siblings"].append("zz" * 32),
        lambda d: d["siblings"].append(" " + "00" * 31 + "0"),
        lambda d: d["siblings"].append(None),
        lambda d: d.update(leaf_key_hash=None),
        lambda d: d.update(leaf_value_hash=5),
    ],
)
def test_proof_from_dict_strict(mutate: object) -> None:
    proof = StateProof(siblings=(h(1), h(2)), leaf_key_hash=h(3), leaf_value_hash=h(4))
    data = proof.to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(StateProofError):
        StateProof.from_dict(data)
    with pytest.raises(StateProofError):
        StateProof.from_dict([])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Storage corruption


def corrupted(reader: DictReader, node: bytes, encoding: bytes | None) -> DictReader:
    nodes = dict(reader.nodes)
    if encoding is None:
        del nodes[node]
    else:
        nodes[node] = encoding
    return DictReader(nodes)


def flip(encoding: bytes, index: int) -> bytes:
    out = bytearray(encoding)
    out[index] ^= 0x40
    return bytes(out)


def test_corrupted_nodes_detected(tree: tuple[DictReader, bytes, dict[bytes, bytes]]) -> None:
    reader, root, items = tree
    key = list(items)[5]
    path_nodes = []  # (hash, encoding) from the root down to key's leaf
    node = root
    for depth in range(257):
        enc = reader.nodes[node]
        path_nodes.append((node, enc))
        if enc[0] == 0:
            break
        node = enc[33:] if bit(key, depth) else enc[1:33]
    assert path_nodes[-1][1][1:33] == key
    victims = [path_nodes[0], path_nodes[len(path_nodes) // 2], path_nodes[-1]]
    for node, enc in victims:
        for bad in (
            flip(enc, 0),
            flip(enc, 1),
            flip(enc, 40),
            flip(enc, 64),
            enc[:64],
            enc + b"\x00",
            b"\x02" + enc[1:],
            None,
        ):
            bad_reader = corrupted(reader, node, bad)
            for action in (
                lambda r: get_value_hash(r, root, key),
                lambda r: compute_proof(r, root, key),
                lambda r: apply_updates(r, root, {key: h("new")}),
                lambda r: apply_updates(r, root, {key: None}),
                lambda r: list(iter_nodes(r, root)),
            ):
                with pytest.raises(StateCorruptionError) as info:
                    action(bad_reader)
                assert info.value.node_hash == node.hex()
    # A corrupt node off the path is not read by a lookup but is found by iter_nodes.
    other = next(n for n, e in reader.nodes.items() if e[0] == 0 and e[1:33] != key)
    bad_reader = corrupted(reader, other, flip(reader.nodes[other], 50))
    assert get_value_hash(bad_reader, root, key) == items[key]
    with pytest.raises(StateCorruptionError):
        list(iter_nodes(bad_reader, root))


def test_sibling_read_for_collapse_is_verified() -> None:
    # Deleting one of two leaves under an internal node reads the other leaf to learn
    # its kind (so it can move up); that read must be verified too.
    a, b, c = b"\x00" + bytes(31), b"\x40" + bytes(31), b"\x80" + bytes(31)
    reader, root = build({a: h("a"), b: h("b"), c: h("c")})
    lb = leaf_hash(b, h("b"))
    assert commit(DictReader(dict(reader.nodes)), root, {a: None}) == ref_root(
        {b: h("b"), c: h("c")}
    )
    with pytest.raises(StateCorruptionError) as info:
        apply_updates(corrupted(reader, lb, flip(reader.nodes[lb], 9)), root, {a: None})
    assert info.value.node_hash == lb.hex()


def test_shape_violations_detected() -> None:
    key = bytes(32)
    lone = b"\x00" + key + h("v")
    leaf = sha(lone)
    # an internal node with an EMPTY child beside a leaf
    bad_internal = b"\x01" + leaf + EMPTY
    nodes = {leaf: lone, sha(bad_internal): bad_internal}
    with pytest.raises(StateCorruptionError) as info:
        list(iter_nodes(DictReader(nodes), sha(bad_internal)))
    assert info.value.node_hash == sha(bad_internal).hex()
    # an internal node with two EMPTY children
    both_empty = b"\x01" + EMPTY + EMPTY
    with pytest.raises(StateCorruptionError):
        list(iter_nodes(DictReader({sha(both_empty): both_empty}), sha(both_empty)))
    # a leaf on the wrong side of its parent
    other = b"\x00" + b"\x40" + bytes(31) + h("w")
    wrong_side = b"\x01" + sha(other) + leaf  # key (bit 0 = 0) placed on the right
    nodes = {leaf: lone, sha(other): other, sha(wrong_side): wrong_side}
    probe = b"\x80" + bytes(31)  # bit 0 = 1: its path ends at the misplaced leaf
    for action in (
        lambda r: list(iter_nodes(r, sha(wrong_side))),
        lambda r: compute_proof(r, sha(wrong_side), probe),
        lambda r: apply_updates(r, sha(wrong_side), {probe: h("p")}),
    ):
        with pytest.raises(StateCorruptionError) as info:
            action(DictReader(nodes))
        assert info.value.node_hash == leaf.hex()


# ---------------------------------------------------------------------------
# Fixed vectors


def test_vectors() -> None:
    doc = json.loads(VECTORS.read_text())
    assert len(doc["vectors"]) >= 4
    for vector in doc["vectors"]:
        items = {bytes.fromhex(k): bytes.fromhex(v) for k, v in vector["items"].items()}
        root = bytes.fromhex(vector["root"])
        assert compute_root(items) == root, vector["name"]
        assert ref_root(items) == root, vector["name"]
        reader, built = build(items)
        assert built == root, vector["name"]
        assert sorted(reader.nodes) == sorted(n for n, _ in iter_nodes(reader, root))
        kinds = set()
        for case in vector["proofs"]:
            key = bytes.fromhex(case["key_hash"])
            value = None if case["value_hash"] is None else bytes.fromhex(case["value_hash"])
            kinds.add(value is None)
            proof = StateProof.from_dict(case["proof"])
            assert compute_proof(reader, root, key) == proof, vector["name"]
            assert get_value_hash(reader, root, key) == value, vector["name"]
            verify_proof(root, key, value, proof)
            expect_reject(root, key, h("not-the-value"), proof)
        assert True in kinds, vector["name"]
