"""Deterministic simulation of a Kyodo network (STYLE.md section 12).

The production BFT core (:class:`kyodo.consensus.Bft`) runs in N simulated
validators over a simulated network, driven by one seed:
``run_simulation(seed, options)`` either returns a :class:`SimResult` or
raises :class:`InvariantViolation` naming the seed that replays the failure.
See :mod:`kyodo.testing._sim` for the theory of operation.
"""

from kyodo.testing._batch import SeedFailure, run_seeds
from kyodo.testing._byzantine import OUTSIDER, Byzantine
from kyodo.testing._fake import (
    SIM_CHAIN_ID,
    compute_sim_signature,
    make_sim_block,
    make_sim_tx,
)
from kyodo.testing._faults import (
    Crash,
    CrashAfterWal,
    Fault,
    FaultPlan,
    HealPartition,
    Partition,
    Restart,
)
from kyodo.testing._invariants import InvariantViolation
from kyodo.testing._network import NetworkProfile
from kyodo.testing._shell import ShellTiming, SimNode, TxFinal
from kyodo.testing._sim import (
    DEFAULT_PARAMS,
    REPLAY_HINT,
    AppendRecord,
    SimOptions,
    SimResult,
    Simulation,
    run_simulation,
)

__all__ = [
    "DEFAULT_PARAMS",
    "OUTSIDER",
    "REPLAY_HINT",
    "SIM_CHAIN_ID",
    "AppendRecord",
    "Byzantine",
    "Crash",
    "CrashAfterWal",
    "Fault",
    "FaultPlan",
    "HealPartition",
    "InvariantViolation",
    "NetworkProfile",
    "Partition",
    "Restart",
    "SeedFailure",
    "ShellTiming",
    "SimNode",
    "SimOptions",
    "SimResult",
    "Simulation",
    "TxFinal",
    "compute_sim_signature",
    "make_sim_block",
    "make_sim_tx",
    "run_seeds",
    "run_simulation",
]
