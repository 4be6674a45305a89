"""The deterministic simulator: N nodes running the real consensus core, one seed.

Theory of operation
-------------------
A run is a pure function of ``(seed, options)``. Everything that varies comes
from one ``random.Random(seed)``: the fault plan, the clients' timing and
choice of node, every network delay, loss and duplicate, every ledger-thread
and reader delay. There are no threads, no wall clock and no sleeps: a single
:class:`~kyodo.testing._scheduler.Scheduler` takes the next event of the
virtual clock and runs it to completion, so the same seed does the same
things in the same order and yields the same trace hash.

The run has two phases. Until ``heal_at_ms`` the fault plan applies (lossy,
duplicating, reordering network; partitions; crashes and restarts, the
leader's included). At ``heal_at_ms`` the network becomes clean, partitions
heal and every node still down restarts. From then on the run must converge:
it ends, successfully, at the first moment after the heal when every node
runs, every transaction is stored on every node and every client has been
told its transaction is final. It fails when that has not happened
``liveness_bound_ms`` after the heal.

Clients: each transaction is submitted once at a random time in the submit
window, to a random node; until some node answers "final", the client sends
the *same* envelope again every ``retry_ms`` to a random node (or always the
same node with ``sticky_clients``), as the SDK's idempotent retry does.

The invariant checker (:mod:`kyodo.testing._invariants`) looks at every
block as it is stored, and at the end; a broken property raises
:class:`~kyodo.testing._invariants.InvariantViolation` with the seed and the
last events of the trace. So does an :class:`AssertionError` (or any other
exception) escaping the core or the shell: the real node would halt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kyodo.consensus import SingleLeaderLimits
from kyodo.ledger import Block, ConsensusParams, TxEnvelope
from kyodo.testing._fake import make_sim_genesis
from kyodo.testing._faults import (
    Crash,
    Fault,
    FaultPlan,
    HealPartition,
    Partition,
    Restart,
    draw_fault_plan,
)
from kyodo.testing._invariants import InvariantChecker, InvariantViolation
from kyodo.testing._network import NetworkProfile, SimNetwork
from kyodo.testing._scheduler import Scheduler
from kyodo.testing._shell import ShellTiming, SimNode, TxFinal

__all__ = [
    "DEFAULT_PARAMS",
    "REPLAY_HINT",
    "AppendRecord",
    "SimOptions",
    "SimResult",
    "Simulation",
    "run_simulation",
]

DEFAULT_PARAMS = ConsensusParams(
    max_batch_txs=16, max_batch_bytes=64 * 1024, batch_timeout_ms=50, tx_max_age_ms=10**9
)
"""Ordering parameters of a simulated network (small batches: many blocks)."""

REPLAY_HINT = "KYODO_SEED={seed} pytest tests/test_simulation.py -k replay"
"""How a failing run of the randomized suite is replayed (``{seed}`` is filled in)."""

_RPC_DELAY_MS = (0, 3)
"""Range of a client's request travel time to a gateway."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything about a run except its seed."""

    node_count: int = 4
    """Validators; the first (``n0``) is the single-leader orderer."""
    tx_count: int = 150
    """Transactions the clients submit."""
    submit_window_ms: int = 8_000
    """Each transaction is first submitted at a random time in ``[0, submit_window_ms]``."""
    retry_ms: int = 500
    """A client re-sends its envelope this often until it is answered final."""
    heal_at_ms: int = 10_000
    """When every fault stops (clean network, partitions healed, every node restarted)."""
    liveness_bound_ms: int = 30_000
    """After the heal, everything must be final everywhere within this time."""
    params: ConsensusParams = DEFAULT_PARAMS
    limits: SingleLeaderLimits = field(default_factory=SingleLeaderLimits)
    timing: ShellTiming = field(default_factory=ShellTiming)
    network: NetworkProfile | None = None
    """The network until the heal; None: drawn from the seed."""
    healed_network: NetworkProfile = field(default_factory=NetworkProfile)
    """The network after the heal (should lose nothing)."""
    faults: tuple[Fault, ...] | None = None
    """Timed faults; None: drawn from the seed (``max_crashes``, ``max_partitions``)."""
    max_crashes: int = 3
    max_partitions: int = 3
    sticky_clients: bool = False
    """Re-send to the node first asked (as an SDK bound to one gateway) instead of a random one."""
    node_class: type[SimNode] = SimNode
    """The shell; tests substitute deliberately broken variants to check the checker."""
    replay: str = REPLAY_HINT
    """How to replay a failing run, quoted in the failure (``{seed}`` is filled in)."""
    max_events: int = 2_000_000
    """A run that takes more events than this is reported as runaway."""

    def __post_init__(self) -> None:
        assert self.node_count >= 1 and self.tx_count >= 0
        assert self.submit_window_ms >= 0 and self.retry_ms > 0 and self.heal_at_ms >= 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRecord:
    """One block stored by one node."""

    node_id: str
    height: int
    time_ms: int
    """Virtual time the block became durable on that node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    """What a successful run did (a failing run raises instead)."""

    seed: int
    trace_hash: str
    """Hex SHA-256 of the run's event trace: equal for equal runs."""
    events: int
    """Events the scheduler ran."""
    end_ms: int
    """Virtual time at which everything was final everywhere."""
    heights: tuple[int, ...]
    """Final tip height per node, in node order."""
    tip_hash: bytes
    """Hash of the (common) last block."""
    tx_count: int
    answers: tuple[TxFinal, ...]
    """The first final answer each client got, in the order they came."""
    appends: tuple[AppendRecord, ...]
    """Every block stored by every node, in time order."""
    plan: FaultPlan
    """The faults the run went through."""
    messages_sent: int
    messages_dropped: int
    messages_duplicated: int
    messages_cut: int
    """Messages lost to a closed connection (partition, crash)."""
    messages_reordered: int
    """Messages delivered after a later one between the same two nodes."""
    blocks_rejected: int
    """Peer blocks that failed verification, over all nodes."""


@dataclass(slots=True)
class _ClientTx:
    envelope: TxEnvelope
    tx_id: bytes
    home: str
    """The node first asked."""
    answer: TxFinal | None = None
    attempts: int = 0


class Simulation:
    """One simulated run; :func:`run_simulation` is the usual entry point."""

    def __init__(self, seed: int, options: SimOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.scheduler = Scheduler()
        self.node_ids = tuple(f"n{i}" for i in range(options.node_count))
        self.plan = self._make_plan()
        self.network = SimNetwork(self.scheduler, self.rng, self.plan.network)
        self.checker = InvariantChecker(
            seed=seed,
            leader=self.node_ids[0],
            scheduler=self.scheduler,
            replay=options.replay.format(seed=seed),
        )
        genesis = make_sim_genesis(self.node_ids, options.params)
        self.nodes: dict[str, SimNode] = {
            node_id: options.node_class(
                node_id=node_id,
                validators=self.node_ids,
                genesis=genesis,
                params=options.params,
                limits=options.limits,
                timing=options.timing,
                host=self,
            )
            for node_id in self.node_ids
        }
        self.network.attach(self.nodes)
        self.appends: list[AppendRecord] = []
        self.answers: list[TxFinal] = []
        self._txs: list[_ClientTx] = []
        self._converged_ms: int | None = None

    # -- NodeHost --------------------------------------------------------------------

    def on_block_stored(self, node: SimNode, block: Block) -> None:
        """Check the invariants on the block just stored by ``node``."""
        self.checker.check_stored(node.node_id, node.ledger)
        self.appends.append(
            AppendRecord(
                node_id=node.node_id, height=block.header.height, time_ms=self.scheduler.now_ms
            )
        )

    # -- running ---------------------------------------------------------------------

    def schedule(self, at_ms: int, label: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` at virtual time ``at_ms`` (tests inject events with it)."""
        self.scheduler.at(at_ms, label, callback)

    def run(self) -> SimResult:
        """Run to convergence after the heal; raise InvariantViolation on a broken property."""
        options = self.options
        self._schedule_start()
        deadline = options.heal_at_ms + options.liveness_bound_ms
        scheduler = self.scheduler
        while True:
            due = scheduler.next_time_ms()
            if due is None or due > deadline:
                break
            try:
                scheduler.run_next()
            except InvariantViolation:
                raise
            except Exception as exc:  # the real node halts on any of these: a bug
                self.checker.fail("halt", f"{type(exc).__name__}: {exc}")
            if scheduler.now_ms >= options.heal_at_ms and self._is_converged():
                self._converged_ms = scheduler.now_ms
                break
            if scheduler.events_run > options.max_events:
                self.checker.fail("liveness", f"runaway: more than {options.max_events} events")
        return self._finish()

    def _schedule_start(self) -> None:
        at = self.scheduler.at
        for node_id in self.node_ids:
            at(0, f"start {node_id}", self.nodes[node_id].start)
        for fault in self.plan.faults:
            at(fault.at_ms, _describe(fault), self._fault_action(fault))
        at(self.options.heal_at_ms, "heal", self._heal)
        for index in range(self.options.tx_count):
            self._schedule_client(index)

    def _finish(self) -> SimResult:
        locations = {node_id: node.tx_index for node_id, node in self.nodes.items()}
        if self._converged_ms is None:
            self.checker.check_liveness(locations)
            down = [n for n, node in self.nodes.items() if not node.is_up()]
            unanswered = sum(1 for tx in self._txs if tx.answer is None)
            self.checker.fail(
                "liveness",
                f"not converged by the deadline: {unanswered} txs never answered final, "
                f"nodes down: {down}",
            )
        self.checker.check_answers(self.answers, locations)
        tips = [node.tip() for node in self.nodes.values()]
        assert len({tip.block_hash() for tip in tips}) == 1, "converged nodes share the tip"
        stats = self.network.stats
        return SimResult(
            seed=self.seed,
            trace_hash=self.scheduler.trace_hash(),
            events=self.scheduler.events_run,
            end_ms=self.scheduler.now_ms,
            heights=tuple(tip.header.height for tip in tips),
            tip_hash=tips[0].block_hash(),
            tx_count=len(self._txs),
            answers=tuple(self.answers),
            appends=tuple(self.appends),
            plan=self.plan,
            messages_sent=stats.sent,
            messages_dropped=stats.dropped,
            messages_duplicated=stats.duplicated,
            messages_cut=stats.cut,
            messages_reordered=stats.reordered,
            blocks_rejected=sum(node.blocks_rejected for node in self.nodes.values()),
        )

    def _is_converged(self) -> bool:
        count = len(self._txs)
        if count != self.options.tx_count or len(self.answers) != count:
            return False
        return all(node.is_up() and len(node.tx_index) == count for node in self.nodes.values())

    # -- faults ----------------------------------------------------------------------

    def _make_plan(self) -> FaultPlan:
        options = self.options
        drawn = draw_fault_plan(
            self.rng,
            self.node_ids,
            heal_at_ms=options.heal_at_ms,
            max_crashes=options.max_crashes,
            max_partitions=options.max_partitions,
        )
        return FaultPlan(
            network=options.network if options.network is not None else drawn.network,
            faults=options.faults if options.faults is not None else drawn.faults,
        )

    def _fault_action(self, fault: Fault) -> Callable[[], None]:
        if isinstance(fault, Crash):
            return lambda: self._crash(fault.node)
        if isinstance(fault, Restart):
            return lambda: self._restart(fault.node)
        if isinstance(fault, Partition):
            return lambda: self.network.set_partition(fault.groups)
        return self.network.heal_partition

    def _crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.is_up():
            node.crash()

    def _restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.is_up():
            node.start()

    def _heal(self) -> None:
        self.network.set_profile(self.options.healed_network)
        self.network.heal_partition()
        for node_id in self.node_ids:
            self._restart(node_id)

    # -- clients ---------------------------------------------------------------------

    def _schedule_client(self, index: int) -> None:
        first_ms = self.rng.randint(0, self.options.submit_window_ms)
        payload = b"kyodo-sim/%d/tx/%d/" % (self.seed, index) + self.rng.randbytes(8)
        envelope = TxEnvelope(payload=payload, signature=b"")

        def first_attempt() -> None:
            tx = _ClientTx(
                envelope=envelope, tx_id=envelope.tx_id(), home=self.rng.choice(self.node_ids)
            )
            self._txs.append(tx)
            self.checker.on_submitted(tx.tx_id)
            self._attempt(tx, tx.home)

        self.scheduler.at(first_ms, f"client submit {index}", first_attempt)

    def _attempt(self, tx: _ClientTx, node_id: str) -> None:
        """Send the envelope to ``node_id`` now; try again in ``retry_ms`` unless answered."""
        tx.attempts += 1
        wait_ms = self.options.retry_ms
        label = tx.tx_id.hex()[:8]

        def arrive() -> None:
            node = self.nodes[node_id]
            if not node.is_up():
                self.scheduler.note(f"client {label}: {node_id} refused the connection")
                return
            node.submit(tx.envelope, wait_ms, lambda answer: self._on_answer(tx, answer))

        def retry() -> None:
            if tx.answer is None:
                sticky = self.options.sticky_clients
                self._attempt(tx, tx.home if sticky else self.rng.choice(self.node_ids))

        self.scheduler.after(self.rng.randint(*_RPC_DELAY_MS), f"rpc {label}>{node_id}", arrive)
        self.scheduler.after(wait_ms, f"client retry {label}", retry)

    def _on_answer(self, tx: _ClientTx, answer: TxFinal) -> None:
        if tx.answer is None:
            tx.answer = answer
            self.answers.append(answer)
            self.scheduler.note(f"client final {tx.tx_id.hex()[:8]} from {answer.node_id}")


def run_simulation(seed: int, options: SimOptions | None = None) -> SimResult:
    """Run the simulation of ``seed`` (a pure function of its arguments)."""
    return Simulation(seed, options or SimOptions()).run()


def _describe(fault: Fault) -> str:
    if isinstance(fault, Crash):
        return f"crash {fault.node}"
    if isinstance(fault, Restart):
        return f"restart {fault.node}"
    if isinstance(fault, Partition):
        return "partition " + " | ".join(",".join(group) for group in fault.groups)
    assert isinstance(fault, HealPartition)
    return "heal partition"
