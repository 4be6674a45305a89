"""Running many seeds, on several processes when asked.

Each seed is an independent pure run, so seeds can be spread over worker
processes without changing any result. Workers are *spawned* (not forked):
a fresh interpreter per worker shares nothing with the parent by accident.
A failing seed comes back as a :class:`SeedFailure` (the violation's text),
since the exception itself stays in the worker.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from kyodo.testing._invariants import InvariantViolation
from kyodo.testing._sim import SimOptions, run_simulation

__all__ = ["SeedFailure", "run_seeds"]

_CHUNK = 25
"""Seeds handed to a worker at a time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedFailure:
    """A seed whose run broke an invariant."""

    seed: int
    invariant: str
    message: str
    """The full violation text (detail, replay command, last events)."""


def run_seeds(seeds: Iterable[int], options: SimOptions, *, workers: int = 1) -> list[SeedFailure]:
    """Run every seed; return the failures, in seed order."""
    seed_list = list(seeds)
    if workers <= 1:
        return _run_chunk(seed_list, options)
    chunks = [seed_list[i : i + _CHUNK] for i in range(0, len(seed_list), _CHUNK)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = pool.map(_run_chunk, chunks, [options] * len(chunks))
        return [failure for chunk in results for failure in chunk]


def _run_chunk(seeds: list[int], options: SimOptions) -> list[SeedFailure]:
    failures: list[SeedFailure] = []
    for seed in seeds:
        try:
            run_simulation(seed, options)
        except InvariantViolation as exc:
            failures.append(SeedFailure(seed=seed, invariant=exc.invariant, message=str(exc)))
    return failures
