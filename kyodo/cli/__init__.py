"""The ``kyodo`` command-line tool."""

from kyodo.cli._app import app, main
from kyodo.cli._contract import contract_app

app.add_typer(contract_app, name="contract")

__all__ = ["app", "main"]
