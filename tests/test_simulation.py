"""Deterministic simulation of a Kyodo network running the production consensus core.

Every test here is a run of :func:`kyodo.testing.run_simulation`: 4 simulated
nodes (``n0`` orders), seeded clients, a seeded faulty network, crashes,
restarts and partitions, with the invariants (agreement, validity, integrity,
liveness, durability of answers) checked after every stored block.

* ``test_random_faults``: 200 seeds of randomized faults (default suite).
* ``test_random_faults_many``: 5,000 seeds (``-m slow``; ``KYODO_SEEDS=N``,
  ``A-B`` or ``A,B,C`` chooses the seeds).
* ``test_replay``: replays ``KYODO_SEED`` (else the regression seeds).
* scenario tests named after the situation they set up;
* negative controls: deliberately broken shells the invariants must catch.

A failure prints ``seed=N`` and the replay command. A seed that ever failed
goes into ``REGRESSION_SEEDS`` and stays there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

import kyodo.testing
from kyodo.codec import encode
from kyodo.consensus import Action, BlockMessage, ProposeBlock
from kyodo.crypto import ZERO_HASH, sha256
from kyodo.ledger import (
    Block,
    BlockHeader,
    CommitSignature,
    Height,
    TxEnvelope,
    compute_results_root,
    compute_txs_root,
)
from kyodo.testing import (
    AppendRecord,
    Crash,
    HealPartition,
    InvariantViolation,
    NetworkProfile,
    Partition,
    Restart,
    SimNode,
    SimOptions,
    SimResult,
    Simulation,
    compute_sim_mac,
    compute_sim_state_root,
    run_seeds,
    run_simulation,
)

REGRESSION_SEEDS: list[int] = []
"""Seeds that ever failed; replayed by ``test_replay`` and the seeded suite, forever."""

SUITE_SEEDS = 200
"""Seeds of the default suite."""

RANDOM_OPTIONS = SimOptions()
"""The options of the seeded suites and of the replay (faults drawn from the seed)."""

CLEAN = NetworkProfile()
"""A network that loses, duplicates nothing (1-20 ms delays)."""

LEADER = "n0"
NODES = ("n0", "n1", "n2", "n3")


def scenario(**overrides: Any) -> SimOptions:
    """Options of a scenario: a clean network and no random faults unless overridden.

    A failure's replay hint names the running test (it sets the seed itself).
    """
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    base = SimOptions(network=CLEAN, faults=(), replay=f"pytest '{test}' (seed={{seed}})")
    return replace(base, **overrides)


def stored(
    result: SimResult, node_id: str, start_ms: int = 0, end_ms: int = 10**12
) -> list[AppendRecord]:
    """Blocks ``node_id`` stored in ``[start_ms, end_ms)``."""
    return [a for a in result.appends if a.node_id == node_id and start_ms <= a.time_ms < end_ms]


def tip_at(result: SimResult, node_id: str, time_ms: int) -> int:
    """Height of ``node_id``'s tip at ``time_ms`` (0: only genesis)."""
    return max([0, *(a.height for a in stored(result, node_id, 0, time_ms + 1))])


# -- seeded suites -------------------------------------------------------------------


@pytest.mark.parametrize("seed", sorted({*range(SUITE_SEEDS), *REGRESSION_SEEDS}))
def test_random_faults(seed: int) -> None:
    result = run_simulation(seed, RANDOM_OPTIONS)
    assert result.tx_count == RANDOM_OPTIONS.tx_count
    assert len(set(result.heights)) == 1


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
    """``KYODO_WORKERS`` processes (default: one per core) share the seeds."""
    seeds = _chosen_seeds(os.environ.get("KYODO_SEEDS", "5000"))
    workers = int(os.environ.get("KYODO_WORKERS", str(os.cpu_count() or 1)))
    failures = run_seeds(seeds, RANDOM_OPTIONS, workers=workers)
    if failures:
        failing = ", ".join(str(f.seed) for f in failures)
        pytest.fail(
            f"{len(failures)} of {len(seeds)} seeds failed: {failing}\n\n{failures[0].message}"
        )


def test_replay() -> None:
    """Replay ``KYODO_SEED`` when set (else every regression seed, else seed 0)."""
    raw = os.environ.get("KYODO_SEED")
    seeds = [int(raw)] if raw is not None else (REGRESSION_SEEDS or [0])
    for seed in seeds:
        result = run_simulation(seed, RANDOM_OPTIONS)
        print(f"seed={seed} trace={result.trace_hash} events={result.events}")


# -- determinism ---------------------------------------------------------------------


def test_same_seed_gives_the_same_run() -> None:
    first = run_simulation(11, RANDOM_OPTIONS)
    second = run_simulation(11, RANDOM_OPTIONS)
    assert first.trace_hash == second.trace_hash
    assert first == second


def test_different_seeds_give_different_traces() -> None:
    hashes = {run_simulation(seed, RANDOM_OPTIONS).trace_hash for seed in range(8)}
    assert len(hashes) == 8


def test_same_seed_same_trace_in_another_process() -> None:
    """Nothing depends on the process (string hashing, set order, addresses)."""
    here = run_simulation(5, RANDOM_OPTIONS).trace_hash
    code = "from kyodo.testing import run_simulation; print(run_simulation(5).trace_hash)"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


def test_a_violation_names_its_seed() -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(3, SimOptions(node_class=_MuteLeader, **_SHORT))
    message = str(caught.value)
    assert caught.value.seed == 3
    assert "seed=3" in message
    assert "KYODO_SEED=3" in message
    assert caught.value.trace  # the last events are quoted


# -- scenarios -----------------------------------------------------------------------


def test_basic_ordering_with_no_faults() -> None:
    options = scenario()
    result = run_simulation(1, options)
    assert result.end_ms == options.heal_at_ms  # everything was final before the heal
    assert len(result.answers) == options.tx_count
    assert result.messages_dropped == result.messages_cut == result.blocks_rejected == 0
    assert len(set(result.heights)) == 1 and result.heights[0] > 1
    for node_id in NODES:
        heights = [a.height for a in stored(result, node_id)]
        assert heights == list(range(1, result.heights[0] + 1))  # each height once, in order


def test_follower_crash_and_catch_up() -> None:
    options = scenario(faults=(Crash(at_ms=2_000, node="n2"), Restart(at_ms=6_000, node="n2")))
    result = run_simulation(2, options)
    tip_at_crash = tip_at(result, "n2", 2_000)
    assert stored(result, "n2", 2_001, 6_000) == []
    assert stored(result, LEADER, 2_001, 6_000)  # the others went on
    after = stored(result, "n2", 6_000)
    assert after[0].height == tip_at_crash + 1  # the ledger survived: it caught up from its tip
    assert [a.height for a in after] == list(range(tip_at_crash + 1, result.heights[2] + 1))
    assert len(set(result.heights)) == 1


def test_leader_crash_and_restart() -> None:
    """Single-leader ordering stops while the leader is down and resumes after it returns;
    no transaction answered final is lost."""
    options = scenario(
        faults=(Crash(at_ms=3_000, node=LEADER), Restart(at_ms=6_000, node=LEADER)),
        heal_at_ms=8_000,
        submit_window_ms=7_000,
    )
    sim = Simulation(4, options)
    result = sim.run()
    tip_at_crash = tip_at(result, LEADER, 3_000)
    during = [a for a in result.appends if 3_000 < a.time_ms < 6_000]
    assert all(a.height <= tip_at_crash for a in during)  # no progress without the leader
    assert any(a.height > tip_at_crash for a in result.appends if a.time_ms >= 6_000)
    answered_before = [a for a in result.answers if a.time_ms <= 3_000]
    assert answered_before
    for answer in answered_before:
        for node in sim.nodes.values():
            assert node.tx_index[answer.tx_id] == (answer.height, answer.tx_index)
    assert len(result.answers) == options.tx_count


def test_follower_partitioned_then_healed() -> None:
    options = scenario(
        faults=(
            Partition(at_ms=2_000, groups=(("n3",), ("n0", "n1", "n2"))),
            HealPartition(at_ms=6_000),
        )
    )
    result = run_simulation(5, options)
    assert stored(result, "n3", 2_050, 6_000) == []  # cut off (in-flight work may land)
    assert stored(result, LEADER, 2_050, 6_000)  # the majority side went on
    assert stored(result, "n3", 6_000)  # and n3 caught up after the heal
    assert len(set(result.heights)) == 1


def test_leader_partitioned_away_then_healed() -> None:
    options = scenario(
        faults=(
            Partition(at_ms=2_000, groups=((LEADER,), ("n1", "n2", "n3"))),
            HealPartition(at_ms=5_000),
        )
    )
    result = run_simulation(6, options)
    for follower in ("n1", "n2", "n3"):
        assert stored(result, follower, 2_050, 5_000) == []
    assert len(set(result.heights)) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_network_converges_after_heal(seed: int) -> None:
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


def test_restart_of_all_nodes() -> None:
    crashes = tuple(Crash(at_ms=3_000, node=n) for n in NODES)
    restarts = tuple(Restart(at_ms=3_500 + 200 * i, node=n) for i, n in enumerate(NODES))
    result = run_simulation(8, scenario(faults=crashes + restarts))
    assert [a for a in result.appends if 3_010 < a.time_ms < 3_500] == []
    assert any(a.time_ms > 4_100 for a in result.appends)
    assert len(set(result.heights)) == 1


# -- a bug of the core, pinned -------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=InvariantViolation,
    reason=(
        "BUG: a transaction forwarded to an unreachable leader is lost for good when the "
        "client keeps retrying the same gateway: SingleLeader.on_request on a follower "
        "returns one Send(ForwardTx) and keeps nothing, and the shell remembers the tx as "
        "recently admitted, so every retry is refused as a duplicate and TxStatus stays "
        "'pending'; nothing ever forwards it again"
    ),
)
def test_lost_forward_is_retried_for_a_client_bound_to_one_gateway() -> None:
    options = scenario(
        faults=(
            Partition(at_ms=0, groups=((LEADER,), ("n1", "n2", "n3"))),
            HealPartition(at_ms=3_000),
        ),
        sticky_clients=True,
        tx_count=20,
        submit_window_ms=2_000,
        heal_at_ms=4_000,
        liveness_bound_ms=10_000,
    )
    run_simulation(9, options)


# -- negative controls: the invariants bite ------------------------------------------

_SHORT: dict[str, Any] = {
    "tx_count": 10,
    "submit_window_ms": 500,
    "heal_at_ms": 1_000,
    "liveness_bound_ms": 3_000,
}


class _NoLinkCheck(SimNode):
    """Broken: appends a peer's block without checking that it links to the tip."""

    def verify_link(self, block: Block, parent: BlockHeader) -> None:
        return None


class _ForgetfulLedger(SimNode):
    """Broken: loses its last stored block on a crash (a write that was never synced)."""

    def crash(self) -> None:
        super().crash()
        if len(self.ledger) > 1:
            lost = self.ledger.pop()
            for envelope in lost.txs:
                del self.tx_index[envelope.tx_id()]


class _PaddingLeader(SimNode):
    """Broken: the leader slips a transaction of its own into every block."""

    def build_block(
        self, txs: tuple[TxEnvelope, ...], now_ms: int
    ) -> tuple[Block | None, list[bytes]]:
        own = TxEnvelope(payload=b"made up by %d" % len(self.ledger), signature=b"")
        return super().build_block((*txs, own), now_ms)


class _RepeatingLeader(SimNode):
    """Broken: forgets to drop stored transactions and repeats the tip's first one."""

    def check_batch(self, txs: tuple[TxEnvelope, ...]) -> tuple[list[TxEnvelope], list[bytes]]:
        return list(dict.fromkeys(txs)), []

    def build_block(
        self, txs: tuple[TxEnvelope, ...], now_ms: int
    ) -> tuple[Block | None, list[bytes]]:
        return super().build_block((*self.tip().txs[:1], *txs), now_ms)


class _MuteLeader(SimNode):
    """Broken: never builds the blocks the core asks for."""

    def apply(self, actions: list[Action]) -> None:
        super().apply([a for a in actions if not isinstance(a, ProposeBlock)])


def _forged_fork(node: SimNode) -> Block:
    """A block for ``node``'s next height, certified by the leader, on a parent nobody has."""
    parent = node.tip().header
    header = BlockHeader(
        chain_id=parent.chain_id,
        height=Height(parent.height + 1),
        prev_hash=sha256(b"a parent nobody has"),
        txs_root=compute_txs_root(()),
        results_root=compute_results_root(()),
        state_root=compute_sim_state_root(parent.state_root, ()),
        timestamp_ms=parent.timestamp_ms,
        proposer=LEADER,
        epoch=0,
        config_hash=ZERO_HASH,
    )
    mac = compute_sim_mac(LEADER, header.block_hash())
    return Block(
        header=header,
        txs=(),
        results=(),
        certificate=(CommitSignature(signer=LEADER, signature=mac),),
        config=None,
    )


def _run_with_fork(node_class: type[SimNode]) -> tuple[Simulation, SimResult]:
    """Feed n2 a forked block once the network is idle, then run to the end."""
    options = scenario(node_class=node_class, tx_count=20, submit_window_ms=1_000, heal_at_ms=4_000)
    sim = Simulation(12, options)

    def inject() -> None:
        target = sim.nodes["n2"]
        target.on_frame(LEADER, encode(BlockMessage(block=_forged_fork(target))))

    sim.schedule(3_000, "inject forked block into n2", inject)
    return sim, sim.run()


def test_control_a_correct_shell_rejects_the_forked_block() -> None:
    sim, result = _run_with_fork(SimNode)
    assert sim.nodes["n2"].blocks_rejected == 1
    assert len(set(result.heights)) == 1


def test_control_integrity_catches_an_unlinked_block() -> None:
    with pytest.raises(InvariantViolation) as caught:
        _run_with_fork(_NoLinkCheck)
    assert caught.value.invariant == "integrity"
    assert "prev_hash" in caught.value.detail


def test_control_agreement_catches_a_leader_that_loses_a_block() -> None:
    """Crash the leader between storing a block and anyone else seeing it; a leader whose
    ledger loses that block orders a different one at the same height."""
    first = run_simulation(13, scenario(submit_window_ms=6_000, heal_at_ms=8_000))
    stored_at = next(a.time_ms for a in stored(first, LEADER) if a.height == 10)
    others = [a.time_ms for a in first.appends if a.height == 10 and a.node_id != LEADER]
    assert min(others) > stored_at + 1  # nobody else has block 10 at stored_at + 1
    crash = (
        Crash(at_ms=stored_at + 1, node=LEADER),
        Restart(at_ms=stored_at + 500, node=LEADER),
    )
    options = scenario(submit_window_ms=6_000, heal_at_ms=8_000, faults=crash)
    run_simulation(13, options)  # a durable ledger survives exactly this crash
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(13, replace(options, node_class=_ForgetfulLedger))
    assert caught.value.invariant == "agreement"
    assert "at height 10" in caught.value.detail


@pytest.mark.parametrize(
    ("node_class", "what"),
    [(_PaddingLeader, "which no client submitted"), (_RepeatingLeader, "already at height")],
)
def test_control_validity_catches_bad_transactions(node_class: type[SimNode], what: str) -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(14, scenario(node_class=node_class, **_SHORT))
    assert caught.value.invariant == "validity"
    assert what in caught.value.detail


def test_control_liveness_catches_a_leader_that_never_builds() -> None:
    with pytest.raises(InvariantViolation) as caught:
        run_simulation(15, scenario(node_class=_MuteLeader, **_SHORT))
    assert caught.value.invariant == "liveness"


def test_control_a_core_assertion_halts_the_run() -> None:
    """An AssertionError escaping the core is a halt, reported with the seed."""

    class _DoubleAppend(SimNode):
        def apply(self, actions: list[Action]) -> None:
            super().apply(actions)
            core = self.consensus
            if core is not None and any(isinstance(a, ProposeBlock) for a in actions):
                core.on_block_appended(self.tip(), self._scheduler.now_ms)  # a stale tip

    with pytest.raises(InvariantViolation) as caught:
        run_simulation(16, scenario(node_class=_DoubleAppend, **_SHORT))
    assert caught.value.invariant == "halt"


# -- the package's face --------------------------------------------------------------


def test_every_export_appears_once_and_exists() -> None:
    names: list[str] = list(kyodo.testing.__all__)
    assert len(names) == len(set(names))
    missing: list[str] = [n for n in names if not hasattr(kyodo.testing, n)]
    assert missing == []
