"""Cash: the asset-transfer sample as a deployed (sandboxed) contract.

The same functions as the built-in ``asset_transfer`` (so ``kyodo bench
--contract cash`` can drive it), written as a contract author would: accounts
bound to an enrollment identity (``org/name``), issuance by admins, transfers
by owners. ``VERSION`` appears in every transfer's result, so an upgrade can be
seen in the chain: each transaction shows the version that executed it.
"""

from typing import Any

from kyodo.contract import Context, Contract, ContractError, function

VERSION = "1"


class Cash(Contract):
    """Accounts with integer balances (minor units)."""

    @function
    def create_account(self, ctx: Context, account: str) -> dict[str, Any]:
        """Open ``account`` with a zero balance, owned by the caller."""
        if not account or len(account) > 128:
            raise ContractError("account id must be 1 to 128 characters")
        if ctx.get(f"account/{account}") is not None:
            raise ContractError(f"account {account} already exists")
        record = {"owner": ctx.caller.identity, "balance": 0}
        ctx.put(f"account/{account}", record)
        ctx.emit("AccountCreated", {"account": account, "owner": ctx.caller.identity})
        return {"account": account, **record}

    @function(allow=("*.admin",))
    def issue(self, ctx: Context, account: str, amount: int) -> dict[str, Any]:
        """Create ``amount`` new units in ``account`` (organization admins only)."""
        if amount <= 0:
            raise ContractError("amount must be positive")
        record = load(ctx, account)
        record["balance"] += amount
        ctx.put(f"account/{account}", record)
        ctx.emit("Issued", {"account": account, "amount": amount})
        return {"account": account, **record}

    @function
    def transfer(self, ctx: Context, source: str, target: str, amount: int) -> dict[str, Any]:
        """Move ``amount`` from ``source`` (owned by the caller) to ``target``."""
        if amount <= 0:
            raise ContractError("amount must be positive")
        if source == target:
            raise ContractError("source and target are the same account")
        src = load(ctx, source)
        dst = load(ctx, target)
        if src["owner"] != ctx.caller.identity:
            raise ContractError(f"account {source} is not owned by {ctx.caller.identity}")
        if src["balance"] < amount:
            raise ContractError(f"insufficient funds: {source} holds {src['balance']}")
        src["balance"] -= amount
        dst["balance"] += amount
        ctx.put(f"account/{source}", src)
        ctx.put(f"account/{target}", dst)
        ctx.emit("Transferred", {"source": source, "target": target, "amount": amount})
        return {"source_balance": src["balance"], "version": VERSION}

    @function(read_only=True)
    def balance(self, ctx: Context, account: str) -> int:
        """The balance of ``account``."""
        return int(load(ctx, account)["balance"])

    @function(read_only=True)
    def account(self, ctx: Context, account: str) -> dict[str, Any]:
        """The account record (owner, balance)."""
        return load(ctx, account)


def load(ctx: Context, account: str) -> dict[str, Any]:
    """The record of ``account``; refuse if it does not exist."""
    record = ctx.get(f"account/{account}")
    if record is None:
        raise ContractError(f"account {account} does not exist")
    return dict(record)
