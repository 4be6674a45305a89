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
