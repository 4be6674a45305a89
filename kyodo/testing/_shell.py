"""The simulated node shell: the production consensus core in a deterministic body.

Theory of operation
-------------------
:class:`SimNode` does with the core's actions what ``kyodo/node/_node.py``
does, with virtual time, the simulated network and the fake application of
:mod:`kyodo.testing._fake` instead of asyncio, TLS and the executor:

* ``Send`` / ``Broadcast`` encode the message with the real codec and hand
  the bytes to :class:`~kyodo.testing._network.SimNetwork`; a received frame
  is decoded with the real codec before anything looks at it.
* ``ProposeBlock`` and ``AppendPeerBlock`` are *ledger-thread jobs*: they
  run one at a time, in order, each completing after a seeded delay. A job's
  effect on the durable ledger happens at its completion; the outcome reaches
  the consensus core a little later (the hop back to the event loop), so a
  crash can fall between a block being stored and the core hearing of it.
* ``RequestSync`` sends a ``SyncRequest``; ``SyncRequest`` and ``ForwardTx``
  from peers are handled here, never by the core, after a seeded reader
  delay (the real node reads the store on a reader pool).
* Client submissions go through the same admission as the real gateway:
  refused as a duplicate when recently admitted, pooled or already in a
  block; then the SDK's idempotent retry asks for the status, which is
  final when the transaction is in the local ledger and otherwise waits
  (until ``wait_ms``) for the block holding it.

What survives a crash is the ledger: a list of real blocks (genesis at
height 0) and the index of their transactions. Everything else (the core,
the recently-admitted set, waiting clients, queued ledger jobs) is lost; on
restart a new :class:`~kyodo.consensus.SingleLeader` starts at the stored tip.

A verification failure of a peer's block is an answer
(``on_block_rejected``); an :class:`AssertionError` is a broken internal
invariant, as in the real node, and ends the simulation run.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kyodo.codec import DecodeError, decode, encode
from kyodo.consensus import (
    Action,
    AppendPeerBlock,
    BlockMessage,
    Broadcast,
    ForwardTx,
    Message,
    ProposeBlock,
    RequestSync,
    Send,
    SingleLeader,
    SingleLeaderLimits,
    StatusMessage,
    SyncRequest,
    SyncResponse,
)
from kyodo.crypto import ZERO_HASH
from kyodo.ledger import (
    Block,
    BlockHeader,
    BlockVerificationError,
    CommitSignature,
    ConsensusParams,
    Height,
    TxEnvelope,
    compute_results_root,
    compute_txs_root,
    verify_block_contents,
    verify_link,
)
from kyodo.testing._fake import (
    compute_sim_mac,
    compute_sim_results,
    compute_sim_state_root,
    is_sim_mac_valid,
)
from kyodo.testing._network import SimNetwork
from kyodo.testing._scheduler import Scheduler

__all__ = ["NodeHost", "ShellTiming", "SimNode", "TxFinal"]

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellTiming:
    """Seeded delays of the work a real node does off its event loop."""

    tick_ms: int = 50
    """Interval between two ``on_tick`` calls of one node."""
    ledger_delay_ms: tuple[int, int] = (1, 8)
    """Range of the time one ledger-thread job (build, or verify and append) takes."""
    loop_delay_ms: tuple[int, int] = (0, 2)
    """Range of the hop from the ledger thread back to the event loop."""
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
    reply: Callable[[TxFinal], None]


class SimNode:
    """One simulated node: durable ledger, volatile consensus core (module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        validators: tuple[str, ...],
        genesis: Block,
        params: ConsensusParams,
        limits: SingleLeaderLimits,
        timing: ShellTiming,
        host: NodeHost,
    ) -> None:
        assert genesis.header.height == 0 and genesis.config is not None
        self.node_id = node_id
        self.validators = validators
        self.chain_id = genesis.header.chain_id
        self.params = params
        self.limits = limits
        self.timing = timing
        self._host = host
        self._scheduler = host.scheduler
        self._rng = host.rng
        self._network = host.network
        # durable
        self.ledger: list[Block] = [genesis]
        """The stored chain, genesis first; survives crashes."""
        self.tx_index: dict[bytes, tuple[int, int]] = {}
        """Stored transactions: tx id to (height, index); survives crashes."""
        self._block_sizes: dict[int, int] = {}
        """Encoded size of stored blocks, computed when first served to a peer."""
        # volatile
        self.incarnation = 0
        """Bumped on every start and crash; callbacks of an older one are ignored."""
        self.consensus: SingleLeader | None = None
        """The consensus core while the node runs, None while it is down."""
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._ledger_free_ms = 0
        self.blocks_rejected = 0
        """Peer blocks that failed verification (all incarnations)."""

    # -- lifecycle -------------------------------------------------------------------

    def is_up(self) -> bool:
        """Whether the node is running."""
        return self.consensus is not None

    def tip(self) -> Block:
        """The last stored block."""
        return self.ledger[-1]

    def start(self) -> None:
        """Start (or restart) on the stored ledger with a fresh consensus core."""
        assert not self.is_up(), f"{self.node_id} is already running"
        self.incarnation += 1
        tip = self.tip()
        self.consensus = SingleLeader(
            node_id=self.node_id,
            validators=self.validators,
            params=self.params,
            height=tip.header.height,
            tip_hash=tip.block_hash(),
            limits=self.limits,
        )
        self._recent.clear()
        self._waiters.clear()
        self._ledger_free_ms = self._scheduler.now_ms
        self._later(self._rng.randint(0, self.timing.tick_ms - 1), "tick", self._tick)
        self._network.on_node_started(self.node_id)

    def crash(self) -> None:
        """Stop at once: only what is already in the ledger remains."""
        assert self.is_up(), f"{self.node_id} is not running"
        self.incarnation += 1
        self.consensus = None
        self._recent.clear()
        self._waiters.clear()
        self._network.on_node_stopped(self.node_id)

    # -- events from the network -----------------------------------------------------

    def on_connected(self, peer: str) -> None:
        """The connection to ``peer`` (re)opened."""
        core = self._core()
        self.apply(core.on_peer_connected(peer, self._scheduler.now_ms))

    def on_frame(self, peer: str, raw: bytes) -> None:
        """Decode a peer's message and route it, as the real node's ``_on_frame``."""
        try:
            message = decode(raw, max_size=MAX_FRAME_BYTES)
        except DecodeError:
            self._scheduler.note(f"{self.node_id} malformed message from {peer}")
            return
        if isinstance(message, ForwardTx):
            self._on_forwarded(message.envelope)
        elif isinstance(message, SyncRequest):
            self._serve_sync(peer, message)
        elif isinstance(message, BlockMessage | SyncResponse | StatusMessage):
            self.apply(self._core().on_message(peer, message, self._scheduler.now_ms))
        else:
            self._scheduler.note(f"{self.node_id} unexpected {type(message).__name__}")

    # -- the gateway -----------------------------------------------------------------

    def submit(self, envelope: TxEnvelope, wait_ms: int, reply: Callable[[TxFinal], None]) -> None:
        """A client submits ``envelope`` and waits up to ``wait_ms`` for it to be final here.

        ``reply`` is called only with a final answer; every other outcome (refused,
        still pending when the wait ends, node crashed) is silence, and the client
        retries on its own timer.
        """
        tx_id = envelope.tx_id()
        if tx_id in self._recent or self._core().contains(tx_id):
            self._status(tx_id, wait_ms, reply)
            return

        def admitted_or_duplicate() -> None:
            if tx_id in self.tx_index:
                self._status(tx_id, wait_ms, reply)
            elif self._admit(tx_id):
                self._wait(tx_id, wait_ms, reply)
                self.apply(self._core().on_request(envelope, tx_id, self._scheduler.now_ms))

        self._later(self._reader_delay(), "admit", admitted_or_duplicate)

    def _status(self, tx_id: bytes, wait_ms: int, reply: Callable[[TxFinal], None]) -> None:
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

    def _wait(self, tx_id: bytes, wait_ms: int, reply: Callable[[TxFinal], None]) -> None:
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

    def apply(self, actions: list[Action]) -> None:
        """Carry out the core's actions, as the real node's ``_apply``."""
        for action in actions:
            if isinstance(action, Send):
                self._send(action.to, action.message)
            elif isinstance(action, Broadcast):
                kind = _kind(action.message)
                self._network.broadcast(self.node_id, encode(action.message), kind)
            elif isinstance(action, ProposeBlock):
                self._ledger_job("propose", self._job_propose(action.txs))
            elif isinstance(action, AppendPeerBlock):
                self._ledger_job(
                    f"append {action.block.header.height}",
                    self._job_append(action.block, action.sender),
                )
            elif isinstance(action, RequestSync):
                request = SyncRequest(from_height=action.from_height, max_blocks=SYNC_MAX_BLOCKS)
                self._send(action.peer, request)
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _send(self, to: str, message: Message) -> None:
        self._network.send(self.node_id, to, encode(message), _kind(message))

    def _tick(self) -> None:
        self.apply(self._core().on_tick(self._scheduler.now_ms))
        self._later(self.timing.tick_ms, "tick", self._tick)

    def _on_forwarded(self, envelope: TxEnvelope) -> None:
        """A peer forwarded a transaction: admit it (silently refuse duplicates), then order."""
        tx_id = envelope.tx_id()
        if tx_id in self._recent or self._core().contains(tx_id):
            return

        def admit() -> None:
            if tx_id not in self.tx_index and self._admit(tx_id):
                self.apply(self._core().on_request(envelope, tx_id, self._scheduler.now_ms))

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
                self._send(peer, SyncResponse(blocks=tuple(blocks)))

        self._later(self._reader_delay(), f"serve sync {peer}", read)

    # -- the ledger thread -----------------------------------------------------------

    def _ledger_job(self, label: str, work: Callable[[], Callable[[], None]]) -> None:
        """Queue ``work`` on the ledger thread; what it returns runs back on the loop."""
        timing = self.timing
        start = max(self._scheduler.now_ms, self._ledger_free_ms)
        done = start + self._rng.randint(*timing.ledger_delay_ms)
        self._ledger_free_ms = done

        def complete() -> None:
            back_on_loop = work()
            self._later(self._rng.randint(*timing.loop_delay_ms), f"{label} done", back_on_loop)

        self._at(done, f"ledger {label}", complete)

    def _job_propose(self, txs: tuple[TxEnvelope, ...]) -> Callable[[], Callable[[], None]]:
        requested_ms = self._scheduler.now_ms

        def work() -> Callable[[], None]:
            block, dropped = self.build_block(txs, requested_ms)

            def back_on_loop() -> None:
                core = self._core()
                core.drop_requests(dropped)
                if block is None:
                    self.apply(core.on_proposal_failed(self._scheduler.now_ms))
                else:
                    self._on_appended(block)

            return back_on_loop

        return work

    def _job_append(self, block: Block, sender: str) -> Callable[[], Callable[[], None]]:
        def work() -> Callable[[], None]:
            try:
                self.verify_and_append(block)
            except BlockVerificationError as exc:
                self.blocks_rejected += 1
                self._scheduler.note(f"{self.node_id} rejected {exc.height} ({exc.reason})")

                def rejected() -> None:
                    now = self._scheduler.now_ms
                    self.apply(self._core().on_block_rejected(block, sender, now))

                return rejected
            return lambda: self._on_appended(block)

        return work

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
        self, txs: tuple[TxEnvelope, ...], now_ms: int
    ) -> tuple[Block | None, list[bytes]]:
        """Build, certify and store a block of the valid ``txs`` on the tip.

        A transaction already stored, or repeated in the batch, is dropped (its id
        is returned); with nothing left, no block is built.
        """
        parent = self.tip().header
        checked, dropped = self.check_batch(txs)
        if not checked:
            return None, dropped
        envelopes = tuple(checked)
        header = BlockHeader(
            chain_id=self.chain_id,
            height=Height(parent.height + 1),
            prev_hash=parent.block_hash(),
            txs_root=compute_txs_root(envelopes),
            results_root=compute_results_root(compute_sim_results(envelopes)),
            state_root=compute_sim_state_root(parent.state_root, envelopes),
            timestamp_ms=max(now_ms, parent.timestamp_ms),
            proposer=self.node_id,
            epoch=0,
            config_hash=ZERO_HASH,
        )
        mac = compute_sim_mac(self.node_id, header.block_hash())
        block = Block(
            header=header,
            txs=envelopes,
            results=compute_sim_results(envelopes),
            certificate=(CommitSignature(signer=self.node_id, signature=mac),),
            config=None,
        )
        self.store_block(block)
        return block, dropped

    def check_batch(self, txs: tuple[TxEnvelope, ...]) -> tuple[list[TxEnvelope], list[bytes]]:
        """Split ``txs`` into the orderable ones and the ids of those already stored or
        repeated (the fake application accepts every transaction otherwise)."""
        checked: list[TxEnvelope] = []
        dropped: list[bytes] = []
        seen: set[bytes] = set()
        for envelope in txs:
            tx_id = envelope.tx_id()
            if tx_id in seen or tx_id in self.tx_index:
                dropped.append(tx_id)
                continue
            seen.add(tx_id)
            checked.append(envelope)
        return checked, dropped

    def verify_and_append(self, block: Block) -> None:
        """Verify a peer's block completely, then store it; raise if it does not verify."""
        parent = self.tip().header
        header = block.header
        assert header.height == parent.height + 1, (
            f"{self.node_id} asked to append {header.height} on {parent.height}"
        )
        self.verify_link(block, parent)
        self.verify_certificate(block)
        verify_block_contents(block)
        self.verify_txs(block)
        self.verify_execution(block, parent)
        self.store_block(block)

    def verify_link(self, block: Block, parent: BlockHeader) -> None:
        """Same chain, next height, parent's hash, time not going back."""
        verify_link(block.header, parent)

    def verify_certificate(self, block: Block) -> None:
        """Proposed by the leader, certified by exactly the proposer's valid MAC."""
        header = block.header
        leader = self._core().leader()
        if header.proposer != leader or block.config is not None:
            raise BlockVerificationError(
                f"proposed by {header.proposer}, not the leader {leader}",
                height=header.height,
                reason="proposer",
            )
        if not is_sim_mac_valid(block):
            raise BlockVerificationError(
                "certificate is not the proposer's valid signature",
                height=header.height,
                reason="certificate",
            )

    def verify_txs(self, block: Block) -> None:
        """No transaction already stored or repeated in the block."""
        _, dropped = self.check_batch(block.txs)
        if dropped:
            raise BlockVerificationError(
                f"block carries {len(dropped)} duplicate transactions (first {dropped[0].hex()})",
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

    def store_block(self, block: Block) -> None:
        """Durably append ``block`` and index its transactions; the invariants look at it."""
        height = block.header.height
        self.ledger.append(block)
        for index, envelope in enumerate(block.txs):
            self.tx_index[envelope.tx_id()] = (height, index)
        self._scheduler.note(f"{self.node_id} stored {height} {block.block_hash().hex()[:16]}")
        self._host.on_block_stored(self, block)

    # -- helpers ---------------------------------------------------------------------

    def _core(self) -> SingleLeader:
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


def _kind(message: object) -> str:
    """A short trace label for a message."""
    if isinstance(message, BlockMessage):
        return f"Block {message.block.header.height}"
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
