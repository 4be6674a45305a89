"""Kyodo: a permissioned ledger for inter-company workflows."""

__version__ = "0.1.0"
