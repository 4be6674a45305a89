"""Deterministic simulation of a Kyodo network running the production BFT core.

Every test here is a run of :func:`kyodo.testing.run_simulation`: 4 simulated
validators (f = 1, q = 3), seeded clients, a seeded faulty network, crashes
(some right after a WAL write), restarts and partitions, sometimes a Byzantine
validator, with the invariants (agreement, validity, integrity,
non-equivocation of honest votes on the wire, liveness after the heal,
durability of answers) checked as the run goes.

* ``test_random_faults``: 200 seeds of randomized faults (default suite, two
  processes), plus every regression seed not pinned to a core bug.
* ``test_random_faults_many``: 5,000 seeds (``-m slow``; ``KYODO_SEEDS=N``,
  ``A-B`` or ``A,B,C`` chooses the seeds, ``KYODO_WORKERS`` the processes).
* ``test_replay``: replays ``KYODO_SEED`` (else the regression seeds).
* scenario tests named after the situation they set up;
* negative controls: deliberately broken shells the invariants must catch;
* core bugs the simulator found, pinned as strict xfails.

A failure prints ``seed=N`` and the replay command. A seed that ever failed
goes into ``REGRESSION_SEEDS`` and stays there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

import kyodo.testing
from kyodo.codec import encode
from kyodo.consensus import Bft, BftAction, BuildProposal, SyncResponse
from kyodo.crypto import sha256
from kyodo.ledger import Block, BlockHeader, CommitSignature, TxEnvelope, commit_message
from kyodo.testing import (
    DEFAULT_PARAMS,
    OUTSIDER,
    SIM_CHAIN_ID,
    AppendRecord,
    Byzantine,
    Crash,
    CrashAfterWal,
    HealPartition,
    InvariantViolation,
    NetworkProfile,
    Partition,
    Restart,
    SimNode,
    SimOptions,
    SimResult,
    Simulation,
    compute_sim_signature,
    make_sim_block,
    make_sim_tx,
    run_seeds,
    run_simulation,
)

REGRESSION_SEEDS: list[int] = [
    *(822, 1679, 4057, 4240, 4455, 5226, 5379, 5582, 6011, 6072, 6321, 6429),
    *(7176, 8425, 8576, 9424, 10049, 10384, 10770),
]
"""Seeds that ever failed; replayed forever: by the seeded suite, or, while the core bug
behind one stands, by that bug's strict xfail test (``PINNED``)."""

CORE_BUGS: dict[str, str] = {}
"""Bugs of the BFT core the simulator found (kyodo/consensus/_bft.py, not fixed here)."""

PINNED: dict[int, tuple[str, str]] = {}
"""Regression seeds that fail because of a core bug: seed to (bug, invariant broken)."""

SUITE_SEEDS = 200
"""Seeds of the default suite."""

RANDOM_OPTIONS = SimOptions()
"""The options of the seeded suites and of the replay (faults drawn from the seed)."""

CLEAN = NetworkProfile()
"""A network that loses, duplicates nothing (1-20 ms delays)."""

NODES = ("n0", "n1", "n2", "n3")
P = DEFAULT_PARAMS


def scenario(**overrides: Any) -> SimOptions:
    """Options of a scenario: a clean network, no random faults and nobody Byzantine
    unless overridden. A failure's replay hint names the running test."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    base = SimOptions(
        network=CLEAN, faults=(), byzantine=(), replay=f"pytest '{test}' (seed={{seed}})"
    )
    return replace(base, **overrides)


def stored(
    result: SimResult, node_id: str, start_ms: int = 0, end_ms: int = 10**12
) -> list[AppendRecord]:
    """Blocks ``node_id`` stored in ``[start_ms, end_ms)``."""
    return [a for a in result.appends if a.node_id == node_id and start_ms <= a.time_ms < end_ms]


def tip_at(result: SimResult, node_id: str, time_ms: int) -> int:
    """Height of ``node_id``'s tip at ``time_ms`` (0: only genesis)."""
    return max([0, *(a.height for a in stored(result, node_id, 0, time_ms + 1))])


def core(sim: Simulation, node_id: str) -> Bft:
    """The running core of ``node_id``."""
    bft = sim.nodes[node_id].consensus
    assert bft is not None, f"{node_id} is down"
    return bft


def proposers(sim: Simulation) -> set[str]:
    """Who proposed the blocks of the (common) chain."""
    return {b.header.proposer for b in sim.nodes["n0"].ledger[1:]}


def every(sim: Simulation, start_ms: int, period_ms: int, step: Callable[[], bool]) -> None:
    """Run ``step`` every ``period_ms`` from ``start_ms`` until it returns True."""

    def run() -> None:
        if not step():
            sim.scheduler.after(period_ms, "test probe", run)

    sim.schedule(start_ms, "test probe", run)


# -- seeded suites -------------------------------------------------------------------


def _run_suite(seeds: list[int], default_workers: int) -> None:
    """Run ``seeds`` on ``KYODO_WORKERS`` processes (default: ``default_workers``, at most
    one per core); fail naming every failing seed. A pinned seed (``PINNED``) may fail,
    but only by breaking the invariant its core bug breaks."""
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("KYODO_WORKERS", str(min(default_workers, cores))))
    failures = run_seeds(seeds, RANDOM_OPTIONS, workers=workers)
    unexpected = [f for f in failures if PINNED.get(f.seed, ("", ""))[1] != f.invariant]
    if unexpected:
        failing = ", ".join(f"{f.seed} ({f.invariant})" for f in unexpected)
        replay = RANDOM_OPTIONS.replay.format(seed=unexpected[0].seed)
        pytest.fail(
            f"{len(unexpected)} of {len(seeds)} seeds failed: {failing}\n"
            f"replay: {replay}\n\n{unexpected[0].message}"
        )


def test_random_faults() -> None:
    """The default suite: ``SUITE_SEEDS`` seeds and every regression seed not pinned to a
    core bug (those run in their xfail tests), on two processes."""
    _run_suite(sorted({*range(SUITE_SEEDS), *REGRESSION_SEEDS} - set(PINNED)), 2)


def _chosen_seeds(spec: str) -> list[int]:
    """``"5000"``: seeds 0..4999; ``"100-200"``: 100..199; ``"3,17,42"``: those."""
    if "," in spec:
        return [int(s) for s in spec.split(",")]
    if "-" in spec:
        first, last = spec.split("-")
        return list(range(int(first), int(last)))
    return list(range(int(spec)))


@pytest.mark.slow
@pytest.mark.timeout(3_600)
def test_random_faults_many() -> None:
    """5,000 seeds (``KYODO_SEEDS`` chooses others), one process per core."""
    _run_suite(_chosen_seeds(os.environ.get("KYODO_SEEDS", "5000")), os.cpu_count() or 1)


def test_replay() -> None:
    """Replay ``KYODO_SEED`` when set (else every regression seed not pinned to a core bug,
    else seed 0)."""
    raw = os.environ.get("KYODO_SEED")
    fixed = [s for s in REGRESSION_SEEDS if s not in PINNED]
    seeds = [int(raw)] if raw is not None else (fixed or [0])
    for seed in seeds:
        result = run_simulation(seed, RANDOM_OPTIONS)
        print(f"seed={seed} trace={result.trace_hash} events={result.events}")


# -- determinism ---------------------------------------------------------------------


def test_same_seed_gives_the_same_run() -> None:
    first = run_simulation(11, RANDOM_OPTIONS)
    second = run_simulation(11, RANDOM_OPTIONS)
    assert first.trace_hash == second.trace_hash
    assert first == second


def test_same_seed_gives_the_same_run_with_a_byzantine_validator() -> None:
    options = scenario(
        network=None,
        faults=None,
        byzantine=(Byzantine(node="n1", equivocate=True, stale_votes=True, outsider=True),),
    )
    assert run_simulation(12, options) == run_simulation(12, options)


def test_different_seeds_give_different_traces() -> None:
    hashes = {run_simulation(seed, RANDOM_OPTIONS).trace_hash for seed in range(8)}
    assert len(hashes) == 8


def test_same_seed_same_trace_in_another_process() -> None:
    """Nothing depends on the process (string hashing, set order, addresses). Seed 20
    draws a Byzantine validator (equivocation, wrong state root, stale votes, censor)."""
    here = [run_simulation(seed, RANDOM_OPTIONS).trace_hash for seed in (5, 20)]
    code = (
        "from kyodo.testing import run_simulation\n"
        "for seed in (5, 20): print(run_simulation(seed).trace_hash)"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == here


def test_a_violation_names_its_seed() -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(3, SimOptions(node_class=_MuteLeader, byzantine=(), **_SHORT))
    message = str(caught.value)
    assert caught.value.seed == 3
    assert "seed=3" in message
    assert "KYODO_SEED=3" in message
    assert caught.value.trace  # the last events are quoted


# -- scenarios: crashes --------------------------------------------------------------


def test_basic_ordering_with_no_faults() -> None:
    options = scenario()
    result = run_simulation(1, options)
    assert result.end_ms == options.heal_at_ms  # everything was final before the heal
    assert len(result.answers) == options.tx_count
    assert result.messages_dropped == result.messages_cut == result.blocks_rejected == 0
    assert result.proposals_rejected == 0
    assert result.views == (0, 0, 0, 0)  # no view change
    assert len(set(result.heights)) == 1 and result.heights[0] > 1
    assert result.votes_checked > 0
    for node_id in NODES:
        heights = [a.height for a in stored(result, node_id)]
        assert heights == list(range(1, result.heights[0] + 1))  # each height once, in order


def test_leadership_rotates_without_faults() -> None:
    sim = Simulation(2, scenario(tx_count=400))
    result = sim.run()
    assert result.heights[0] > 3 * P.decisions_per_leader
    assert proposers(sim) == set(NODES)  # every validator took its turn
    assert result.views == (0, 0, 0, 0)


def test_follower_crash_and_catch_up() -> None:
    options = scenario(faults=(Crash(at_ms=2_000, node="n2"), Restart(at_ms=6_000, node="n2")))
    result = run_simulation(2, options)
    tip_at_crash = tip_at(result, "n2", 2_000)
    assert stored(result, "n2", 2_001, 6_000) == []
    assert stored(result, "n0", 2_001, 6_000)  # the others (a quorum) went on
    after = stored(result, "n2", 6_000)
    assert after[0].height == tip_at_crash + 1  # the ledger survived: it caught up from its tip
    assert [a.height for a in after] == list(range(tip_at_crash + 1, result.heights[2] + 1))
    assert result.blocks_synced[2] > 0
    assert len(set(result.heights)) == 1


def test_leader_crash_changes_the_view_and_loses_no_answered_transaction() -> None:
    options = scenario(heal_at_ms=8_000, submit_window_ms=7_000)
    sim = Simulation(4, options)
    crashed: list[str] = []

    def crash_the_leader() -> None:
        leader = core(sim, "n0").leader()
        crashed.append(leader)
        sim.crash(leader)

    sim.schedule(3_000, "crash the leader", crash_the_leader)
    result = sim.run()
    leader = crashed[0]
    survivor = next(n for n in NODES if n != leader)
    tip_at_crash = tip_at(result, survivor, 3_000)
    assert stored(result, leader, 3_001, 8_000) == []
    assert tip_at(result, survivor, 7_999) > tip_at_crash  # progress resumed without it
    assert min(result.views) > 0  # through a view change
    answered_before = [a for a in result.answers if a.time_ms <= 3_000]
    assert answered_before
    for answer in answered_before:
        for node in sim.nodes.values():
            assert node.tx_index[answer.tx_id] == (answer.height, answer.tx_index)
    assert len(result.answers) == options.tx_count


def test_leader_crash_during_the_view_change() -> None:
    """The leader dies; while the others change view, the validator that leads the view
    change dies too. One of them comes back: the view change moves on, progress resumes."""
    options = scenario(heal_at_ms=12_000, submit_window_ms=10_000)
    sim = Simulation(6, options)
    crashed: list[tuple[str, int]] = []

    def crash_the_leader() -> None:
        leader = core(sim, "n0").leader()
        crashed.append((leader, -1))
        sim.crash(leader)
        sim.schedule(6_000, f"restart {leader}", lambda: sim.restart(leader))

    def crash_the_next_leader() -> bool:
        for node_id in NODES:
            node = sim.nodes[node_id]
            if node.consensus is not None and node.consensus.in_view_change:
                collector = node.consensus.leader_of(node.consensus.view)
                if sim.nodes[collector].is_up():
                    crashed.append((collector, node.consensus.view))
                    sim.crash(collector)
                    return True
        return False

    sim.schedule(3_000, "crash the leader", crash_the_leader)
    every(sim, 3_001, 5, crash_the_next_leader)
    result = sim.run()
    (first, _), (second, view) = crashed
    assert first != second and view > 0
    # the view change it led was abandoned for a later one (it rejoins after the heal)
    assert all(v > view for n, v in zip(NODES, result.views, strict=True) if n != second)
    steady = next(n for n in NODES if n not in (first, second))
    assert tip_at(result, steady, 11_999) > tip_at(result, steady, 6_000)  # progress resumed
    assert len(result.answers) == options.tx_count


def test_restart_of_all_nodes_resumes_from_ledger_and_wal() -> None:
    crashes = tuple(Crash(at_ms=3_000, node=n) for n in NODES)
    restarts = tuple(Restart(at_ms=3_500 + 200 * i, node=n) for i, n in enumerate(NODES))
    sim = Simulation(8, scenario(faults=crashes + restarts))
    resumed: list[str] = []

    def check_resumed(node_id: str) -> Callable[[], None]:
        def check() -> None:  # just after the restart: the core is what ledger + WAL say
            node, bft = sim.nodes[node_id], core(sim, node_id)
            wal = node.wal
            assert wal is not None and bft.tip == node.tip()
            assert (bft.view, bft.in_view_change) == (wal.view, wal.in_view_change)
            if wal.height == bft.height + 1:
                assert bft.round.accepted == wal.accepted
                assert bft.round.prepared_view == wal.prepared_view
            resumed.append(node_id)

        return check

    for i, node_id in enumerate(NODES):
        sim.schedule(3_501 + 200 * i, f"check {node_id}", check_resumed(node_id))
    result = sim.run()
    assert resumed == list(NODES)
    assert [a for a in result.appends if 3_010 < a.time_ms < 3_500] == []
    assert any(a.time_ms > 4_100 for a in result.appends)
    assert len(set(result.heights)) == 1


@pytest.mark.parametrize("node_id", NODES)
def test_crash_between_the_wal_write_and_the_votes(node_id: str) -> None:
    """A validator stops right after a WAL record is durable, before the votes it held
    back left; it restarts on that record and never votes twice differently."""
    faults = []
    for at in (1_000, 3_000, 5_000):
        faults += [CrashAfterWal(at_ms=at, node=node_id), Restart(at_ms=at + 1_500, node=node_id)]
    sim = Simulation(9, scenario(faults=tuple(faults)))
    crashes = 0
    crash = sim.nodes[node_id].crash

    def counting_crash() -> None:
        nonlocal crashes
        crashes += 1
        crash()

    sim.nodes[node_id].crash = counting_crash  # type: ignore[method-assign]
    result = sim.run()
    assert crashes == 3
    assert result.votes_checked > 0
    assert len(result.answers) == 150


# -- scenarios: network --------------------------------------------------------------


def test_lagging_follower_syncs() -> None:
    options = scenario(
        faults=(Partition(at_ms=1_000, groups=(("n3",),)), HealPartition(at_ms=6_000))
    )
    result = run_simulation(5, options)
    behind = tip_at(result, "n3", 6_000)
    assert stored(result, "n3", 1_050, 6_000) == []  # cut off (in-flight work may land)
    assert tip_at(result, "n0", 6_000) > behind + 5  # the quorum went on without it
    assert result.blocks_synced[3] >= tip_at(result, "n0", 6_000) - behind - 1
    assert len(set(result.heights)) == 1


def test_leader_partitioned_away_the_others_change_view_and_go_on() -> None:
    options = scenario(
        params=replace(P, decisions_per_leader=0),  # n0 leads view 0 at every height
        faults=(Partition(at_ms=2_000, groups=(("n0",),)), HealPartition(at_ms=6_000)),
    )
    result = run_simulation(6, options)
    assert stored(result, "n0", 2_050, 6_000) == []
    assert tip_at(result, "n1", 5_999) > tip_at(result, "n1", 2_050)  # a quorum without n0
    assert min(result.views) > 0
    assert len(set(result.heights)) == 1


def test_two_two_partition_makes_no_progress_and_no_fork_then_heals() -> None:
    options = scenario(
        faults=(Partition(at_ms=2_000, groups=(("n0", "n1"), ("n2", "n3"))),),
        heal_at_ms=6_000,
    )
    result = run_simulation(7, options)
    for node_id in NODES:  # no side has a quorum of 3 (in-flight work may land)
        assert stored(result, node_id, 2_200, 6_000) == []
    during = max(tip_at(result, n, 5_999) for n in NODES)
    assert result.heights[0] > during  # progress after the heal
    assert len(set(result.heights)) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_network(seed: int) -> None:
    lossy = NetworkProfile(min_delay_ms=1, max_delay_ms=50, drop_probability=0.3)
    result = run_simulation(seed, scenario(network=lossy))
    assert result.messages_dropped > 0.2 * result.messages_sent
    assert len(set(result.heights)) == 1


def test_duplicated_and_reordered_messages() -> None:
    noisy = NetworkProfile(min_delay_ms=1, max_delay_ms=200, duplicate_probability=0.3)
    result = run_simulation(7, scenario(network=noisy))
    assert result.messages_duplicated > 0
    assert result.messages_reordered > 0
    assert len(set(result.heights)) == 1


def test_lost_forward_is_retried_for_a_client_bound_to_one_gateway() -> None:
    """Failed for the single-leader core (a forward to an unreachable leader was lost for
    good): the BFT core keeps the request and re-broadcasts it until it is ordered."""
    options = scenario(
        faults=(
            Partition(at_ms=0, groups=(("n0",), ("n1", "n2", "n3"))),
            HealPartition(at_ms=3_000),
        ),
        sticky_clients=True,
        tx_count=20,
        submit_window_ms=2_000,
        heal_at_ms=4_000,
        liveness_bound_ms=10_000,
    )
    result = run_simulation(9, options)
    assert len(result.answers) == 20


def test_requests_that_expire_before_ordering_are_dropped_without_a_view_change() -> None:
    """Clients whose clocks lag create requests that expire moments after admission: no
    leader may order them, every pool drops them, nobody complains, clients give up."""
    options = scenario(tx_count=20, tx_max_age_ms=2_000, client_clock_lag_ms=1_995)
    sim = Simulation(10, options)
    result = sim.run()
    assert result.expired > 0
    assert result.expired + len(result.answers) == 20
    assert result.views == (0, 0, 0, 0)
    assert sum(core(sim, n).expired_count for n in NODES) > 0
    for node in sim.nodes.values():
        assert len(node.tx_index) == len(result.answers)


# -- scenarios: Byzantine validators -------------------------------------------------


@pytest.mark.parametrize("seed", [21, 22, 23, 24, 25])
def test_equivocating_leader_cannot_fork_the_chain(seed: int) -> None:
    """Twins: n0 proposes two valid blocks per height to two random halves and votes for
    each towards its half. Honest validators never certify both."""
    options = scenario(byzantine=(Byzantine(node="n0", equivocate=True),), tx_count=60)
    sim = Simulation(seed, options)
    result = sim.run()  # agreement is checked at every stored block
    adversary = sim.nodes["n0"].adversary
    assert adversary is not None and adversary.equivocations > 0
    assert len(result.answers) == 60


def test_leader_with_a_wrong_state_root_is_replaced() -> None:
    options = scenario(byzantine=(Byzantine(node="n0", wrong_state_root=True),), tx_count=60)
    sim = Simulation(26, options)
    result = sim.run()
    assert result.proposals_rejected > 0
    assert min(result.views) > 0
    assert "n0" not in proposers(sim)  # nothing it built was ever certified
    assert len(result.answers) == 60


def test_censoring_leader_is_replaced_and_the_request_is_ordered() -> None:
    """n0 ignores every request of client c3; the honest validators holding them complain
    after ``request_complain_ms``, change view, and the next leader orders them."""
    options = scenario(
        byzantine=(Byzantine(node="n0", censor_client="c3"),),
        params=replace(P, decisions_per_leader=0),  # n0 would lead for good
        tx_count=20,
        clients=4,
        submit_window_ms=1_000,
    )
    sim = Simulation(27, options)
    result = sim.run()
    assert min(result.views) > 0
    censored = {
        e.tx_id()
        for b in sim.nodes["n1"].ledger[1:]
        for e in b.txs
        if e.payload.startswith(b"kyodo-sim-tx/c3/")
    }
    assert len(censored) == 5  # txs 3, 7, 11, 15, 19
    for block in sim.nodes["n1"].ledger[1:]:
        if any(e.tx_id() in censored for e in block.txs):
            assert block.header.proposer != "n0"
    assert len(result.answers) == 20


def test_validator_withholding_its_votes_cannot_stop_the_others() -> None:
    options = scenario(byzantine=(Byzantine(node="n2", withhold_votes=True),))
    sim = Simulation(28, options)
    result = sim.run()
    for block in sim.nodes["n0"].ledger[1:]:
        assert "n2" not in {c.signer for c in block.certificate}  # q without it
    assert len(result.answers) == 150


def test_votes_with_forged_signatures_never_count() -> None:
    options = scenario(byzantine=(Byzantine(node="n3", forge_signatures=True),))
    sim = Simulation(31, options)
    result = sim.run()
    for block in sim.nodes["n0"].ledger[1:]:
        assert "n3" not in {c.signer for c in block.certificate}
    assert len(result.answers) == 150


def test_votes_for_stale_views_change_nothing() -> None:
    options = scenario(
        byzantine=(Byzantine(node="n1", stale_votes=True),),
        params=replace(P, decisions_per_leader=0),  # n0 leads until it crashes
        faults=(Crash(at_ms=2_000, node="n0"), Restart(at_ms=4_000, node="n0")),
    )
    sim = Simulation(29, options)
    result = sim.run()
    adversary = sim.nodes["n1"].adversary
    assert adversary is not None and adversary.stale_sent > 0
    assert min(result.views) > 0
    assert len(result.answers) == 150


class _RecordingShell(SimNode):
    """Records every sender whose message reached the core."""

    senders: set[str] = set()

    def start(self) -> None:
        super().start()
        bft = self.consensus
        assert bft is not None
        on_message = bft.on_message

        def recording(sender: str, message: object, now_ms: int) -> list[BftAction]:
            _RecordingShell.senders.add(sender)
            return on_message(sender, message, now_ms)

        bft.on_message = recording  # type: ignore[method-assign]


def test_messages_from_a_non_validator_are_dropped_by_the_shell() -> None:
    _RecordingShell.senders = set()
    options = scenario(byzantine=(Byzantine(node="n3", outsider=True),), node_class=_RecordingShell)
    result = run_simulation(30, options)
    assert result.messages_refused > 0
    assert _RecordingShell.senders <= set(NODES) and OUTSIDER not in _RecordingShell.senders
    assert result.views == (0, 0, 0, 0)  # forged view changes moved nobody


def test_byzantine_validator_mixing_behaviours_under_random_faults() -> None:
    """Every behaviour at once but the two that silence its votes (withheld, forged)."""
    everything = Byzantine(
        node="n1",
        equivocate=True,
        wrong_state_root=True,
        withhold_votes=False,
        forge_signatures=False,
        stale_votes=True,
        outsider=True,
        censor_client="c0",
    )
    for seed in (31, 32, 33):
        run_simulation(seed, replace(RANDOM_OPTIONS, byzantine=(everything,)))


# -- core bugs found by the simulator, pinned ----------------------------------------


def _pinned(bug: str) -> list[Any]:
    """The pinned seeds of ``bug``, each a strict xfail (an unexpected pass fails: the
    bug was fixed, move its seeds from ``PINNED`` to the seeded suite)."""
    mark = pytest.mark.xfail(strict=True, raises=InvariantViolation, reason=CORE_BUGS[bug])
    return [pytest.param(seed, marks=mark) for seed, (b, _) in PINNED.items() if b == bug]


def _run_pinned(seed: int, check: Callable[[Simulation, InvariantViolation], None]) -> None:
    """Run the pinned seed; on the expected violation, ``check`` the mechanism (an
    AssertionError there is a real failure), then re-raise it."""
    sim = Simulation(seed, RANDOM_OPTIONS)
    try:
        sim.run()
    except InvariantViolation as exc:
        assert exc.invariant == PINNED[seed][1], exc
        check(sim, exc)
        raise


# -- negative controls: the invariants bite ------------------------------------------

_SHORT: dict[str, Any] = {
    "tx_count": 10,
    "submit_window_ms": 500,
    "heal_at_ms": 1_000,
    "liveness_bound_ms": 5_000,
}


class _NoLinkCheck(SimNode):
    """Broken: appends a block without checking that it links to the tip."""

    def verify_link(self, block: Block, parent: BlockHeader) -> None:
        return None


class _NoCertificateCheck(SimNode):
    """Broken: appends a peer's block without checking its certificate."""

    def verify_certificate(self, block: Block) -> None:
        return None


class _ForgetfulStore(SimNode):
    """Broken: never syncs its writes, so a crash loses its last stored block and its WAL."""

    def crash(self) -> None:
        super().crash()
        self.wal = None
        if len(self.ledger) > 1:
            lost = self.ledger.pop()
            for envelope in lost.txs:
                del self.tx_index[envelope.tx_id()]


class _AmnesiacWal(SimNode):
    """Broken: its WAL is never synced, so a restart forgets what it voted for."""

    def start(self) -> None:
        self.wal = None
        super().start()


class _PaddingLeader(SimNode):
    """Broken: the leader slips a transaction of its own into every block."""

    def build_block(
        self, txs: tuple[TxEnvelope, ...], now_ms: int, view: int
    ) -> tuple[Block | None, list[bytes]]:
        own = make_sim_tx("mallory", now_ms, b"%d" % len(self.ledger))
        return super().build_block((*txs, own), now_ms, view)


class _RepeatingLeader(SimNode):
    """Broken: never drops stored transactions, and repeats the tip's first one."""

    def check_batch(
        self, txs: tuple[TxEnvelope, ...], block_time_ms: int
    ) -> tuple[list[TxEnvelope], list[bytes]]:
        return list(dict.fromkeys(txs)), []

    def build_block(
        self, txs: tuple[TxEnvelope, ...], now_ms: int, view: int
    ) -> tuple[Block | None, list[bytes]]:
        return super().build_block((*self.tip().txs[:1], *txs), now_ms, view)


class _MuteLeader(SimNode):
    """Broken: never builds the blocks the core asks for."""

    def apply(self, actions: list[BftAction]) -> None:
        super().apply([a for a in actions if not isinstance(a, BuildProposal)])


def _forged_block(node: SimNode, *, linked: bool, signers: tuple[str, ...]) -> Block:
    """A block for ``node``'s next height with commit signatures by ``signers``; when not
    ``linked``, on a parent nobody has."""
    parent = node.tip().header
    block = make_sim_block(
        parent, (), proposer="n0", timestamp_ms=parent.timestamp_ms, view=parent.view
    )
    if not linked:
        header = replace(block.header, prev_hash=sha256(b"a parent nobody has"))
        block = replace(block, header=header)
    message = commit_message(SIM_CHAIN_ID, block.block_hash())
    certificate = tuple(
        CommitSignature(signer=s, signature=compute_sim_signature(s, message)) for s in signers
    )
    return replace(block, certificate=certificate)


def _run_with_injected(
    node_class: type[SimNode], *, linked: bool, signers: tuple[str, ...]
) -> tuple[Simulation, SimResult]:
    """Hand n2 a forged block as a sync response from n0 once the network is idle."""
    options = scenario(node_class=node_class, tx_count=20, submit_window_ms=1_000, heal_at_ms=4_000)
    sim = Simulation(12, options)

    def inject() -> None:
        target = sim.nodes["n2"]
        forged = _forged_block(target, linked=linked, signers=signers)
        target.on_frame("n0", encode(SyncResponse(blocks=(forged,))))

    sim.schedule(3_000, "inject a forged block into n2", inject)
    return sim, sim.run()


def test_control_a_correct_shell_rejects_forged_blocks() -> None:
    for linked, signers in ((False, ("n0", "n1", "n3")), (True, ("n0",))):
        sim, result = _run_with_injected(SimNode, linked=linked, signers=signers)
        assert sim.nodes["n2"].blocks_rejected == 1
        assert len(set(result.heights)) == 1


def test_control_integrity_catches_an_unlinked_block() -> None:
    with pytest.raises(InvariantViolation) as caught:
        _run_with_injected(_NoLinkCheck, linked=False, signers=("n0", "n1", "n3"))
    assert caught.value.invariant == "integrity"
    assert "prev_hash" in caught.value.detail


def test_control_integrity_catches_a_block_without_a_quorum_certificate() -> None:
    with pytest.raises(InvariantViolation) as caught:
        _run_with_injected(_NoCertificateCheck, linked=True, signers=("n0",))
    assert caught.value.invariant == "integrity"
    assert "1 valid commit signatures, 3 required" in caught.value.detail


def _store_loss_run(node_class: type[SimNode]) -> SimResult:
    """n0 leads view 0 for good; it crashes while idle, so the others move to view 1 with
    no vote at the next height h in view 0. The first block of view 1 (height h) is
    stored by n1..n3; at once every node crashes, and all restart 300 ms later."""
    options = scenario(
        node_class=node_class, params=replace(P, decisions_per_leader=0), tx_count=40
    )
    sim = Simulation(13, options)

    def crash_the_idle_leader() -> bool:
        bft = core(sim, "n0")
        if bft.pending_count() or bft.round.accepted or bft.round.verifying or bft._building:
            return False
        sim.crash("n0")
        sim.schedule(sim.scheduler.now_ms + 2_000, "restart n0", lambda: sim.restart("n0"))
        every(sim, sim.scheduler.now_ms + 1, 1, crash_everyone_after_a_view_1_block)
        return True

    def crash_everyone_after_a_view_1_block() -> bool:
        if any(sim.nodes[n].tip().header.view < 1 for n in ("n1", "n2", "n3")):
            return False
        at = sim.scheduler.now_ms + 300
        for node_id in NODES:
            sim.crash(node_id)
            sim.schedule(at, f"restart {node_id}", lambda n=node_id: sim.restart(n))  # type: ignore[misc]
        return True

    every(sim, 1_500, 1, crash_the_idle_leader)
    return sim.run()


def test_control_agreement_catches_stores_that_lose_a_block() -> None:
    """Stores that lose their last block and their WAL on a crash restart in view 0 below
    height h, and decide h again in view 0, differently (nobody voted at h in view 0
    before, so only agreement can tell)."""
    _store_loss_run(SimNode)  # durable stores survive exactly this
    with pytest.raises(InvariantViolation) as caught:
        _store_loss_run(_ForgetfulStore)
    assert caught.value.invariant == "agreement"


def _amnesia_run(node_class: type[SimNode]) -> SimResult:
    """n0 leads in a 2|2 split (nothing can be decided); it crashes just after it voted
    Prepare for its proposal and restarts at once, in the same view."""
    options = scenario(
        node_class=node_class,
        params=replace(P, decisions_per_leader=0),
        faults=(Partition(at_ms=1_000, groups=(("n0", "n1"), ("n2", "n3"))),),
        tx_count=40,
        submit_window_ms=4_000,
        heal_at_ms=5_000,
    )
    sim = Simulation(14, options)
    tap = sim.network.tap
    assert tap is not None
    armed = True

    def crash_after_prepare(sender: str, raw: bytes, kind: str) -> None:
        nonlocal armed
        tap(sender, raw, kind)
        if (
            armed
            and sender == "n0"
            and kind.startswith("Prepare v0")
            and sim.scheduler.now_ms > 1_000
        ):
            armed = False
            sim.schedule(sim.scheduler.now_ms, "crash n0", lambda: sim.crash("n0"))
            sim.schedule(sim.scheduler.now_ms + 100, "restart n0", lambda: sim.restart("n0"))

    sim.network.tap = crash_after_prepare
    return sim.run()


def test_control_non_equivocation_catches_a_validator_that_forgets_its_wal() -> None:
    _amnesia_run(SimNode)  # with its WAL, n0 resumes with its accepted proposal
    with pytest.raises(InvariantViolation) as caught:
        _amnesia_run(_AmnesiacWal)
    assert caught.value.invariant == "non-equivocation"
    assert "honest n0 sent Prepare" in caught.value.detail


@pytest.mark.parametrize(
    ("node_class", "what"),
    [(_PaddingLeader, "which no client submitted"), (_RepeatingLeader, "already at height")],
)
def test_control_validity_catches_bad_transactions(node_class: type[SimNode], what: str) -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(14, scenario(node_class=node_class, **_SHORT))
    assert caught.value.invariant == "validity"
    assert what in caught.value.detail


def test_control_liveness_catches_leaders_that_never_build() -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(15, scenario(node_class=_MuteLeader, **_SHORT))
    assert caught.value.invariant == "liveness"


def test_control_a_core_assertion_halts_the_run() -> None:
    """An AssertionError escaping the core is a halt, reported with the seed."""

    class _DoubleAppend(SimNode):
        def apply(self, actions: list[BftAction]) -> None:
            super().apply(actions)
            bft = self.consensus
            if bft is not None and any(isinstance(a, BuildProposal) for a in actions):
                bft.on_block_appended(self.tip(), self._scheduler.now_ms)  # a stale tip

    with pytest.raises(InvariantViolation) as caught:
        run_simulation(16, scenario(node_class=_DoubleAppend, **_SHORT))
    assert caught.value.invariant == "halt"


# -- the package's face --------------------------------------------------------------


def test_every_export_appears_once_and_exists() -> None:
    names: list[str] = list(kyodo.testing.__all__)
    assert len(names) == len(set(names))
    missing: list[str] = [n for n in names if not hasattr(kyodo.testing, n)]
    assert missing == []
