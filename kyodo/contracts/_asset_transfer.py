"""The built-in asset-transfer contract: accounts owned by identities, and transfers.

Accounts belong to an enrollment identity (``org/name`` of the creator's
certificate), not to a key, so a user whose key is replaced keeps them.
Only an organization's admin may issue new units (the issuer role);
anyone may open an account; only the owner may transfer out of it.
"""

from __future__ import annotations

from typing import Any

from kyodo.contracts._context import Context
from kyodo.contracts._sdk import Contract, function
from kyodo.contracts.errors import ContractError

__all__ = ["AssetTransfer"]


def _account_key(account: str) -> str:
    return f"account/{account}"


class AssetTransfer(Contract):
    """Accounts with integer balances, issuance by admins, transfers by owners."""

    name = "asset_transfer"

    @function
    def create_account(self, ctx: Context, account: str) -> dict[str, Any]:
        """Open ``account`` with a zero balance, owned by the caller."""
        if not account or len(account) > 128:
            raise ContractError("account id must be 1 to 128 characters")
        if ctx.get(_account_key(account)) is not None:
            raise ContractError(f"account {account} already exists")
        record = {"owner": ctx.caller.identity, "balance": 0}
        ctx.put(_account_key(account), record)
        ctx.emit("AccountCreated", {"account": account, "owner": ctx.caller.identity})
        return {"account": account, **record}

    @function
    def issue(self, ctx: Context, account: str, amount: int) -> dict[str, Any]:
        """Create ``amount`` new units in ``account`` (organization admins only)."""
        if ctx.caller.role != "admin":
            raise ContractError(f"only an admin may issue; caller's role is {ctx.caller.role}")
        if amount <= 0:
            raise ContractError("amount must be positive")
        record = _load(ctx, account)
        record["balance"] += amount
        ctx.put(_account_key(account), record)
        ctx.emit("Issued", {"account": account, "amount": amount})
        return {"account": account, **record}

    @function
    def transfer(self, ctx: Context, source: str, target: str, amount: int) -> dict[str, Any]:
        """Move ``amount`` from ``source`` (owned by the caller) to ``target``."""
        if amount <= 0:
            raise ContractError("amount must be positive")
        if source == target:
            raise ContractError("source and target are the same account")
        src = _load(ctx, source)
        dst = _load(ctx, target)
        if src["owner"] != ctx.caller.identity:
            raise ContractError(f"account {source} is not owned by {ctx.caller.identity}")
        if src["balance"] < amount:
            raise ContractError(
                f"insufficient funds: account {source} holds {src['balance']}, "
                f"transfer needs {amount}"
            )
        src["balance"] -= amount
        dst["balance"] += amount
        ctx.put(_account_key(source), src)
        ctx.put(_account_key(target), dst)
        ctx.emit("Transferred", {"source": source, "target": target, "amount": amount})
        return {
            "source": source,
            "target": target,
            "amount": amount,
            "source_balance": src["balance"],
        }

    @function(read_only=True)
    def balance(self, ctx: Context, account: str) -> int:
        """The balance of ``account``."""
        return int(_load(ctx, account)["balance"])

    @function(read_only=True)
    def account(self, ctx: Context, account: str) -> dict[str, Any]:
        """The account record (owner, balance)."""
        return _load(ctx, account)


def _load(ctx: Context, account: str) -> dict[str, Any]:
    record = ctx.get(_account_key(account))
    if record is None:
        raise ContractError(f"account {account} does not exist")
    return dict(record)
