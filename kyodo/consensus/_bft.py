"""Byzantine fault tolerant ordering with immediate finality (ADR 0009).

Theory of operation
-------------------
n validators, f = (n-1)//3, quorum q = ceil((n+f+1)/2): any two quorums
share at least f+1 validators, so at least one honest one. One block is in
flight at a time.

*Normal case*, height h in view v:
1. The leader of v (``validators[v % n]``) asks the shell to build block h from
   its request pool, then sends ``PrePrepare``.
2. Each validator asks the shell to verify the block. That includes
   re-executing it on the validator's tip.
3. If the block verifies, the validator writes it to its write-ahead log (WAL)
   and sends a signed ``Prepare``.
4. With q signed Prepares for the block in v, the validator is *prepared*. It
   keeps those q signatures as a *prepared certificate* (WAL first), then sends
   ``Commit`` with its signature over the block hash.
5. With q commit signatures the block is certified, and the shell appends it.

Commit signatures do not depend on the view, so a certificate may combine
commits made in different views.

*Complaints*. A follower complains when any of these happens:
- the leader is silent (no heartbeat or proposal) for ``leader_timeout_ms``;
- a request it holds waits longer than ``request_complain_ms``, so a censoring
  leader is replaced;
- a proposal does not verify;
- the leader equivocates.

A complaint broadcasts ``ViewChange(v+1)``. A validator joins once f+1 ask for
a higher view. Once q ask for v', each sends a signed ``ViewData`` to the leader
of v'. The ViewData carries the validator's last certified block and its
in-flight block, with the prepared certificate if it has one. The new leader
sends ``NewView`` with q valid ViewData, and every validator applies the PBFT
rule (:func:`select_in_flight`):
- the in-flight block with the highest-view valid prepared certificate is
  proposed again in v';
- if no such certificate exists, v' starts fresh.

A block that anyone committed was prepared by q validators. Any quorum of
ViewData therefore includes an honest one holding its certificate. No other
block can carry a certificate from a later view, because honest validators
only prepare in a new view what its NewView allows. The rule never has to
wait.

*WAL*. Every ``PersistWal`` action is carried out, and synced, before the
actions that follow it. A restarted validator therefore never votes twice
differently at one height and view.

This core is sans-IO: time comes in as ``now_ms``, and signing and signature
checks are injected. The simulator runs this same code.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from kyodo.codec import DecodeError, decode_record, encode
from kyodo.consensus._api import (
    Action,
    AppendPeerBlock,
    Broadcast,
    ForwardTx,
    RequestSync,
    Send,
    StatusMessage,
    SyncResponse,
)
from kyodo.consensus._bft_messages import (
    AppendCertified,
    BuildProposal,
    Commit,
    Heartbeat,
    NewView,
    PersistWal,
    Prepare,
    PrePrepare,
    SignedViewData,
    VerifyProposal,
    ViewChange,
    ViewData,
    WalState,
    new_view_message,
    prepare_message,
)
from kyodo.ledger import (
    Block,
    BlockHeader,
    CommitSignature,
    TxEnvelope,
    commit_message,
    quorum_size,
)

__all__ = [
    "BLACKLIST_HEIGHTS",
    "Bft",
    "BftAction",
    "BftParams",
    "InFlightDecision",
    "compute_quorum",
    "select_in_flight",
]

BftAction = Action | BuildProposal | VerifyProposal | AppendCertified | PersistWal
"""What the BFT core asks its shell to do (the shell answers with ``on_*`` events)."""

_REFORWARD_MAX = 2_000
BLACKLIST_HEIGHTS = 100
"""A leader that forced a view change is passed over for this many heights."""
_FUTURE_MAX = 4_096


def compute_quorum(n: int) -> tuple[int, int]:
    """(q, f) for n validators: any two quorums share at least f+1 validators."""
    return quorum_size(n), (n - 1) // 3


@dataclass(frozen=True, slots=True, kw_only=True)
class BftParams:
    """Timing and size limits of the protocol (all times in ms)."""

    max_batch_txs: int = 500
    max_batch_bytes: int = 4 * 1024 * 1024
    batch_timeout_ms: int = 20
    heartbeat_interval_ms: int = 500
    leader_timeout_ms: int = 3_000
    """A follower complains after hearing nothing from the leader for this long."""
    request_forward_ms: int = 2_000
    """A request not ordered by then is sent to every validator, not just the leader."""
    request_complain_ms: int = 6_000
    """A request not ordered by then makes its holder complain (censorship)."""
    view_change_timeout_ms: int = 4_000
    """A view change not completed by then moves on to the next view."""
    decisions_per_leader: int = 10
    """Leadership rotates to the next validator every this many heights (0: never)."""
    status_interval_ms: int = 1_000
    sync_retry_ms: int = 1_000
    max_pool_txs: int = 50_000
    max_buffered_blocks: int = 256


@dataclass(frozen=True, slots=True)
class InFlightDecision:
    """What a NewView's view data say about height ``height``."""

    height: int
    block: Block | None
    """The block to propose again, or None: the new view starts fresh at ``height``."""


def select_in_flight(view_data: list[ViewData]) -> InFlightDecision:
    """The PBFT new-view rule over validated view data (certificates already checked).

    e = highest certified height reported + 1. Among view data whose in-flight
    block is at e with a prepared certificate, the one prepared in the highest
    view wins; none: start fresh at e.
    """
    assert view_data, "a NewView carries a quorum of view data"
    expected = max(vd.last_block.header.height for vd in view_data) + 1
    best: tuple[int, bytes, Block] | None = None
    for vd in view_data:
        block = vd.in_flight
        if block is None or block.header.height != expected or vd.prepared_view < 0:
            continue
        candidate = (vd.prepared_view, block.block_hash(), block)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return InFlightDecision(height=expected, block=None if best is None else best[2])


@dataclass(slots=True)
class _PoolEntry:
    envelope: TxEnvelope
    arrived_ms: int
    """When it arrived, or when the current leader's grace period began."""
    broadcast_ms: int | None = None
    """When it was last sent to every validator (repeated until it is ordered)."""
    expires_ms: int | None = None
    """After this no validator will order it (too old): it leaves the pool unordered."""


@dataclass(slots=True)
class _Round:
    """Votes for the next height (tip + 1) in the current view."""

    accepted: Block | None = None
    prepared_view: int = -1
    prepared_certificate: tuple[CommitSignature, ...] = ()
    verifying: bytes | None = None
    prepares: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    commits: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    """View-independent: kept across view changes at the same height."""
    blocks: dict[bytes, Block] = field(default_factory=dict)
    appending: bool = False
    reproposal: bytes | None = None
    """Hash the NewView obliges this view to order at this height."""


class Bft:
    """The BFT ordering state machine of one validator (see module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        validators: tuple[str, ...],
        chain_id: str,
        tip: Block,
        params: BftParams,
        sign: Callable[[bytes], bytes],
        verify_signature: Callable[[str, bytes, bytes], bool],
        verify_certified: Callable[[Block], bool],
        wal: WalState | None = None,
        now_ms: int = 0,
        recent: Sequence[BlockHeader] = (),
    ) -> None:
        """``recent``: the headers of the last blocks up to ``tip`` (oldest first, at least
        ``BLACKLIST_HEIGHTS`` of them when the chain is that long), from which the leader
        blacklist is derived the same way on every node."""
        assert len(set(validators)) == len(validators) and validators
        self.node_id = node_id
        self.observer = node_id not in validators
        """Not a validator (yet, or any more): follows the chain, never votes."""
        self.validators = validators
        self.chain_id = chain_id
        self.params = params
        self.quorum, self.f = compute_quorum(len(validators))
        self._sign = sign
        self._verify_signature = verify_signature
        self._verify_certified = verify_certified
        self.tip = tip
        self._recent: deque[tuple[int, int, str]] = deque(maxlen=BLACKLIST_HEIGHTS + 1)
        for header in (*recent, tip.header):
            if not self._recent or header.height > self._recent[-1][0]:
                self._recent.append((header.height, header.view, header.proposer))
        self._blacklist = self._compute_blacklist()
        self.view = 0
        self.in_view_change = False
        self.round = _Round()
        self._pool: OrderedDict[bytes, _PoolEntry] = OrderedDict()
        self.expired_count = 0
        """Requests dropped from the pool because they grew too old to order."""
        self._building = False
        self._last_leader_ms = now_ms
        self._last_heartbeat_ms = now_ms
        self._view_change_started_ms = now_ms
        self._vc_votes: dict[int, set[str]] = {}
        self._view_data: dict[str, SignedViewData] = {}
        self._view_data_sent: SignedViewData | None = None
        self._last_new_view: NewView | None = None
        self._pending_new_view: NewView | None = None
        self._higher_view: dict[str, int] = {}
        self._lower_activity: dict[str, tuple[int, int]] = {}
        """In a view change: validators seen voting in a lower view (view, when)."""
        self._future: list[tuple[str, object]] = []
        self._peer_heights: dict[str, int] = {}
        self._highest_seen = 0
        """The highest tip height any peer has shown (for health; sync forgets peers)."""
        self._buffer: dict[int, tuple[Block, str]] = {}
        self._syncing_block = False
        self._sync_peer: str | None = None
        self._sync_sent_ms = now_ms
        self._last_status_ms = -(10**12)
        if wal is not None:
            self._restore(wal)

    # -- queries ---------------------------------------------------------------------

    @property
    def height(self) -> int:
        """Height of the last appended block."""
        return self.tip.header.height

    def leader_of(self, view: int) -> str:
        """The validator that leads the view change into ``view`` (collects its ViewData
        and sends its NewView)."""
        return self.validators[view % len(self.validators)]

    def _turn(self, height: int) -> int:
        """How many times leadership has rotated by ``height`` (without view changes)."""
        per_leader = self.params.decisions_per_leader
        return height // per_leader if per_leader > 0 else 0

    def proposer_of(self, view: int, height: int) -> str:
        """The validator that proposes block ``height`` in ``view``: leadership rotates
        every ``decisions_per_leader`` heights (0: no rotation), so no single leader
        orders for long even when nothing forces a view change. Rotation runs over the
        validators not blacklisted (at most f, so someone is always left): consecutive
        views then always name different proposers, and a view change never hands the
        next view to the validator that just failed (which plain skip-to-next did when
        the failed one sat right after a blacklisted one)."""
        eligible = [v for v in self.validators if v not in self._blacklist]
        assert eligible, "the blacklist holds at most f < n validators"
        return eligible[(view + self._turn(height)) % len(eligible)]

    @property
    def blacklist(self) -> frozenset[str]:
        """Validators currently passed over as proposers (see _compute_blacklist)."""
        return self._blacklist

    def _compute_blacklist(self) -> frozenset[str]:
        """Leaders that forced view changes recently, from the chain alone.

        Where consecutive blocks' views jump from a to b, the validators that should
        have proposed in views a..b-1 at that height and did not are recorded at that
        height. "Should have" applies :meth:`proposer_of`'s own rule with the blacklist
        as it stood then (rebuilt forward over the same window), so a failure is pinned
        on the validator that actually had the turn, not on the one rotation alone
        would name. Entries older than ``BLACKLIST_HEIGHTS`` blocks expire; the most
        recent f distinct current validators are kept. Every node at the same tip
        computes the same set, so all agree on the proposer.
        """
        entries: list[tuple[int, str]] = []
        for (_, v0, _), (h1, v1, p1) in itertools.pairwise(self._recent):
            if v1 <= v0:
                continue
            then = self._select_blacklist(entries, h1 - 1)
            eligible = [v for v in self.validators if v not in then]
            for view in range(v0, min(v1, v0 + len(eligible))):
                skipped = eligible[(view + self._turn(h1)) % len(eligible)]
                if skipped != p1:
                    entries.append((h1, skipped))
        return self._select_blacklist(entries, self.height)

    def _select_blacklist(self, entries: list[tuple[int, str]], tip: int) -> frozenset[str]:
        """The blacklist at ``tip``: the most recent f distinct current validators among
        ``entries`` (height recorded, validator) not older than ``BLACKLIST_HEIGHTS``."""
        horizon = tip + 1 - BLACKLIST_HEIGHTS
        chosen: list[str] = []
        for recorded, node in reversed(entries):
            if len(chosen) >= self.f:
                break
            if horizon < recorded <= tip and node not in chosen and node in self.validators:
                chosen.append(node)
        return frozenset(chosen)

    def leader(self) -> str:
        """The validator proposing the next block in the current view."""
        return self.proposer_of(self.view, self.height + 1)

    def is_leader(self) -> bool:
        """Whether this validator leads the current view (and it is active)."""
        return not self.in_view_change and self.leader() == self.node_id

    def adopt_transient(self, previous: Bft) -> None:
        """Keep what the previous epoch's core heard but had not used yet: votes for the
        next height and what it knows of peers' heights."""
        self._future = list(previous._future)
        self._peer_heights = dict(previous._peer_heights)
        self._recent = deque(previous._recent, maxlen=BLACKLIST_HEIGHTS + 1)
        self._blacklist = self._compute_blacklist()
        self._highest_seen = previous._highest_seen

    def pending_requests(self) -> list[tuple[TxEnvelope, bytes, int | None]]:
        """(envelope, tx id, expiry) of every pooled request, oldest first: handed to the
        core of the next configuration epoch."""
        return [(e.envelope, tx_id, e.expires_ms) for tx_id, e in self._pool.items()]

    def pending_count(self) -> int:
        """Requests held in the pool."""
        return len(self._pool)

    def is_pool_full(self) -> bool:
        """Whether a new request would exceed the pool bound."""
        return len(self._pool) >= self.params.max_pool_txs

    def contains(self, tx_id: bytes) -> bool:
        """Whether ``tx_id`` waits in the pool."""
        return tx_id in self._pool

    def lag(self) -> int:
        """How many blocks the highest height any peer has shown is ahead of ours. Unlike
        the sync bookkeeping, a rejected block does not make the lag disappear."""
        peers = max(self._peer_heights.values(), default=0)
        return max(0, self._highest_seen - self.height, peers - self.height)

    def wal_state(self) -> WalState:
        """What the write-ahead log must hold now."""
        return WalState(
            view=self.view,
            in_view_change=self.in_view_change,
            height=self.height + 1,
            accepted=self.round.accepted,
            prepared_view=self.round.prepared_view,
            prepared_certificate=self.round.prepared_certificate,
        )

    # -- events ----------------------------------------------------------------------

    def on_request(
        self, envelope: TxEnvelope, tx_id: bytes, now_ms: int, *, expires_ms: int | None = None
    ) -> list[BftAction]:
        """A checked, non-duplicate request: pool it; a follower forwards it to the leader.

        ``expires_ms``: when the request becomes too old to order; it is then dropped
        from the pool rather than complained about (no leader could order it).
        """
        if tx_id in self._pool:
            return []
        assert not self.is_pool_full(), "the shell checks the pool bound first"
        self._pool[tx_id] = _PoolEntry(envelope=envelope, arrived_ms=now_ms, expires_ms=expires_ms)
        if self.is_leader():
            return self._maybe_propose(now_ms)
        if self.in_view_change or self.observer:  # whoever leads next must have it
            self._pool[tx_id].broadcast_ms = now_ms
            return [Broadcast(ForwardTx(envelope=envelope))]
        return [Send(self.leader(), ForwardTx(envelope=envelope))]

    def on_tick(self, now_ms: int) -> list[BftAction]:
        """Time passed: propose, heartbeat, complain, time out view changes, sync."""
        self._expire(now_ms)
        actions: list[BftAction] = []
        if self.observer:
            actions += self._rebroadcast_waiting(now_ms)
        elif self.in_view_change:
            actions += self._view_change_timers(now_ms)
        else:
            if self.is_leader():
                actions += self._maybe_propose(now_ms)
            else:
                actions += self._follower_timers(now_ms)
            if now_ms - self._last_heartbeat_ms >= self.params.heartbeat_interval_ms:
                # every active validator says which view it works in: followers watch the
                # leader's, and a validator that complained alone sees where the others are
                self._last_heartbeat_ms = now_ms
                actions.append(Broadcast(Heartbeat(view=self.view, height=self.height)))
        if now_ms - self._last_status_ms >= self.params.status_interval_ms:
            self._last_status_ms = now_ms
            actions.append(
                Broadcast(StatusMessage(height=self.height, tip_hash=self.tip.block_hash()))
            )
        if self._sync_peer is not None and now_ms - self._sync_sent_ms > self.params.sync_retry_ms:
            self._sync_peer = None
        return actions + self._maybe_sync(now_ms)

    def on_message(self, sender: str, message: object, now_ms: int) -> list[BftAction]:
        """A message from an authenticated validator."""
        if sender == self.node_id:
            return []
        if isinstance(message, StatusMessage):  # from any configured node
            self._peer_heights[sender] = message.height
            self._highest_seen = max(self._highest_seen, message.height)
            return self._maybe_sync(now_ms)
        if isinstance(message, SyncResponse):
            return self._on_sync_response(sender, message, now_ms)
        if sender not in self.validators:
            return []
        if self.observer:  # it follows the chain; votes are not its business
            if isinstance(message, Heartbeat | Commit | PrePrepare):
                return self._note_ahead(sender, message.height - 1, now_ms)
            return []
        if (
            self.in_view_change
            and isinstance(message, Prepare | Commit | Heartbeat)
            and message.view < self.view
        ):
            self._lower_activity[sender] = (message.view, now_ms)
        if isinstance(message, PrePrepare | Prepare | Commit) and self._is_early(message):
            if len(self._future) < _FUTURE_MAX:
                self._future.append((sender, message))
            return []
        if isinstance(message, PrePrepare):
            return self._on_pre_prepare(sender, message, now_ms)
        if isinstance(message, Prepare):
            return self._on_prepare(sender, message, now_ms)
        if isinstance(message, Commit):
            return self._on_commit(sender, message, now_ms)
        if isinstance(message, Heartbeat):
            return self._on_heartbeat(sender, message, now_ms)
        if isinstance(message, ViewChange):
            return self._on_view_change(sender, message, now_ms)
        if isinstance(message, SignedViewData):
            return self._on_view_data(sender, message, now_ms)
        if isinstance(message, NewView):
            return self._on_new_view(sender, message, now_ms)
        return []

    def _is_early(self, message: PrePrepare | Prepare | Commit) -> bool:
        """A vote we cannot use yet but soon will: one height ahead of us, or for the
        view we are changing to (its NewView may arrive after the new leader's votes)."""
        if message.height == self.height + 2:
            return True
        return self.in_view_change and message.view == self.view and not isinstance(message, Commit)

    def _replay_early(self, now_ms: int) -> list[BftAction]:
        early, self._future = self._future, []
        actions: list[BftAction] = []
        for sender, message in early:
            actions += self.on_message(sender, message, now_ms)
        return actions

    def on_proposal_built(self, block: Block | None, now_ms: int) -> list[BftAction]:
        """The shell built (without appending) our proposal, or had nothing valid."""
        self._building = False
        if block is None or not self.is_leader() or block.header.height != self.height + 1:
            return []
        if self.round.accepted is not None or self.round.reproposal is not None:
            return []
        return self._accept(block, now_ms, broadcast_proposal=True)

    def _expire(self, now_ms: int) -> None:
        expired = [
            tx_id
            for tx_id, e in self._pool.items()
            if e.expires_ms is not None and e.expires_ms <= now_ms
        ]
        for tx_id in expired:
            del self._pool[tx_id]
        self.expired_count += len(expired)

    def drop_requests(self, tx_ids: list[bytes]) -> None:
        """Forget requests the shell found invalid when building."""
        for tx_id in tx_ids:
            self._pool.pop(tx_id, None)

    def on_proposal_verified(
        self, view: int, block: Block, ok: bool, now_ms: int
    ) -> list[BftAction]:
        """The shell's verdict on a proposal (re-execution included)."""
        block_hash = block.block_hash()
        if self.round.verifying != block_hash or block.header.height != self.height + 1:
            return []
        self.round.verifying = None
        if view != self.view or self.in_view_change or self.round.accepted is not None:
            return []
        if not ok:
            return self._complain(now_ms)
        return self._accept(block, now_ms, broadcast_proposal=False)

    def on_block_appended(self, block: Block, now_ms: int) -> list[BftAction]:
        """A certified block was appended: move to the next height."""
        assert block.header.height == self.height + 1, "blocks are appended in order"
        proposer_before = self.leader()
        self.tip = block
        header = block.header
        self._recent.append((header.height, header.view, header.proposer))
        self._blacklist = self._compute_blacklist()
        self.round = _Round()
        self._syncing_block = False
        for envelope in block.txs:
            self._pool.pop(envelope.tx_id(), None)
        self._last_leader_ms = now_ms
        for stale in [h for h in self._buffer if h <= self.height]:
            del self._buffer[stale]
        actions: list[BftAction] = []
        if self._pending_new_view is not None:
            pending, self._pending_new_view = self._pending_new_view, None
            actions += self._on_new_view(self.leader_of(pending.view), pending, now_ms)
        actions += self._replay_early(now_ms)
        actions += self._next_buffered()
        if self.is_leader():
            actions += self._maybe_propose(now_ms)
        elif not self.in_view_change and self.leader() != proposer_before:
            actions += self._reforward(now_ms)  # leadership rotated: hand requests over
        return actions + self._maybe_sync(now_ms)

    def on_block_rejected(self, block: Block, sender: str, now_ms: int) -> list[BftAction]:
        """A synced block failed verification: drop it and sync from someone else."""
        self._syncing_block = False
        self._buffer.pop(block.header.height, None)
        self._peer_heights.pop(sender, None)
        self._sync_peer = None
        return self._check_committed(now_ms) + self._maybe_sync(now_ms)

    def on_peer_connected(self, peer: str, now_ms: int) -> list[BftAction]:
        """Tell a (re)connected peer our tip."""
        return [Send(peer, StatusMessage(height=self.height, tip_hash=self.tip.block_hash()))]

    # -- normal case -----------------------------------------------------------------

    def _maybe_propose(self, now_ms: int) -> list[BftAction]:
        busy = (
            self._building
            or self.round.accepted is not None
            or self.round.verifying is not None
            or self.round.reproposal is not None
        )
        if not self.is_leader() or busy or not self._pool or self.lag() > 0:
            return []
        oldest = next(iter(self._pool.values())).arrived_ms
        due = (
            len(self._pool) >= self.params.max_batch_txs
            or now_ms - oldest >= self.params.batch_timeout_ms
        )
        if not due:
            return []
        batch: list[TxEnvelope] = []
        total = 0
        for entry in self._pool.values():
            size = len(entry.envelope.payload)
            if len(batch) >= self.params.max_batch_txs or (
                batch and total + size > self.params.max_batch_bytes
            ):
                break
            batch.append(entry.envelope)
            total += size
        self._building = True
        return [BuildProposal(self.height + 1, tuple(batch), self.view)]

    def _on_pre_prepare(self, sender: str, msg: PrePrepare, now_ms: int) -> list[BftAction]:
        if msg.view > self.view:
            return self._saw_higher_view(sender, msg.view, now_ms)
        if msg.view < self.view or self.in_view_change or sender != self.leader():
            return []
        self._last_leader_ms = now_ms
        if msg.height != self.height + 1 or msg.block.header.height != msg.height:
            return self._note_ahead(sender, msg.height - 1, now_ms)
        if msg.block.header.view != msg.view or msg.block.header.proposer != sender:
            return self._complain(now_ms)  # a proposal must say who made it, and when
        if self.round.reproposal is not None:
            return []  # this view must order the NewView's block at this height
        block_hash = msg.block.block_hash()
        seen = self.round.accepted.block_hash() if self.round.accepted else self.round.verifying
        if seen is not None:
            return [] if seen == block_hash else self._complain(now_ms)  # equivocation
        self.round.verifying = block_hash
        return [VerifyProposal(msg.view, msg.height, msg.block)]

    def _accept(self, block: Block, now_ms: int, *, broadcast_proposal: bool) -> list[BftAction]:
        """Vote Prepare for ``block`` in this view (after the WAL records it)."""
        block_hash = block.block_hash()
        height = block.header.height
        self.round.accepted = block
        self.round.blocks[block_hash] = block
        signature = self._sign(prepare_message(self.chain_id, self.view, height, block_hash))
        self.round.prepares.setdefault(block_hash, {})[self.node_id] = signature
        actions: list[BftAction] = [PersistWal(self.wal_state())]
        if broadcast_proposal:
            actions.append(Broadcast(PrePrepare(view=self.view, height=height, block=block)))
        actions.append(
            Broadcast(
                Prepare(view=self.view, height=height, block_hash=block_hash, signature=signature)
            )
        )
        return actions + self._check_prepared(now_ms)

    def _on_prepare(self, sender: str, msg: Prepare, now_ms: int) -> list[BftAction]:
        if msg.view > self.view:
            return self._saw_higher_view(sender, msg.view, now_ms)
        if msg.view != self.view or msg.height != self.height + 1:
            return []
        message = prepare_message(self.chain_id, msg.view, msg.height, msg.block_hash)
        if not self._verify_signature(sender, message, msg.signature):
            return []
        self.round.prepares.setdefault(msg.block_hash, {})[sender] = msg.signature
        return self._check_prepared(now_ms)

    def _check_prepared(self, now_ms: int) -> list[BftAction]:
        accepted = self.round.accepted
        if accepted is None or self.round.prepared_view == self.view or self.in_view_change:
            return []
        votes = self.round.prepares.get(accepted.block_hash(), {})
        if len(votes) < self.quorum:
            return []
        self.round.prepared_view = self.view
        self.round.prepared_certificate = tuple(
            CommitSignature(signer=s, signature=votes[s]) for s in sorted(votes)
        )
        return [PersistWal(self.wal_state()), *self._send_commit(accepted, now_ms)]

    def _send_commit(self, block: Block, now_ms: int) -> list[BftAction]:
        block_hash = block.block_hash()
        signature = self._sign(commit_message(self.chain_id, block_hash))
        self.round.commits.setdefault(block_hash, {})[self.node_id] = signature
        commit = Commit(
            view=self.view, height=block.header.height, block_hash=block_hash, signature=signature
        )
        return [Broadcast(commit), *self._check_committed(now_ms)]

    def _on_commit(self, sender: str, msg: Commit, now_ms: int) -> list[BftAction]:
        higher = msg.view > self.view
        actions = self._saw_higher_view(sender, msg.view, now_ms) if higher else []
        if msg.height != self.height + 1:
            return actions + self._note_ahead(sender, msg.height - 1, now_ms)
        message = commit_message(self.chain_id, msg.block_hash)
        if not self._verify_signature(sender, message, msg.signature):
            return actions
        self.round.commits.setdefault(msg.block_hash, {})[sender] = msg.signature
        return actions + self._check_committed(now_ms)

    def _check_committed(self, now_ms: int) -> list[BftAction]:
        if self.round.appending or self._syncing_block:
            return []  # one append in flight at a time, whichever way the block came
        for block_hash, signatures in self.round.commits.items():
            block = self.round.blocks.get(block_hash)
            if len(signatures) < self.quorum or block is None:
                continue  # a certified block unknown here is fetched by status and sync
            certificate = tuple(
                CommitSignature(signer=s, signature=signatures[s]) for s in sorted(signatures)
            )
            self.round.appending = True
            return [AppendCertified(replace(block, certificate=certificate))]
        return []

    def _on_heartbeat(self, sender: str, msg: Heartbeat, now_ms: int) -> list[BftAction]:
        if msg.view > self.view:
            return self._saw_higher_view(sender, msg.view, now_ms)
        if msg.view == self.view and sender == self.leader() and not self.in_view_change:
            self._last_leader_ms = now_ms
            return self._note_ahead(sender, msg.height, now_ms)
        return []

    def _note_ahead(self, sender: str, height: int, now_ms: int) -> list[BftAction]:
        if height <= self.height or sender == self.node_id:
            return []
        self._highest_seen = max(self._highest_seen, height)
        self._peer_heights[sender] = max(self._peer_heights.get(sender, -1), height)
        return self._maybe_sync(now_ms)

    def _follower_timers(self, now_ms: int) -> list[BftAction]:
        if now_ms - self._last_leader_ms > self.params.leader_timeout_ms:
            return self._complain(now_ms)
        actions: list[BftAction] = []
        for entry in self._pool.values():
            if now_ms - entry.arrived_ms > self.params.request_complain_ms:
                return self._complain(now_ms)
        return actions + self._rebroadcast_waiting(now_ms)

    def _rebroadcast_waiting(self, now_ms: int) -> list[BftAction]:
        """Requests not ordered within ``request_forward_ms`` go to every validator,
        again every ``request_forward_ms`` while they wait (a copy may have been lost)."""
        actions: list[BftAction] = []
        period = self.params.request_forward_ms
        for entry in self._pool.values():
            last = entry.broadcast_ms if entry.broadcast_ms is not None else entry.arrived_ms
            if now_ms - last > period:
                entry.broadcast_ms = now_ms
                actions.append(Broadcast(ForwardTx(envelope=entry.envelope)))
        return actions

    # -- view change -----------------------------------------------------------------

    def _complain(self, now_ms: int) -> list[BftAction]:
        return self._start_view_change(self.view + 1, now_ms)

    def _start_view_change(self, next_view: int, now_ms: int) -> list[BftAction]:
        """Leave the current view for ``next_view`` (only ever forwards)."""
        if next_view <= self.view:
            return []
        self.view = next_view
        self.in_view_change = True
        self._view_change_started_ms = now_ms
        self._last_heartbeat_ms = now_ms
        self._building = False
        self._view_data = {}
        self._view_data_sent = None
        self._lower_activity = {}
        self.round.verifying = None
        self.round.prepares = {}
        for entry in self._pool.values():  # the next leader gets a fresh grace period
            entry.arrived_ms = now_ms
        self._vc_votes.setdefault(next_view, set()).add(self.node_id)
        actions: list[BftAction] = [
            PersistWal(self.wal_state()),
            Broadcast(ViewChange(next_view=next_view)),
        ]
        return actions + self._check_view_change_quorum(now_ms)

    def _view_change_timers(self, now_ms: int) -> list[BftAction]:
        """Repeat our view change; escalate it only with support; give it up if alone.

        A validator that complained alone (say, it alone received a bad proposal) must
        not drift ever higher while the others work on: it would stop voting, and the
        network's next real view change would chase it. Giving up is safe while it has
        sent no ViewData: a ViewChange carries no vote.
        """
        supported = len(self._vc_votes.get(self.view, ())) >= self.f + 1
        if now_ms - self._view_change_started_ms > self.params.view_change_timeout_ms:
            if supported:
                return self._start_view_change(self.view + 1, now_ms)
            working = self._active_lower_view(now_ms)
            if working is not None and self._view_data_sent is None:
                return self._return_to_view(working, now_ms)
        if now_ms - self._last_heartbeat_ms < self.params.heartbeat_interval_ms:
            return []
        self._last_heartbeat_ms = now_ms  # messages may have been lost: say it again
        actions: list[BftAction] = [Broadcast(ViewChange(next_view=self.view))]
        collector = self.leader_of(self.view)
        if self._view_data_sent is not None and collector != self.node_id:
            actions.append(Send(collector, self._view_data_sent))
        return actions + self._rebroadcast_waiting(now_ms)

    def _active_lower_view(self, now_ms: int) -> int | None:
        """The highest view below ours in which f+1 validators were recently seen voting."""
        recent = [
            v
            for v, at in self._lower_activity.values()
            if now_ms - at <= self.params.leader_timeout_ms
        ]
        counts: dict[int, int] = {}
        for view in recent:
            counts[view] = counts.get(view, 0) + 1
        views = [v for v, c in counts.items() if c >= self.f + 1]
        return max(views) if views else None

    def _return_to_view(self, view: int, now_ms: int) -> list[BftAction]:
        self.view = view
        self.in_view_change = False
        self._last_leader_ms = now_ms
        self._lower_activity = {}
        self._vc_votes = {v: s for v, s in self._vc_votes.items() if v > view}
        return [PersistWal(self.wal_state())]

    def _on_view_change(self, sender: str, msg: ViewChange, now_ms: int) -> list[BftAction]:
        if msg.next_view < self.view or (msg.next_view == self.view and not self.in_view_change):
            last = self._last_new_view  # the sender missed our NewView: send it again
            if msg.next_view == self.view and last is not None and last.view == self.view:
                return [Send(sender, last)]
            return []
        votes = self._vc_votes.setdefault(msg.next_view, set())
        votes.add(sender)
        if msg.next_view > self.view:
            # PBFT's rule: f+1 validators asking for views above ours (not necessarily the
            # same one) make us join the lowest view that f+1 of them reach, so validators
            # stranded in different views converge instead of waiting for one another
            return self._saw_higher_view(sender, msg.next_view, now_ms)
        return self._check_view_change_quorum(now_ms)

    def _saw_higher_view(self, sender: str, view: int, now_ms: int) -> list[BftAction]:
        """f+1 validators act in a higher view: join it (we missed its view change)."""
        self._higher_view[sender] = max(self._higher_view.get(sender, -1), view)
        ahead = sorted((v for v in self._higher_view.values() if v > self.view), reverse=True)
        if len(ahead) >= self.f + 1:
            return self._start_view_change(ahead[self.f], now_ms)
        return []

    def _check_view_change_quorum(self, now_ms: int) -> list[BftAction]:
        if not self.in_view_change or self._view_data_sent is not None:
            return []
        if len(self._vc_votes.get(self.view, ())) < self.quorum:
            return []
        view_data = ViewData(
            next_view=self.view,
            last_block=self.tip,
            in_flight=self.round.accepted,
            prepared_view=self.round.prepared_view,
            prepared_certificate=self.round.prepared_certificate,
        )
        raw = encode(view_data)
        signed = SignedViewData(signer=self.node_id, view_data=raw, signature=self._sign(raw))
        self._view_data_sent = signed
        if self.leader_of(self.view) == self.node_id:
            return self._on_view_data(self.node_id, signed, now_ms)
        return [Send(self.leader_of(self.view), signed)]

    def _on_view_data(self, sender: str, signed: SignedViewData, now_ms: int) -> list[BftAction]:
        view_data = self._check_view_data(signed) if signed.signer == sender else None
        if view_data is None or self.leader_of(view_data.next_view) != self.node_id:
            return []
        if view_data.next_view == self.view and not self.in_view_change:
            last = self._last_new_view  # a straggler: send it the NewView again
            ok = last is not None and last.view == self.view and sender != self.node_id
            return [Send(sender, last)] if ok and last is not None else []
        if view_data.next_view != self.view or not self.in_view_change:
            return []
        self._view_data[sender] = signed
        if len(self._view_data) < self.quorum:
            return []
        collected = tuple(self._view_data[s] for s in sorted(self._view_data))
        signature = self._sign(new_view_message(self.chain_id, self.view, collected))
        new_view = NewView(view=self.view, view_data=collected, signature=signature)
        self._last_new_view = new_view
        return [Broadcast(new_view), *self._on_new_view(self.node_id, new_view, now_ms)]

    def _check_view_data(self, signed: SignedViewData) -> ViewData | None:
        """The ViewData if its signature, last certificate and prepared certificate hold."""
        if signed.signer not in self.validators:
            return None
        if not self._verify_signature(signed.signer, signed.view_data, signed.signature):
            return None
        try:
            view_data = decode_record(ViewData, signed.view_data)
        except DecodeError:
            return None
        last = view_data.last_block
        if last.header.height > 0 and not self._verify_certified(last):
            return None
        block = view_data.in_flight
        if block is None:
            return view_data if view_data.prepared_view < 0 else None
        if block.header.height != last.header.height + 1:
            return None
        if view_data.prepared_view < 0:
            return view_data
        return view_data if self._prepared_certificate_holds(view_data, block) else None

    def _prepared_certificate_holds(self, view_data: ViewData, block: Block) -> bool:
        message = prepare_message(
            self.chain_id, view_data.prepared_view, block.header.height, block.block_hash()
        )
        signers = {
            c.signer
            for c in view_data.prepared_certificate
            if c.signer in self.validators
            and self._verify_signature(c.signer, message, c.signature)
        }
        return len(signers) >= self.quorum

    def _valid_view_data(self, new_view: NewView) -> list[ViewData] | None:
        signers: set[str] = set()
        valid: list[ViewData] = []
        for signed in new_view.view_data:
            view_data = self._check_view_data(signed)
            if (
                view_data is None
                or signed.signer in signers
                or view_data.next_view != new_view.view
            ):
                continue
            signers.add(signed.signer)
            valid.append(view_data)
        return valid if len(valid) >= self.quorum else None

    def _on_new_view(self, sender: str, msg: NewView, now_ms: int) -> list[BftAction]:
        """Enter ``msg.view``: the NewView may come from its leader or be relayed by any
        validator that entered it; either way it must bear the leader's signature."""
        if msg.view < self.view:
            return []
        leader = self.leader_of(msg.view)
        message = new_view_message(self.chain_id, msg.view, msg.view_data)
        if leader != self.node_id and not self._verify_signature(leader, message, msg.signature):
            return []
        if msg.view == self.view and not self.in_view_change:
            return []
        valid = self._valid_view_data(msg)
        if valid is None:
            return []
        decision = select_in_flight(valid)
        if decision.height - 1 > self.height:  # behind the quorum: catch up, then enter
            self._pending_new_view = msg
            highest = max(valid, key=lambda vd: vd.last_block.header.height)
            highest_signer = next(
                s.signer for s in msg.view_data if decode_record(ViewData, s.view_data) == highest
            )
            if highest.last_block.header.height == self.height + 1:
                self._buffer.setdefault(self.height + 1, (highest.last_block, sender))
            source = sender if sender != self.node_id else highest_signer
            return self._note_ahead(source, decision.height - 1, now_ms) + self._next_buffered()
        return self._enter_view(msg, decision, now_ms)

    def _enter_view(self, msg: NewView, decision: InFlightDecision, now_ms: int) -> list[BftAction]:
        self.view = msg.view
        self.in_view_change = False
        self._last_new_view = msg  # to relay to a validator that missed it
        self._last_leader_ms = now_ms
        self._last_heartbeat_ms = now_ms
        self._vc_votes = {v: s for v, s in self._vc_votes.items() if v > self.view}
        self._higher_view = {}
        self._view_data_sent = None
        # A fresh round in the new view. Commit signatures are view-independent, so they
        # stay, and so does an append already in flight. A prepared certificate for a block
        # the NewView does not select is dropped: had that block been committable (prepared
        # by q - f honest validators), every quorum of view data would hold its certificate.
        # A certificate for the block the NewView *re-proposes* is kept until this
        # validator prepares it again in the new view: dropping it would let a later
        # NewView start fresh while that block can still gather commits (seed 4057).
        old = self.round
        self.round = _Round(commits=old.commits, blocks=old.blocks, appending=old.appending)
        actions: list[BftAction] = []
        block = decision.block
        if block is not None and block.header.height == self.height + 1:
            block_hash = block.block_hash()
            self.round.blocks[block_hash] = block
            self.round.reproposal = block_hash
            held = old.accepted
            if held is not None and held.block_hash() == block_hash and old.prepared_view >= 0:
                self.round.prepared_view = old.prepared_view
                self.round.prepared_certificate = old.prepared_certificate
            self.round.verifying = block_hash
            actions.append(VerifyProposal(self.view, block.header.height, block))
        elif block is not None and block.header.height == self.height:
            actions += self._help_finish(block)
        if self.round.verifying is None:
            actions.append(PersistWal(self.wal_state()))
            actions += self._check_committed(now_ms)
        if self.is_leader():
            actions += self._maybe_propose(now_ms)
        else:
            actions += self._reforward(now_ms)
        return actions + self._replay_early(now_ms)

    def _help_finish(self, block: Block) -> list[BftAction]:
        """We appended the block the others must finish: give them our commit signature."""
        if block.block_hash() != self.tip.block_hash():
            return []
        signature = self._sign(commit_message(self.chain_id, block.block_hash()))
        return [
            Broadcast(
                Commit(
                    view=self.view,
                    height=block.header.height,
                    block_hash=block.block_hash(),
                    signature=signature,
                )
            )
        ]

    def _reforward(self, now_ms: int) -> list[BftAction]:
        """Hand the requests we hold to the new leader (the oldest, at most 2,000)."""
        actions: list[BftAction] = []
        for entry in list(self._pool.values())[:_REFORWARD_MAX]:
            entry.arrived_ms = now_ms
            actions.append(Send(self.leader(), ForwardTx(envelope=entry.envelope)))
        return actions

    # -- recovery and catch-up -------------------------------------------------------

    def _restore(self, wal: WalState) -> None:
        self.view = wal.view
        self.in_view_change = wal.in_view_change
        if wal.height == self.height + 1 and wal.accepted is not None:
            block_hash = wal.accepted.block_hash()
            self.round.accepted = wal.accepted
            self.round.blocks[block_hash] = wal.accepted
            self.round.prepared_view = wal.prepared_view
            self.round.prepared_certificate = wal.prepared_certificate
            if wal.prepared_view >= 0:
                signature = self._sign(commit_message(self.chain_id, block_hash))
                self.round.commits.setdefault(block_hash, {})[self.node_id] = signature
        if self.in_view_change:
            self._vc_votes.setdefault(self.view, set()).add(self.node_id)

    def _on_sync_response(self, sender: str, msg: SyncResponse, now_ms: int) -> list[BftAction]:
        if sender == self._sync_peer:
            self._sync_peer = None
        for block in msg.blocks[: self.params.max_buffered_blocks]:
            height = block.header.height
            room = len(self._buffer) < self.params.max_buffered_blocks
            if height > self.height and (height == self.height + 1 or room):
                self._buffer.setdefault(height, (block, sender))
                self._peer_heights[sender] = max(self._peer_heights.get(sender, -1), height)
                self._highest_seen = max(self._highest_seen, height)
        return self._next_buffered() + self._maybe_sync(now_ms)

    def _next_buffered(self) -> list[BftAction]:
        if self._syncing_block or self.round.appending:
            return []
        entry = self._buffer.pop(self.height + 1, None)
        if entry is None:
            return []
        self._syncing_block = True
        return [AppendPeerBlock(entry[0], entry[1])]

    def _maybe_sync(self, now_ms: int) -> list[BftAction]:
        if self._sync_peer is not None or self._syncing_block or self.height + 1 in self._buffer:
            return []
        ahead = [
            (h, p) for p, h in self._peer_heights.items() if h > self.height and p != self.node_id
        ]
        if not ahead:
            return []
        _, peer = max(ahead)
        self._sync_peer = peer
        self._sync_sent_ms = now_ms
        return [RequestSync(peer, self.height + 1)]
