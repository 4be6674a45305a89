"""The properties every simulated run must keep, checked as the run goes.

The checker does not trust the shell: it looks at each node's ledger right
after a block is stored there, recomputes what it needs from the block itself,
and keeps its own record of what every node stored.

* **Agreement**: no two nodes (nor one node twice, across a restart) ever
  store different blocks at the same height.
* **Validity**: every stored transaction was submitted by a client, and
  appears at most once in a node's chain.
* **Integrity**: every stored block is at the next height, links to its
  parent by hash, records a view no lower than its parent's, is consistent
  with its own roots, was proposed by a validator, and carries valid commit
  signatures by at least q distinct validators.
* **Non-equivocation** (read on the wire, across crashes and restarts): no
  honest validator ever sends two Prepares, or two Commits, for different
  blocks at the same view and height. The write-ahead log is what keeps
  this true when a validator restarts between voting and remembering.
* **Liveness**: after the heal, with every node running, every submitted
  transaction is final on every node before the run's deadline (a
  transaction a gateway refused as expired is exempt, unless it was ordered).
* **Durability of answers**: a transaction a client was told is final ends
  at that same height and position on every node.

A broken property raises :class:`InvariantViolation` carrying the seed, the
virtual time, the last trace lines and how to replay the run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NoReturn

from kyodo.codec import DecodeError
from kyodo.consensus import Commit, Prepare, compute_quorum
from kyodo.ledger import Block, BlockVerificationError, verify_block_contents
from kyodo.testing._fake import count_commit_signers
from kyodo.testing._scheduler import Scheduler
from kyodo.testing._shell import TxFinal, decode_frame

__all__ = ["InvariantChecker", "InvariantViolation"]


class InvariantViolation(Exception):
    """A simulated run broke a property (see module docstring).

    Attributes:
        invariant: which property (``agreement``, ``validity``, ``integrity``,
            ``non-equivocation``, ``liveness``, ``durability``, ``halt`` for a
            broken internal assertion).
        detail: what was observed.
        seed: the seed of the run; with the same options it replays the run exactly.
        time_ms: virtual time of the finding.
        trace: the last trace lines before it, oldest first.
    """

    def __init__(
        self,
        *,
        invariant: str,
        detail: str,
        seed: int,
        time_ms: int,
        trace: tuple[str, ...],
        replay: str,
    ) -> None:
        lines = "\n".join(f"  {line}" for line in trace)
        super().__init__(
            f"{invariant} violated at t={time_ms} ms (seed={seed}): {detail}\n"
            f"replay: {replay}\n"
            f"last events:\n{lines}"
        )
        self.invariant = invariant
        self.detail = detail
        self.seed = seed
        self.time_ms = time_ms
        self.trace = trace


class InvariantChecker:
    """Checks the properties of one run (see module docstring)."""

    def __init__(
        self,
        *,
        seed: int,
        validators: tuple[str, ...],
        honest: Collection[str],
        scheduler: Scheduler,
        replay: str,
    ) -> None:
        self._seed = seed
        self._validators = validators
        self._quorum, _ = compute_quorum(len(validators))
        self._honest = frozenset(honest)
        self._scheduler = scheduler
        self._replay = replay
        self._submitted: set[bytes] = set()
        self._chain: dict[int, tuple[bytes, str]] = {}
        """Height to (hash, first node) of the first block stored anywhere at that height."""
        self._node_txs: dict[str, dict[bytes, int]] = {}
        """Per node, the checker's own index of stored transactions (tx id to height)."""
        self._node_height: dict[str, int] = {}
        self._node_tip: dict[str, tuple[Block, bytes]] = {}
        """Per node, the last block checked there and the hash the checker computed."""
        self._votes: dict[tuple[str, str, int, int], bytes] = {}
        """(sender, kind, view, height) to the block hash an honest validator voted for."""
        self.blocks_checked = 0
        """Stored blocks checked so far."""
        self.votes_checked = 0
        """Honest Prepares and Commits read on the wire so far."""

    def fail(self, invariant: str, detail: str) -> NoReturn:
        """Raise the violation of ``invariant``."""
        raise InvariantViolation(
            invariant=invariant,
            detail=detail,
            seed=self._seed,
            time_ms=self._scheduler.now_ms,
            trace=self._scheduler.recent(),
            replay=self._replay,
        )

    def on_submitted(self, tx_id: bytes) -> None:
        """A client sent ``tx_id`` for the first time."""
        self._submitted.add(tx_id)

    # -- after every stored block ----------------------------------------------------

    def check_stored(self, node_id: str, ledger: Sequence[Block]) -> None:
        """Check the block just stored at the end of ``node_id``'s ledger."""
        self.blocks_checked += 1
        block = ledger[-1]
        height = len(ledger) - 1
        block_hash = block.block_hash()
        self._check_integrity(node_id, block, block_hash, height, ledger[-2])
        self._check_agreement(node_id, block_hash, height)
        self._check_validity(node_id, block, height, ledger)
        self._node_tip[node_id] = (block, block_hash)

    def _hash_of(self, node_id: str, block: Block) -> bytes:
        """The hash of ``block``, reusing the one computed when it was checked."""
        last = self._node_tip.get(node_id)
        return last[1] if last is not None and last[0] is block else block.block_hash()

    def _check_integrity(
        self, node_id: str, block: Block, block_hash: bytes, height: int, parent: Block
    ) -> None:
        header = block.header
        where = f"{node_id} stored block {header.height} at height {height}"
        if header.height != height:
            self.fail("integrity", f"{where}: wrong height")
        parent_hash = self._hash_of(node_id, parent)
        if header.prev_hash != parent_hash or header.chain_id != parent.header.chain_id:
            self.fail(
                "integrity",
                f"{where}: prev_hash {header.prev_hash.hex()[:16]} is not the hash of its "
                f"parent {parent_hash.hex()[:16]}",
            )
        if header.view < parent.header.view:
            self.fail(
                "integrity",
                f"{where}: view {header.view} lower than its parent's {parent.header.view}",
            )
        if header.proposer not in self._validators:
            self.fail("integrity", f"{where}: proposed by {header.proposer}, not a validator")
        signers = count_commit_signers(block, self._validators, block_hash)
        if signers < self._quorum:
            self.fail(
                "integrity",
                f"{where}: certificate has {signers} valid commit signatures, "
                f"{self._quorum} required",
            )
        try:
            verify_block_contents(block)
        except BlockVerificationError as exc:
            self.fail("integrity", f"{where}: {exc}")

    def _check_agreement(self, node_id: str, block_hash: bytes, height: int) -> None:
        first = self._chain.setdefault(height, (block_hash, node_id))
        if first[0] != block_hash:
            self.fail(
                "agreement",
                f"{node_id} stored block {block_hash.hex()[:16]} at height {height}, "
                f"but {first[1]} stored {first[0].hex()[:16]} there",
            )

    def _check_validity(
        self, node_id: str, block: Block, height: int, ledger: Sequence[Block]
    ) -> None:
        txs = self._node_txs.setdefault(node_id, {})
        if height <= self._node_height.get(node_id, 0):
            # the node's chain got shorter (only a broken shell does that): re-index
            txs.clear()
            for earlier in ledger[1:height]:
                for envelope in earlier.txs:
                    txs[envelope.tx_id()] = earlier.header.height
        self._node_height[node_id] = height
        for envelope in block.txs:
            tx_id = envelope.tx_id()
            if tx_id not in self._submitted:
                self.fail(
                    "validity",
                    f"{node_id} stored tx {tx_id.hex()[:16]} at height {height}, "
                    "which no client submitted",
                )
            if tx_id in txs:
                self.fail(
                    "validity",
                    f"{node_id} stored tx {tx_id.hex()[:16]} at height {height}, "
                    f"already at height {txs[tx_id]}",
                )
            txs[tx_id] = height

    # -- on the wire -----------------------------------------------------------------

    def on_wire(self, sender: str, raw: bytes, kind: str) -> None:
        """A message ``sender`` handed to the network (the network's tap)."""
        if sender not in self._honest or not kind.startswith(("Prepare ", "Commit ")):
            return
        try:
            vote = decode_frame(raw)
        except DecodeError:
            self.fail("non-equivocation", f"{sender} sent an undecodable {kind}")
        if not isinstance(vote, Prepare | Commit):
            return
        self.votes_checked += 1
        name = type(vote).__name__
        key = (sender, name, vote.view, vote.height)
        first = self._votes.setdefault(key, vote.block_hash)
        if first != vote.block_hash:
            self.fail(
                "non-equivocation",
                f"honest {sender} sent {name} for {vote.block_hash.hex()[:16]} at view "
                f"{vote.view}, height {vote.height}, after {name} for {first.hex()[:16]}",
            )

    # -- at the end ------------------------------------------------------------------

    def check_liveness(
        self, tx_locations: Mapping[str, Mapping[bytes, object]], exempt: Collection[bytes] = ()
    ) -> None:
        """Every submitted transaction is stored on every node (``exempt``: refused as
        expired and stored nowhere)."""
        ordered = {t for stored in tx_locations.values() for t in stored}
        required = {t for t in self._submitted if t not in exempt or t in ordered}
        for node_id, stored in tx_locations.items():
            missing = sorted(t for t in required if t not in stored)
            if missing:
                self.fail(
                    "liveness",
                    f"{len(missing)} of {len(required)} submitted txs not final on "
                    f"{node_id} by the deadline (first {missing[0].hex()[:16]})",
                )

    def check_answers(
        self,
        answers: Iterable[TxFinal],
        tx_locations: Mapping[str, Mapping[bytes, tuple[int, int]]],
    ) -> None:
        """Each final answer given to a client holds on every node at the end."""
        for answer in answers:
            for node_id, stored in tx_locations.items():
                location = stored.get(answer.tx_id)
                if location != (answer.height, answer.tx_index):
                    self.fail(
                        "durability",
                        f"tx {answer.tx_id.hex()[:16]} was answered final by "
                        f"{answer.node_id} at {answer.height}/{answer.tx_index} "
                        f"(t={answer.time_ms}), but {node_id} has it at {location}",
                    )
