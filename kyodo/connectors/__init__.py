"""Connectors: programs that mirror a Kyodo event stream into another system.

:class:`~kyodo.connectors.postgres.PostgresMirror` mirrors contracts' events and
state changes into PostgreSQL, exactly once. It needs the ``postgres`` extra
(``pip install 'kyodo[postgres]'``), so it is imported on first use: importing
this package does not require psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kyodo.connectors.errors import ConnectorError

if TYPE_CHECKING:
    from kyodo.connectors.postgres import MirrorProgress, PostgresMirror

__all__ = ["ConnectorError", "MirrorProgress", "PostgresMirror"]

_LAZY = {"MirrorProgress", "PostgresMirror"}


def __getattr__(name: str) -> Any:
    """Import the PostgreSQL connector (and psycopg) only when it is asked for."""
    if name in _LAZY:
        from kyodo.connectors import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
