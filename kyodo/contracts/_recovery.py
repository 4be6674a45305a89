"""The built-in ``_recovery`` contract: key-loss recovery approved by officers, on record.

A member who lost a signing key keeps their enrollment identity (``org/name``),
and with it their assets and roles, because contracts bind those to the identity
and not to the key. Recovery binds a new key to that identity:

1. An officer (an admin of the member's organization) files a request naming the
   member and the new public key. The organization's policy (``set_policy``)
   says how many officers must approve (M) and how long the owner has to object.
2. Other officers approve. Every approval is a signed transaction, on the ledger.
3. Until the waiting period ends, the owner, if they still hold the old key, can
   object, which closes the request. Nobody can then finish it.
4. Once M officers approved and the waiting period passed without objection,
   ``complete`` marks the request approved. The organization's CA then issues
   a certificate for the new key under the same name, and revokes the old
   certificates through a configuration change (``kyodo recovery complete``
   does both). From that height the old key is refused everywhere.

The chain keeps who asked, who approved, when, and whether the owner objected:
the record an auditor needs.
"""

from __future__ import annotations

from typing import Any

from kyodo.contracts._context import Context
from kyodo.contracts._sdk import Contract, function
from kyodo.contracts.errors import ContractError

__all__ = ["DEFAULT_RECOVERY_POLICY", "RecoveryContract"]

DEFAULT_RECOVERY_POLICY = {"approvals": 2, "waiting_ms": 24 * 3600 * 1000}
"""Until an organization sets its own: two officers, and a day for the owner to object."""
MAX_WAITING_MS = 90 * 24 * 3600 * 1000


def _policy(ctx: Context, org: str) -> dict[str, Any]:
    found = ctx.get(f"policy/{org}")
    return dict(DEFAULT_RECOVERY_POLICY) if found is None else dict(found)


def _load(ctx: Context, request_id: str) -> dict[str, Any]:
    found = ctx.get(f"request/{request_id}")
    if found is None:
        raise ContractError(f"no recovery request {request_id}")
    return dict(found)


class RecoveryContract(Contract):
    """Key-loss recovery requests, officers' approvals and owners' objections."""

    name = "_recovery"

    @function(allow=("*.admin",))
    def set_policy(self, ctx: Context, approvals: int, waiting_ms: int) -> dict[str, Any]:
        """Set the caller's organization's recovery policy (officers needed, waiting)."""
        if not 1 <= approvals <= 16:
            raise ContractError("approvals must be between 1 and 16 officers")
        if not 0 <= waiting_ms <= MAX_WAITING_MS:
            raise ContractError(f"waiting_ms must be between 0 and {MAX_WAITING_MS}")
        policy = {
            "approvals": approvals,
            "waiting_ms": waiting_ms,
            "set_by": ctx.caller.identity,
            "at_ms": ctx.block_time,
        }
        ctx.put(f"policy/{ctx.caller.org}", policy)
        ctx.emit("RecoveryPolicySet", {"org": ctx.caller.org, **policy})
        return policy

    @function(allow=("*.admin",))
    def request(self, ctx: Context, name: str, new_key: bytes, reason: str) -> dict[str, Any]:
        """File a request to bind ``new_key`` to member ``name`` of the caller's org."""
        org = ctx.caller.org
        if not name or len(name) > 64 or "/" in name:
            raise ContractError("name must be 1 to 64 characters without '/'")
        if len(new_key) != 32:
            raise ContractError("new_key must be a 32-byte Ed25519 public key")
        open_id = ctx.get(f"open/{org}/{name}")
        if open_id is not None:
            raise ContractError(f"{org}/{name} already has an open recovery request {open_id}")
        policy = _policy(ctx, org)
        request_id = ctx.tx_id
        record = {
            "id": request_id,
            "org": org,
            "name": name,
            "new_key": new_key.hex(),
            "reason": reason[:200],
            "requested_by": ctx.caller.identity,
            "requested_ms": ctx.block_time,
            "not_before_ms": ctx.block_time + int(policy["waiting_ms"]),
            "approvals_needed": int(policy["approvals"]),
            "approved_by": [ctx.caller.identity],
            "status": "pending",
        }
        ctx.put(f"request/{request_id}", record)
        ctx.put(f"open/{org}/{name}", request_id)
        ctx.emit("RecoveryRequested", {"id": request_id, "org": org, "name": name})
        return record

    @function(allow=("*.admin",))
    def approve(self, ctx: Context, request_id: str) -> dict[str, Any]:
        """An officer of the member's organization approves a pending request."""
        record = _load(ctx, request_id)
        if ctx.caller.org != record["org"]:
            raise ContractError(f"only officers of {record['org']} approve its recoveries")
        if record["status"] != "pending":
            raise ContractError(f"request {request_id} is {record['status']}")
        if ctx.caller.identity in record["approved_by"]:
            raise ContractError(f"{ctx.caller.identity} has already approved {request_id}")
        record["approved_by"] = [*record["approved_by"], ctx.caller.identity]
        ctx.put(f"request/{request_id}", record)
        ctx.emit("RecoveryApproved", {"id": request_id, "by": ctx.caller.identity})
        return record

    @function
    def object(self, ctx: Context, request_id: str, reason: str) -> dict[str, Any]:
        """The member themselves (with the key they still hold) stops the recovery."""
        record = _load(ctx, request_id)
        owner = f"{record['org']}/{record['name']}"
        if ctx.caller.identity != owner:
            raise ContractError(f"only {owner} can object to this recovery")
        if record["status"] != "pending":
            raise ContractError(f"request {request_id} is {record['status']}")
        record.update(status="objected", objection=reason[:200], objected_ms=ctx.block_time)
        ctx.put(f"request/{request_id}", record)
        ctx.delete(f"open/{record['org']}/{record['name']}")
        ctx.emit("RecoveryObjected", {"id": request_id})
        return record

    @function(allow=("*.admin",))
    def complete(self, ctx: Context, request_id: str) -> dict[str, Any]:
        """Mark a request approved: enough officers, waiting period over, no objection."""
        record = _load(ctx, request_id)
        if ctx.caller.org != record["org"]:
            raise ContractError(f"only officers of {record['org']} complete its recoveries")
        if record["status"] != "pending":
            raise ContractError(f"request {request_id} is {record['status']}")
        have, need = len(record["approved_by"]), int(record["approvals_needed"])
        if have < need:
            raise ContractError(f"request {request_id} has {have} of {need} officers' approvals")
        if ctx.block_time < record["not_before_ms"]:
            left = (record["not_before_ms"] - ctx.block_time + 999) // 1000
            raise ContractError(
                f"the owner may object for {left} more seconds (until {record['not_before_ms']})"
            )
        record.update(
            status="approved", completed_by=ctx.caller.identity, completed_ms=ctx.block_time
        )
        ctx.put(f"request/{request_id}", record)
        ctx.delete(f"open/{record['org']}/{record['name']}")
        ctx.emit("RecoveryApprovedForIssue", {"id": request_id, "new_key": record["new_key"]})
        return record

    @function(read_only=True)
    def status(self, ctx: Context, request_id: str) -> dict[str, Any]:
        """A request as it stands."""
        return _load(ctx, request_id)

    @function(read_only=True)
    def policy(self, ctx: Context, org: str) -> dict[str, Any]:
        """An organization's recovery policy."""
        return _policy(ctx, org)
