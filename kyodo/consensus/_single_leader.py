"""Single-leader ordering: the first validator orders, the others verify and follow.

This is the placeholder ordering of the foundation issue, so the whole path
(submit, order, execute, certify, replicate, verify, append) runs end to end.
It tolerates crashed *followers* (they catch up from peers when they return)
but not a crashed leader: the BFT protocol of issue 3 replaces it behind the
same :class:`~kyodo.consensus.Consensus` interface.

Rules:

* The leader keeps a bounded pool of requests (oldest first). It cuts a
  batch when the pool holds ``max_batch_txs`` transactions or
  ``max_batch_bytes`` bytes, or when the oldest has waited
  ``batch_timeout_ms``. One proposal is in flight at a time.
* A follower forwards requests to the leader, and appends the leader's
  blocks strictly in height order after verifying them; a block from the
  future is buffered (bounded) and the gap fetched with a sync request.
* Status messages (sent on connect and every ``status_interval_ms``) reveal
  a lagging node, which then syncs from a peer that is ahead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kyodo.consensus._api import (
    Action,
    AppendPeerBlock,
    BlockMessage,
    Broadcast,
    ForwardTx,
    Message,
    ProposeBlock,
    RequestSync,
    Send,
    StatusMessage,
    SyncRequest,
    SyncResponse,
)
from kyodo.ledger import Block, ConsensusParams, TxEnvelope

__all__ = ["SingleLeader", "SingleLeaderLimits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleLeaderLimits:
    """Bounds of the ordering state (DESIGN: a limit on everything)."""

    max_pool_txs: int = 50_000
    """Most transactions waiting in the leader's pool; more are refused as busy."""
    max_buffered_blocks: int = 256
    """Most out-of-order blocks held while a gap is fetched."""
    sync_batch_blocks: int = 64
    """Blocks asked for in one sync request."""
    sync_retry_ms: int = 1_000
    """Wait before asking again when a sync request went unanswered."""
    status_interval_ms: int = 2_000
    """How often a node tells its peers its tip."""


class SingleLeader:
    """The single-leader ordering state machine (see module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        validators: tuple[str, ...],
        params: ConsensusParams,
        height: int,
        tip_hash: bytes = b"",
        limits: SingleLeaderLimits | None = None,
    ) -> None:
        assert node_id in validators, "a single-leader node must be a validator"
        self.node_id = node_id
        self.validators = validators
        self.params = params
        self.limits = limits or SingleLeaderLimits()
        self.height = height
        self.tip_hash = tip_hash
        self._leader = validators[0]
        self._pool: OrderedDict[bytes, tuple[TxEnvelope, int]] = OrderedDict()
        self._pool_bytes = 0
        self._in_flight = False
        self._buffer: dict[int, tuple[Block, str]] = {}
        self._verifying: int | None = None
        self._sync_peer: str | None = None
        self._sync_sent_ms: int | None = None
        self._peer_heights: dict[str, int] = {}
        self._last_status_ms = -(10**12)

    # -- queries ---------------------------------------------------------------------

    def leader(self) -> str:
        """The ordering node (the first validator)."""
        return self._leader

    def is_leader(self) -> bool:
        """Whether this node orders."""
        return self._leader == self.node_id

    def pending_count(self) -> int:
        """Transactions in the pool."""
        return len(self._pool)

    def is_pool_full(self) -> bool:
        """Whether a new request would exceed the pool bound."""
        return len(self._pool) >= self.limits.max_pool_txs

    def lag(self) -> int:
        """How many blocks the most advanced peer (as last heard) is ahead of us."""
        return max([0, *(h - self.height for h in self._peer_heights.values())])

    def contains(self, tx_id: bytes) -> bool:
        """Whether ``tx_id`` waits in the pool."""
        return tx_id in self._pool

    # -- events ----------------------------------------------------------------------

    def on_request(self, envelope: TxEnvelope, tx_id: bytes, now_ms: int) -> list[Action]:
        """Pool the request (leader) or forward it to the leader (follower)."""
        if not self.is_leader():
            return [Send(self._leader, ForwardTx(envelope=envelope))]
        if tx_id in self._pool:
            return []
        assert not self.is_pool_full(), "the shell checks the pool bound before submitting"
        self._pool[tx_id] = (envelope, now_ms)
        self._pool_bytes += len(envelope.payload)
        return self._maybe_propose(now_ms)

    def on_message(self, sender: str, message: Message, now_ms: int) -> list[Action]:
        """Handle a peer's message."""
        if isinstance(message, BlockMessage):
            return self._on_block(message.block, sender, now_ms)
        if isinstance(message, SyncResponse):
            return self._on_sync_response(message, sender, now_ms)
        if isinstance(message, StatusMessage):
            self._peer_heights[sender] = message.height
            return self._maybe_sync(now_ms)
        if isinstance(message, ForwardTx | SyncRequest):
            raise AssertionError("the shell handles ForwardTx and SyncRequest itself")
        return []

    def on_tick(self, now_ms: int) -> list[Action]:
        """Cut a batch if one is due; send status; retry a stalled sync."""
        actions = self._maybe_propose(now_ms)
        if now_ms - self._last_status_ms >= self.limits.status_interval_ms:
            self._last_status_ms = now_ms
            actions.append(Broadcast(StatusMessage(height=self.height, tip_hash=self.tip_hash)))
        if (
            self._sync_sent_ms is not None
            and now_ms - self._sync_sent_ms > self.limits.sync_retry_ms
        ):
            self._sync_peer = None
            self._sync_sent_ms = None
        actions.extend(self._maybe_sync(now_ms))
        return actions

    def on_block_appended(self, block: Block, now_ms: int) -> list[Action]:
        """Advance the tip; the leader pushes its block; continue with buffered blocks."""
        height = block.header.height
        assert height == self.height + 1, f"appended {height} on top of {self.height}"
        self.height = height
        self.tip_hash = block.block_hash()
        self._verifying = None
        for envelope in block.txs:
            entry = self._pool.pop(envelope.tx_id(), None)
            if entry is not None:
                self._pool_bytes -= len(entry[0].payload)
        actions: list[Action] = []
        if block.header.proposer == self.node_id:
            self._in_flight = False
            actions.append(Broadcast(BlockMessage(block=block)))
        for stale in [h for h in self._buffer if h <= height]:
            del self._buffer[stale]
        actions.extend(self._next_buffered())
        actions.extend(self._maybe_propose(now_ms))
        actions.extend(self._maybe_sync(now_ms))
        return actions

    def on_block_rejected(self, block: Block, sender: str, now_ms: int) -> list[Action]:
        """Drop the bad block; fetch that height from another peer."""
        self._verifying = None
        self._buffer.pop(block.header.height, None)
        self._peer_heights.pop(sender, None)
        self._sync_peer = None
        self._sync_sent_ms = None
        return self._maybe_sync(now_ms)

    def on_proposal_failed(self, now_ms: int) -> list[Action]:
        """The batch produced no block (every transaction was invalid by block time)."""
        self._in_flight = False
        return []

    def drop_requests(self, tx_ids: list[bytes]) -> None:
        """Remove requests the shell found invalid when building a block."""
        for tx_id in tx_ids:
            entry = self._pool.pop(tx_id, None)
            if entry is not None:
                self._pool_bytes -= len(entry[0].payload)

    def on_peer_connected(self, peer: str, now_ms: int) -> list[Action]:
        """Tell a (re)connected peer our tip."""
        return [Send(peer, StatusMessage(height=self.height, tip_hash=self.tip_hash))]

    # -- internals -------------------------------------------------------------------

    def _maybe_propose(self, now_ms: int) -> list[Action]:
        if not self.is_leader() or self._in_flight or not self._pool:
            return []
        if self._verifying is not None or self._behind():
            return []
        oldest_ms = next(iter(self._pool.values()))[1]
        due = (
            len(self._pool) >= self.params.max_batch_txs
            or self._pool_bytes >= self.params.max_batch_bytes
            or now_ms - oldest_ms >= self.params.batch_timeout_ms
        )
        if not due:
            return []
        batch: list[TxEnvelope] = []
        size = 0
        for envelope, _ in self._pool.values():
            if len(batch) >= self.params.max_batch_txs:
                break
            if batch and size + len(envelope.payload) > self.params.max_batch_bytes:
                break
            batch.append(envelope)
            size += len(envelope.payload)
        self._in_flight = True
        return [ProposeBlock(tuple(batch))]

    def _behind(self) -> bool:
        return any(h > self.height for h in self._peer_heights.values())

    def _on_block(self, block: Block, sender: str, now_ms: int) -> list[Action]:
        height = block.header.height
        self._peer_heights[sender] = max(self._peer_heights.get(sender, -1), height)
        if height <= self.height or height in self._buffer:
            return []
        if not self._room_for(height):
            return self._maybe_sync(now_ms)
        self._buffer[height] = (block, sender)
        actions = self._next_buffered()
        actions.extend(self._maybe_sync(now_ms))
        return actions

    def _on_sync_response(self, message: SyncResponse, sender: str, now_ms: int) -> list[Action]:
        if sender == self._sync_peer:
            self._sync_peer = None
            self._sync_sent_ms = None
        for block in message.blocks[: self.limits.max_buffered_blocks]:
            height = block.header.height
            if height > self.height and self._room_for(height):
                self._buffer.setdefault(height, (block, sender))
                self._peer_heights[sender] = max(self._peer_heights.get(sender, -1), height)
        actions = self._next_buffered()
        actions.extend(self._maybe_sync(now_ms))
        return actions

    def _room_for(self, height: int) -> bool:
        """The next block is always taken (it is consumed at once); later ones are bounded."""
        return height == self.height + 1 or len(self._buffer) < self.limits.max_buffered_blocks

    def _next_buffered(self) -> list[Action]:
        if self._verifying is not None or self._in_flight:
            return []
        entry = self._buffer.pop(self.height + 1, None)
        if entry is None:
            return []
        self._verifying = self.height + 1
        return [AppendPeerBlock(entry[0], entry[1])]

    def _maybe_sync(self, now_ms: int) -> list[Action]:
        if self._sync_peer is not None or self._verifying is not None:
            return []
        if self.height + 1 in self._buffer:
            return []
        ahead = [(h, p) for p, h in self._peer_heights.items() if h > self.height]
        if not ahead:
            return []
        _, peer = max(ahead)
        self._sync_peer = peer
        self._sync_sent_ms = now_ms
        return [RequestSync(peer, self.height + 1)]
