"""``kyodo contract``: write, test, package, approve, commit, upgrade, terminate, dev."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kyodo.cli._app import (
    DEFAULT_DIR,
    DirOption,
    JsonOption,
    _fail,
    _jsonable,
    _parse_arg,
    _progress,
    console,
    err,
)
from kyodo.cli._lifecycle import (
    Lifecycle,
    build_package,
    describe_functions,
    load_package_file,
    save_package_file,
    watch_and_upgrade,
)
from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed, KyodoError
from kyodo.contracts import CodeRejectedError, ContractError, ContractPackage, PackageError

contract_app = typer.Typer(
    help="Write, test and deploy contracts; upgrade and terminate them by approval.",
    no_args_is_help=True,
)

OrgsOption = Annotated[
    list[str] | None,
    typer.Option("--org", help="Organization whose admin signs (repeat for several)."),
]
CommitterOption = Annotated[
    str | None, typer.Option(help="Organization whose admin commits (default: the first).")
]
AllOrgsOption = Annotated[
    bool, typer.Option("--all-orgs", help="Sign as every organization's admin (local networks).")
]


def _lifecycle(folder: Path) -> Lifecycle:
    try:
        return Lifecycle(LocalNetwork(folder))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
        raise  # unreachable: _fail exits


def _orgs(lifecycle: Lifecycle, orgs: list[str] | None, all_orgs: bool) -> list[str]:
    if all_orgs:
        return list(lifecycle.network.orgs)
    if not orgs:
        _fail("say which organization signs: --org ORG (or --all-orgs on a local network)")
    return list(orgs or [])


def _package_arg(path: Path) -> ContractPackage:
    """A package file, or a .py source packaged on the fly (version 1.0.0)."""
    try:
        if path.suffix == ".py":
            return build_package(path)
        return load_package_file(path)
    except (PackageError, CodeRejectedError) as exc:
        _fail(str(exc))
        raise


def _show_proposal(status: dict[str, Any]) -> None:
    approved = ", ".join(status["approved_by"]) or "none"
    missing = ", ".join(status["missing"]) or "none"
    state = "[green]ready to commit[/]" if status["ready"] else "[yellow]waiting[/]"
    console.print(
        f"{status['action']} {status['name']} (sequence {status['sequence']}, package "
        f"{status['hash'][:16]}): {len(status['approved_by'])} of {status['needed']} "
        f"approvals, {state}\n  approved by: {approved}\n  not yet: {missing}"
    )
    if status.get("approved_otherwise"):
        console.print("  approved a different proposal: " + ", ".join(status["approved_otherwise"]))


# -- authoring ------------------------------------------------------------------------

_TEMPLATE = '''"""{title}: a Kyodo contract (see docs/contracts.md)."""

from typing import Any

from kyodo.contract import Context, Contract, ContractError, function


class {cls}(Contract):
    """Records with an owner; anyone may read them, only the owner may change them."""

    @function
    def create(self, ctx: Context, record_id: str, value: int) -> dict[str, Any]:
        """Create ``record_id`` owned by the caller."""
        if ctx.get(f"record/{{record_id}}") is not None:
            raise ContractError(f"record {{record_id}} already exists")
        record = {{"owner": ctx.caller.identity, "value": value, "at_ms": ctx.block_time}}
        ctx.put(f"record/{{record_id}}", record)
        ctx.emit("Created", {{"id": record_id}})
        return record

    @function
    def update(self, ctx: Context, record_id: str, value: int) -> dict[str, Any]:
        """Change the value of a record the caller owns."""
        record = ctx.get(f"record/{{record_id}}")
        if record is None:
            raise ContractError(f"record {{record_id}} does not exist")
        if record["owner"] != ctx.caller.identity:
            raise ContractError(f"record {{record_id}} is owned by {{record['owner']}}")
        record = {{**record, "value": value, "at_ms": ctx.block_time}}
        ctx.put(f"record/{{record_id}}", record)
        return record

    @function(read_only=True)
    def get(self, ctx: Context, record_id: str) -> dict[str, Any]:
        """A record, or an error if it does not exist."""
        record = ctx.get(f"record/{{record_id}}")
        if record is None:
            raise ContractError(f"record {{record_id}} does not exist")
        return record
'''

_TEST_TEMPLATE = '''"""Tests of {name}.py on an in-process ledger.

Run them with ``kyodo contract test {name}.py``.
"""

from pathlib import Path

import pytest

from kyodo.contract.testing import LocalLedger, TxFailed

CONTRACT = Path(__file__).with_name("{name}.py")


@pytest.fixture
def ledger() -> LocalLedger:
    ledger = LocalLedger(orgs=("org1", "org2"))
    ledger.deploy(CONTRACT)
    return ledger


def test_owner_creates_and_updates(ledger: LocalLedger) -> None:
    alice = ledger.member("org1", "alice")
    ledger.submit(alice, "{name}", "create", "r1", 5)
    assert ledger.submit(alice, "{name}", "update", "r1", 7)["value"] == 7
    assert ledger.query(alice, "{name}", "get", "r1")["owner"] == "org1/alice"


def test_others_cannot_update(ledger: LocalLedger) -> None:
    ledger.submit(ledger.member("org1", "alice"), "{name}", "create", "r1", 5)
    with pytest.raises(TxFailed, match="owned by org1/alice"):
        ledger.submit(ledger.member("org2", "bob"), "{name}", "update", "r1", 9)
'''


@contract_app.command("new")
def contract_new(
    name: str,
    into: Annotated[Path, typer.Option("--into", help="Folder to write into.")] = Path(),
) -> None:
    """Scaffold NAME.py (a contract) and test_NAME.py (its tests) in a folder."""
    if not name.isidentifier() or not name.islower() or name.startswith("_"):
        _fail(f"contract name {name!r}: lowercase letters, digits and _, starting with a letter")
    into.mkdir(parents=True, exist_ok=True)
    source, test = into / f"{name}.py", into / f"test_{name}.py"
    for path in (source, test):
        if path.exists():
            _fail(f"{path} exists; not overwriting it")
    title = name.replace("_", " ").capitalize()
    cls = "".join(part.capitalize() for part in name.split("_"))
    source.write_text(_TEMPLATE.format(title=title, cls=cls))
    test.write_text(_TEST_TEMPLATE.format(name=name))
    console.print(
        f"wrote {source} and {test}\nnext: kyodo contract test {source}   "
        f"then: kyodo contract dev {source} (on a local network)"
    )


@contract_app.command("test")
def contract_test(
    file: Path,
    pytest_args: Annotated[list[str] | None, typer.Argument(help="Passed to pytest.")] = None,
) -> None:
    """Verify FILE, then run its tests (test_FILE next to it) on an in-process ledger."""
    if not file.exists():
        _fail(f"{file} does not exist")
    contract_file, test_file = file, file.with_name(f"test_{file.name}")
    if file.name.startswith("test_"):
        contract_file, test_file = file.with_name(file.name.removeprefix("test_")), file
    if contract_file.exists():
        try:
            build_package(contract_file)
        except (PackageError, CodeRejectedError) as exc:
            _fail(str(exc))
        console.print(f"{contract_file}: the verifier accepts it")
    if not test_file.exists():
        _fail(f"no tests: expected {test_file} (kyodo contract new scaffolds one)")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [*command, *(pytest_args or [])], cwd=test_file.parent.resolve(), env=env, check=False
    )
    raise typer.Exit(done.returncode)


@contract_app.command("package")
def contract_package(
    file: Path,
    name: Annotated[str | None, typer.Option(help="Contract name (default: file stem).")] = None,
    version: Annotated[str, typer.Option(help="Version label.")] = "1.0.0",
    init_arg: Annotated[
        list[str] | None, typer.Option("--init-arg", help="An argument of init (JSON).")
    ] = None,
    migrate: Annotated[str, typer.Option(help="Function to run once on upgrade.")] = "",
    access: Annotated[
        list[str] | None,
        typer.Option("--access", help="Default access rule org.role (repeat; default '*')."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Package file to write.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify FILE and write a package; print its hash (what organizations approve)."""
    try:
        package = build_package(
            file,
            name=name,
            version=version,
            init_args=[_parse_arg(a) for a in init_arg or []],
            migrate=migrate,
            access=access or ["*"],
        )
    except (PackageError, CodeRejectedError) as exc:
        _fail(str(exc))
        raise
    target = out or file.with_name(f"{package.name}-{package.version}.kpkg")
    save_package_file(package, target)
    digest = package.package_hash().hex()
    doc = {"file": str(target), "name": package.name, "version": package.version, "hash": digest}
    if as_json:
        print(json.dumps(doc))
        return
    console.print(
        f"package {target}\n  {package.name} {package.version}, hash [bold]{digest}[/]\n"
        f"  next: kyodo contract approve {target} --org ORG   (each organization's admin)"
    )


# -- governance -----------------------------------------------------------------------


@contract_app.command("approve")
def contract_approve(
    package_file: Annotated[Path | None, typer.Argument(help="Package (.kpkg) or .py.")] = None,
    terminate: Annotated[
        str | None, typer.Option("--terminate", help="Approve terminating this contract.")
    ] = None,
    org: OrgsOption = None,
    all_orgs: AllOrgsOption = False,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Approve a package (or --terminate NAME) as each --org's admin; show who is missing."""
    if (package_file is None) == (terminate is None):
        _fail("give a package file, or --terminate NAME")
    lifecycle = _lifecycle(folder)
    signers = _orgs(lifecycle, org, all_orgs)
    package = None if package_file is None else _package_arg(package_file)
    status: dict[str, Any] = {}
    try:
        with _progress() as progress:
            task = progress.add_task("approving", total=len(signers))
            for signer in signers:
                progress.update(task, description=f"approval of {signer}")
                if package is not None:
                    status = lifecycle.approve(signer, package)
                else:
                    assert terminate is not None
                    status = lifecycle.approve_termination(signer, terminate)
                progress.advance(task)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(_jsonable(status)))
    else:
        _show_proposal(status)


def _commit(
    package_file: Path, org: str | None, folder: Path, as_json: bool, upgrade: bool
) -> None:
    lifecycle = _lifecycle(folder)
    signer = org or lifecycle.network.orgs[0]
    package = _package_arg(package_file)
    try:
        sequence, action = lifecycle.next_step(package)
        if upgrade and action != "upgrade":
            _fail(f"{package.name} is not deployed yet; use kyodo contract commit")
        if not upgrade and action != "deploy":
            _fail(f"{package.name} is deployed; use kyodo contract upgrade")
        with _progress() as progress:
            progress.add_task(f"{action} {package.name} {package.version}", total=None)
            done = lifecycle.commit(signer, package)
    except ContractFailed as exc:
        _fail(f"{action} refused: {exc}")
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(_jsonable(done)))
        return
    console.print(
        f"[green]{action}ed[/] {package.name} {package.version} (sequence {sequence}), "
        f"in force from block {done['since_height']}\n"
        f"  approved by: {', '.join(done['approved_by'])}"
    )


@contract_app.command("commit")
def contract_commit(
    package_file: Path,
    org: CommitterOption = None,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Deploy an approved package (a contract not deployed before)."""
    _commit(package_file, org, folder, as_json, upgrade=False)


@contract_app.command("upgrade")
def contract_upgrade(
    package_file: Path,
    org: CommitterOption = None,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Replace a deployed contract by an approved package; its state is kept."""
    _commit(package_file, org, folder, as_json, upgrade=True)


@contract_app.command("terminate")
def contract_terminate(
    name: str,
    org: CommitterOption = None,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Make NAME read-only for good (after `approve --terminate NAME` by enough orgs)."""
    lifecycle = _lifecycle(folder)
    try:
        done = lifecycle.terminate(org or lifecycle.network.orgs[0], name)
    except ContractFailed as exc:
        _fail(f"terminate refused: {exc}")
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(_jsonable(done)))
        return
    console.print(
        f"[yellow]terminated[/] {name} from block {done['since_height']}: queries only; "
        "its state and history stay"
    )


@contract_app.command("policy")
def contract_policy(
    approve: Annotated[
        int | None, typer.Option("--approve", help="Approve this quorum (as each --org).")
    ] = None,
    set_quorum: Annotated[
        int | None, typer.Option("--set", help="Commit this quorum once approved.")
    ] = None,
    org: OrgsOption = None,
    all_orgs: AllOrgsOption = False,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Show the lifecycle quorum; --approve K (each org) then --set K changes it."""
    lifecycle = _lifecycle(folder)
    try:
        if approve is not None:
            status: dict[str, Any] = {}
            for signer in _orgs(lifecycle, org, all_orgs):
                status = lifecycle.approve_policy(signer, approve)
            if as_json:
                print(json.dumps(_jsonable(status)))
            else:
                _show_proposal({**status, "name": f"quorum {approve}"})
            return
        if set_quorum is not None:
            signer = (org or [lifecycle.network.orgs[0]])[0]
            done = lifecycle.set_policy(signer, set_quorum)
            if as_json:
                print(json.dumps(_jsonable(done)))
            else:
                console.print(
                    f"lifecycle quorum is {done['quorum']} organizations from block "
                    f"{done['since_height']} (was {done['previous']})"
                )
            return
        policy = lifecycle.policy()
    except ContractFailed as exc:
        _fail(f"refused: {exc}")
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(policy))
        return
    kind = "a majority, the default" if policy["default"] else "set by approval"
    console.print(
        f"lifecycle quorum: {policy['quorum']} of {policy['members']} organizations ({kind})"
    )


@contract_app.command("list")
def contract_list(folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Every deployed contract: version, sequence, status, package hash."""
    lifecycle = _lifecycle(folder)
    try:
        rows = lifecycle.definitions()
        policy = lifecycle.policy()
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(_jsonable(rows)))
        return
    table = Table(title=f"contracts (lifecycle quorum {policy['quorum']} of {policy['members']})")
    for column in ("name", "version", "seq", "status", "since block", "package"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["version"],
            str(row["sequence"]),
            row["status"],
            str(row["since_height"]),
            row["hash"][:16],
        )
    console.print(table)


@contract_app.command("show")
def contract_show(name: str, folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """A contract's definition, functions and access rules, and pending approvals."""
    lifecycle = _lifecycle(folder)
    try:
        definition = lifecycle.definition(name)
        if definition is None:
            _fail(f"no contract named {name!r} was ever deployed")
            return
        package = lifecycle.package(definition["hash"])
        functions = describe_functions(package)
        pending = lifecycle.approvals(name, int(definition["sequence"]) + 1)
    except (KyodoError, ContractError) as exc:
        _fail(str(exc))
        return
    doc = {**definition, "functions": functions, "pending_approvals": pending}
    if as_json:
        print(json.dumps(_jsonable(doc)))
        return
    console.print(
        f"[bold]{name}[/] {definition['version']} — {definition['status']}, sequence "
        f"{definition['sequence']}, since block {definition['since_height']}\n"
        f"  package {definition['hash']}\n  approved by {', '.join(definition['approved_by'])}"
    )
    table = Table()
    for column in ("function", "parameters", "kind", "who may call"):
        table.add_column(column)
    for row in functions:
        kind = "query" if row["read_only"] else "transaction"
        table.add_row(row["function"], ", ".join(row["params"]), kind, " or ".join(row["allow"]))
    console.print(table)
    for approval in pending:
        console.print(
            f"  pending: {approval['org']} approved {approval['action']} of "
            f"{approval['hash'][:16]} at block {approval['height']}"
        )


@contract_app.command("dev")
def contract_dev(
    file: Path,
    name: Annotated[str | None, typer.Option(help="Contract name (default: file stem).")] = None,
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Deploy FILE on the local network and upgrade it on every save, keeping its state."""
    if not file.exists():
        _fail(f"{file} does not exist")
    lifecycle = _lifecycle(folder)
    contract = name or file.stem
    console.print(f"watching {file}; every save upgrades {contract} (Ctrl-C to stop)")

    def report(message: str) -> None:
        console.print(escape(message))
        sys.stdout.flush()

    try:
        watch_and_upgrade(
            lifecycle,
            file,
            name=contract,
            progress=lambda m: err.print(escape(m)),
            report=report,
        )
    except KeyboardInterrupt:
        console.print("stopped")
