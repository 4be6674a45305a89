"""The ``kyodo`` command-line tool."""

from kyodo.cli._app import app, main
from kyodo.cli._ca import ca_app
from kyodo.cli._contract import contract_app

app.add_typer(contract_app, name="contract")
app.add_typer(ca_app, name="ca")

__all__ = ["app", "main"]
