"""The built-in ``_audit`` contract: each node's audit-log root, anchored on the ledger.

Every node keeps a tamper-evident log of the calls its gateways served
(:mod:`kyodo.audit`): hash-chained records, the leaves of an RFC 6962 Merkle
tree. Periodically the node signs the tree's root (a checkpoint) and orders it
here, in a transaction signed by its own node key. From then on every other
organization holds a commitment to that node's log: an export that does not
match an anchored root, or a log that was cut or rewritten after anchoring, is
evidence.

``anchor`` refuses a root that does not extend the previous one: the node must
send an RFC 6962 consistency proof from the last anchored size to the new
one, which the contract checks. A log that shrank or was rewritten cannot be
anchored again.
"""

from __future__ import annotations

from typing import Any

from kyodo.contracts._context import Context
from kyodo.contracts._sdk import Contract, function
from kyodo.contracts.errors import ContractError
from kyodo.crypto import MerkleProofError, verify_consistency

__all__ = ["AUDIT_CONTRACT", "AuditAnchorContract"]

AUDIT_CONTRACT = "_audit"


class AuditAnchorContract(Contract):
    """Audit-log roots of the nodes, each extending the last (consistency-checked)."""

    name = AUDIT_CONTRACT

    @function(allow=("*.node",))
    def anchor(
        self,
        ctx: Context,
        size: int,
        root: bytes,
        time_ms: int,
        signature: bytes,
        consistency: list[bytes],
    ) -> dict[str, Any]:
        """Anchor the calling node's audit-log root at ``size`` records."""
        node, org = ctx.caller.name, ctx.caller.org
        if size < 0 or len(root) != 32 or len(signature) != 64 or len(consistency) > 64:
            raise ContractError("an anchor is (size >= 0, 32-byte root, 64-byte signature)")
        previous = ctx.get(f"anchor/{org}/{node}")  # a CA vouches only for its own org
        if previous is not None:
            old_size, old_root = int(previous["size"]), bytes(previous["root"])
            if size < old_size:
                raise ContractError(
                    f"the audit log of {node} shrank from {old_size} to {size} records"
                )
            if size == old_size and root != old_root:
                raise ContractError(f"the audit log of {node} was rewritten at {size} records")
            if old_size and size > old_size:
                try:
                    verify_consistency(old_size, size, old_root, root, list(consistency))
                except MerkleProofError as exc:
                    raise ContractError(
                        f"the audit log of {node} at {size} records does not extend the one "
                        f"anchored at {old_size}: {exc}"
                    ) from None
        record = {
            "node": node,
            "org": org,
            "size": size,
            "root": root,
            "time_ms": time_ms,
            "signature": signature,
            "height": ctx.height,
        }
        ctx.put(f"anchor/{org}/{node}", record)
        ctx.emit("AuditAnchored", {"node": node, "size": size, "root": root})
        return {"node": node, "size": size}

    @function(read_only=True)
    def latest(self, ctx: Context, org: str, node: str) -> dict[str, Any] | None:
        """The last root anchored by ``node`` of ``org`` (None: none yet)."""
        found = ctx.get(f"anchor/{org}/{node}")
        return None if found is None else dict(found)
