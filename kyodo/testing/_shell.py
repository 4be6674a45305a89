"""The simulated node shell: the production BFT core in a deterministic body.

Theory of operation
-------------------
:class:`SimNode` does with the core's actions what ``kyodo/node/_node.py``
does, with virtual time, the simulated network and the fake application of
:mod:`kyodo.testing._fake` instead of asyncio, TLS, RocksDB and the executor.
Actions are carried out in order:

* ``PersistWal`` goes to the node's *WAL thread*, a queue of writes that each
  take a seeded delay. The actions after it are held back: they are carried
  out only once the record is durable and the completion has hopped back to
  the event loop. A crash in between leaves a durable record whose votes
  never left (:class:`~kyodo.testing._faults.CrashAfterWal` aims at exactly
  that point).
* ``Send`` / ``Broadcast`` encode the message with the real codec and hand the
  bytes to :class:`~kyodo.testing._network.SimNetwork`.
* ``BuildProposal`` (its view goes into the block header), ``VerifyProposal``,
  ``AppendCertified`` and ``AppendPeerBlock`` are *ledger-thread jobs*: they
  run one at a time, in order, each completing after a seeded delay, on the
  ledger's tip as it is when the job runs. Building and verifying never append. Appending stores
  the block at the job's completion; the outcome reaches the core after the
  hop back to the loop, so a crash can fall between a block being stored and
  the core hearing of it. Outcomes: ``drop_requests`` then
  ``on_proposal_built(block | None)``; ``on_proposal_verified(view, block,
  ok)``; ``on_block_appended``; for a peer's block that does not verify,
  ``on_block_rejected``. A certified block of our own that fails the checks
  is a broken invariant (the real node halts): the run fails.
* ``RequestSync`` sends a ``SyncRequest`` for at most 64 blocks.

Incoming frames from a sender that is not a validator are refused before
anything decodes them (a received frame is decoded once per distinct bytes:
decoding is pure and yields frozen records). ``ForwardTx`` goes through
admission, then
``on_request(envelope, tx_id, now, expires_ms=created + max age)``;
``SyncRequest`` is served from the ledger after a seeded reader delay; every
other message is decoded with the real codec and handed to ``on_message``.

Client submissions go through the same admission as the real gateway:
refused when malformed or outside the age window (``expired``, final), as a
duplicate when recently admitted, pooled or already stored (the SDK then asks
for the status: final when stored here, else it waits up to ``wait_ms`` for
the block holding it), or when the pool is full.

*Verification* (honest; each step a method a broken shell may override):
the block links to the tip (chain, height, parent hash, view and time not
going back), it is of epoch 0, its proposer is a validator and it carries no
configuration (the simulated network is never reconfigured), its roots
match its body, every transaction is well-formed, client-signed, not expired
at block time, not repeated and not already stored, and re-execution gives
its results and state root. An appended block must also
carry q valid commit signatures by distinct validators.

*Durable*: the ledger (genesis first), the index of its transactions, and the
last WAL record. Everything else (the core, the recently-admitted set,
waiting clients, queued jobs) is lost on a crash. On restart a new
:class:`~kyodo.consensus.Bft` starts at the stored tip with the stored WAL and
the headers of the last ``BLACKLIST_HEIGHTS`` blocks below the tip (from which
every node derives the same leader blacklist).

A Byzantine node (:mod:`kyodo.testing._byzantine`) runs this same shell with
an adversary between the core and the network.
"""

from __future__ import annotations

import functools
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kyodo.codec import DecodeError, decode, encode
from kyodo.consensus import (
    BLACKLIST_HEIGHTS,
    AppendCertified,
    AppendPeerBlock,
    Bft,
    BftAction,
    BftParams,
    Broadcast,
    BuildProposal,
    Commit,
    ForwardTx,
    Heartbeat,
    NewView,
    PersistWal,
    Prepare,
    PrePrepare,
    RequestSync,
    Send,
    SignedViewData,
    StatusMessage,
    SyncRequest,
    SyncResponse,
    VerifyProposal,
    ViewChange,
    WalState,
    compute_quorum,
)
from kyodo.ledger import (
    Block,
    BlockHeader,
    BlockVerificationError,
    TxEnvelope,
    compute_results_root,
    verify_block_contents,
    verify_link,
)
from kyodo.testing._byzantine import Adversary, Byzantine, Emission
from kyodo.testing._fake import (
    compute_sim_results,
    compute_sim_signature,
    compute_sim_state_root,
    count_commit_signers,
    is_sim_signature_valid,
    make_sim_block,
    read_sim_tx,
)
from kyodo.testing._network import SimNetwork
from kyodo.testing._scheduler import Scheduler

__all__ = [
    "NodeHost",
    "ShellTiming",
    "SimNode",
    "TxAnswer",
    "TxFinal",
    "TxRefused",
    "decode_frame",
]

SYNC_MAX_BLOCKS = 64
"""Blocks asked for in one sync request (as the real node)."""
SYNC_SERVE_MAX_BLOCKS = 256
"""Most blocks served for one sync request (as the real node)."""
SYNC_MAX_BYTES = 16 * 1024 * 1024
"""Most encoded block bytes in one sync response (as the real node)."""
MAX_FRAME_BYTES = 32 * 1024 * 1024
"""Largest message a node decodes."""
RECENT_TXS = 100_000
"""Bound of the recently-admitted set (as the real node)."""
_CORE_MESSAGES = (
    PrePrepare,
    Prepare,
    Commit,
    ViewChange,
    SignedViewData,
    NewView,
    Heartbeat,
    SyncResponse,
    StatusMessage,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellTiming:
    """Seeded delays of the work a real node does off its event loop."""

    tick_ms: int = 50
    """Interval between two ``on_tick`` calls of one node."""
    ledger_delay_ms: tuple[int, int] = (1, 8)
    """Range of the time one ledger-thread job (build, verify, append) takes."""
    wal_delay_ms: tuple[int, int] = (0, 3)
    """Range of the time one synced WAL write takes."""
    loop_delay_ms: tuple[int, int] = (0, 2)
    """Range of the hop from the ledger or WAL thread back to the event loop."""
    reader_delay_ms: tuple[int, int] = (0, 3)
    """Range of a store read on the reader pool (admission, serving a sync)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TxFinal:
    """A gateway's answer that a transaction is final on that node."""

    node_id: str
    """The node that answered."""
    tx_id: bytes
    height: int
    """Height of the block holding the transaction on that node."""
    tx_index: int
    """Position of the transaction in that block."""
    time_ms: int
    """Virtual time of the answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TxRefused:
    """A gateway's final refusal: the transaction can never be ordered."""

    node_id: str
    tx_id: bytes
    reason: str
    """``expired``: created outside the network's age window around now."""
    time_ms: int


TxAnswer = TxFinal | TxRefused
"""What a gateway can tell a client for good (anything else is silence)."""


class NodeHost(Protocol):
    """What a simulated node needs from the simulation around it."""

    scheduler: Scheduler
    rng: random.Random
    network: SimNetwork

    def on_block_stored(self, node: SimNode, block: Block) -> None:
        """``block`` was durably appended to ``node``'s ledger (checked by the invariants)."""
        ...


@dataclass(slots=True)
class _Waiter:
    expires_ms: int
    reply: Callable[[TxAnswer], None]


class SimNode:
    """One simulated validator: durable ledger and WAL, volatile core (module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        validators: tuple[str, ...],
        genesis: Block,
        params: BftParams,
        tx_max_age_ms: int,
        timing: ShellTiming,
        host: NodeHost,
        byzantine: Byzantine | None = None,
    ) -> None:
        assert genesis.header.height == 0 and genesis.config is not None
        assert node_id in validators
        self.node_id = node_id
        self.validators = validators
        self.quorum, _ = compute_quorum(len(validators))
        self.chain_id = genesis.header.chain_id
        self.params = params
        self.tx_max_age_ms = tx_max_age_ms
        self.timing = timing
        self._host = host
        self._scheduler = host.scheduler
        self._rng = host.rng
        self._network = host.network
        self.adversary: Adversary | None = None
        """The misbehaviour of a Byzantine node; None for an honest one."""
        if byzantine is not None:
            assert byzantine.node == node_id
            self.adversary = Adversary(
                byzantine,
                validators=validators,
                chain_id=self.chain_id,
                rng=self._rng,
                tip=self.tip,
            )
        # durable
        self.ledger: list[Block] = [genesis]
        """The stored chain, genesis first; survives crashes."""
        self.tx_index: dict[bytes, tuple[int, int]] = {}
        """Stored transactions: tx id to (height, index); survives crashes."""
        self.wal: WalState | None = None
        """The last durable WAL record; survives crashes, restored into the core."""
        self._block_sizes: dict[int, int] = {}
        """Encoded size of stored blocks, computed when first served to a peer."""
        # volatile
        self.incarnation = 0
        """Bumped on every start and crash; callbacks of an older one are ignored."""
        self.consensus: Bft | None = None
        """The consensus core while the node runs, None while it is down."""
        self.crash_after_wal = False
        """Armed by the simulation: crash once the next WAL write is durable."""
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._ledger_free_ms = 0
        self._wal_free_ms = 0
        self._loop_next_ms = 0
        # counters (all incarnations)
        self.blocks_rejected = 0
        """Peer blocks (sync) that failed verification."""
        self.proposals_rejected = 0
        """Proposals that failed verification (no Prepare was sent for them)."""
        self.blocks_synced = 0
        """Blocks appended from a peer (sync) rather than by this node's own votes."""
        self.messages_refused = 0
        """Frames refused because their sender is not a validator."""
        self.wal_writes = 0
        """WAL records that became durable."""

    # -- lifecycle -------------------------------------------------------------------

    def is_up(self) -> bool:
        """Whether the node is running."""
        return self.consensus is not None

    def tip(self) -> Block:
        """The last stored block."""
        return self.ledger[-1]

    def start(self) -> None:
        """Start (or restart) on the stored ledger and WAL with a fresh consensus core."""
        assert not self.is_up(), f"{self.node_id} is already running"
        self.incarnation += 1
        now = self._scheduler.now_ms
        node_id = self.node_id
        tip = self.tip().header.height
        self.consensus = Bft(
            node_id=node_id,
            validators=self.validators,
            chain_id=self.chain_id,
            tip=self.tip(),
            params=self.params,
            sign=lambda message: compute_sim_signature(node_id, message),
            verify_signature=self._is_validator_signature,
            verify_certified=self.is_certified,
            wal=self.wal,
            now_ms=now,
            recent=[b.header for b in self.ledger[max(0, tip - BLACKLIST_HEIGHTS) : tip]],
        )
        self._recent.clear()
        self._waiters.clear()
        self._ledger_free_ms = self._wal_free_ms = self._loop_next_ms = now
        self._later(self._rng.randint(0, self.timing.tick_ms - 1), "tick", self._tick)
        self._network.on_node_started(node_id)

    def crash(self) -> None:
        """Stop at once: only the ledger and the last durable WAL record remain."""
        assert self.is_up(), f"{self.node_id} is not running"
        self.incarnation += 1
        self.consensus = None
        self.crash_after_wal = False
        self._recent.clear()
        self._waiters.clear()
        self._network.on_node_stopped(self.node_id)

    # -- events from the network -----------------------------------------------------

    def on_connected(self, peer: str) -> None:
        """The connection to ``peer`` (re)opened."""
        self.apply(self._core().on_peer_connected(peer, self._scheduler.now_ms))

    def on_frame(self, peer: str, raw: bytes) -> None:
        """Route a peer's message, as the real node's ``_on_frame``; refuse it unread when
        the sender is not a validator."""
        if peer not in self.validators:
            self.messages_refused += 1
            self._scheduler.note(f"{self.node_id} refused a message from non-validator {peer}")
            return
        try:
            message = decode_frame(raw)
        except DecodeError:
            self._scheduler.note(f"{self.node_id} malformed message from {peer}")
            return
        if isinstance(message, ForwardTx):
            self._on_forwarded(message.envelope)
        elif isinstance(message, SyncRequest):
            self._serve_sync(peer, message)
        elif isinstance(message, _CORE_MESSAGES):
            self.apply(self._core().on_message(peer, message, self._scheduler.now_ms))
        else:
            self._scheduler.note(f"{self.node_id} unexpected {type(message).__name__}")

    # -- the gateway -----------------------------------------------------------------

    def submit(self, envelope: TxEnvelope, wait_ms: int, reply: Callable[[TxAnswer], None]) -> None:
        """A client submits ``envelope`` and waits up to ``wait_ms`` for it to be final here.

        ``reply`` is called only with a final answer or a final refusal; every other
        outcome (refused as busy, still pending when the wait ends, node crashed) is
        silence, and the client retries on its own timer.
        """
        tx_id = envelope.tx_id()
        if self.adversary is not None and self.adversary.ignores(envelope):
            self._scheduler.note(f"{self.node_id} censors {tx_id.hex()[:8]}")
            return
        now = self._scheduler.now_ms
        tx = read_sim_tx(envelope)
        if tx is None:
            self._scheduler.note(f"{self.node_id} malformed tx {tx_id.hex()[:8]}")
            return
        if abs(now - tx.created_ms) > self.tx_max_age_ms:
            reply(TxRefused(node_id=self.node_id, tx_id=tx_id, reason="expired", time_ms=now))
            return
        if tx_id in self._recent or self._core().contains(tx_id):
            self._status(tx_id, wait_ms, reply)
            return
        expires_ms = tx.created_ms + self.tx_max_age_ms

        def admitted_or_duplicate() -> None:
            if tx_id in self.tx_index:
                self._status(tx_id, wait_ms, reply)
            elif self._admit(tx_id):
                self._wait(tx_id, wait_ms, reply)
                now = self._scheduler.now_ms
                self.apply(self._core().on_request(envelope, tx_id, now, expires_ms=expires_ms))

        self._later(self._reader_delay(), "admit", admitted_or_duplicate)

    def _status(self, tx_id: bytes, wait_ms: int, reply: Callable[[TxAnswer], None]) -> None:
        """The SDK's fallback after a duplicate: ask for the status, wait if pending."""

        def read() -> None:
            location = self.tx_index.get(tx_id)
            if location is not None:
                reply(self._final(tx_id, *location))
            elif tx_id in self._recent or self._core().contains(tx_id):
                self._wait(tx_id, wait_ms, reply)
            else:
                self._scheduler.note(f"{self.node_id} status unknown")

        self._later(self._reader_delay(), "status", read)

    def _wait(self, tx_id: bytes, wait_ms: int, reply: Callable[[TxAnswer], None]) -> None:
        self._waiters.setdefault(tx_id, []).append(
            _Waiter(expires_ms=self._scheduler.now_ms + wait_ms, reply=reply)
        )

    def _admit(self, tx_id: bytes) -> bool:
        """The real node's admission after the store lookup: pool bound, then remember."""
        if self._core().is_pool_full():
            self._scheduler.note(f"{self.node_id} busy")
            return False
        self._recent[tx_id] = self._scheduler.now_ms
        while len(self._recent) > RECENT_TXS:
            self._recent.popitem(last=False)
        return True

    def _final(self, tx_id: bytes, height: int, index: int) -> TxFinal:
        return TxFinal(
            node_id=self.node_id,
            tx_id=tx_id,
            height=height,
            tx_index=index,
            time_ms=self._scheduler.now_ms,
        )

    # -- carrying out actions --------------------------------------------------------

    def apply(self, actions: list[BftAction]) -> None:
        """Carry out the core's actions in order, as the real node's ``_apply``:
        ``PersistWal`` holds back the actions after it until the record is durable."""
        for index, action in enumerate(actions):
            if isinstance(action, PersistWal):
                self._persist_then(action.state, actions[index + 1 :])
                return
            if isinstance(action, Send):
                self._emit(action.to, action.message)
            elif isinstance(action, Broadcast):
                self._emit(None, action.message)
            elif isinstance(action, BuildProposal):
                self._ledger_job("build", self._job_build(action))
            elif isinstance(action, VerifyProposal):
                self._ledger_job(f"verify {action.height}", self._job_verify(action))
            elif isinstance(action, AppendCertified):
                height = action.block.header.height
                self._ledger_job(f"append {height}", self._job_append(action.block, None))
            elif isinstance(action, AppendPeerBlock):
                height = action.block.header.height
                job = self._job_append(action.block, action.sender)
                self._ledger_job(f"append {height} from {action.sender}", job)
            elif isinstance(action, RequestSync):
                request = SyncRequest(from_height=action.from_height, max_blocks=SYNC_MAX_BLOCKS)
                self._emit(action.peer, request)
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _emit(self, to: str | None, message: object) -> None:
        """Put ``message`` on the wire (through the adversary of a Byzantine node)."""
        if self.adversary is None:
            self._transmit(Emission(to, message))
            return
        for emission in self.adversary.outgoing(to, message):
            self._transmit(emission)

    def _transmit(self, emission: Emission) -> None:
        raw = encode(emission.message)
        kind = _kind(emission.message)
        if emission.to is None:
            self._network.broadcast(self.node_id, raw, kind)
        elif emission.as_sender is None:
            self._network.send(self.node_id, emission.to, raw, kind)
        else:
            self._network.send(self.node_id, emission.to, raw, kind, as_sender=emission.as_sender)

    def _persist_then(self, state: WalState, rest: list[BftAction]) -> None:
        """Write ``state`` on the WAL thread; carry out ``rest`` once it is durable."""
        start = max(self._scheduler.now_ms, self._wal_free_ms)
        done = start + self._rng.randint(*self.timing.wal_delay_ms)
        self._wal_free_ms = done

        def durable() -> None:
            self.wal = state
            self.wal_writes += 1
            if self.crash_after_wal:
                self._scheduler.note(f"{self.node_id} crashes after a WAL write")
                self.crash()
                return
            self._back_on_loop("wal written", lambda: self.apply(rest))

        self._at(done, f"wal write v{state.view} h{state.height}", durable)

    def _tick(self) -> None:
        self.apply(self._core().on_tick(self._scheduler.now_ms))
        self._later(self.timing.tick_ms, "tick", self._tick)

    def _on_forwarded(self, envelope: TxEnvelope) -> None:
        """A peer forwarded a transaction: admit it (silently refuse), then order."""
        tx_id = envelope.tx_id()
        if tx_id in self._recent or self._core().contains(tx_id):
            return
        if self.adversary is not None and self.adversary.ignores(envelope):
            return
        tx = read_sim_tx(envelope)
        now = self._scheduler.now_ms
        if tx is None or abs(now - tx.created_ms) > self.tx_max_age_ms:
            return
        expires_ms = tx.created_ms + self.tx_max_age_ms

        def admit() -> None:
            if tx_id not in self.tx_index and self._admit(tx_id):
                now = self._scheduler.now_ms
                self.apply(self._core().on_request(envelope, tx_id, now, expires_ms=expires_ms))

        self._later(self._reader_delay(), "admit forwarded", admit)

    def _serve_sync(self, peer: str, request: SyncRequest) -> None:
        """Send the stored blocks a peer asked for (nothing when there are none)."""

        def read() -> None:
            blocks: list[Block] = []
            size = 0
            first = max(request.from_height, 0)
            last = first + min(request.max_blocks, SYNC_SERVE_MAX_BLOCKS)
            for height in range(first, min(last, len(self.ledger))):
                block_size = self._block_size(height)
                if size + block_size > SYNC_MAX_BYTES:
                    break
                blocks.append(self.ledger[height])
                size += block_size
            if blocks:
                self._emit(peer, SyncResponse(blocks=tuple(blocks)))

        self._later(self._reader_delay(), f"serve sync {peer}", read)

    # -- the ledger thread -----------------------------------------------------------

    def _ledger_job(self, label: str, work: Callable[[], Callable[[], None]]) -> None:
        """Queue ``work`` on the ledger thread; what it returns runs back on the loop."""
        start = max(self._scheduler.now_ms, self._ledger_free_ms)
        done = start + self._rng.randint(*self.timing.ledger_delay_ms)
        self._ledger_free_ms = done

        def complete() -> None:
            self._back_on_loop(f"{label} done", work())

        self._at(done, f"ledger {label}", complete)

    def _back_on_loop(self, label: str, callback: Callable[[], None]) -> None:
        """Hand a thread's result to the event loop (in the order the results came)."""
        at = max(
            self._scheduler.now_ms + self._rng.randint(*self.timing.loop_delay_ms),
            self._loop_next_ms,
        )
        self._loop_next_ms = at
        self._at(at, label, callback)

    def _job_build(self, action: BuildProposal) -> Callable[[], Callable[[], None]]:
        def work() -> Callable[[], None]:
            txs = tuple(t for t in action.txs if isinstance(t, TxEnvelope))
            block, dropped = self.build_block(txs, self._scheduler.now_ms, action.view)
            if block is not None and self.adversary is not None:
                block = self.adversary.corrupt(block)

            def back_on_loop() -> None:
                core = self._core()
                core.drop_requests(dropped)
                self.apply(core.on_proposal_built(block, self._scheduler.now_ms))

            return back_on_loop

        return work

    def _job_verify(self, action: VerifyProposal) -> Callable[[], Callable[[], None]]:
        def work() -> Callable[[], None]:
            ok = True
            try:
                self.verify_block(action.block)
            except BlockVerificationError as exc:
                ok = False
                self.proposals_rejected += 1
                self._note_rejected("proposal", action.block, exc)

            def back_on_loop() -> None:
                now = self._scheduler.now_ms
                self.apply(self._core().on_proposal_verified(action.view, action.block, ok, now))

            return back_on_loop

        return work

    def _job_append(self, block: Block, sender: str | None) -> Callable[[], Callable[[], None]]:
        """Append a certified block: ours (``sender`` None) or a peer's (sync)."""

        def work() -> Callable[[], None]:
            try:
                self.verify_certificate(block)
                self.verify_block(block)
            except BlockVerificationError as exc:
                if sender is None:  # we verified it before voting: failing now is a bug
                    raise AssertionError(
                        f"{self.node_id} cannot append its certified block "
                        f"{block.header.height}: {exc}"
                    ) from exc
                self.blocks_rejected += 1
                self._note_rejected(f"block from {sender}", block, exc)

                def rejected() -> None:
                    now = self._scheduler.now_ms
                    self.apply(self._core().on_block_rejected(block, sender, now))

                return rejected
            self.store_block(block)
            if sender is not None:
                self.blocks_synced += 1
            return lambda: self._on_appended(block)

        return work

    def _note_rejected(self, what: str, block: Block, exc: BlockVerificationError) -> None:
        self._scheduler.note(f"{self.node_id} rejected {what} {exc.height} ({exc.reason})")

    def _on_appended(self, block: Block) -> None:
        """Back on the loop: wake waiting clients, tell the core."""
        now = self._scheduler.now_ms
        height = block.header.height
        for index, envelope in enumerate(block.txs):
            tx_id = envelope.tx_id()
            self._recent.pop(tx_id, None)
            for waiter in self._waiters.pop(tx_id, []):
                if waiter.expires_ms >= now:
                    waiter.reply(self._final(tx_id, height, index))
        self.apply(self._core().on_block_appended(block, now))

    # -- building and verifying (ledger thread) --------------------------------------

    def build_block(
        self, txs: tuple[TxEnvelope, ...], now_ms: int, view: int
    ) -> tuple[Block | None, list[bytes]]:
        """Build (without storing) the block of the orderable ``txs`` on the tip, proposed
        in ``view``.

        Block time is ``now_ms``, never before the parent's. Transactions that are not
        orderable then are dropped (their ids are returned); with nothing left, no block.
        """
        parent = self.tip().header
        block_time = max(now_ms, parent.timestamp_ms)
        checked, dropped = self.check_batch(txs, block_time)
        if not checked:
            return None, dropped
        block = make_sim_block(
            parent, tuple(checked), proposer=self.node_id, timestamp_ms=block_time, view=view
        )
        return block, dropped

    def check_batch(
        self, txs: tuple[TxEnvelope, ...], block_time_ms: int
    ) -> tuple[list[TxEnvelope], list[bytes]]:
        """Split ``txs`` into the orderable ones and the ids of the others: malformed or
        badly signed, outside the age window at ``block_time_ms``, repeated in the batch,
        or already stored."""
        checked: list[TxEnvelope] = []
        dropped: list[bytes] = []
        seen: set[bytes] = set()
        for envelope in txs:
            tx_id = envelope.tx_id()
            tx = read_sim_tx(envelope)
            if (
                tx is None
                or abs(block_time_ms - tx.created_ms) > self.tx_max_age_ms
                or tx_id in seen
                or tx_id in self.tx_index
            ):
                dropped.append(tx_id)
                continue
            seen.add(tx_id)
            checked.append(envelope)
        return checked, dropped

    def verify_block(self, block: Block) -> None:
        """Verify a block completely against the tip, re-executing it; raise
        BlockVerificationError if it does not verify. Nothing is stored."""
        parent = self.tip().header
        self.verify_link(block, parent)
        self.verify_proposer(block)
        verify_block_contents(block)
        self.verify_txs(block)
        self.verify_execution(block, parent)

    def verify_link(self, block: Block, parent: BlockHeader) -> None:
        """Same chain, next height, parent's hash, time not going back."""
        verify_link(block.header, parent)

    def verify_proposer(self, block: Block) -> None:
        """Proposed by a validator, in the epoch in force (0: the simulated network is never
        reconfigured); carries no configuration."""
        header = block.header
        if header.epoch != 0:
            raise BlockVerificationError(
                f"block says epoch {header.epoch}, epoch 0 is in force",
                height=header.height,
                reason="epoch",
            )
        if header.proposer not in self.validators or block.config is not None:
            raise BlockVerificationError(
                f"proposer {header.proposer!r} is not a validator of this network",
                height=header.height,
                reason="proposer",
            )

    def verify_txs(self, block: Block) -> None:
        """Every transaction orderable at block time (see :meth:`check_batch`)."""
        _, dropped = self.check_batch(block.txs, block.header.timestamp_ms)
        if dropped:
            raise BlockVerificationError(
                f"block carries {len(dropped)} invalid or duplicate transactions "
                f"(first {dropped[0].hex()})",
                height=block.header.height,
                reason="invalid_tx",
            )

    def verify_execution(self, block: Block, parent: BlockHeader) -> None:
        """Re-execution (the fake one) gives the block's results and state root."""
        header = block.header
        if compute_results_root(compute_sim_results(block.txs)) != header.results_root:
            raise BlockVerificationError(
                "re-execution gives different results", height=header.height, reason="results"
            )
        if compute_sim_state_root(parent.state_root, block.txs) != header.state_root:
            raise BlockVerificationError(
                "re-execution gives a different state root",
                height=header.height,
                reason="state_root",
            )

    def verify_certificate(self, block: Block) -> None:
        """At least q distinct validators signed the block's commit message."""
        signers = count_commit_signers(block, self.validators)
        if signers < self.quorum:
            raise BlockVerificationError(
                f"certificate has {signers} valid signatures, {self.quorum} required",
                height=block.header.height,
                reason="certificate",
            )

    def is_certified(self, block: Block) -> bool:
        """The core's ``verify_certified``: q valid commit signatures."""
        return count_commit_signers(block, self.validators) >= self.quorum

    def _is_validator_signature(self, signer: str, message: bytes, signature: bytes) -> bool:
        """The core's ``verify_signature``: a validator's valid simulated signature."""
        return signer in self.validators and is_sim_signature_valid(signer, message, signature)

    def store_block(self, block: Block) -> None:
        """Durably append ``block`` and index its transactions; the invariants look at it."""
        height = block.header.height
        self.ledger.append(block)
        for index, envelope in enumerate(block.txs):
            self.tx_index[envelope.tx_id()] = (height, index)
        self._scheduler.note(f"{self.node_id} stored {height} {block.block_hash().hex()[:16]}")
        self._host.on_block_stored(self, block)

    # -- helpers ---------------------------------------------------------------------

    def _core(self) -> Bft:
        core = self.consensus
        assert core is not None, f"{self.node_id} is down"
        return core

    def _block_size(self, height: int) -> int:
        size = self._block_sizes.get(height)
        if size is None:
            size = self._block_sizes[height] = len(encode(self.ledger[height]))
        return size

    def _reader_delay(self) -> int:
        return self._rng.randint(*self.timing.reader_delay_ms)

    def _later(self, delay_ms: int, label: str, callback: Callable[[], None]) -> None:
        self._at(self._scheduler.now_ms + delay_ms, label, callback)

    def _at(self, time_ms: int, label: str, callback: Callable[[], None]) -> None:
        """Schedule ``callback`` for this incarnation only (a crash cancels it)."""
        incarnation = self.incarnation

        def guarded() -> None:
            if self.incarnation == incarnation:
                callback()

        self._scheduler.at(time_ms, f"{self.node_id} {label}", guarded)


@functools.lru_cache(maxsize=4_096)
def decode_frame(raw: bytes) -> object:
    """``raw`` decoded with the real codec (raises DecodeError).

    Memoized: a broadcast reaches every receiver as the same bytes, and decoding is a
    pure function of them whose results (frozen records) nobody can change.
    """
    return decode(raw, max_size=MAX_FRAME_BYTES)


def _kind(message: object) -> str:
    """A short trace label for a message."""
    if isinstance(message, PrePrepare):
        return f"PrePrepare v{message.view} h{message.height}"
    if isinstance(message, Prepare | Commit):
        name = type(message).__name__
        return f"{name} v{message.view} h{message.height} {message.block_hash.hex()[:8]}"
    if isinstance(message, Heartbeat):
        return f"Heartbeat v{message.view} h{message.height}"
    if isinstance(message, ViewChange):
        return f"ViewChange v{message.next_view}"
    if isinstance(message, NewView):
        return f"NewView v{message.view}"
    if isinstance(message, SignedViewData):
        return f"ViewData by {message.signer}"
    if isinstance(message, StatusMessage):
        return f"Status {message.height}"
    if isinstance(message, SyncRequest):
        return f"SyncRequest {message.from_height}"
    if isinstance(message, SyncResponse):
        first = message.blocks[0].header.height if message.blocks else -1
        return f"SyncResponse {first}+{len(message.blocks)}"
    if isinstance(message, ForwardTx):
        return f"ForwardTx {message.envelope.tx_id().hex()[:8]}"
    return type(message).__name__
