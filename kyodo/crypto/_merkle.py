"""Merkle trees, inclusion proofs and consistency proofs (RFC 6962 / RFC 9162).

Theory of operation
-------------------
A Merkle tree commits to an ordered list of byte strings (the *leaves*) with a
single 32-byte hash (the *root*). Kyodo uses it for the transactions of a block
and for the log of blocks, so that a party holding only a root can check two
kinds of claims without seeing the whole list:

* an **inclusion proof** shows that a given leaf sits at a given index of the
  tree of a given size;
* a **consistency proof** shows that the tree of size ``old_size`` is a prefix
  of the tree of size ``new_size`` (the log was only appended to, never
  rewritten).

The tree is exactly the one of RFC 6962 section 2.1 / RFC 9162 section 2.1
(Certificate Transparency), with SHA-256:

* the hash of the empty list is ``SHA-256(b"")``;
* the hash of a single leaf ``d`` is ``SHA-256(0x00 || d)``;
* the hash of a list ``D[0:n]`` with ``n > 1`` is
  ``SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` where ``k`` is the largest
  power of two strictly smaller than ``n``.

The distinct one-byte prefixes for leaves and interior nodes (*domain
separation*) mean a leaf can never be passed off as an interior node or the
reverse, which rules out second-preimage tricks that forge a "leaf" out of two
child hashes.

Proofs are lists of 32-byte node hashes ordered from the leaf (or the old
subtree) up towards the root, exactly as RFC 9162 sections 2.1.3 and 2.1.4
define them, so they interoperate with other CT-style implementations (the
known-answer vectors in ``tests/vectors/merkle.json`` are those of Google's
certificate-transparency and transparency-dev/merkle projects).

Verification follows the iterative algorithms of RFC 9162 sections 2.1.3.2
and 2.1.4.2 (walking the bits of the index and size), after first checking
that the proof has exactly the length the sizes imply. Nothing in the proof
is trusted to say how long it should be. Every rejected proof raises
:class:`~kyodo.crypto.errors.MerkleProofError`.

**A proof binds a leaf to a position under a root; the size is the caller's to
authenticate.** The root of an RFC 6962 tree determines its size, but the
verifier cannot see that: for some pairs of sizes the path from a leaf to the
root has the same shape (for example index 0 in trees of 3 and 4 leaves), so a
proof checked against the right root but a wrong size can still pass. Always
take ``size`` from the same signed structure (block header, signed tree head)
that supplied ``root``.

Why this is hand-written
------------------------
No maintained PyPI library computes and verifies RFC 9162 inclusion and
consistency proofs behind a stable API, and pulling in a large transparency
log client for about two hundred lines of hashing is a poor trade. The
algorithms are short, fully specified by the RFC, and checked here against the
published CT test vectors and against a naive recursive implementation of the
RFC definitions (``tests/test_merkle.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kyodo.crypto.errors import MerkleProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "compute_consistency_proof",
    "compute_inclusion_proof",
    "hash_children",
    "hash_leaf",
    "merkle_root",
    "merkle_root_of_hashes",
    "verify_consistency",
    "verify_inclusion",
    "verify_inclusion_hash",
]

HASH_SIZE = 32
"""Length in bytes of every hash in a tree or proof (SHA-256)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the tree of zero leaves: ``SHA-256(b"")``."""


# --------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------


def hash_leaf(data: bytes) -> bytes:
    """Return the hash of one leaf: ``SHA-256(0x00 || data)``.

    ``data`` is the raw leaf content (any length, including empty).
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node: ``SHA-256(0x01 || left || right)``.

    ``left`` and ``right`` are the 32-byte hashes of the two children.

    Raises:
        ValueError: either argument is not exactly 32 bytes long (raw data was
            passed where a hash was expected).
    """
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError(
            f"child hashes must be {HASH_SIZE} bytes, got {len(left)} and {len(right)}"
        )
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    """Hash one level of the tree into the level above it.

    Adjacent pairs ``(level[2j], level[2j+1])`` become their parent; a last,
    unpaired node is carried up unchanged. Building a tree level by level this
    way gives the same tree as the RFC's "split at the largest power of two"
    recursion: node ``j`` of level ``h`` is the hash of the leaves
    ``[j * 2**h, min((j + 1) * 2**h, n))``.
    """
    sha256 = hashlib.sha256
    prefix = _NODE_PREFIX
    parents = [
        sha256(prefix + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
    ]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def _levels(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    """Return every level of the tree, leaves first, root level (one node) last.

    ``leaf_hashes`` must not be empty.
    """
    levels = [leaf_hashes]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1]))
    return levels


def _node(levels: list[list[bytes]], start: int, size: int) -> bytes:
    """Return the hash of the tree node covering leaves ``[start, start + size)``.

    The range must be a node of the tree (as produced by the RFC's recursive
    split): ``start`` aligned to the smallest power of two ``2**h >= size``,
    and the range either complete (``size == 2**h``) or running to the end of
    the tree.
    """
    height = (size - 1).bit_length()
    assert start % (1 << height) == 0, (start, size)
    return levels[height][start >> height]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (root) of ``leaves``, which are raw leaf data.

    ``merkle_root([])`` is ``SHA-256(b"")``; otherwise each leaf is hashed with
    :func:`hash_leaf` and the tree is built as RFC 9162 section 2.1.1 defines.
    Runs in linear time and constant stack depth.
    """
    return merkle_root_of_hashes([hash_leaf(d) for d in leaves])


def merkle_root_of_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of a tree whose leaf hashes are given.

    Each element must already be a leaf hash (``hash_leaf(data)``), not raw
    data. ``merkle_root_of_hashes([hash_leaf(d) for d in D]) == merkle_root(D)``.

    Raises:
        ValueError: an element is not exactly 32 bytes long.
    """
    level = list(leaf_hashes)
    for position, leaf_hash in enumerate(level):
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(
                f"leaf hash {position} must be {HASH_SIZE} bytes, got {len(leaf_hash)}"
            )
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


# --------------------------------------------------------------------------
# Proof generation
# --------------------------------------------------------------------------


def compute_inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof of ``leaves[index]`` in the tree of ``leaves``.

    This is ``PATH(index, D[0:n])`` of RFC 9162 section 2.1.3.1: the hashes of
    the siblings of the nodes on the path from the leaf to the root, ordered
    from the leaf upwards. It is empty for a tree of one leaf and has at most
    ``ceil(log2(n))`` elements.

    Raises:
        ValueError: ``index`` is not in ``range(len(leaves))``.
    """
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} out of range for a tree of {len(leaves)} leaves")
    level = [hash_leaf(d) for d in leaves]
    proof: list[bytes] = []
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        # Otherwise the node is the unpaired last one and is carried up as is.
        level = _next_level(level)
        position >>= 1
    return proof


def compute_consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the proof that the first ``old_size`` leaves are a prefix of ``leaves``.

    This is ``PROOF(m, D[0:n])`` of RFC 9162 section 2.1.4.1 with
    ``m = old_size`` and ``n = len(leaves)``. It is empty when ``old_size`` is
    ``0`` or ``n`` (nothing to prove); otherwise it is non-empty.

    Raises:
        ValueError: ``old_size`` is not in ``range(len(leaves) + 1)``.
    """
    size = len(leaves)
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} out of range for a tree of {size} leaves")
    if old_size in (0, size):
        return []
    levels = _levels([hash_leaf(d) for d in leaves])
    # SUBPROOF(m, D[start:start+size], b), unrolled. Each step of the RFC's
    # recursion appends one hash *after* the recursive part, so the hashes are
    # collected top-down and emitted in reverse.
    top_down: list[bytes] = []
    start, remaining, have_old_root = 0, old_size, True
    while remaining != size:
        split = 1 << ((size - 1).bit_length() - 1)  # largest power of two < size
        if remaining <= split:
            top_down.append(_node(levels, start + split, size - split))
            size = split
        else:
            top_down.append(_node(levels, start, split))
            start += split
            remaining -= split
            size -= split
            have_old_root = False
    if not have_old_root:
        top_down.append(_node(levels, start, size))
    top_down.reverse()
    return top_down


# --------------------------------------------------------------------------
# Proof verification
# --------------------------------------------------------------------------


def _check_hash(value: object, what: str, *, index: int | None, size: int | None) -> bytes:
    """Return ``value`` as bytes if it is a 32-byte hash, else raise MerkleProofError."""
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        length = len(value) if isinstance(value, bytes | bytearray) else None
        raise MerkleProofError(
            f"{what} must be a {HASH_SIZE}-byte hash, got "
            + (f"{length} bytes" if length is not None else type(value).__name__),
            index=index,
            size=size,
        )
    return bytes(value)


def _inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of ``index`` in a tree of ``size``.

    ``inner`` levels are where the path has a sibling inside the subtree that
    also holds the last leaf; above them the path runs along the right border,
    where a level has a (left) sibling exactly when the index has a 1 bit.
    Requires ``0 <= index < size``.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def verify_inclusion_hash(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Implements RFC 9162 section 2.1.3.2. Returns ``None`` when the proof
    verifies. ``leaf_hash`` is ``hash_leaf(data)``; use :func:`verify_inclusion`
    to pass the raw data. ``size`` must come from the same authenticated source
    as ``root`` (see the module documentation).

    Raises:
        MerkleProofError: (with ``index`` and ``size`` set) if ``index`` is
            negative or ``>= size``; if ``leaf_hash``, ``root`` or any proof
            element is not a 32-byte hash; if the proof is not exactly as long
            as ``index`` and ``size`` require; or if the recomputed root differs
            from ``root``.
    """
    if size < 0 or not 0 <= index < size:
        raise MerkleProofError(
            f"leaf index {index} is out of range for a tree of size {size}",
            index=index,
            size=size,
        )
    r = _check_hash(leaf_hash, "leaf hash", index=index, size=size)
    expected_root = _check_hash(root, "root", index=index, size=size)
    path = [
        _check_hash(p, f"inclusion proof element {i}", index=index, size=size)
        for i, p in enumerate(proof)
    ]
    expected_length = _inclusion_proof_length(index, size)
    if len(path) != expected_length:
        raise MerkleProofError(
            f"inclusion proof has {len(path)} hashes, a leaf at index {index} of a tree "
            f"of size {size} needs {expected_length}",
            index=index,
            size=size,
        )

    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            raise MerkleProofError("inclusion proof is too long", index=index, size=size)
        if fn & 1 or fn == sn:
            r = hashlib.sha256(_NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("inclusion proof is too short", index=index, size=size)
    if r != expected_root:
        raise MerkleProofError(
            "inclusion proof does not lead to the expected root", index=index, size=size
        )


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that raw ``leaf`` data is leaf ``index`` of the tree of ``size`` with ``root``.

    Same as ``verify_inclusion_hash(hash_leaf(leaf), index, size, proof, root)``.

    Raises:
        MerkleProofError: as for :func:`verify_inclusion_hash`.
    """
    verify_inclusion_hash(hash_leaf(leaf), index, size, proof, root)


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    """Number of hashes in the consistency proof for ``0 < old_size < new_size``.

    The proof is the inclusion proof, in the tree of ``new_size``, of the
    rightmost complete subtree of the old tree (at height ``level``), preceded
    by that subtree's own hash unless it is the whole old tree (``old_size`` a
    power of two), whose hash the verifier already has.
    """
    level = (old_size & -old_size).bit_length() - 1  # trailing zero bits
    node_index = (old_size - 1) >> level
    last_node = (new_size - 1) >> level
    path = _inclusion_proof_length(node_index, last_node + 1)
    return path if old_size & (old_size - 1) == 0 else path + 1


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of ``new_root``'s.

    Implements RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``, plus
    the trivial cases the RFC leaves out:

    * ``old_size == new_size``: the proof must be empty and the roots equal;
    * ``old_size == 0``: the proof must be empty and ``old_root`` must be the
      empty-tree root ``SHA-256(b"")`` (every tree extends the empty one).

    Returns ``None`` when the proof verifies. Both sizes must come from the
    same authenticated sources as their roots (see the module documentation).

    Raises:
        MerkleProofError: (with ``index`` set to ``old_size`` and ``size`` to
            ``new_size``) if a size is negative or ``old_size > new_size``; if
            a root or proof element is not a 32-byte hash; if the proof is not
            exactly as long as the sizes require (in particular, non-empty for
            equal sizes or ``old_size == 0``); or if the recomputed roots
            differ from ``old_root`` or ``new_root``.
    """

    def fail(message: str) -> MerkleProofError:
        return MerkleProofError(message, index=old_size, size=new_size)

    if old_size < 0 or new_size < 0:
        raise fail(f"tree sizes must not be negative, got {old_size} and {new_size}")
    if old_size > new_size:
        raise fail(f"old size {old_size} is larger than new size {new_size}")
    first = _check_hash(old_root, "old root", index=old_size, size=new_size)
    second = _check_hash(new_root, "new root", index=old_size, size=new_size)
    path = [
        _check_hash(p, f"consistency proof element {i}", index=old_size, size=new_size)
        for i, p in enumerate(proof)
    ]

    if old_size == new_size:
        if path:
            raise fail(f"consistency proof between equal sizes must be empty, has {len(path)}")
        if first != second:
            raise fail(f"roots differ for the same tree size {old_size}")
        return
    if old_size == 0:
        if path:
            raise fail(f"consistency proof from the empty tree must be empty, has {len(path)}")
        if first != EMPTY_ROOT:
            raise fail("old root of a tree of size 0 is not the empty-tree root")
        return

    expected_length = _consistency_proof_length(old_size, new_size)
    if len(path) != expected_length:
        raise fail(
            f"consistency proof has {len(path)} hashes, sizes {old_size} -> {new_size} "
            f"need {expected_length}"
        )

    # RFC 9162 section 2.1.4.2, steps 1 to 7.
    if not path:  # Unreachable after the length check; kept as the RFC's step 1.
        raise fail("consistency proof is empty")
    if old_size & (old_size - 1) == 0:
        path.insert(0, first)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise fail("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = hashlib.sha256(_NODE_PREFIX + c + fr).digest()
            sr = hashlib.sha256(_NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hashlib.sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise fail("consistency proof is too short")
    if fr != first:
        raise fail("consistency proof does not lead to the old root")
    if sr != second:
        raise fail("consistency proof does not lead to the new root")
