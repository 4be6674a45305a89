"""``kyodo recovery``: key-loss recovery, approved by officers and recorded on the ledger."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, _fail, _jsonable, _progress, console
from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed, KyodoError

recovery_app = typer.Typer(
    help="Recover a member who lost a key: officers approve, the owner may object.",
    no_args_is_help=True,
)
OrgOpt = Annotated[str, typer.Option("--org", help="The member's organization.")]
ByOpt = Annotated[str, typer.Option("--by", help="The officer (an admin) who signs.")]


def _run(folder: Any, action: Any) -> Any:
    try:
        return action(LocalNetwork(folder))
    except ContractFailed as exc:
        _fail(f"refused: {exc}")
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    return None


def _show(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(record)))
        return
    console.print(
        f"recovery {record['id']} of {record['org']}/{record['name']}: [bold]{record['status']}"
        f"[/]\n  approved by: {', '.join(record['approved_by'])} "
        f"({len(record['approved_by'])} of {record['approvals_needed']})\n"
        f"  owner may object until {record['not_before_ms']} (ms since the epoch)"
    )


@recovery_app.command("policy")
def recovery_policy(
    org: OrgOpt,
    approvals: Annotated[int, typer.Option(help="Officers who must approve.")] = 2,
    waiting_s: Annotated[float, typer.Option(help="Seconds the owner has to object.")] = 86400,
    by: ByOpt = "admin",
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Set ORG's recovery policy (as one of its officers)."""

    def act(net: LocalNetwork) -> Any:
        with net.gateway(org, by) as gw:
            return gw.contract("_recovery").submit("set_policy", approvals, int(waiting_s * 1000))

    done = _run(folder, act)
    console.print(f"{org}: {done['approvals']} officers, {done['waiting_ms']} ms to object")


@recovery_app.command("request")
def recovery_request(
    name: str,
    org: OrgOpt,
    by: ByOpt = "admin",
    reason: Annotated[str, typer.Option(help="Why (kept on the ledger).")] = "key lost",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Request recovery of NAME: new keys are made, their public half goes on the ledger."""
    record = _run(folder, lambda net: net.recovery_request(org, name, by=by, reason=reason))
    _show(record, as_json)


@recovery_app.command("approve")
def recovery_approve(
    request_id: str, org: OrgOpt, by: ByOpt, folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Approve a recovery request as officer BY."""

    def act(net: LocalNetwork) -> Any:
        with net.gateway(org, by) as gw:
            return gw.contract("_recovery").submit("approve", request_id)

    _show(_run(folder, act), as_json)


@recovery_app.command("object")
def recovery_object(
    request_id: str,
    org: OrgOpt,
    user: Annotated[str, typer.Option(help="The member (with the key they still hold).")],
    reason: Annotated[str, typer.Option(help="Why.")] = "I did not lose my key",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """The member objects: the request is closed and cannot be completed."""

    def act(net: LocalNetwork) -> Any:
        with net.gateway(org, user) as gw:
            return gw.contract("_recovery").submit("object", request_id, reason)

    _show(_run(folder, act), as_json)


@recovery_app.command("complete")
def recovery_complete(
    request_id: str, org: OrgOpt, by: ByOpt = "admin", folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Finish an approved request: new certificates, old ones revoked everywhere."""

    def act(net: LocalNetwork) -> Any:
        with _progress() as progress:
            task = progress.add_task("completing", total=None)
            return net.recovery_complete(
                org, request_id, by=by, progress=lambda m: progress.update(task, description=m)
            )

    record = _run(folder, act)
    if as_json:
        print(json.dumps(_jsonable(record)))
        return
    console.print(
        f"recovered {record['org']}/{record['name']}: new certificates issued under the same "
        "name; the old ones are revoked on every node"
    )


@recovery_app.command("status")
def recovery_status(
    request_id: str, org: OrgOpt, folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False
) -> None:
    """A recovery request as the ledger has it."""

    def act(net: LocalNetwork) -> Any:
        with net.gateway(org, "admin") as gw:
            return gw.contract("_recovery").evaluate("status", request_id)

    _show(_run(folder, act), as_json)
