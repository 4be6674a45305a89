"""Errors raised by :mod:`kyodo.connectors`.

Two kinds, never mixed (STYLE.md 6):

* :class:`ConnectorError`: the connector cannot do its job as configured or with
  what it was given (a malformed DSN, a role that does not exist, a schema it may
  not create, a contract set that differs from the one the mirror was set up with,
  items out of ledger order, a payload PostgreSQL cannot store). Retrying does not
  help; ``reason`` says which.
* the database driver's own ``OperationalError`` (PostgreSQL down or restarting,
  a connection cut): transient. :meth:`PostgresMirror.run` retries it with backoff
  and raises it only once PostgreSQL has been unreachable for longer than its
  ``retry_limit_s``.
"""

from __future__ import annotations

__all__ = ["ConnectorError"]


class ConnectorError(Exception):
    """A connector's configuration, or its input, is wrong; retrying will not help.

    Attributes:
        reason: a short machine-readable reason: ``options`` (an argument out of
            range), ``dsn`` (the connection string does not parse),
            ``connection`` (the server refuses the role, password or database),
            ``permission`` (the role may not create or write the tables),
            ``not_set_up`` (the tables or the checkpoint row are missing),
            ``contracts`` (the contract set differs from the one this mirror was
            set up with, or overlaps another mirror's in the same schema),
            ``order`` (items not in ledger order), ``payload`` (a value
            PostgreSQL cannot store).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
