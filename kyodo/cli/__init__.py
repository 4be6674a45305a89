"""The ``kyodo`` command-line tool."""

from kyodo.cli._acl_cli import acl_app
from kyodo.cli._app import app, main
from kyodo.cli._audit_cli import audit_app
from kyodo.cli._ca import ca_app
from kyodo.cli._connector_cli import connector_app
from kyodo.cli._contract import contract_app
from kyodo.cli._events_cli import events_app
from kyodo.cli._proof_cli import proof_app, verify_proof_command
from kyodo.cli._recovery_cli import recovery_app

app.add_typer(contract_app, name="contract")
app.add_typer(ca_app, name="ca")
app.add_typer(acl_app, name="acl")
app.add_typer(proof_app, name="proof")
app.add_typer(audit_app, name="audit")
app.add_typer(events_app, name="events")
app.add_typer(connector_app, name="connector")
app.command("verify-proof")(verify_proof_command)
app.add_typer(recovery_app, name="recovery")

__all__ = ["app", "main"]
