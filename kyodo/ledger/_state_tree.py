"""The authenticated world state: a compressed binary sparse Merkle tree.

Theory of operation
-------------------
Every state key is hashed to a 256-bit *key hash*; its value to a *value hash*.
The world state is the set of ``(key_hash, value_hash)`` pairs, arranged in a
binary tree of depth up to 256 in which bit ``i`` of the key hash (bit 0 is
the most significant bit of byte 0) chooses the left (0) or right (1) child
at depth ``i``. The tree is compressed as in Diem/Aptos ``SparseMerkleTree``:

* a subtree holding nothing is :data:`EMPTY` (32 zero bytes, never stored);
* a subtree holding exactly one pair is that pair's leaf, placed at the
  highest depth where it is alone;
* every other subtree is an internal node. It may have one EMPTY child only
  when the other child is internal; ``(EMPTY, leaf)``, ``(leaf, EMPTY)`` and
  ``(EMPTY, EMPTY)`` collapse upward.

So the shape, and hence the root, depends only on the set of pairs, never on
the order or batching of updates. Node encodings are 65 bytes and hashed with
SHA-256, the tag byte separating the two kinds::

    leaf     = b"\\x00" + key_hash + value_hash      hash = SHA256(leaf)
    internal = b"\\x01" + left_hash + right_hash     hash = SHA256(internal)

Nodes are content-addressed: the store maps a node's hash to its encoding,
so every read is checked by re-hashing, and a flipped bit in storage raises
:class:`~kyodo.ledger.errors.StateCorruptionError` instead of yielding a wrong
state. Updates are copy-on-write: :func:`apply_updates` returns the new root
and the nodes it created, the caller writes them in the block's atomic batch,
and old nodes stay, so every historical root remains readable and provable.

A proof for a key is the list of sibling hashes along the key's path plus the
leaf (if any) where the path ends; the verifier re-hashes up to the root.
Presence is proven by ending at the key's own leaf; absence by ending at
EMPTY or at another key's leaf sharing the path so far.

Why hand-written: no maintained Python library offers a sparse Merkle tree
with absence proofs, batch updates and pluggable (atomic-batch) storage; the
tree is small enough to own outright, and it is the ledger's most
security-critical code, so it is specified and tested here in full.
"""

from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from kyodo.ledger.errors import StateCorruptionError, StateProofError

__all__ = [
    "EMPTY",
    "HASH_LEN",
    "KEY_BITS",
    "NodeReader",
    "StateProof",
    "TreeUpdate",
    "apply_updates",
    "compute_proof",
    "compute_root",
    "get_value_hash",
    "iter_nodes",
    "verify_proof",
]

HASH_LEN = 32
"""Length in bytes of every hash: key hashes, value hashes, node hashes."""

KEY_BITS = 256
"""Number of bits in a key hash, hence the maximum depth of the tree."""

EMPTY: bytes = bytes(HASH_LEN)
"""The hash of an empty subtree (and the root of an empty tree). Never stored."""

_NODE_LEN = 1 + 2 * HASH_LEN
_LEAF_TAG = b"\x00"
_INTERNAL_TAG = b"\x01"
_TOP = KEY_BITS - 1  # shift that brings bit 0 of a key-hash integer to position 0

# Kinds returned by the update recursion; _UNKNOWN marks an untouched child.
_UNKNOWN = -1
_K_EMPTY = 0
_K_LEAF = 1
_K_INTERNAL = 2

_sha256 = hashlib.sha256
_first = itemgetter(0)


class NodeReader(Protocol):
    """Read access to the node store: node hash -> node encoding."""

    def get_node(self, node_hash: bytes) -> bytes | None:
        """Return the encoding stored under ``node_hash``, or None if there is none."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeUpdate:
    """The result of :func:`apply_updates`.

    Attributes:
        root: the new root hash (:data:`EMPTY` for an empty tree).
        new_nodes: node hash -> encoding for every node the update created.
            Together with the nodes already stored it holds every node
            reachable from ``root``; every node in it is reachable from
            ``root``. It may repeat a node that is already stored (a leaf
            rebuilt with an unchanged value); writing it again is harmless.
    """

    root: bytes
    new_nodes: dict[bytes, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateProof:
    """A proof of a key's value, or of its absence, under a state root.

    Attributes:
        siblings: the sibling hash at each depth along the key's path, from
            the root downwards (depth 0 first); its length is the depth at
            which the path ends.
        leaf_key_hash: the key hash of the leaf where the path ends, or None
            if the path ends in an empty subtree.
        leaf_value_hash: that leaf's value hash; None exactly when
            ``leaf_key_hash`` is None.

    A proof is only data; :func:`verify_proof` decides whether it proves
    anything.
    """

    siblings: tuple[bytes, ...]
    leaf_key_hash: bytes | None
    leaf_value_hash: bytes | None

    def to_dict(self) -> dict[str, object]:
        """Return the proof as JSON-ready data: lowercase hex strings, None for no leaf.

        The shape is ``{"siblings": [hex, ...], "leaf_key_hash": hex | None,
        "leaf_value_hash": hex | None}``; :meth:`from_dict` reads it back.
        """
        return {
            "siblings": [s.hex() for s in self.siblings],
            "leaf_key_hash": None if self.leaf_key_hash is None else self.leaf_key_hash.hex(),
            "leaf_value_hash": (
                None if self.leaf_value_hash is None else self.leaf_value_hash.hex()
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> StateProof:
        """Parse the output of :meth:`to_dict`, strictly.

        Requires exactly the three keys, a list of at most 256 siblings, every
        hash as 64 lowercase hex digits, and the two leaf fields both present
        or both None. Anything else raises :class:`StateProofError`: a proof
        that cannot be parsed is a proof that does not verify.
        """
        if not isinstance(data, Mapping) or set(data) != {
            "siblings",
            "leaf_key_hash",
            "leaf_value_hash",
        }:
            raise StateProofError(
                "state proof must be a mapping with exactly the keys "
                "siblings, leaf_key_hash, leaf_value_hash"
            )
        raw_siblings = data["siblings"]
        if not isinstance(raw_siblings, list | tuple):
            raise StateProofError("state proof siblings must be a list")
        if len(raw_siblings) > KEY_BITS:
            raise StateProofError(
                f"state proof has {len(raw_siblings)} siblings, more than {KEY_BITS}"
            )
        siblings = tuple(_parse_hex_hash(s, "sibling") for s in raw_siblings)
        raw_key, raw_value = data["leaf_key_hash"], data["leaf_value_hash"]
        if (raw_key is None) != (raw_value is None):
            raise StateProofError(
                "state proof leaf_key_hash and leaf_value_hash must both be set or both be null"
            )
        return cls(
            siblings=siblings,
            leaf_key_hash=None if raw_key is None else _parse_hex_hash(raw_key, "leaf_key_hash"),
            leaf_value_hash=(
                None if raw_value is None else _parse_hex_hash(raw_value, "leaf_value_hash")
            ),
        )


# ---------------------------------------------------------------------------
# Helpers


def _parse_hex_hash(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * HASH_LEN:
        raise StateProofError(f"state proof {what} must be {2 * HASH_LEN} hex digits")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise StateProofError(f"state proof {what} is not hex: {text!r}") from None
    if raw.hex() != text:  # rejects upper case and embedded whitespace
        raise StateProofError(f"state proof {what} must be lowercase hex: {text!r}")
    return raw


def _require_hash(value: object, what: str) -> None:
    """Reject a caller's argument that is not a 32-byte ``bytes``."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_LEN:
        raise ValueError(f"{what} must be {HASH_LEN} bytes, got {len(value)}")


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_LEN


def _read_node(reader: NodeReader, node_hash: bytes) -> bytes:
    """Fetch a node reachable from a root and check it hashes to ``node_hash``."""
    encoding = reader.get_node(node_hash)
    if encoding is None:
        raise StateCorruptionError(
            f"state node {node_hash.hex()} is reachable from the root but missing from storage",
            node_hash=node_hash.hex(),
        )
    if len(encoding) != _NODE_LEN or encoding[0] > 1:
        raise StateCorruptionError(
            f"state node {node_hash.hex()} is malformed "
            f"({len(encoding)} bytes, tag {encoding[:1].hex() or 'none'})",
            node_hash=node_hash.hex(),
        )
    if _sha256(encoding).digest() != node_hash:
        raise StateCorruptionError(
            f"state node {node_hash.hex()} does not hash to the hash it is stored under",
            node_hash=node_hash.hex(),
        )
    return encoding


def _leaf_off_path(node_hash: bytes, depth: int) -> StateCorruptionError:
    return StateCorruptionError(
        f"state leaf {node_hash.hex()} at depth {depth} is not on the path it is stored at",
        node_hash=node_hash.hex(),
    )


def _too_deep(node_hash: bytes) -> StateCorruptionError:
    return StateCorruptionError(
        f"state node {node_hash.hex()} is an internal node below depth {_TOP}",
        node_hash=node_hash.hex(),
    )


_Columns = tuple[Sequence[int], Sequence[bytes], Sequence[bytes]]
"""Sorted pairs as parallel columns: key hashes as integers, key hashes, value hashes."""


def _build(
    pairs: _Columns, lo: int, hi: int, depth: int, sink: dict[bytes, bytes] | None
) -> tuple[bytes, int]:
    """Build the subtree at ``depth`` holding pairs ``lo:hi`` (sorted, sharing ``depth`` bits).

    Returns ``(hash, kind)`` and adds every created node to ``sink`` if given.
    """
    ints, keys, values = pairs
    count = hi - lo
    if count == 0:
        return EMPTY, _K_EMPTY
    if count == 1:
        encoding = _LEAF_TAG + keys[lo] + values[lo]
        node_hash = _sha256(encoding).digest()
        if sink is not None:
            sink[node_hash] = encoding
        return node_hash, _K_LEAF
    first = ints[lo]
    # The pairs are sorted, so the first bit where they split is where the
    # smallest and the largest key first differ; above it is a one-sided chain.
    split = KEY_BITS - (first ^ ints[hi - 1]).bit_length()
    shift = _TOP - split
    mid = bisect_left(ints, ((first >> shift) | 1) << shift, lo, hi)
    left, _ = _build(pairs, lo, mid, split + 1, sink)
    right, _ = _build(pairs, mid, hi, split + 1, sink)
    encoding = _INTERNAL_TAG + left + right
    node_hash = _sha256(encoding).digest()
    if sink is not None:
        sink[node_hash] = encoding
    for d in range(split - 1, depth - 1, -1):
        if (first >> (_TOP - d)) & 1:
            encoding = _INTERNAL_TAG + EMPTY + node_hash
        else:
            encoding = _INTERNAL_TAG + node_hash + EMPTY
        node_hash = _sha256(encoding).digest()
        if sink is not None:
            sink[node_hash] = encoding
    return node_hash, _K_INTERNAL


# ---------------------------------------------------------------------------
# Public API


def compute_root(items: Mapping[bytes, bytes]) -> bytes:
    """Return the root hash of the tree holding exactly ``items`` (key hash -> value hash).

    Computed from scratch in memory, without storage; it equals the root
    :func:`apply_updates` reaches from any starting tree with any batching.
    :data:`EMPTY` for no items. Raises TypeError/ValueError for a key or
    value that is not 32 bytes.
    """
    staged: list[tuple[int, bytes, bytes]] = []
    for key_hash, value_hash in items.items():
        _require_hash(key_hash, "key hash")
        _require_hash(value_hash, "value hash")
        staged.append((int.from_bytes(key_hash, "big"), key_hash, value_hash))
    staged.sort(key=_first)
    ints = [s[0] for s in staged]
    keys = [s[1] for s in staged]
    values = [s[2] for s in staged]
    return _build((ints, keys, values), 0, len(staged), 0, None)[0]


def apply_updates(
    reader: NodeReader, root: bytes, updates: Mapping[bytes, bytes | None]
) -> TreeUpdate:
    """Apply a batch of updates to the tree at ``root`` and return the new root and nodes.

    ``updates`` maps key hash -> new value hash, or None to delete the key
    (deleting an absent key is a no-op). The batch is applied in one
    descent: the key hashes are sorted and, at each node on the way down,
    the sorted list is split by the bit at that depth, so a path shared by
    many updated keys is read and rebuilt once. Nothing is deleted from
    storage; the old root stays readable.

    ``reader`` is asked only for nodes reachable from ``root``. Every node
    read is verified: a node that is missing, malformed (not 65 bytes, or a
    tag other than 0 or 1), does not hash to the hash it was read by, or
    breaks the tree's shape (a leaf off its path, an internal node below
    depth 255) raises :class:`StateCorruptionError`, and nothing is returned.

    Returns a :class:`TreeUpdate` whose ``new_nodes`` the caller stores in the
    same atomic batch as the block that commits ``root``. An empty batch, or
    one that changes nothing, returns ``root`` itself and no new nodes.
    Raises TypeError/ValueError if ``root``, a key hash or a value hash is
    not 32 bytes.
    """
    _require_hash(root, "root")
    staged: list[tuple[int, bytes, bytes | None]] = []
    for key_hash, value_hash in updates.items():
        _require_hash(key_hash, "key hash")
        if value_hash is not None:
            _require_hash(value_hash, "value hash")
        staged.append((int.from_bytes(key_hash, "big"), key_hash, value_hash))
    if not staged:
        return TreeUpdate(root=root, new_nodes={})
    staged.sort(key=_first)
    ints = [s[0] for s in staged]
    keys = [s[1] for s in staged]
    values = [s[2] for s in staged]
    new_nodes: dict[bytes, bytes] = {}

    def kind_of(node_hash: bytes) -> int:
        if node_hash == EMPTY:
            return _K_EMPTY
        return _K_LEAF if _read_node(reader, node_hash)[0] == 0 else _K_INTERNAL

    def update(node_hash: bytes, depth: int, lo: int, hi: int) -> tuple[bytes, int]:
        # Updates lo:hi all lie under the subtree ``node_hash`` at ``depth``.
        if node_hash == EMPTY:
            live = [j for j in range(lo, hi) if values[j] is not None]
            live_pairs: _Columns = (
                [ints[j] for j in live],
                [keys[j] for j in live],
                [v for j in live if (v := values[j]) is not None],
            )
            return _build(live_pairs, 0, len(live), depth, new_nodes)
        encoding = _read_node(reader, node_hash)
        if encoding[0] == 0:
            # A leaf alone in this subtree: merge it into the updates and rebuild.
            leaf_key = encoding[1:33]
            leaf_value = encoding[33:]
            leaf_int = int.from_bytes(leaf_key, "big")
            if depth and (leaf_int ^ ints[lo]) >> (KEY_BITS - depth):
                raise _leaf_off_path(node_hash, depth)
            pos = bisect_left(ints, leaf_int, lo, hi)
            keep_leaf = pos == hi or ints[pos] != leaf_int
            m_ints: list[int] = []
            m_keys: list[bytes] = []
            m_values: list[bytes] = []
            for j in range(lo, hi):
                if j == pos and keep_leaf:
                    m_ints.append(leaf_int)
                    m_keys.append(leaf_key)
                    m_values.append(leaf_value)
                value = values[j]
                if value is not None:
                    m_ints.append(ints[j])
                    m_keys.append(keys[j])
                    m_values.append(value)
            if pos == hi and keep_leaf:
                m_ints.append(leaf_int)
                m_keys.append(leaf_key)
                m_values.append(leaf_value)
            if len(m_ints) == 1 and m_keys[0] == leaf_key and m_values[0] == leaf_value:
                return node_hash, _K_LEAF
            return _build((m_ints, m_keys, m_values), 0, len(m_ints), depth, new_nodes)
        if depth > _TOP:
            raise _too_deep(node_hash)
        left = encoding[1:33]
        right = encoding[33:]
        shift = _TOP - depth
        mid = bisect_left(ints, ((ints[lo] >> shift) | 1) << shift, lo, hi)
        new_left, left_kind = update(left, depth + 1, lo, mid) if mid > lo else (left, _UNKNOWN)
        new_right, right_kind = update(right, depth + 1, mid, hi) if hi > mid else (right, _UNKNOWN)
        if new_left == left and new_right == right:
            return node_hash, _K_INTERNAL
        if new_left == EMPTY:
            if new_right == EMPTY:
                return EMPTY, _K_EMPTY
            if right_kind == _UNKNOWN:
                right_kind = kind_of(new_right)
            if right_kind == _K_LEAF:
                return new_right, _K_LEAF  # (EMPTY, leaf) collapses to the leaf
        elif new_right == EMPTY:
            if left_kind == _UNKNOWN:
                left_kind = kind_of(new_left)
            if left_kind == _K_LEAF:
                return new_left, _K_LEAF  # (leaf, EMPTY) collapses to the leaf
        encoding = _INTERNAL_TAG + new_left + new_right
        new_hash = _sha256(encoding).digest()
        new_nodes[new_hash] = encoding
        return new_hash, _K_INTERNAL

    new_root, _ = update(root, 0, 0, len(staged))
    return TreeUpdate(root=new_root, new_nodes=new_nodes)


def get_value_hash(reader: NodeReader, root: bytes, key_hash: bytes) -> bytes | None:
    """Return the value hash stored for ``key_hash`` under ``root``, or None if absent.

    Walks the key's path from the root, verifying every node read exactly
    as :func:`apply_updates` does (StateCorruptionError for a missing,
    malformed or mis-hashed node). Raises TypeError/ValueError if ``root``
    or ``key_hash`` is not 32 bytes.
    """
    _require_hash(root, "root")
    _require_hash(key_hash, "key hash")
    key_int = int.from_bytes(key_hash, "big")
    node_hash = root
    depth = 0
    while node_hash != EMPTY:
        encoding = _read_node(reader, node_hash)
        if encoding[0] == 0:
            return encoding[33:] if encoding[1:33] == key_hash else None
        if depth > _TOP:
            raise _too_deep(node_hash)
        node_hash = encoding[33:] if (key_int >> (_TOP - depth)) & 1 else encoding[1:33]
        depth += 1
    return None


def compute_proof(reader: NodeReader, root: bytes, key_hash: bytes) -> StateProof:
    """Return the proof of ``key_hash``'s value, or of its absence, under ``root``.

    The proof lists the sibling of every node on the key's path, depth 0
    first, and the leaf where the path ends (this key's leaf proves presence;
    another key's leaf or no leaf proves absence). Every node read is
    verified as in :func:`get_value_hash`; a leaf found off its path raises
    :class:`StateCorruptionError`. Raises TypeError/ValueError if ``root`` or
    ``key_hash`` is not 32 bytes.
    """
    _require_hash(root, "root")
    _require_hash(key_hash, "key hash")
    key_int = int.from_bytes(key_hash, "big")
    siblings: list[bytes] = []
    node_hash = root
    depth = 0
    while node_hash != EMPTY:
        encoding = _read_node(reader, node_hash)
        if encoding[0] == 0:
            leaf_key = encoding[1:33]
            if depth and (int.from_bytes(leaf_key, "big") ^ key_int) >> (KEY_BITS - depth):
                raise _leaf_off_path(node_hash, depth)
            return StateProof(
                siblings=tuple(siblings), leaf_key_hash=leaf_key, leaf_value_hash=encoding[33:]
            )
        if depth > _TOP:
            raise _too_deep(node_hash)
        if (key_int >> (_TOP - depth)) & 1:
            siblings.append(encoding[1:33])
            node_hash = encoding[33:]
        else:
            siblings.append(encoding[33:])
            node_hash = encoding[1:33]
        depth += 1
    return StateProof(siblings=tuple(siblings), leaf_key_hash=None, leaf_value_hash=None)


def verify_proof(root: bytes, key_hash: bytes, value_hash: bytes | None, proof: StateProof) -> None:
    """Check that ``proof`` shows ``key_hash`` maps to ``value_hash`` under ``root``.

    ``value_hash`` None claims the key is absent. Returns None if the proof
    holds; otherwise raises :class:`StateProofError` (never another error,
    whatever the arguments) when:

    * ``root``, ``key_hash``, ``value_hash``, a sibling or a leaf field is not
      a 32-byte ``bytes``; ``proof`` is not a StateProof; it has more than 256
      siblings; or exactly one of its two leaf fields is None;
    * presence is claimed but the path ends in EMPTY, or at the leaf of
      another key, or at this key's leaf with another value;
    * absence is claimed but the path ends at this key's leaf, or at another
      key's leaf that does not share the first ``len(siblings)`` bits with
      ``key_hash`` (so could not lie on this path);
    * the deepest sibling is EMPTY (a canonical tree never holds
      ``(EMPTY, EMPTY)``, ``(leaf, EMPTY)`` or ``(EMPTY, leaf)``);
    * re-hashing the leaf (or EMPTY) with the siblings up the key's path does
      not give ``root``.
    """
    if not _is_hash(root):
        raise StateProofError("state root must be a 32-byte hash")
    if not _is_hash(key_hash):
        raise StateProofError("key hash must be a 32-byte hash")
    if value_hash is not None and not _is_hash(value_hash):
        raise StateProofError("value hash must be a 32-byte hash or None")
    if not isinstance(proof, StateProof):
        raise StateProofError(f"expected a StateProof, got {type(proof).__name__}")
    siblings = proof.siblings
    if not isinstance(siblings, tuple | list):
        raise StateProofError("state proof siblings must be a tuple of hashes")
    count = len(siblings)
    if count > KEY_BITS:
        raise StateProofError(f"state proof has {count} siblings, more than {KEY_BITS}")
    for depth, sibling in enumerate(siblings):
        if not _is_hash(sibling):
            raise StateProofError(f"state proof sibling at depth {depth} is not a 32-byte hash")
    leaf_key, leaf_value = proof.leaf_key_hash, proof.leaf_value_hash
    if leaf_key is None:
        if leaf_value is not None:
            raise StateProofError("state proof has a leaf value hash but no leaf key hash")
    elif not (_is_hash(leaf_key) and _is_hash(leaf_value)):
        raise StateProofError("state proof leaf key and value hashes must be 32-byte hashes")
    key_int = int.from_bytes(key_hash, "big")

    if value_hash is not None:
        if leaf_key is None:
            raise StateProofError(
                f"presence of key {key_hash.hex()} claimed but the proof ends in an empty subtree"
            )
        if leaf_key != key_hash:
            raise StateProofError(
                f"presence of key {key_hash.hex()} claimed but the proof ends at the leaf "
                f"of key {leaf_key.hex()}"
            )
        if leaf_value != value_hash:
            raise StateProofError(
                f"key {key_hash.hex()} claimed to hold {value_hash.hex()} but the proof's "
                f"leaf holds another value"
            )
    elif leaf_key is not None:
        if leaf_key == key_hash:
            raise StateProofError(
                f"absence of key {key_hash.hex()} claimed but the proof ends at its own leaf"
            )
        if count and (int.from_bytes(leaf_key, "big") ^ key_int) >> (KEY_BITS - count):
            raise StateProofError(
                f"absence proof for key {key_hash.hex()} ends at the leaf of key "
                f"{leaf_key.hex()}, which does not share the first {count} bits of the path"
            )
    if count and siblings[-1] == EMPTY:
        raise StateProofError(
            "state proof is not canonical: its deepest sibling is an empty subtree"
        )

    if leaf_key is None:
        node_hash = EMPTY
    else:
        assert leaf_value is not None
        node_hash = _sha256(_LEAF_TAG + leaf_key + leaf_value).digest()
    for depth in range(count - 1, -1, -1):
        if (key_int >> (_TOP - depth)) & 1:
            node_hash = _sha256(_INTERNAL_TAG + siblings[depth] + node_hash).digest()
        else:
            node_hash = _sha256(_INTERNAL_TAG + node_hash + siblings[depth]).digest()
    if not hmac.compare_digest(node_hash, root):
        raise StateProofError(
            f"state proof for key {key_hash.hex()} recomputes root {node_hash.hex()}, "
            f"not {root.hex()}"
        )


def iter_nodes(reader: NodeReader, root: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(hash, encoding)`` for every node reachable from ``root``, verified.

    Depth-first, parent before children, left before right; nothing for an
    EMPTY root. Each node is verified as in :func:`get_value_hash`, and the
    tree's shape is checked too: a leaf must lie on its path, an internal
    node must not have two EMPTY children nor an EMPTY child beside a leaf,
    and no internal node may sit below depth 255. The first failure raises
    :class:`StateCorruptionError` (nodes before it have already been
    yielded). Meant for the background verifier, which re-reads the whole
    state; it keeps only the current path's siblings in memory.
    """
    _require_hash(root, "root")
    if root == EMPTY:
        return
    # (hash, depth, path bits so far, parent hash if the sibling is EMPTY)
    stack: list[tuple[bytes, int, int, bytes | None]] = [(root, 0, 0, None)]
    while stack:
        node_hash, depth, path, lone_parent = stack.pop()
        encoding = _read_node(reader, node_hash)
        if encoding[0] == 0:
            if lone_parent is not None:
                raise StateCorruptionError(
                    f"state node {lone_parent.hex()} has an empty child beside a leaf",
                    node_hash=lone_parent.hex(),
                )
            if int.from_bytes(encoding[1:33], "big") >> (KEY_BITS - depth) != path:
                raise _leaf_off_path(node_hash, depth)
            yield node_hash, encoding
            continue
        if depth > _TOP:
            raise _too_deep(node_hash)
        left = encoding[1:33]
        right = encoding[33:]
        if left == EMPTY and right == EMPTY:
            raise StateCorruptionError(
                f"state node {node_hash.hex()} has two empty children",
                node_hash=node_hash.hex(),
            )
        yield node_hash, encoding
        if right != EMPTY:
            stack.append((right, depth + 1, (path << 1) | 1, node_hash if left == EMPTY else None))
        if left != EMPTY:
            stack.append((left, depth + 1, path << 1, node_hash if right == EMPTY else None))
