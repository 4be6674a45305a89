"""The built-in ``_lifecycle`` contract: deploy, upgrade and terminate by approval.

Theory of operation
-------------------
Each contract name has a *definition* with a *sequence* number (0 before the
first deployment, +1 with every change). A change to sequence ``s + 1`` is a
*proposal*: an action (``deploy``, ``upgrade``, ``terminate``) and a package
hash. Each organization's admin approves a proposal with a transaction; the
approval (who, when, in which transaction) stays in state and in history.
Once approvals from the lifecycle quorum of member organizations match the
same proposal, any admin commits it:

- ``commit(package)``: the package's hash must be the approved one; its code
  is verified by the sandbox, stored under its hash, and the definition points
  to it. On first deployment the contract's ``init`` runs with the package's
  init arguments; on upgrade the package's ``migrate`` function runs once. Both
  run in the commit transaction, so a failure leaves nothing behind.
- ``terminate(name)``: the contract turns read-only; its state and history stay.

The executor reads definitions from the state *before* each block, so a change
takes effect from the block after its commit: every transaction is executed by
exactly one version, decided by height. No node restarts.

The quorum is a majority of member organizations unless ``set_policy`` (itself
approved under the current quorum, as a proposal on the name ``_lifecycle``)
fixed a number.
"""

from __future__ import annotations

from typing import Any

from kyodo.codec import encode
from kyodo.contracts._context import Context
from kyodo.contracts._package import CONTRACT_NAME, decode_package
from kyodo.contracts._sdk import Contract, function
from kyodo.contracts.errors import LifecycleError
from kyodo.crypto import sha256

__all__ = ["ACTIONS", "LifecycleContract", "policy_digest", "proposal_status"]

ACTIONS = ("deploy", "upgrade", "terminate", "policy")
POLICY_NAME = "_lifecycle"


def policy_digest(quorum: int) -> bytes:
    """What admins approve to set the lifecycle quorum to ``quorum`` organizations."""
    return sha256(encode(["kyodo.lifecycle.policy", quorum]))


def _definition(ctx: Context, name: str) -> dict[str, Any] | None:
    found = ctx.get(f"definition/{name}")
    return None if found is None else dict(found)


def _quorum(ctx: Context) -> tuple[int, int]:
    """(approvals needed, member organizations)."""
    members = len(ctx.members)
    policy = ctx.get("policy")
    needed = members // 2 + 1 if policy is None else int(policy["quorum"])
    return needed, members


def proposal_status(
    ctx: Context, name: str, sequence: int, action: str, digest: bytes
) -> dict[str, Any]:
    """Who approved this proposal, who did not (yet), and whether it may be committed."""
    needed, _ = _quorum(ctx)
    approved, other = [], []
    for org in ctx.members:
        found = ctx.get(f"approval/{name}/{sequence:010d}/{org}")
        if found is None:
            continue
        if found["action"] == action and found["hash"] == digest.hex():
            approved.append(org)
        else:
            other.append(org)
    missing = [org for org in ctx.members if org not in approved]
    return {
        "name": name,
        "sequence": sequence,
        "action": action,
        "hash": digest.hex(),
        "approved_by": approved,
        "approved_otherwise": other,
        "missing": missing,
        "needed": needed,
        "ready": len(approved) >= needed,
    }


def _require_quorum(
    ctx: Context, name: str, sequence: int, action: str, digest: bytes
) -> list[str]:
    status = proposal_status(ctx, name, sequence, action, digest)
    if not status["ready"]:
        raise LifecycleError(
            f"{action} of {name} (sequence {sequence}, package {digest.hex()[:16]}) has "
            f"{len(status['approved_by'])} of {status['needed']} approvals needed "
            f"(approved: {', '.join(status['approved_by']) or 'none'}; "
            f"missing: {', '.join(status['missing']) or 'none'})"
        )
    return list(status["approved_by"])


class LifecycleContract(Contract):
    """Approvals and commits of contract packages."""

    name = "_lifecycle"

    @function(allow=("*.admin",))
    def approve(
        self, ctx: Context, name: str, sequence: int, action: str, package_hash: bytes
    ) -> dict[str, Any]:
        """Record the caller's organization's approval of a proposal."""
        if action not in ACTIONS:
            raise LifecycleError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        if name != POLICY_NAME and not CONTRACT_NAME.fullmatch(name):
            raise LifecycleError(f"{name!r} is not a contract name")
        if (action == "policy") != (name == POLICY_NAME):
            raise LifecycleError(f"the policy action applies to {POLICY_NAME!r} only")
        if len(package_hash) != 32:
            raise LifecycleError("package_hash must be a 32-byte SHA-256")
        current = _definition(ctx, name)
        expected = 1 + (0 if current is None else int(current["sequence"]))
        if sequence != expected:
            raise LifecycleError(f"{name} is at sequence {expected - 1}; approve {expected}")
        record = {
            "action": action,
            "hash": package_hash.hex(),
            "by": ctx.caller.identity,
            "at_ms": ctx.block_time,
            "height": ctx.height,
            "tx": ctx.tx_id,
        }
        ctx.put(f"approval/{name}/{sequence:010d}/{ctx.caller.org}", record)
        status = proposal_status(ctx, name, sequence, action, package_hash)
        ctx.emit("Approved", {"name": name, "sequence": sequence, "org": ctx.caller.org, **record})
        return status

    @function(allow=("*.admin",))
    def commit(self, ctx: Context, package: bytes) -> dict[str, Any]:
        """Deploy or upgrade the contract in ``package`` (approved by its hash)."""
        pkg = decode_package(package)
        system = ctx.system
        if system is None:
            raise AssertionError("the executor gives _lifecycle its system hooks")
        if system.is_builtin(pkg.name):
            raise LifecycleError(f"{pkg.name!r} is a built-in contract's name")
        digest = pkg.package_hash()
        current = _definition(ctx, pkg.name)
        if current is not None and current["status"] == "terminated":
            raise LifecycleError(f"{pkg.name} was terminated; deploy under a new name")
        action = "deploy" if current is None else "upgrade"
        sequence = 1 + (0 if current is None else int(current["sequence"]))
        # approvals first: an unapproved package's code is never even parsed
        approvers = _require_quorum(ctx, pkg.name, sequence, action, digest)
        pkg.check()
        ctx.put(f"package/{digest.hex()}", package)
        definition = {
            "name": pkg.name,
            "version": pkg.version,
            "sequence": sequence,
            "hash": digest.hex(),
            "status": "active",
            "since_height": ctx.height + 1,
            "committed_by": ctx.caller.identity,
            "committed_tx": ctx.tx_id,
            "approved_by": approvers,
        }
        ctx.put(f"definition/{pkg.name}", definition)
        if action == "deploy":
            system.run_once(pkg, "init", tuple(pkg.init_args))
        elif pkg.migrate:
            system.run_once(pkg, pkg.migrate, ())
        ctx.emit("Committed", {"action": action, **definition})
        return {"action": action, **definition}

    @function(allow=("*.admin",))
    def terminate(self, ctx: Context, name: str) -> dict[str, Any]:
        """Make ``name`` read-only for good (approved as the ``terminate`` action)."""
        current = _definition(ctx, name)
        if current is None or current["status"] != "active":
            raise LifecycleError(f"{name} is not an active contract")
        sequence = int(current["sequence"]) + 1
        digest = bytes.fromhex(current["hash"])
        approvers = _require_quorum(ctx, name, sequence, "terminate", digest)
        definition = {
            **current,
            "sequence": sequence,
            "status": "terminated",
            "since_height": ctx.height + 1,
            "committed_by": ctx.caller.identity,
            "committed_tx": ctx.tx_id,
            "approved_by": approvers,
        }
        ctx.put(f"definition/{name}", definition)
        ctx.emit("Terminated", definition)
        return definition

    @function(allow=("*.admin",))
    def set_policy(self, ctx: Context, quorum: int) -> dict[str, Any]:
        """Set how many member organizations must approve a lifecycle change."""
        needed, members = _quorum(ctx)
        if not 1 <= quorum <= members:
            raise LifecycleError(f"quorum must be between 1 and {members} organizations")
        current = _definition(ctx, POLICY_NAME)
        sequence = 1 + (0 if current is None else int(current["sequence"]))
        approvers = _require_quorum(ctx, POLICY_NAME, sequence, "policy", policy_digest(quorum))
        ctx.put("policy", {"quorum": quorum})
        record = {
            "name": POLICY_NAME,
            "sequence": sequence,
            "quorum": quorum,
            "previous": needed,
            "approved_by": approvers,
            "since_height": ctx.height + 1,
        }
        ctx.put(f"definition/{POLICY_NAME}", {**record, "status": "policy", "hash": ""})
        ctx.emit("PolicyChanged", record)
        return record

    @function(read_only=True)
    def definition(self, ctx: Context, name: str) -> dict[str, Any]:
        """The contract's current definition (version, sequence, hash, status)."""
        found = _definition(ctx, name)
        if found is None:
            raise LifecycleError(f"no contract named {name!r} was ever deployed")
        return found

    @function(read_only=True)
    def definitions(self, ctx: Context) -> list[dict[str, Any]]:
        """Every contract ever deployed, by name."""
        return [
            dict(value)
            for key, value in ctx.prefix("definition/")
            if value.get("name") != POLICY_NAME
        ]

    @function(read_only=True)
    def proposal(
        self, ctx: Context, name: str, sequence: int, action: str, package_hash: bytes
    ) -> dict[str, Any]:
        """Who approved a proposal and who is missing."""
        return proposal_status(ctx, name, sequence, action, package_hash)

    @function(read_only=True)
    def approvals(self, ctx: Context, name: str, sequence: int) -> list[dict[str, Any]]:
        """Every organization's approval recorded for ``name`` at ``sequence``."""
        return [
            {"org": key.rsplit("/", 1)[1], **value}
            for key, value in ctx.prefix(f"approval/{name}/{sequence:010d}/")
        ]

    @function(read_only=True)
    def policy(self, ctx: Context) -> dict[str, Any]:
        """The lifecycle quorum in force."""
        needed, members = _quorum(ctx)
        return {"quorum": needed, "members": members, "default": ctx.get("policy") is None}

    @function(read_only=True)
    def package(self, ctx: Context, package_hash: bytes) -> bytes:
        """The encoded package with this hash (as committed)."""
        found = ctx.get(f"package/{package_hash.hex()}")
        if found is None:
            raise LifecycleError(f"no package {package_hash.hex()} was committed")
        return bytes(found)
