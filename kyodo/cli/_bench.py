"""The throughput benchmark: signed transfers against a running local network.

Setup: each client (a thread, with its own gateway connection as ``user1``
of an organization, round-robin over organizations) opens two accounts,
which its organization's admin funds. Run: each client submits transfers
between its two accounts back and forth, one at a time, each waiting for
finality, until the duration ends. Reported: committed transactions per
second over the run, finality latency percentiles as the client sees them
(submit to final, through the gateway), failures by kind, and the setup.
"""

from __future__ import annotations

import os
import platform
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kyodo.cli._network import LocalNetwork
from kyodo.client import KyodoError

__all__ = ["BenchResult", "run_bench"]


@dataclass(slots=True)
class BenchResult:
    """Figures and setup of one benchmark run."""

    committed: int
    duration_s: float
    tps: float
    latency_ms: dict[str, float]
    failures: dict[str, int]
    setup: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return round(sorted_values[index], 2)


def run_bench(
    network: LocalNetwork,
    *,
    clients: int,
    duration_s: float,
    progress: Callable[[str], None],
    contract: str = "asset_transfer",
) -> BenchResult:
    """Drive ``network`` with ``clients`` concurrent clients for ``duration_s`` seconds.

    ``contract`` is the built-in ``asset_transfer`` or a deployed contract with the
    same functions (``create_account``, ``issue``, ``transfer``), e.g. the cash sample.
    """
    run = secrets.token_hex(3)
    orgs = network.orgs
    gateways = [network.gateway(orgs[i % len(orgs)]) for i in range(clients)]
    admins = {org: network.gateway(org, "admin") for org in orgs}
    validators = len(network.current_config().validators())
    progress(f"setting up {2 * clients} accounts")
    accounts: list[tuple[str, str]] = []
    setup_errors: list[Exception] = []

    def setup(i: int) -> None:
        org = orgs[i % len(orgs)]
        pair = (f"bench-{run}-{i}-a", f"bench-{run}-{i}-b")
        try:
            handle = gateways[i].contract(contract)
            for account in pair:
                handle.submit("create_account", account)
            admins[org].contract(contract).submit("issue", pair[0], 1_000_000)
        except KyodoError as exc:
            setup_errors.append(exc)
        accounts.append(pair)

    _in_threads(setup, clients)
    if setup_errors:
        raise KyodoError(f"benchmark setup failed: {setup_errors[0]}", code="bench")
    accounts.sort()
    by_client = {int(a.split("-")[2]): (a, b) for a, b in accounts}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: dict[str, int] = {}
    lock = threading.Lock()
    progress(f"running {clients} clients for {duration_s:g} s")
    start = time.perf_counter()
    deadline = start + duration_s

    def drive(i: int) -> None:
        handle = gateways[i].contract(contract)
        source, target = by_client[i]
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                handle.submit("transfer", source, target, 1)
            except KyodoError as exc:
                with lock:
                    failures[exc.code] = failures.get(exc.code, 0) + 1
                continue
            latencies[i].append((time.perf_counter() - t0) * 1000)
            source, target = target, source

    _in_threads(drive, clients)
    elapsed = time.perf_counter() - start
    for gw in [*gateways, *admins.values()]:
        gw.close()
    values = sorted(v for per_client in latencies for v in per_client)
    return BenchResult(
        committed=len(values),
        duration_s=round(elapsed, 2),
        tps=round(len(values) / elapsed, 1),
        latency_ms={
            "p50": _percentile(values, 0.50),
            "p95": _percentile(values, 0.95),
            "p99": _percentile(values, 0.99),
            "max": round(values[-1], 2) if values else 0,
        },
        failures=failures,
        setup={
            "orgs": len(orgs),
            "nodes": len(network.nodes),
            "clients": clients,
            "duration_s": duration_s,
            "workload": f"{contract}.transfer, signed Ed25519, each submit waits for finality",
            "consensus": f"BFT, {validators} validators, tolerates f={(validators - 1) // 3}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    )


def _in_threads(fn: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=fn, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
