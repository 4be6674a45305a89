"""The ``kyodo`` command-line tool."""

from kyodo.cli._app import app, main

__all__ = ["app", "main"]
