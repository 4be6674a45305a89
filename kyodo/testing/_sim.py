"""The deterministic simulator: N validators running the real BFT core, one seed.

Theory of operation
-------------------
A run is a pure function of ``(seed, options)``. Everything that varies comes
from one ``random.Random(seed)``: the fault plan, the Byzantine validator and
its behaviours, the clients' timing and choice of node, every network delay,
loss and duplicate, every ledger-thread, WAL and reader delay, every
equivocation split. There are no threads, no wall clock and no sleeps: a
single :class:`~kyodo.testing._scheduler.Scheduler` takes the next event of
the virtual clock and runs it to completion, so the same seed does the same
things in the same order and yields the same trace hash (in any process,
whatever its ``PYTHONHASHSEED``).

Each node is a :class:`~kyodo.testing._shell.SimNode`: the production core
(:class:`kyodo.consensus.Bft`) in a shell that carries out its actions as the
real node does (WAL before votes, build and verify without appending,
certified appends, sync), with a durable ledger and WAL that survive crashes.
At most f validators may be Byzantine (:mod:`kyodo.testing._byzantine`):
equivocating (Twins), wrong state roots, withheld votes, stale-view votes,
messages posing as a non-validator, censorship of one client.

The run has two phases. Until ``heal_at_ms`` the fault plan applies (lossy,
duplicating, reordering network; partitions; crashes and restarts, the
leader's included, some of them right after a WAL write). At ``heal_at_ms``
the network becomes clean, partitions heal and every node still down
restarts; Byzantine validators go on misbehaving. From then on the run must
converge: it ends, successfully, at the first moment after the heal when
every node runs, every client has its final answer (or a final refusal as
expired) and every node holds the same chain. It fails when that has not
happened ``liveness_bound_ms`` after the heal.

Clients: transaction ``i`` belongs to client ``c{i mod clients}``. It is
submitted once at a random time in the submit window, to a random node; until
some node answers "final" (or refuses it as expired), the client sends the
*same* envelope again every ``retry_ms`` to a random node (or always the
same node with ``sticky_clients``), as the SDK's idempotent retry does.

The invariant checker (:mod:`kyodo.testing._invariants`) looks at every
block as it is stored, at every honest vote as it is sent, and at the end; a
broken property raises
:class:`~kyodo.testing._invariants.InvariantViolation` with the seed and the
last events of the trace. So does an :class:`AssertionError` (or any other
exception) escaping the core or the shell: the real node would halt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kyodo.consensus import BftParams
from kyodo.ledger import Block, ConsensusParams, TxEnvelope
from kyodo.testing._byzantine import Byzantine, draw_byzantine
from kyodo.testing._fake import make_sim_genesis, make_sim_tx
from kyodo.testing._faults import (
    Crash,
    CrashAfterWal,
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
from kyodo.testing._shell import ShellTiming, SimNode, TxAnswer, TxFinal

__all__ = [
    "DEFAULT_PARAMS",
    "REPLAY_HINT",
    "AppendRecord",
    "SimOptions",
    "SimResult",
    "Simulation",
    "run_simulation",
]

DEFAULT_PARAMS = BftParams(
    max_batch_txs=16,
    max_batch_bytes=64 * 1024,
    batch_timeout_ms=20,
    heartbeat_interval_ms=200,
    leader_timeout_ms=1_000,
    request_forward_ms=600,
    request_complain_ms=2_000,
    view_change_timeout_ms=1_500,
    decisions_per_leader=10,
    status_interval_ms=400,
    sync_retry_ms=500,
)
"""Protocol parameters of a simulated network: small batches (many blocks) and timers
a few times shorter than production's, so that runs of seconds see many view changes."""

REPLAY_HINT = "KYODO_SEED={seed} pytest tests/test_simulation.py -k replay"
"""How a failing run of the randomized suite is replayed (``{seed}`` is filled in)."""

_RPC_DELAY_MS = (0, 3)
"""Range of a client's request travel time to a gateway."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything about a run except its seed."""

    node_count: int = 4
    """Validators ``n0``, ``n1``, ... (f = (n-1)//3 of them may be Byzantine)."""
    tx_count: int = 150
    """Transactions the clients submit."""
    clients: int = 10
    """Client identities; transaction ``i`` belongs to ``c{i mod clients}``."""
    submit_window_ms: int = 8_000
    """Each transaction is first submitted at a random time in ``[0, submit_window_ms]``."""
    retry_ms: int = 500
    """A client re-sends its envelope this often until it has a final answer."""
    heal_at_ms: int = 10_000
    """When every fault stops (clean network, partitions healed, every node restarted)."""
    liveness_bound_ms: int = 30_000
    """After the heal, everything must be final everywhere within this time."""
    params: BftParams = DEFAULT_PARAMS
    tx_max_age_ms: int = 10**9
    """The network's transaction age window (``ConsensusParams.tx_max_age_ms``)."""
    client_clock_lag_ms: int = 0
    """Clients' clocks run this far behind the nodes' (their transactions look older)."""
    timing: ShellTiming = field(default_factory=ShellTiming)
    network: NetworkProfile | None = None
    """The network until the heal; None: drawn from the seed."""
    healed_network: NetworkProfile = field(default_factory=NetworkProfile)
    """The network after the heal (should lose nothing)."""
    faults: tuple[Fault, ...] | None = None
    """Timed faults; None: drawn from the seed (``max_crashes``, ``max_partitions``)."""
    max_crashes: int = 3
    max_partitions: int = 3
    byzantine: tuple[Byzantine, ...] | None = None
    """The faulty validators (at most f); None: drawn from the seed (``byzantine_chance``)."""
    byzantine_chance: float = 0.3
    """Chance that a run with drawn faults has one Byzantine validator."""
    sticky_clients: bool = False
    """Re-send to the node first asked (as an SDK bound to one gateway) instead of a random one."""
    node_class: type[SimNode] = SimNode
    """The shell; tests substitute deliberately broken variants to check the checker."""
    replay: str = REPLAY_HINT
    """How to replay a failing run, quoted in the failure (``{seed}`` is filled in)."""
    max_events: int = 2_000_000
    """A run that takes more events than this is reported as runaway."""

    def __post_init__(self) -> None:
        assert self.node_count >= 1 and self.tx_count >= 0 and self.clients >= 1
        assert self.submit_window_ms >= 0 and self.retry_ms > 0 and self.heal_at_ms >= 0
        assert self.tx_max_age_ms > 0 and self.client_clock_lag_ms >= 0


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
    views: tuple[int, ...]
    """Final view per node, in node order."""
    tip_hash: bytes
    """Hash of the (common) last block."""
    tx_count: int
    answers: tuple[TxFinal, ...]
    """The first final answer each client got, in the order they came."""
    expired: int
    """Transactions refused as expired (their clients gave up)."""
    appends: tuple[AppendRecord, ...]
    """Every block stored by every node, in time order."""
    plan: FaultPlan
    """The faults the run went through."""
    byzantine: tuple[Byzantine, ...]
    """The faulty validators of the run."""
    messages_sent: int
    messages_dropped: int
    messages_duplicated: int
    messages_cut: int
    """Messages lost to a closed connection (partition, crash)."""
    messages_reordered: int
    """Messages delivered after a later one between the same two nodes."""
    messages_refused: int
    """Messages refused because their sender is not a validator, over all nodes."""
    blocks_rejected: int
    """Peer blocks (sync) that failed verification, over all nodes."""
    proposals_rejected: int
    """Proposals that failed verification, over all nodes."""
    blocks_synced: tuple[int, ...]
    """Per node, blocks appended from a peer (sync)."""
    wal_writes: int
    """WAL records that became durable, over all nodes."""
    votes_checked: int
    """Honest Prepares and Commits the checker read on the wire."""


@dataclass(slots=True)
class _ClientTx:
    envelope: TxEnvelope
    tx_id: bytes
    home: str
    """The node first asked."""
    answer: TxFinal | None = None
    expired: bool = False
    """A gateway refused it as expired: the client gave up."""
    attempts: int = 0


class Simulation:
    """One simulated run; :func:`run_simulation` is the usual entry point."""

    def __init__(self, seed: int, options: SimOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.scheduler = Scheduler()
        self.node_ids = tuple(f"n{i}" for i in range(options.node_count))
        self.client_ids = tuple(f"c{i}" for i in range(options.clients))
        self.plan = self._make_plan()
        self.byzantine = self._make_byzantine()
        self.network = SimNetwork(self.scheduler, self.rng, self.plan.network)
        faulty = {b.node: b for b in self.byzantine}
        self.checker = InvariantChecker(
            seed=seed,
            validators=self.node_ids,
            honest=[n for n in self.node_ids if n not in faulty],
            scheduler=self.scheduler,
            replay=options.replay.format(seed=seed),
        )
        self.network.tap = self.checker.on_wire
        consensus = ConsensusParams(
            max_batch_txs=options.params.max_batch_txs,
            max_batch_bytes=options.params.max_batch_bytes,
            batch_timeout_ms=options.params.batch_timeout_ms,
            tx_max_age_ms=options.tx_max_age_ms,
        )
        genesis = make_sim_genesis(self.node_ids, consensus)
        self.nodes: dict[str, SimNode] = {
            node_id: options.node_class(
                node_id=node_id,
                validators=self.node_ids,
                genesis=genesis,
                params=options.params,
                tx_max_age_ms=options.tx_max_age_ms,
                timing=options.timing,
                host=self,
                byzantine=faulty.get(node_id),
            )
            for node_id in self.node_ids
        }
        self.network.attach(self.nodes)
        self.appends: list[AppendRecord] = []
        self.answers: list[TxFinal] = []
        self._txs: list[_ClientTx] = []
        self._unresolved = 0
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
        for byzantine in self.byzantine:
            self.scheduler.note(f"byzantine {byzantine.describe()}")
        for node_id in self.node_ids:
            at(0, f"start {node_id}", self.nodes[node_id].start)
        for fault in self.plan.faults:
            at(fault.at_ms, _describe(fault), self._fault_action(fault))
        at(self.options.heal_at_ms, "heal", self._heal)
        for index in range(self.options.tx_count):
            self._schedule_client(index)

    def _finish(self) -> SimResult:
        locations = {node_id: node.tx_index for node_id, node in self.nodes.items()}
        expired = {tx.tx_id for tx in self._txs if tx.expired}
        if self._converged_ms is None:
            self.checker.check_liveness(locations, expired)
            down = [n for n, node in self.nodes.items() if not node.is_up()]
            heights = [len(node.ledger) - 1 for node in self.nodes.values()]
            self.checker.fail(
                "liveness",
                f"not converged by the deadline: {self._unresolved} txs never answered final, "
                f"nodes down: {down}, heights: {heights}",
            )
        self.checker.check_liveness(locations, expired)
        self.checker.check_answers(self.answers, locations)
        tips = [node.tip() for node in self.nodes.values()]
        assert len({tip.block_hash() for tip in tips}) == 1, "converged nodes share the tip"
        stats = self.network.stats
        nodes = list(self.nodes.values())
        return SimResult(
            seed=self.seed,
            trace_hash=self.scheduler.trace_hash(),
            events=self.scheduler.events_run,
            end_ms=self.scheduler.now_ms,
            heights=tuple(tip.header.height for tip in tips),
            views=tuple(node.consensus.view if node.consensus else -1 for node in nodes),
            tip_hash=tips[0].block_hash(),
            tx_count=len(self._txs),
            answers=tuple(self.answers),
            expired=len(expired),
            appends=tuple(self.appends),
            plan=self.plan,
            byzantine=self.byzantine,
            messages_sent=stats.sent,
            messages_dropped=stats.dropped,
            messages_duplicated=stats.duplicated,
            messages_cut=stats.cut,
            messages_reordered=stats.reordered,
            messages_refused=sum(node.messages_refused for node in nodes),
            blocks_rejected=sum(node.blocks_rejected for node in nodes),
            proposals_rejected=sum(node.proposals_rejected for node in nodes),
            blocks_synced=tuple(node.blocks_synced for node in nodes),
            wal_writes=sum(node.wal_writes for node in nodes),
            votes_checked=self.checker.votes_checked,
        )

    def _is_converged(self) -> bool:
        """Every client resolved, every node up, one chain everywhere."""
        if self._unresolved or len(self._txs) != self.options.tx_count:
            return False
        nodes = list(self.nodes.values())
        if not all(node.is_up() for node in nodes):
            return False
        return len({len(node.ledger) for node in nodes}) == 1

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

    def _make_byzantine(self) -> tuple[Byzantine, ...]:
        options = self.options
        chosen = options.byzantine
        if chosen is None:
            chosen = draw_byzantine(
                self.rng, self.node_ids, self.client_ids, chance=options.byzantine_chance
            )
        nodes = [b.node for b in chosen]
        assert len(set(nodes)) == len(nodes) and set(nodes) <= set(self.node_ids)
        assert len(nodes) <= (len(self.node_ids) - 1) // 3, "at most f Byzantine validators"
        return chosen

    def _fault_action(self, fault: Fault) -> Callable[[], None]:
        if isinstance(fault, Crash):
            return lambda: self.crash(fault.node)
        if isinstance(fault, CrashAfterWal):
            return lambda: self._arm_crash_after_wal(fault.node)
        if isinstance(fault, Restart):
            return lambda: self.restart(fault.node)
        if isinstance(fault, Partition):
            return lambda: self.network.set_partition(fault.groups)
        return self.network.heal_partition

    def crash(self, node_id: str) -> None:
        """Crash ``node_id`` now (nothing happens if it is down)."""
        node = self.nodes[node_id]
        if node.is_up():
            node.crash()

    def restart(self, node_id: str) -> None:
        """Restart ``node_id`` now on its ledger and WAL; if it is up, disarm a pending
        crash after a WAL write instead."""
        node = self.nodes[node_id]
        if node.is_up():
            node.crash_after_wal = False
        else:
            node.start()

    def _arm_crash_after_wal(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.is_up():
            node.crash_after_wal = True

    def _heal(self) -> None:
        self.network.set_profile(self.options.healed_network)
        self.network.heal_partition()
        for node_id in self.node_ids:
            self.restart(node_id)

    # -- clients ---------------------------------------------------------------------

    def _schedule_client(self, index: int) -> None:
        options = self.options
        first_ms = self.rng.randint(0, options.submit_window_ms)
        client = self.client_ids[index % len(self.client_ids)]
        created_ms = max(0, first_ms - options.client_clock_lag_ms)
        envelope = make_sim_tx(client, created_ms, self.rng.randbytes(8))

        def first_attempt() -> None:
            tx = _ClientTx(
                envelope=envelope, tx_id=envelope.tx_id(), home=self.rng.choice(self.node_ids)
            )
            self._txs.append(tx)
            self._unresolved += 1
            self.checker.on_submitted(tx.tx_id)
            self._attempt(tx, tx.home)

        self.scheduler.at(first_ms, f"client submit {index} ({client})", first_attempt)

    def _attempt(self, tx: _ClientTx, node_id: str) -> None:
        """Send the envelope to ``node_id`` now; try again in ``retry_ms`` unless resolved."""
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
            if tx.answer is None and not tx.expired:
                sticky = self.options.sticky_clients
                self._attempt(tx, tx.home if sticky else self.rng.choice(self.node_ids))

        self.scheduler.after(self.rng.randint(*_RPC_DELAY_MS), f"rpc {label}>{node_id}", arrive)
        self.scheduler.after(wait_ms, f"client retry {label}", retry)

    def _on_answer(self, tx: _ClientTx, answer: TxAnswer) -> None:
        if tx.answer is not None or tx.expired:
            return
        self._unresolved -= 1
        if isinstance(answer, TxFinal):
            tx.answer = answer
            self.answers.append(answer)
            self.scheduler.note(f"client final {tx.tx_id.hex()[:8]} from {answer.node_id}")
        else:
            tx.expired = True
            self.scheduler.note(f"client gives up {tx.tx_id.hex()[:8]}: {answer.reason}")


def run_simulation(seed: int, options: SimOptions | None = None) -> SimResult:
    """Run the simulation of ``seed`` (a pure function of its arguments)."""
    return Simulation(seed, options or SimOptions()).run()


def _describe(fault: Fault) -> str:
    if isinstance(fault, Crash):
        return f"crash {fault.node}"
    if isinstance(fault, CrashAfterWal):
        return f"crash {fault.node} after its next WAL write"
    if isinstance(fault, Restart):
        return f"restart {fault.node}"
    if isinstance(fault, Partition):
        return "partition " + " | ".join(",".join(group) for group in fault.groups)
    assert isinstance(fault, HealPartition)
    return "heal partition"
