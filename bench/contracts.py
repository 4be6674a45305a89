"""Cost of the contract sandbox: executor time per transfer, built-in vs sandboxed.

Runs in one process, with no network, signatures or storage: the executor runs
blocks of transfers over in-memory state, first with the built-in
``asset_transfer`` (trusted, not metered), then with the ``samples/cash``
contract (verified, rewritten and metered). Both have the same functions. It
also times the verifier and compiler on the payments sample, and how long an
infinite loop takes to exhaust its step budget.

    .venv/bin/python bench/contracts.py [--blocks 40] [--block-txs 250]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from kyodo.contracts import BUILTIN_CONTRACTS, ContractPackage, load_package_class
from kyodo.contracts._testing import Call, LocalLedger

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def _transfers(ledger: LocalLedger, contract: str, blocks: int, block_txs: int) -> float:
    """Seconds per transfer, over ``blocks`` blocks of ``block_txs`` transfers."""
    owner, admin = ledger.member("org1", "bench"), ledger.admin("org1")
    ledger.block([Call(owner, contract, "create_account", (f"a{i}",)) for i in range(2)])
    ledger.submit(admin, contract, "issue", "a0", 10**9)
    calls = [Call(owner, contract, "transfer", ("a0", "a1", 1)) for _ in range(block_txs)]
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{contract}: {blocks} blocks", total=blocks)
        for _ in range(blocks):
            results = ledger.block(calls)
            assert all(r.status == 0 for r in results), results[0].message
            progress.advance(task)
    return (time.perf_counter() - start) / (blocks * block_txs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-txs", type=int, default=250)
    args = parser.parse_args()

    builtin = LocalLedger(orgs=("org1", "org2"), builtins=BUILTIN_CONTRACTS)
    builtin_s = _transfers(builtin, "asset_transfer", args.blocks, args.block_txs)

    sandboxed = LocalLedger(orgs=("org1", "org2"))
    sandboxed.deploy(ROOT / "samples" / "cash" / "cash.py")
    sandboxed_s = _transfers(sandboxed, "cash", args.blocks, args.block_txs)

    payments = ContractPackage(
        name="payments",
        version="1",
        filename="payments.py",
        source=(ROOT / "samples" / "payments" / "payments.py").read_text(),
    )
    start = time.perf_counter()
    for _ in range(20):
        payments.check()
    verify_ms = (time.perf_counter() - start) / 20 * 1000
    start = time.perf_counter()
    for _ in range(20):
        load_package_class(payments)
    compile_ms = (time.perf_counter() - start) / 20 * 1000

    spin = LocalLedger(orgs=("org1",))
    spin.deploy(ROOT / "tests" / "integration" / "_runaway.py", name="runaway")
    start = time.perf_counter()
    (result,) = spin.block([Call(spin.member("org1"), "runaway", "spin")])
    spin_ms = (time.perf_counter() - start) * 1000
    assert result.status == 3, result.message  # RESOURCE_LIMIT

    console.print(
        f"executor time per transfer: built-in asset_transfer {builtin_s * 1e6:.1f} µs, "
        f"sandboxed cash {sandboxed_s * 1e6:.1f} µs "
        f"({sandboxed_s / builtin_s:.2f}x)\n"
        f"verify payments.py: {verify_ms:.1f} ms; verify + rewrite + load: {compile_ms:.1f} ms\n"
        f"an infinite loop exhausts 100,000 steps in {spin_ms:.0f} ms\n"
        f"setup: {args.blocks} blocks x {args.block_txs} transfers, in-memory state, no "
        f"signatures or storage; python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, {platform.machine()}"
    )


if __name__ == "__main__":
    main()
