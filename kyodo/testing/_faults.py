"""Scheduled faults, and the random fault plan drawn from a run's seed.

A fault plan is a network profile for the faulty phase and a list of timed
faults: crashes and restarts of nodes, partitions and their heals. Every
fault happens before the run's heal time; at the heal the simulation also
restores a clean network, removes any partition and restarts every node
still down, whatever the plan says.

A crash is either immediate (:class:`Crash`) or placed at the one point the
write-ahead log exists for (:class:`CrashAfterWal`): right after a WAL
record became durable, before any of the actions it held back (the votes it
justifies) left the node.

The random plan mixes, per seed: a lossy/duplicating/slow network, up to a
few partitions (one at a time, each healed), and up to a few crashes of
random nodes (the leader included; about half of them after a WAL write)
with restarts, sometimes a crash of every node at once. Restarted nodes keep
their ledger and their WAL (both are durable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kyodo.testing._network import NetworkProfile

__all__ = [
    "Crash",
    "CrashAfterWal",
    "Fault",
    "FaultPlan",
    "HealPartition",
    "Partition",
    "Restart",
    "draw_fault_plan",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash:
    """Node ``node`` stops at ``at_ms``, losing everything but its ledger."""

    at_ms: int
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashAfterWal:
    """Node ``node`` stops right after its first WAL write that becomes durable at or
    after ``at_ms``, before the actions that write held back are carried out.

    Nothing happens if the node is down at ``at_ms`` or writes nothing before its
    next restart (or the heal).
    """

    at_ms: int
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Restart:
    """Node ``node`` starts again at ``at_ms`` on its stored ledger."""

    at_ms: int
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """From ``at_ms``, only nodes in the same group can talk (replaces any partition).

    Nodes named in no group form one further group together.
    """

    at_ms: int
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealPartition:
    """At ``at_ms`` every node can reach every other again."""

    at_ms: int


Fault = Crash | CrashAfterWal | Restart | Partition | HealPartition


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """What goes wrong in one run before its heal time."""

    network: NetworkProfile
    """How the network treats messages until the heal."""
    faults: tuple[Fault, ...]
    """Timed faults, in time order."""


_DELAYS_MS = (5, 20, 50, 200)
_DROPS = (0.0, 0.0, 0.02, 0.1, 0.3)
_DUPLICATES = (0.0, 0.05, 0.2)
_ALL_CRASH_CHANCE = 0.1
_AFTER_WAL_CHANCE = 0.5


def draw_fault_plan(
    rng: random.Random,
    node_ids: tuple[str, ...],
    *,
    heal_at_ms: int,
    max_crashes: int,
    max_partitions: int,
) -> FaultPlan:
    """A random fault plan; every fault lies in ``[0, heal_at_ms]``."""
    network = NetworkProfile(
        min_delay_ms=1,
        max_delay_ms=rng.choice(_DELAYS_MS),
        drop_probability=rng.choice(_DROPS),
        duplicate_probability=rng.choice(_DUPLICATES),
    )
    faults: list[Fault] = []
    faults.extend(_draw_partitions(rng, node_ids, heal_at_ms, max_partitions))
    faults.extend(_draw_crashes(rng, node_ids, heal_at_ms, max_crashes))
    faults.sort(key=lambda f: f.at_ms)  # stable: same-time faults keep drawing order
    return FaultPlan(network=network, faults=tuple(faults))


def _draw_partitions(
    rng: random.Random, node_ids: tuple[str, ...], heal_at_ms: int, count: int
) -> list[Fault]:
    """Up to ``count`` partitions, one after the other, each healed before the heal time."""
    faults: list[Fault] = []
    start = rng.randint(0, heal_at_ms // 4)
    for _ in range(rng.randint(0, count)):
        if start >= heal_at_ms - 100:
            break
        end = min(heal_at_ms, start + rng.randint(200, 3_000))
        side = tuple(n for n in node_ids if rng.random() < 0.5)
        if not side or len(side) == len(node_ids):
            side = (rng.choice(node_ids),)
        rest = tuple(n for n in node_ids if n not in side)
        faults.append(Partition(at_ms=start, groups=(side, rest)))
        faults.append(HealPartition(at_ms=end))
        start = end + rng.randint(0, 2_000)
    return faults


def _draw_crashes(
    rng: random.Random, node_ids: tuple[str, ...], heal_at_ms: int, count: int
) -> list[Fault]:
    """Up to ``count`` crash-restart pairs (never overlapping on one node; about half
    of them right after a WAL write), sometimes a crash of every node at once."""
    faults: list[Fault] = []
    down: dict[str, list[tuple[int, int]]] = {n: [] for n in node_ids}
    if rng.random() < _ALL_CRASH_CHANCE:
        at = rng.randint(0, heal_at_ms - 200)
        for node in node_ids:
            back = min(heal_at_ms, at + rng.randint(50, 3_000))
            faults.extend((Crash(at_ms=at, node=node), Restart(at_ms=back, node=node)))
            down[node].append((at, back))
    for _ in range(rng.randint(0, count)):
        node = rng.choice(node_ids)
        at = rng.randint(0, heal_at_ms - 100)
        back = min(heal_at_ms, at + rng.randint(50, 4_000))
        if any(at <= end and start <= back for start, end in down[node]):
            continue
        down[node].append((at, back))
        crash: Fault = (
            CrashAfterWal(at_ms=at, node=node)
            if rng.random() < _AFTER_WAL_CHANCE
            else Crash(at_ms=at, node=node)
        )
        faults.extend((crash, Restart(at_ms=back, node=node)))
    return faults
