"""The payments workflow: deployed by approval, then used by two organizations.

Run by ``make demo`` after the asset-transfer demo. The admins of org1, org2 and
org3 (a majority of four) approve the ``samples/payments`` package; org1's admin
commits it, and it is in force from the next block, with no restart. Then
org1's admin sets a limit for paying org2 (master data), org1's users submit
payment instructions that the contract checks against it, and org2 approves
one and rejects another. Every step stays on the ledger. If ``payments`` is
already deployed (a second ``make demo``), the deployment is skipped.

    python examples/payments_demo.py --dir kyodo-network
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from rich.console import Console

from kyodo.cli._lifecycle import Lifecycle, build_package
from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed

console = Console()
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "payments" / "payments.py"


def deploy(net: LocalNetwork) -> None:
    """Approve as a majority of organizations, then commit (once)."""
    lifecycle = Lifecycle(net)
    if lifecycle.definition("payments") is not None:
        console.print("payments is already deployed")
        return
    package = build_package(SAMPLE)
    console.print(f"package payments {package.version}, hash {package.package_hash().hex()}")
    needed = lifecycle.policy()["quorum"]
    for org in net.orgs[:needed]:
        status = lifecycle.approve(org, package)
        console.print(
            f"  {org} approves: {len(status['approved_by'])} of {status['needed']}"
            + (" (ready)" if status["ready"] else "")
        )
    done = lifecycle.commit(net.orgs[0], package)
    console.print(f"deployed, in force from block {done['since_height']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("kyodo-network"))
    net = LocalNetwork(parser.parse_args().dir)
    console.rule("payments workflow: deploy by approval")
    deploy(net)
    run = secrets.token_hex(2)
    console.rule("master data, instructions, decisions")
    with (
        net.gateway("org1", "admin") as org1_admin,
        net.gateway("org1") as org1_user,
        net.gateway("org2") as org2_user,
    ):
        payer = org1_user.contract("payments")
        payee = org2_user.contract("payments")
        org1_admin.contract("payments").submit("set_limit", "org2", "EUR", 10_000)
        console.print("org1 admin: may pay org2 up to 10,000 EUR")
        for n, amount in ((1, 2_500), (2, 7_000), (3, 12_000)):
            result = payer.submit("submit", f"pay-{run}-{n}", "org2", "EUR", amount, f"inv {n}")
            detail = f" ({result['reason']})" if result["reason"] else ""
            console.print(
                f"org1 user: instruction pay-{run}-{n} {amount} EUR -> {result['status']}{detail}"
            )
        payee.submit("approve", f"pay-{run}-1", "matches PO 4411")
        payee.submit("reject", f"pay-{run}-2", "no matching purchase order")
        console.print("org2 user: approved the first, rejected the second")
        try:
            payer.submit("approve", f"pay-{run}-1", "")
        except ContractFailed as exc:
            console.print(f"org1 user tries to decide: refused ({exc})")
        for step in payer.evaluate("steps", f"pay-{run}-2"):
            console.print(
                f"  step of pay-{run}-2: {step['action']} by {step['by']} ({step['detail']})"
            )
    console.rule("done")


if __name__ == "__main__":
    main()
