"""``kyodo acl``: the network's access rules (see :mod:`kyodo.policy` for resources).

``list`` shows the rule in force for every resource (defaults and the
configuration's own); ``set`` and ``reset`` change one by a configuration change
approved under the admin policy, so every node applies it from the same height.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, _fail, _progress, console
from kyodo.cli._ca import _network
from kyodo.client import KyodoError
from kyodo.ledger import ConfigView
from kyodo.policy import DEFAULT_ACLS

acl_app = typer.Typer(
    help="The network's access rules: who may read blocks, submit to a contract, ...",
    no_args_is_help=True,
)


@acl_app.command("list")
def acl_list(folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Every rule in force: resource, policy, and whether it is the default."""
    net = _network(folder)
    try:
        config = net.current_config()
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    table = ConfigView.of(config).acl
    resources = sorted(set(DEFAULT_ACLS) | {e.resource for e in config.acls})
    configured = {e.resource for e in config.acls}
    rows = [
        {
            "resource": r,
            "policy": table.rule_for(r)[1],
            "source": "configuration" if r in configured else "default",
        }
        for r in resources
    ]
    if as_json:
        print(json.dumps(rows))
        return
    out = Table(title=f"access rules (configuration epoch {config.epoch})")
    for column in ("resource", "policy", "source"):
        out.add_column(column)
    for row in rows:
        out.add_row(row["resource"], row["policy"], row["source"])
    console.print(out)


def _change(folder: DirOption, resource: str, policy: str | None) -> None:
    net = _network(folder)
    try:
        with _progress() as progress:
            task = progress.add_task("changing the ACL", total=None)
            new = net.set_acl(resource, policy, lambda m: progress.update(task, description=m))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        return
    what = f"= {policy}" if policy is not None else "back to its default"
    console.print(f"ACL {resource} {what}: in force from configuration epoch {new.epoch}")


@acl_app.command("set")
def acl_set(resource: str, policy: str, folder: DirOption = DEFAULT_DIR) -> None:
    """Guard RESOURCE by POLICY, e.g. ``kyodo acl set blocks.read "'*.auditor'"``."""
    _change(folder, resource, policy)


@acl_app.command("reset")
def acl_reset(resource: str, folder: DirOption = DEFAULT_DIR) -> None:
    """Give RESOURCE its default rule again."""
    _change(folder, resource, None)
