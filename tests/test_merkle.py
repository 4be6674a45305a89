"""Tests of the RFC 6962 / RFC 9162 Merkle tree in kyodo.crypto._merkle.

Three independent sources of truth are used:

* the published Certificate Transparency known-answer values (the eight
  leaves, roots and proofs of google/certificate-transparency
  ``merkle_tree_test.cc`` as carried over to transparency-dev/merkle
  ``testonly/constants.go`` and ``proof/verify_test.go``), hard-coded below;
* a naive recursive transcription of the RFC 9162 section 2.1 definitions
  (``ref_*``), used to cross-check every proof of many tree sizes;
* ``tests/vectors/merkle.json``, a language-neutral copy of the known-good
  values that is replayed here and can be replayed by another implementation.
  Regenerate it with ``python tests/test_merkle.py`` (it must not change).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kyodo.crypto._merkle import (
    EMPTY_ROOT,
    compute_consistency_proof,
    compute_inclusion_proof,
    hash_children,
    hash_leaf,
    merkle_root,
    merkle_root_of_hashes,
    verify_consistency,
    verify_inclusion,
    verify_inclusion_hash,
)
from kyodo.crypto.errors import CryptoError, MerkleProofError

VECTORS_PATH = Path(__file__).parent / "vectors" / "merkle.json"

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def h(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string)


# ---------------------------------------------------------------------------
# Published CT known-answer values
# ---------------------------------------------------------------------------

LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# ROOTS[n] is the root of the tree of LEAVES[:n].
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# NODES[level][i]: hashes of the complete subtrees of the 8-leaf tree.
NODES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# (index, size, proof); indices are 0-based (verify_test.go numbers leaves from 1).
PUBLISHED_INCLUSION: list[tuple[int, int, list[bytes]]] = [
    (0, 1, []),
    (0, 2, [NODES[0][1]]),
    (1, 2, [NODES[0][0]]),
    (2, 3, [NODES[1][0]]),
    (1, 5, [NODES[0][0], NODES[1][1], NODES[0][4]]),
    (0, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (5, 8, [NODES[0][4], NODES[1][3], NODES[2][0]]),
]

# (old_size, new_size, proof)
PUBLISHED_CONSISTENCY: list[tuple[int, int, list[bytes]]] = [
    (1, 1, []),
    (1, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (6, 8, [NODES[1][2], NODES[1][3], NODES[2][0]]),
    (2, 5, [NODES[1][1], NODES[0][4]]),
    (6, 7, [NODES[1][2], NODES[0][6], NODES[2][0]]),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# ---------------------------------------------------------------------------
# Naive reference: a direct transcription of RFC 9162 section 2.1
# ---------------------------------------------------------------------------


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = ref_split(len(d))
    return hashlib.sha256(b"\x01" + ref_root(d[:k]) + ref_root(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_root(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_root(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_root(d)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_root(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_root(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    if m in (0, len(d)):
        return []
    return ref_subproof(m, d, True)


def make_leaves(n: int, salt: int = 0) -> list[bytes]:
    """n distinct leaves of varying length (so no two proof elements collide)."""
    return [salt.to_bytes(4, "big") + i.to_bytes(4, "big") * (1 + i % 3) for i in range(n)]


def rejects(fn: Callable[[], None]) -> bool:
    try:
        fn()
    except MerkleProofError:
        return True
    return False


# ---------------------------------------------------------------------------
# Hashing and roots
# ---------------------------------------------------------------------------


def test_hash_leaf_and_children_are_domain_separated() -> None:
    assert hash_leaf(b"") == ROOTS[1]
    assert hash_leaf(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = hash_leaf(b"a"), hash_leaf(b"b")
    assert hash_children(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert hash_children(a, b) != hash_children(b, a)
    # A leaf whose data is two child hashes does not hash like their parent.
    assert hash_leaf(a + b) != hash_children(a, b)
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


def test_hash_children_rejects_non_hashes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        hash_children(b"short", SOME_HASH)
    with pytest.raises(ValueError, match="32 bytes"):
        hash_children(SOME_HASH, SOME_HASH + b"\x00")


def test_published_leaf_and_node_hashes() -> None:
    assert [hash_leaf(d) for d in LEAVES] == NODES[0]
    for level in range(1, 4):
        below = NODES[level - 1]
        assert NODES[level] == [
            hash_children(below[2 * i], below[2 * i + 1]) for i in range(len(NODES[level]))
        ]


@pytest.mark.parametrize("size", range(9))
def test_published_roots(size: int) -> None:
    assert merkle_root(LEAVES[:size]) == ROOTS[size]
    assert merkle_root_of_hashes([hash_leaf(d) for d in LEAVES[:size]]) == ROOTS[size]
    assert ref_root(LEAVES[:size]) == ROOTS[size]


def test_root_of_8_is_the_well_known_value() -> None:
    assert merkle_root(LEAVES).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def test_roots_match_reference_for_many_sizes() -> None:
    leaves = make_leaves(300)
    for n in [*range(70), 127, 128, 129, 255, 256, 257, 300]:
        assert merkle_root(leaves[:n]) == ref_root(leaves[:n]), n


def test_merkle_root_of_hashes_rejects_raw_data() -> None:
    with pytest.raises(ValueError, match="leaf hash 1"):
        merkle_root_of_hashes([SOME_HASH, b"raw data"])


def test_merkle_root_is_fast_and_iterative_for_10000_leaves() -> None:
    leaves = make_leaves(10_000)
    start = time.perf_counter()
    root = merkle_root(leaves)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert root == ref_root(leaves)
    assert merkle_root_of_hashes([hash_leaf(d) for d in leaves]) == root


# ---------------------------------------------------------------------------
# Published proofs, and the transparency-dev corruption probes around them
# ---------------------------------------------------------------------------


def inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf_hash: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    """Corruptions of a valid inclusion proof (after transparency-dev proof/verify_test.go)."""
    probes = [
        ("index - 1", index - 1, size, leaf_hash, proof, root),
        ("index + 1", index + 1, size, leaf_hash, proof, root),
        ("index ^ 2", index ^ 2, size, leaf_hash, proof, root),
        ("size * 2", index, size * 2, leaf_hash, proof, root),
        ("size // 2", index, size // 2, leaf_hash, proof, root),
        ("wrong leaf", index, size, hash_leaf(b"WrongLeaf"), proof, root),
        ("empty root", index, size, leaf_hash, proof, EMPTY_ROOT),
        ("random root", index, size, leaf_hash, proof, SOME_HASH),
        ("trailing garbage", index, size, leaf_hash, [*proof, b""], root),
        ("trailing root", index, size, leaf_hash, [*proof, root], root),
        ("preceding garbage", index, size, leaf_hash, [b"", *proof], root),
        ("preceding root", index, size, leaf_hash, [root, *proof], root),
    ]
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[0] ^= 8
        wrong = [*proof[:i], bytes(flipped), *proof[i + 1 :]]
        probes.append((f"modified proof[{i}] bit 3", index, size, leaf_hash, wrong, root))
    if proof:
        probes.append(("removed component", index, size, leaf_hash, proof[:-1], root))
    if len(proof) > 1:
        inserted = [proof[0], SOME_HASH, *proof[1:]]
        probes.append(("inserted component", index, size, leaf_hash, inserted, root))
    return probes


def consistency_probes(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """Corruptions of a valid, non-empty consistency proof."""
    probes = [
        ("old - 1", old - 1, new, old_root, new_root, proof),
        ("old + 1", old + 1, new, old_root, new_root, proof),
        ("old ^ 2", old ^ 2, new, old_root, new_root, proof),
        ("new * 2", old, new * 2, old_root, new_root, proof),
        ("new // 2", old, new // 2, old_root, new_root, proof),
        ("wrong old root", old, new, b"WrongRoot", new_root, proof),
        ("wrong new root", old, new, old_root, b"WrongRoot", proof),
        ("random old root", old, new, SOME_HASH, new_root, proof),
        ("random new root", old, new, old_root, SOME_HASH, proof),
        ("swapped roots", old, new, new_root, old_root, proof),
        ("empty proof", old, new, old_root, new_root, []),
        ("trailing garbage", old, new, old_root, new_root, [*proof, b""]),
        ("trailing old root", old, new, old_root, new_root, [*proof, old_root]),
        ("trailing new root", old, new, old_root, new_root, [*proof, new_root]),
        ("preceding garbage", old, new, old_root, new_root, [b"", *proof]),
        ("preceding old root", old, new, old_root, new_root, [old_root, *proof]),
        ("preceding new root", old, new, old_root, new_root, [new_root, *proof]),
        ("preceding proof[0]", old, new, old_root, new_root, [proof[0], *proof]),
        ("truncated proof", old, new, old_root, new_root, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[0] ^= 16
        wrong = [*proof[:i], bytes(flipped), *proof[i + 1 :]]
        probes.append((f"modified proof[{i}] bit 4", old, new, old_root, new_root, wrong))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), PUBLISHED_INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    leaves = LEAVES[:size]
    assert compute_inclusion_proof(leaves, index) == proof
    assert ref_path(index, leaves) == proof
    verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])
    verify_inclusion_hash(hash_leaf(LEAVES[index]), index, size, proof, ROOTS[size])
    accepted = [
        desc
        for desc, i, s, lh, p, r in inclusion_probes(
            index, size, proof, ROOTS[size], hash_leaf(LEAVES[index])
        )
        if not rejects(functools.partial(verify_inclusion_hash, lh, i, s, p, r))
    ]
    assert accepted == []


@pytest.mark.parametrize(("old", "new", "proof"), PUBLISHED_CONSISTENCY)
def test_published_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    leaves = LEAVES[:new]
    assert compute_consistency_proof(leaves, old) == proof
    assert ref_proof(old, leaves) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    if not proof:
        return
    accepted = [
        desc
        for desc, o, n, r1, r2, p in consistency_probes(old, new, ROOTS[old], ROOTS[new], proof)
        if not rejects(functools.partial(verify_consistency, o, n, r1, r2, p))
    ]
    assert accepted == []


# ---------------------------------------------------------------------------
# Edge cases and rejected inputs
# ---------------------------------------------------------------------------


def test_single_leaf_tree() -> None:
    root = merkle_root([b"data"])
    assert root == hash_leaf(b"data")
    assert compute_inclusion_proof([b"data"], 0) == []
    verify_inclusion(b"data", 0, 1, [], root)
    with pytest.raises(MerkleProofError):
        verify_inclusion(b"other", 0, 1, [], root)
    with pytest.raises(MerkleProofError, match="32-byte"):
        verify_inclusion_hash(b"", 0, 1, [], root)
    with pytest.raises(MerkleProofError, match="32-byte"):
        verify_inclusion(b"data", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (8, 8), (-1, 8)])
def test_inclusion_rejects_index_out_of_range(index: int, size: int) -> None:
    with pytest.raises(MerkleProofError, match="out of range") as info:
        verify_inclusion_hash(SOME_HASH, index, size, [], EMPTY_ROOT)
    assert (info.value.index, info.value.size) == (index, size)
    assert isinstance(info.value, CryptoError)


def test_inclusion_rejects_wrong_proof_length() -> None:
    proof = compute_inclusion_proof(LEAVES, 5)
    with pytest.raises(MerkleProofError, match="needs 3") as info:
        verify_inclusion(LEAVES[5], 5, 8, proof[:2], ROOTS[8])
    assert (info.value.index, info.value.size) == (5, 8)
    with pytest.raises(MerkleProofError, match="needs 3"):
        verify_inclusion(LEAVES[5], 5, 8, [*proof, SOME_HASH], ROOTS[8])


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "0" * 32, None])
def test_inclusion_rejects_non_hash_elements(bad: Any) -> None:
    proof: list[Any] = compute_inclusion_proof(LEAVES, 5)
    proof[1] = bad
    with pytest.raises(MerkleProofError, match=r"element 1 must be a 32-byte hash"):
        verify_inclusion(LEAVES[5], 5, 8, proof, ROOTS[8])


def test_inclusion_accepts_bytearray_elements() -> None:
    proof = [bytearray(p) for p in compute_inclusion_proof(LEAVES, 5)]
    verify_inclusion(LEAVES[5], 5, 8, proof, bytearray(ROOTS[8]))  # type: ignore[arg-type]


def test_inclusion_proof_does_not_bind_size_alone() -> None:
    # Documented limitation of RFC 6962 proofs (see the module docstring): the
    # path of leaf 0 has the same shape in trees of 3 and 4 leaves, so a proof
    # checked against the size-3 root with size 4 passes. Callers must take the
    # size from the same authenticated source as the root. With the genuine
    # size-4 root the proof fails.
    proof = compute_inclusion_proof(LEAVES[:3], 0)
    verify_inclusion(LEAVES[0], 0, 4, proof, ROOTS[3])
    with pytest.raises(MerkleProofError):
        verify_inclusion(LEAVES[0], 0, 4, proof, ROOTS[4])


def test_consistency_trivial_cases() -> None:
    r1, r2 = SOME_HASH, hash_leaf(b"x")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 1, EMPTY_ROOT, r2, [])
    verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [])
    verify_consistency(1, 1, r2, r2, [])
    verify_consistency(8, 8, ROOTS[8], ROOTS[8], [])
    cases: list[tuple[str, int, int, bytes, bytes, list[bytes]]] = [
        ("roots differ", 0, 0, EMPTY_ROOT, r2, []),
        ("roots differ", 1, 1, r1, r2, []),
        ("roots differ", 1, 1, EMPTY_ROOT, r2, []),
        ("larger than new size", 1, 0, r1, r2, []),
        ("larger than new size", 2, 1, r1, r2, []),
        ("between equal sizes must be empty", 0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        ("between equal sizes must be empty", 1, 1, r1, r1, [EMPTY_ROOT]),
        ("from the empty tree must be empty", 0, 1, EMPTY_ROOT, r2, [EMPTY_ROOT]),
        ("not the empty-tree root", 0, 1, r1, r2, []),
        ("need 1", 1, 2, r1, r2, []),
        ("must not be negative", -1, 2, r1, r2, []),
        ("must not be negative", 0, -1, r1, r2, []),
        ("old root must be a 32-byte hash", 1, 1, b"short", b"short", []),
        ("new root must be a 32-byte hash", 0, 1, EMPTY_ROOT, b"", []),
    ]
    for message, old, new, old_root, new_root, proof in cases:
        with pytest.raises(MerkleProofError, match=message) as info:
            verify_consistency(old, new, old_root, new_root, proof)
        assert (info.value.index, info.value.size) == (old, new)


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "0" * 32])
def test_consistency_rejects_non_hash_elements(bad: Any) -> None:
    proof: list[Any] = compute_consistency_proof(LEAVES, 6)
    proof[2] = bad
    with pytest.raises(MerkleProofError, match=r"element 2 must be a 32-byte hash"):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], proof)


def test_compute_rejects_out_of_range_arguments() -> None:
    with pytest.raises(ValueError, match="out of range"):
        compute_inclusion_proof([], 0)
    with pytest.raises(ValueError, match="out of range"):
        compute_inclusion_proof(LEAVES, 8)
    with pytest.raises(ValueError, match="out of range"):
        compute_inclusion_proof(LEAVES, -1)
    with pytest.raises(ValueError, match="out of range"):
        compute_consistency_proof(LEAVES, 9)
    with pytest.raises(ValueError, match="out of range"):
        compute_consistency_proof(LEAVES, -1)
    assert compute_consistency_proof([], 0) == []
    assert compute_consistency_proof(LEAVES, 0) == []
    assert compute_consistency_proof(LEAVES, 8) == []


# ---------------------------------------------------------------------------
# Exhaustive cross-check against the naive reference
# ---------------------------------------------------------------------------


def test_every_proof_matches_reference_up_to_64_leaves() -> None:
    leaves = make_leaves(64)
    roots = [ref_root(leaves[:n]) for n in range(65)]
    for n in range(1, 65):
        tree = leaves[:n]
        for index in range(n):
            proof = compute_inclusion_proof(tree, index)
            assert proof == ref_path(index, tree), (index, n)
            verify_inclusion(tree[index], index, n, proof, roots[n])
        for old in range(n + 1):
            proof = compute_consistency_proof(tree, old)
            assert proof == ref_proof(old, tree), (old, n)
            verify_consistency(old, n, roots[old], roots[n], proof)


@pytest.mark.parametrize("n", [255, 256, 257, 300])
def test_every_proof_verifies_for_larger_trees(n: int) -> None:
    leaves = make_leaves(n, salt=n)
    roots = {m: merkle_root(leaves[:m]) for m in range(n + 1)}
    assert roots[n] == ref_root(leaves)
    for index in range(n):
        verify_inclusion(leaves[index], index, n, compute_inclusion_proof(leaves, index), roots[n])
    for old in range(n + 1):
        verify_consistency(old, n, roots[old], roots[n], compute_consistency_proof(leaves, old))


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(min_value=1, max_value=300))
    index = draw(st.integers(min_value=0, max_value=n - 1))
    salt = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return make_leaves(n, salt), index


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(min_value=2, max_value=300))
    old = draw(st.integers(min_value=1, max_value=n - 1))
    salt = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return make_leaves(n, salt), old


def two_positions(length: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, length - 1), min_size=2, max_size=2, unique=True)


@PROPERTY_SETTINGS
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_property(case: tuple[list[bytes], int], data: st.DataObject) -> None:
    leaves, index = case
    n = len(leaves)
    root = merkle_root(leaves)
    proof = compute_inclusion_proof(leaves, index)
    assert proof == ref_path(index, leaves)
    verify_inclusion(leaves[index], index, n, proof, root)

    def check(i: int, s: int, p: Sequence[bytes], r: bytes = root) -> None:
        verify_inclusion(leaves[index], i, s, p, r)

    # Any one bit of any one byte flipped.
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        byte = data.draw(st.integers(0, 31))
        bit = data.draw(st.integers(0, 7))
        flipped = bytearray(proof[which])
        flipped[byte] ^= 1 << bit
        with pytest.raises(MerkleProofError):
            check(index, n, [*proof[:which], bytes(flipped), *proof[which + 1 :]])
    # Two siblings swapped.
    if len(proof) > 1:
        a, b = data.draw(two_positions(len(proof)))
        swapped = list(proof)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        with pytest.raises(MerkleProofError):
            check(index, n, swapped)
    # Truncated (any element dropped) or extended (any hash inserted anywhere).
    if proof:
        drop = data.draw(st.integers(0, len(proof) - 1))
        with pytest.raises(MerkleProofError, match="needs"):
            check(index, n, [*proof[:drop], *proof[drop + 1 :]])
    at = data.draw(st.integers(0, len(proof)))
    extra = data.draw(st.sampled_from([root, hash_leaf(leaves[index]), SOME_HASH]))
    with pytest.raises(MerkleProofError, match="needs"):
        check(index, n, [*proof[:at], extra, *proof[at:]])
    # Wrong leaf.
    with pytest.raises(MerkleProofError):
        verify_inclusion(leaves[index] + b"!", index, n, proof, root)
    # Wrong index (in or out of range).
    other = data.draw(st.integers(-2, n + 2).filter(lambda i: i != index))
    with pytest.raises(MerkleProofError):
        check(other, n, proof)
    # Wrong size: always rejected against that size's genuine root; against the
    # original root, rejected whenever the shape (proof length) differs.
    size = data.draw(st.integers(0, 2 * n + 2).filter(lambda s: s != n))
    other_root = merkle_root([*leaves, *make_leaves(max(size - n, 0), salt=7)][:size])
    with pytest.raises(MerkleProofError):
        check(index, size, proof, other_root)
    if index >= size or len(ref_path(index, [b""] * size)) != len(proof):
        with pytest.raises(MerkleProofError):
            check(index, size, proof)


@PROPERTY_SETTINGS
@given(case=consistency_cases(), data=st.data())
def test_consistency_property(case: tuple[list[bytes], int], data: st.DataObject) -> None:
    leaves, old = case
    n = len(leaves)
    old_root, new_root = merkle_root(leaves[:old]), merkle_root(leaves)
    proof = compute_consistency_proof(leaves, old)
    assert proof == ref_proof(old, leaves)
    assert proof
    verify_consistency(old, n, old_root, new_root, proof)

    def check(
        o: int, s: int, p: Sequence[bytes], r1: bytes = old_root, r2: bytes = new_root
    ) -> None:
        verify_consistency(o, s, r1, r2, p)

    which = data.draw(st.integers(0, len(proof) - 1))
    byte = data.draw(st.integers(0, 31))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(proof[which])
    flipped[byte] ^= 1 << bit
    with pytest.raises(MerkleProofError):
        check(old, n, [*proof[:which], bytes(flipped), *proof[which + 1 :]])
    if len(proof) > 1:
        a, b = data.draw(two_positions(len(proof)))
        swapped = list(proof)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        with pytest.raises(MerkleProofError):
            check(old, n, swapped)
    drop = data.draw(st.integers(0, len(proof) - 1))
    with pytest.raises(MerkleProofError):
        check(old, n, [*proof[:drop], *proof[drop + 1 :]])
    at = data.draw(st.integers(0, len(proof)))
    extra = data.draw(st.sampled_from([old_root, new_root, proof[0], SOME_HASH]))
    with pytest.raises(MerkleProofError):
        check(old, n, [*proof[:at], extra, *proof[at:]])
    # Tampered or swapped roots.
    with pytest.raises(MerkleProofError):
        check(old, n, proof, r1=SOME_HASH)
    with pytest.raises(MerkleProofError):
        check(old, n, proof, r2=SOME_HASH)
    with pytest.raises(MerkleProofError):
        check(old, n, proof, r1=new_root, r2=old_root)
    # A tree that rewrote an old leaf is not an extension of the old tree:
    # neither its own proof nor the genuine one links the two roots.
    forked = [*leaves[: old - 1], leaves[old - 1] + b"!", *leaves[old:]]
    forked_root = merkle_root(forked)
    with pytest.raises(MerkleProofError):
        check(old, n, compute_consistency_proof(forked, old), r2=forked_root)
    with pytest.raises(MerkleProofError):
        check(old, n, proof, r2=forked_root)
    # Wrong old size, with the genuine root of that size.
    other_old = data.draw(st.integers(-1, n + 1).filter(lambda m: m != old))
    other_old_root = merkle_root(leaves[: max(other_old, 0)])
    with pytest.raises(MerkleProofError):
        check(other_old, n, proof, r1=other_old_root)
    if other_old < 0 or other_old > n or len(ref_proof(other_old, [b""] * n)) != len(proof):
        with pytest.raises(MerkleProofError):
            check(other_old, n, proof)
    # Wrong new size, with the genuine root of that size.
    other_new = data.draw(st.integers(0, 2 * n + 2).filter(lambda s: s != n))
    grown = [*leaves, *make_leaves(max(other_new - n, 0), salt=7)][:other_new]
    with pytest.raises(MerkleProofError):
        check(old, other_new, proof, r2=merkle_root(grown))
    if other_new < old or len(ref_proof(old, [b""] * other_new)) != len(proof):
        with pytest.raises(MerkleProofError):
            check(old, other_new, proof)


# ---------------------------------------------------------------------------
# tests/vectors/merkle.json
# ---------------------------------------------------------------------------

PUBLISHED_SOURCE = (
    "google/certificate-transparency cpp/merkletree/merkle_tree_test.cc; "
    "transparency-dev/merkle testonly/constants.go and proof/verify_test.go"
)


def _hex(values: Sequence[bytes]) -> list[str]:
    return [v.hex() for v in values]


def build_vectors() -> dict[str, Any]:
    """The content of tests/vectors/merkle.json, from the published values.

    Roots and the published proofs are the hard-coded constants above; the
    remaining valid proofs (every index and every size pair up to 8 leaves)
    are computed here and cross-checked against the reference by the tests.
    """
    published_inclusion = {(i, s) for i, s, _ in PUBLISHED_INCLUSION}
    published_consistency = {(o, s) for o, s, _ in PUBLISHED_CONSISTENCY}
    inclusion = [
        {
            "index": index,
            "size": size,
            "leaf": LEAVES[index].hex(),
            "root": ROOTS[size].hex(),
            "proof": _hex(compute_inclusion_proof(LEAVES[:size], index)),
            "published": (index, size) in published_inclusion,
        }
        for size in range(1, 9)
        for index in range(size)
    ]
    consistency = [
        {
            "old_size": old,
            "new_size": new,
            "old_root": ROOTS[old].hex(),
            "new_root": ROOTS[new].hex(),
            "proof": _hex(compute_consistency_proof(LEAVES[:new], old)),
            "published": (old, new) in published_consistency,
        }
        for new in range(9)
        for old in range(new + 1)
    ]
    invalid_inclusion = []
    for index, size, proof in PUBLISHED_INCLUSION:
        for desc, i, s, lh, p, r in inclusion_probes(
            index, size, proof, ROOTS[size], hash_leaf(LEAVES[index])
        ):
            invalid_inclusion.append(
                {
                    "description": f"({index}, {size}) {desc}",
                    "leaf_hash": lh.hex(),
                    "index": i,
                    "size": s,
                    "root": r.hex(),
                    "proof": _hex(p),
                }
            )
    invalid_consistency: list[dict[str, Any]] = [
        {
            "description": desc,
            "old_size": old,
            "new_size": new,
            "old_root": r1.hex(),
            "new_root": r2.hex(),
            "proof": _hex(p),
        }
        for desc, old, new, r1, r2, p in [
            ("equal sizes, different roots", 1, 1, ROOTS[1], ROOTS[2], []),
            ("equal sizes, non-empty proof", 1, 1, ROOTS[1], ROOTS[1], [EMPTY_ROOT]),
            ("empty old tree, non-empty proof", 0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT]),
            ("empty old tree, wrong old root", 0, 1, ROOTS[1], ROOTS[1], []),
            ("old size larger than new size", 2, 1, ROOTS[2], ROOTS[1], []),
            ("sizes differ, empty proof", 1, 2, ROOTS[1], ROOTS[2], []),
        ]
    ]
    for old, new, proof in PUBLISHED_CONSISTENCY:
        if not proof:
            continue
        for desc, o, n, r1, r2, p in consistency_probes(old, new, ROOTS[old], ROOTS[new], proof):
            invalid_consistency.append(
                {
                    "description": f"({old}, {new}) {desc}",
                    "old_size": o,
                    "new_size": n,
                    "old_root": r1.hex(),
                    "new_root": r2.hex(),
                    "proof": _hex(p),
                }
            )
    return {
        "description": (
            "RFC 6962 / RFC 9162 Merkle tree test vectors (SHA-256). leaf hash = "
            "SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right), "
            "empty root = SHA-256(''). All byte strings are lowercase hex. roots[n] is the "
            "root of the first n leaves. Proofs are ordered from the leaf (or old subtree) "
            "up. Entries marked published are copied from the published CT test suites; "
            "every invalid_* entry must be rejected. Sizes may be negative or hashes "
            "malformed in invalid entries on purpose."
        ),
        "sources": PUBLISHED_SOURCE,
        "hash": "sha256",
        "empty_root": EMPTY_ROOT.hex(),
        "leaves": _hex(LEAVES),
        "roots": _hex(ROOTS),
        "inclusion": inclusion,
        "consistency": consistency,
        "invalid_inclusion": invalid_inclusion,
        "invalid_consistency": invalid_consistency,
    }


def render_vectors() -> str:
    return json.dumps(build_vectors(), indent=1) + "\n"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return result


def test_vector_file_is_up_to_date() -> None:
    assert VECTORS_PATH.read_text(encoding="utf-8") == render_vectors(), (
        "regenerate with: python tests/test_merkle.py"
    )


def test_vector_file_replays(vectors: dict[str, Any]) -> None:
    leaves = [h(x) for x in vectors["leaves"]]
    roots = [h(x) for x in vectors["roots"]]
    assert leaves == LEAVES
    assert roots == ROOTS
    assert h(vectors["empty_root"]) == EMPTY_ROOT
    for n, root in enumerate(roots):
        assert merkle_root(leaves[:n]) == root == ref_root(leaves[:n])

    published = set()
    for case in vectors["inclusion"]:
        index, size, proof = case["index"], case["size"], [h(x) for x in case["proof"]]
        assert h(case["leaf"]) == leaves[index]
        assert h(case["root"]) == roots[size]
        assert proof == compute_inclusion_proof(leaves[:size], index)
        assert proof == ref_path(index, leaves[:size])
        verify_inclusion(leaves[index], index, size, proof, roots[size])
        if case["published"]:
            published.add((index, size, tuple(proof)))
    assert published == {(i, s, tuple(p)) for i, s, p in PUBLISHED_INCLUSION}

    published = set()
    for case in vectors["consistency"]:
        old, new, proof = case["old_size"], case["new_size"], [h(x) for x in case["proof"]]
        assert (h(case["old_root"]), h(case["new_root"])) == (roots[old], roots[new])
        assert proof == compute_consistency_proof(leaves[:new], old)
        assert proof == ref_proof(old, leaves[:new])
        verify_consistency(old, new, roots[old], roots[new], proof)
        if case["published"]:
            published.add((old, new, tuple(proof)))
    assert published == {(o, s, tuple(p)) for o, s, p in PUBLISHED_CONSISTENCY}


def test_vector_file_invalid_cases_are_rejected(vectors: dict[str, Any]) -> None:
    assert len(vectors["invalid_inclusion"]) > 50
    assert len(vectors["invalid_consistency"]) > 50
    for case in vectors["invalid_inclusion"]:
        with pytest.raises(MerkleProofError):
            verify_inclusion_hash(
                h(case["leaf_hash"]),
                case["index"],
                case["size"],
                [h(x) for x in case["proof"]],
                h(case["root"]),
            )
    for case in vectors["invalid_consistency"]:
        with pytest.raises(MerkleProofError):
            verify_consistency(
                case["old_size"],
                case["new_size"],
                h(case["old_root"]),
                h(case["new_root"]),
                [h(x) for x in case["proof"]],
            )


if __name__ == "__main__":
    VECTORS_PATH.write_text(render_vectors(), encoding="utf-8")
    sys.stdout.write(f"wrote {VECTORS_PATH}\n")
