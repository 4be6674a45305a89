"""The sample application: accounts and transfers between organizations, via the SDK.

Run by ``make demo`` once the local network is up. It acts as real users of
two organizations, each through a gateway of its *own* organization; it
never names the leader or any other organization's node.

    python examples/asset_transfer_demo.py --dir kyodo-network
"""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

from rich.console import Console

from kyodo.client import ContractFailed, load_user

console = Console()


def user(folder: Path, org: str, name: str):  # type: ignore[no-untyped-def]
    """Connect as ``name`` of ``org`` to that organization's gateway."""
    network = json.loads((folder / "network.json").read_text())
    gateway = next(n["gateway"] for n in network["nodes"] if n["org_id"] == org)
    credentials = load_user(
        folder / "orgs" / org / "users" / name,
        passphrase=(folder / "orgs" / org / "passphrase").read_bytes().strip(),
        chain_id=network["chain_id"],
        ca_bundle=folder / "ca-bundle.pem",
    )
    return credentials.connect(gateway)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("kyodo-network"))
    folder = parser.parse_args().dir
    run = secrets.token_hex(2)
    alice, bob = f"alice-{run}", f"bob-{run}"
    with (
        user(folder, "org1", "user1") as org1_user,
        user(folder, "org1", "admin") as org1_admin,
        user(folder, "org2", "user1") as org2_user,
    ):
        bank1 = org1_user.network().contract("asset_transfer")
        console.rule("asset transfer between org1 and org2")
        r = bank1.submit_transaction("create_account", alice)
        opened_at = r.height
        console.print(f"org1/user1 opened {alice}: block {r.height}, tx {r.tx_id[:16]}")
        r = org2_user.contract("asset_transfer").submit_transaction("create_account", bob)
        console.print(f"org2/user1 opened {bob}: block {r.height}, tx {r.tx_id[:16]}")
        r = org1_admin.contract("asset_transfer").submit_transaction("issue", alice, 1_000)
        console.print(f"org1/admin issued 1000 to {alice}: block {r.height}")
        r = bank1.submit_transaction("transfer", alice, bob, 250)
        console.print(f"{alice} -> {bob} 250: block {r.height}, result {r.result}")
        try:
            bank1.submit("transfer", alice, bob, 5_000)
        except ContractFailed as exc:
            console.print(
                f"{alice} -> {bob} 5000 refused by the contract, recorded in block "
                f"{exc.height}: [yellow]{exc}[/]"
            )
        console.rule("what org2's systems saw (its event stream, from its own node)")
        first = org2_user.status().height
        with org2_user.network().events(
            contracts=("asset_transfer",), after=(opened_at, -1, -1), until=first
        ) as stream:
            for event in stream:
                if {alice, bob} & {str(v) for v in event.payload.values()}:
                    console.print(
                        f"  {event.idempotency_key:<22} {event.name:<15} {event.payload}",
                        highlight=False,
                    )
                event.ack()
        seen_by_org2 = org2_user.contract("asset_transfer").evaluate("balance", bob)
        console.print(f"balance of {bob}, read at org2's node: {seen_by_org2}")
        status = org2_user.status()
        console.print(
            f"org2's node: height {status.height}, tip {status.tip_hash.hex()[:16]}, "
            f"state root {status.state_root.hex()[:16]}"
        )
    console.rule("done")
    console.print(f"network folder: {folder.resolve()}  (stop it with `make demo-down`)")


if __name__ == "__main__":
    main()
