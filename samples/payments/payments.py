"""Payments: an inter-company workflow checked automatically against master data.

The workflow of the bank's proof of concept, as a contract:

1. Each organization's admin keeps its *master data*: the counterparties it
   pays and a limit per counterparty and currency (``set_limit``), or blocks a
   counterparty (``block``). Master data is read by every instruction.
2. A member of the paying organization submits a payment instruction
   (``submit``). The contract checks it at once against the master data: a
   known, unblocked counterparty, a currency with a limit, an amount within it,
   a new instruction id. An instruction that fails a check is recorded as
   ``auto_rejected`` with the reason, so the attempt stays on record.
3. A member of the receiving organization approves or rejects it
   (``approve``, ``reject``). Nobody else can; a decided instruction cannot be
   decided again.

Every step is appended (who, when, what) under ``step/<id>/<n>``, and the
instruction's key history shows each version: the workflow's record is the
ledger. Instructions are *transaction data*: each has its own key, appended
once and then only moved along the workflow, so thousands of concurrent
submissions that all read the same limit never conflict (order-execute).
"""

from typing import Any

from kyodo.contract import Context, Contract, ContractError, function

MAX_AMOUNT = 10**15
CURRENCIES = ("EUR", "JPY", "USD", "GBP", "CHF")


class Payments(Contract):
    """Payment instructions between organizations, checked against limits."""

    # -- master data (each organization's admins, for their own organization)

    @function(allow=("*.admin",))
    def set_limit(
        self, ctx: Context, counterparty: str, currency: str, limit: int
    ) -> dict[str, Any]:
        """Allow the caller's organization to pay ``counterparty`` up to ``limit``."""
        check_currency(currency)
        if counterparty not in ctx.members or counterparty == ctx.caller.org:
            raise ContractError(f"{counterparty} is not another member organization")
        if not 0 <= limit <= MAX_AMOUNT:
            raise ContractError(f"limit must be between 0 and {MAX_AMOUNT}")
        record = {
            "limit": limit,
            "set_by": ctx.caller.identity,
            "at_ms": ctx.block_time,
            "tx": ctx.tx_id,
        }
        ctx.put(f"limit/{ctx.caller.org}/{counterparty}/{currency}", record)
        ctx.emit(
            "LimitSet",
            {"payer": ctx.caller.org, "payee": counterparty, "currency": currency, "limit": limit},
        )
        return record

    @function(allow=("*.admin",))
    def block(self, ctx: Context, counterparty: str, reason: str) -> dict[str, Any]:
        """Stop the caller's organization paying ``counterparty`` until unblocked."""
        record = {
            "blocked": True,
            "reason": reason[:200],
            "by": ctx.caller.identity,
            "at_ms": ctx.block_time,
        }
        ctx.put(f"blocked/{ctx.caller.org}/{counterparty}", record)
        return record

    @function(allow=("*.admin",))
    def unblock(self, ctx: Context, counterparty: str) -> None:
        """Allow paying ``counterparty`` again (within its limits)."""
        ctx.delete(f"blocked/{ctx.caller.org}/{counterparty}")

    @function(read_only=True)
    def limit(self, ctx: Context, payer: str, payee: str, currency: str) -> dict[str, Any]:
        """The limit ``payer`` set for paying ``payee`` in ``currency`` (empty: none)."""
        return ctx.get(f"limit/{payer}/{payee}/{currency}") or {}

    # -- transaction data: instructions and their workflow

    @function
    def submit(
        self,
        ctx: Context,
        instruction_id: str,
        payee: str,
        currency: str,
        amount: int,
        reference: str,
    ) -> dict[str, Any]:
        """Submit a payment instruction from the caller's organization to ``payee``."""
        if not instruction_id or len(instruction_id) > 64 or "/" in instruction_id:
            raise ContractError("instruction id must be 1 to 64 characters without '/'")
        key = f"instruction/{instruction_id}"
        if ctx.get(key) is not None:
            raise ContractError(f"instruction {instruction_id} already exists")
        payer = ctx.caller.org
        master = ctx.get(f"limit/{payer}/{payee}/{currency}")
        problem = automatic_check(ctx, payer, payee, currency, amount, master)
        instruction = {
            "id": instruction_id,
            "payer": payer,
            "payee": payee,
            "currency": currency,
            "amount": amount,
            "reference": reference[:140],
            "status": "auto_rejected" if problem else "pending",
            "reason": problem,
            "limit_seen": master["limit"] if master else None,
            "limit_tx": master["tx"] if master else None,
            "submitted_by": ctx.caller.identity,
            "submitted_ms": ctx.block_time,
            "steps": 1,
        }
        ctx.put(key, instruction)
        record_step(ctx, instruction_id, 0, "auto_rejected" if problem else "submitted", problem)
        ctx.emit(
            "InstructionSubmitted",
            {"id": instruction_id, "status": instruction["status"], "payee": payee},
        )
        return instruction

    @function
    def approve(self, ctx: Context, instruction_id: str, comment: str) -> dict[str, Any]:
        """The payee's organization accepts a pending instruction."""
        return decide(ctx, instruction_id, "approved", comment)

    @function
    def reject(self, ctx: Context, instruction_id: str, reason: str) -> dict[str, Any]:
        """The payee's organization refuses a pending instruction, saying why."""
        if not reason:
            raise ContractError("a rejection needs a reason")
        return decide(ctx, instruction_id, "rejected", reason)

    @function(read_only=True)
    def instruction(self, ctx: Context, instruction_id: str) -> dict[str, Any]:
        """An instruction as it stands."""
        return load(ctx, instruction_id)

    @function(read_only=True)
    def steps(self, ctx: Context, instruction_id: str) -> list[dict[str, Any]]:
        """Every step of an instruction's workflow, in order: who, when, what."""
        load(ctx, instruction_id)
        return [value for _, value in ctx.prefix(f"step/{instruction_id}/")]

    @function(read_only=True)
    def pending_for(self, ctx: Context, payee: str) -> list[str]:
        """Ids of instructions waiting for ``payee``'s decision."""
        return [
            value["id"]
            for _, value in ctx.prefix("instruction/")
            if value["payee"] == payee and value["status"] == "pending"
        ]


def check_currency(currency: str) -> None:
    """Refuse unknown currencies."""
    if currency not in CURRENCIES:
        raise ContractError(f"currency {currency!r} is not one of {', '.join(CURRENCIES)}")


def automatic_check(
    ctx: Context, payer: str, payee: str, currency: str, amount: int, master: Any
) -> str:
    """Why the instruction fails the automatic checks ("" if it passes)."""
    if currency not in CURRENCIES:
        return f"unknown currency {currency}"
    if payee == payer or payee not in ctx.members:
        return f"{payee} is not a counterparty member"
    if ctx.get(f"blocked/{payer}/{payee}") is not None:
        return f"{payer} has blocked payments to {payee}"
    if master is None:
        return f"{payer} has no {currency} limit for {payee}"
    if amount <= 0:
        return "amount must be positive"
    if amount > master["limit"]:
        return f"amount {amount} is over the {currency} limit {master['limit']} for {payee}"
    return ""


def decide(ctx: Context, instruction_id: str, outcome: str, comment: str) -> dict[str, Any]:
    """Move a pending instruction to ``outcome``; only the payee's organization may."""
    instruction = load(ctx, instruction_id)
    if ctx.caller.org != instruction["payee"]:
        raise ContractError(f"only {instruction['payee']} may decide instruction {instruction_id}")
    if instruction["status"] != "pending":
        raise ContractError(f"instruction {instruction_id} is already {instruction['status']}")
    step = instruction["steps"]
    instruction = {
        **instruction,
        "status": outcome,
        "decided_by": ctx.caller.identity,
        "steps": step + 1,
    }
    ctx.put(f"instruction/{instruction_id}", instruction)
    record_step(ctx, instruction_id, step, outcome, comment[:200])
    ctx.emit("InstructionDecided", {"id": instruction_id, "status": outcome})
    return instruction


def record_step(ctx: Context, instruction_id: str, n: int, action: str, detail: str) -> None:
    """Append step ``n`` of an instruction's workflow."""
    ctx.put(
        f"step/{instruction_id}/{n:04d}",
        {
            "action": action,
            "by": ctx.caller.identity,
            "at_ms": ctx.block_time,
            "detail": detail,
            "tx": ctx.tx_id,
        },
    )


def load(ctx: Context, instruction_id: str) -> dict[str, Any]:
    """An instruction; refuse if it does not exist."""
    instruction = ctx.get(f"instruction/{instruction_id}")
    if instruction is None:
        raise ContractError(f"instruction {instruction_id} does not exist")
    return dict(instruction)
