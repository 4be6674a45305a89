"""The built-in ``_config`` contract: the record of configuration changes in state.

Whether a change is allowed (the admin policy, the epoch, the topology) is decided
by every validator before it votes for the configuration block
(``kyodo.ledger.check_config_update``); this contract records the accepted change
in the ``_config`` namespace and emits an event, so applications and auditors see
configuration history like any other state.
"""

from __future__ import annotations

from typing import Any

from kyodo.codec import decode_record
from kyodo.contracts._context import Context
from kyodo.contracts._sdk import Contract, function
from kyodo.crypto import sha256
from kyodo.ledger import NetworkConfig

__all__ = ["ConfigContract"]


class ConfigContract(Contract):
    """Configuration changes, as recorded state."""

    name = "_config"

    @function
    def update(self, ctx: Context, config: bytes, approvals: list) -> dict[str, Any]:  # type: ignore[type-arg]
        """Record the configuration that is in force from the next block on."""
        new = decode_record(NetworkConfig, config)
        record = {
            "epoch": new.epoch,
            "sha256": sha256(config).hex(),
            "validators": [n.node_id for n in new.validators()],
            "approvals": len(approvals),
            "in_force_from": ctx.height + 1,
        }
        ctx.put(f"epoch/{new.epoch:010d}", record)
        ctx.emit("ConfigurationChanged", record)
        return record

    @function(read_only=True)
    def current(self, ctx: Context) -> dict[str, Any]:
        """The record of the newest configuration change (empty before the first)."""
        entries = ctx.prefix("epoch/")
        return dict(entries[-1][1]) if entries else {}
