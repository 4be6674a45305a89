"""Errors of :mod:`kyodo.policy`."""

from __future__ import annotations


class PolicyError(Exception):
    """A policy cannot be evaluated (too many signers, too complex)."""


class PolicySyntaxError(PolicyError):
    """A policy's text is not in the language; ``position`` is where reading stopped."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.position = position
