"""Errors of :mod:`kyodo.contracts`."""

from __future__ import annotations


class ContractError(Exception):
    """Raised by a contract to refuse a transaction (e.g. insufficient funds).

    The message is recorded in the block as the transaction's failure reason;
    the transaction's writes are discarded and the chain goes on.
    """


class UnknownContractError(ContractError):
    """No contract or function of that name is deployed."""


class ArgumentError(ContractError):
    """The call's arguments do not match the function's declared parameters."""


class AccessDeniedError(ContractError):
    """The caller's organization and role match none of the function's access rules."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule
        """The rule that refused, as written in the contract or its package."""


class ContractTerminatedError(ContractError):
    """The contract was terminated: it answers queries but accepts no transaction."""


class CodeRejectedError(ContractError):
    """Contract source failed verification; ``violations`` says where and why."""

    def __init__(self, filename: str, violations: tuple[str, ...]) -> None:
        shown = "\n  ".join(violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        super().__init__(f"{filename}: code refused ({len(violations)} problems):\n  {shown}{more}")
        self.filename = filename
        self.violations = violations
        """Each as ``file:line:col: reason``."""


class PackageError(ContractError):
    """A contract package is malformed (bad metadata, hash mismatch, too large)."""


class LifecycleError(ContractError):
    """A lifecycle step is refused: approvals missing, wrong sequence, wrong state."""


class ResourceLimitExceeded(BaseException):
    """A transaction exceeded its step budget, call depth or size limits.

    A ``BaseException``, so contract code cannot catch it with ``except Exception``;
    the executor records the transaction as failed with this reason.
    """
