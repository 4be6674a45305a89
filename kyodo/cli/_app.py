"""The ``kyodo`` command: local networks, nodes, transactions, blocks, verification, bench."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kyodo.cli._bench import run_bench
from kyodo.cli._network import HsmSettings, LocalNetwork, NodeEntry, create_network
from kyodo.client import ContractFailed, KyodoError, NotFinal
from kyodo.codec import decode_record
from kyodo.identity import load_certificate
from kyodo.ledger import Block, LedgerError, LedgerStore, load_genesis, verify_store
from kyodo.node import NodeConfig

console = Console()
err = Console(stderr=True)
app = typer.Typer(
    help="Kyodo: a permissioned ledger for inter-company workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
network_app = typer.Typer(
    help="Create, start, stop and inspect a local network.", no_args_is_help=True
)
node_app = typer.Typer(help="Stop or start one node of a local network.", no_args_is_help=True)
tx_app = typer.Typer(help="Submit, query and show transactions.", no_args_is_help=True)
block_app = typer.Typer(help="Show blocks.", no_args_is_help=True)
app.add_typer(network_app, name="network")
app.add_typer(node_app, name="node")
app.add_typer(tx_app, name="tx")
app.add_typer(block_app, name="block")

DEFAULT_DIR = Path(os.environ.get("KYODO_NETWORK_DIR", "kyodo-network"))
DirOption = Annotated[Path, typer.Option("--dir", help="The network folder.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
OrgOption = Annotated[str | None, typer.Option("--org", help="Organization (default: first).")]
UserOption = Annotated[str, typer.Option("--user", help="User of the organization.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _status_of(net: LocalNetwork, node: NodeEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node_id": node.node_id,
        "org": node.org_id,
        "pid": net.pid(node),
        "gateway": node.gateway,
        "metrics": f"{node.gateway.rsplit(':', 1)[0]}:{node.metrics_port}",
        "role": None,
        "height": None,
        "tip_hash": None,
        "state_root": None,
        "healthy": False,
        "detail": "not running",
    }
    if row["pid"] is None:
        return row
    try:
        status = net.status(node)
    except KyodoError as exc:
        row["detail"] = f"not answering: {exc}"
        return row
    row.update(
        view=status.view,
        role=status.role,
        height=status.height,
        tip_hash=status.tip_hash.hex(),
        state_root=status.state_root.hex(),
        healthy=status.healthy,
        detail=status.detail,
        peers=list(status.peers_connected),
    )
    return row


def _wait_ready(
    net: LocalNetwork, nodes: list[NodeEntry], timeout_s: float, progress: Progress
) -> None:
    task = progress.add_task("waiting for nodes to be ready", total=len(nodes))
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending and time.monotonic() < deadline:
        for node in list(pending):
            if net.pid(node) is None:
                _fail(f"{node.node_id} exited; see {node.home / 'node.log'} and node.stderr.log")
            if _status_of(net, node)["healthy"]:
                pending.remove(node)
                progress.advance(task)
        if pending:
            time.sleep(0.1)
    if pending:
        _fail(f"not ready after {timeout_s:g} s: {', '.join(n.node_id for n in pending)}")


@network_app.command("up")
def network_up(
    orgs: Annotated[int, typer.Option("--orgs", help="Organizations.")] = 4,
    validators_per_org: Annotated[
        int, typer.Option("--validators-per-org", help="Validator nodes per organization.")
    ] = 1,
    allow_fragile_topology: Annotated[
        bool,
        typer.Option(
            "--allow-fragile-topology",
            help="Accept a validator set in which losing one organization halts the network.",
        ),
    ] = False,
    distinct_hosts: Annotated[
        bool,
        typer.Option(
            "--distinct-hosts",
            help="Give each node its own loopback address (127.0.0.11, .12, ...), so "
            "traffic between nodes can be cut selectively (partition drills).",
        ),
    ] = False,
    admin_policy: Annotated[
        str,
        typer.Option(
            "--admin-policy",
            help="Who approves configuration changes, in the policy language, e.g. "
            "\"OutOf(3, 'org1.admin', 'org2.admin', 'org3.admin', 'org4.admin')\" "
            "(default: the admins of a majority of the organizations).",
        ),
    ] = "",
    hsm_module: Annotated[
        str,
        typer.Option(
            "--hsm-module",
            help="PKCS#11 library: generate every node's signing key inside this token "
            "(e.g. /usr/lib/softhsm/libsofthsm2.so).",
        ),
    ] = "",
    hsm_token: Annotated[str, typer.Option("--hsm-token", help="The token's label.")] = "",
    hsm_pin_source: Annotated[
        str,
        typer.Option(
            "--hsm-pin-source", help="Where the token's user PIN comes from: env:VAR, file:PATH."
        ),
    ] = "",
    intermediate_ca: Annotated[
        bool,
        typer.Option(
            "--intermediate-ca",
            help="Each organization's root CA certifies an intermediate CA that issues "
            "every certificate.",
        ),
    ] = False,
    folder: DirOption = DEFAULT_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 60.0,
) -> None:
    """Generate (if needed) and start a local network; wait until every node is ready."""
    hsm = None
    if hsm_module or hsm_token or hsm_pin_source:
        if not (hsm_module and hsm_token and hsm_pin_source):
            _fail("--hsm-module, --hsm-token and --hsm-pin-source go together")
        hsm = HsmSettings(module=hsm_module, token=hsm_token, pin_source=hsm_pin_source)
    started = time.monotonic()
    try:
        with _progress() as progress:
            if not (folder / "network.json").exists():
                task = progress.add_task("generating keys and genesis", total=None)
                net = create_network(
                    folder,
                    orgs=orgs,
                    validators_per_org=validators_per_org,
                    allow_fragile_topology=allow_fragile_topology,
                    distinct_hosts=distinct_hosts,
                    admin_policy=admin_policy,
                    hsm=hsm,
                    intermediate_ca=intermediate_ca,
                    progress=lambda m: progress.update(task, description=m),
                )
                progress.update(task, description="keys, certificates and genesis ready")
                progress.stop_task(task)
            else:
                net = LocalNetwork(folder)
            task = progress.add_task("starting node processes", total=len(net.nodes))
            for node in net.nodes:
                net.start(node)
                progress.advance(task)
            _wait_ready(net, net.nodes, timeout, progress)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    _banner(net, time.monotonic() - started)


def _command_name() -> str:
    """How the user can call this command again: ``kyodo`` if it is on PATH, else its path."""
    script = Path(sys.argv[0])
    on_path = shutil.which("kyodo")
    if script.name == "kyodo" and (on_path is None or Path(on_path).resolve() != script.resolve()):
        try:
            return str(script.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(script.resolve())
    return "kyodo"


def _banner(net: LocalNetwork, elapsed: float) -> None:
    table = Table(box=None)
    for column in ("node", "org", "gateway (gRPC, mTLS)", "metrics"):
        table.add_column(column)
    for node in net.nodes:
        table.add_row(
            node.node_id,
            node.org_id,
            node.gateway,
            f"http://{node.gateway.rsplit(':', 1)[0]}:{node.metrics_port}/metrics",
        )
    d = f" --dir {net.folder}" if net.folder != DEFAULT_DIR.resolve() else ""
    k = _command_name()
    tips = (
        f"{k} network status{d}\n"
        f"{k} tx submit asset_transfer create_account alice --org org1{d}\n"
        f"{k} tx query asset_transfer balance alice --org org1{d}\n"
        f"{k} bench --clients 16 --duration 10{d}\n"
        f"{k} verify org2-node0{d}\n"
        f"{k} network down{d}"
    )
    console.print(
        Panel.fit(
            table,
            title=f"Kyodo network {net.chain_id} is up "
            f"({len(net.orgs)} orgs, {len(net.nodes)} nodes, ready in {elapsed:.1f} s)",
            subtitle=str(net.folder),
        )
    )
    console.print(Panel.fit(tips, title="try next"))


@network_app.command("down")
def network_down(
    folder: DirOption = DEFAULT_DIR,
    purge: Annotated[bool, typer.Option(help="Also delete the network folder.")] = False,
) -> None:
    """Stop every node of the network (and delete it with --purge)."""
    try:
        net = LocalNetwork(folder)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    for node in net.nodes:
        stopped = net.stop(node)
        console.print(f"{node.node_id}: {'stopped' if stopped else 'was not running'}")
    if purge:
        shutil.rmtree(net.folder)
        console.print(f"deleted {net.folder}")


@network_app.command("add-validator")
def network_add_validator(
    org: Annotated[str, typer.Option("--org", help="Its organization (new: it joins).")],
    allow_fragile_topology: Annotated[
        bool,
        typer.Option(
            "--allow-fragile-topology",
            help="Accept a validator set in which losing one organization halts the network.",
        ),
    ] = False,
    folder: DirOption = DEFAULT_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to be ready.")] = 60.0,
) -> None:
    """Add a validator while the network runs (a configuration change under the admin
    policy: admins of a majority of organizations approve it)."""
    try:
        net = LocalNetwork(folder)
        with _progress() as progress:
            task = progress.add_task("adding a validator", total=None)
            entry = net.add_validator(
                org,
                lambda m: progress.update(task, description=m),
                allow_fragile_topology=allow_fragile_topology,
            )
            _wait_ready(net, [entry], timeout, progress)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    status = _status_of(net, entry)
    console.print(
        f"{entry.node_id} ({entry.org_id}) joined: {status['role']}, height "
        f"{status['height']}, gateway {entry.gateway}"
    )


@network_app.command("rotate-key")
def network_rotate_key(node: str, folder: DirOption = DEFAULT_DIR) -> None:
    """Give a validator a new signing key while the network runs (a configuration change;
    the node signs with the new key from the epoch it takes effect)."""
    try:
        net = LocalNetwork(folder)
        with _progress() as progress:
            task = progress.add_task("rotating a signing key", total=None)
            new = net.rotate_key(node, lambda m: progress.update(task, description=m))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    console.print(f"{node} signs with its new key from configuration epoch {new.epoch}")


@network_app.command("remove-validator")
def network_remove_validator(node: str, folder: DirOption = DEFAULT_DIR) -> None:
    """Stop a validator voting while the network runs (it keeps following the chain)."""
    try:
        net = LocalNetwork(folder)
        with _progress() as progress:
            task = progress.add_task("removing a validator", total=None)
            new = net.remove_validator(node, lambda m: progress.update(task, description=m))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    console.print(
        f"{node} no longer votes from configuration epoch {new.epoch}; validators: "
        f"{', '.join(n.node_id for n in new.validators())}"
    )


@network_app.command("remove-org")
def network_remove_org(org: str, folder: DirOption = DEFAULT_DIR) -> None:
    """Remove an organization and its nodes while the network runs (a configuration
    change under the admin policy); its nodes are stopped once it is ordered."""
    try:
        net = LocalNetwork(folder)
        with _progress() as progress:
            task = progress.add_task(f"removing {org}", total=None)
            new = net.remove_org(org, lambda m: progress.update(task, description=m))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    console.print(
        f"{org} left the network at configuration epoch {new.epoch}; members: "
        f"{', '.join(o.org_id for o in new.orgs)}; validators: "
        f"{', '.join(n.node_id for n in new.validators())}"
    )


@network_app.command("status")
def network_status(folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Each node's id, organization, role, pid, height, tip hash, state root and health."""
    try:
        net = LocalNetwork(folder)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    rows = [_status_of(net, node) for node in net.nodes]
    if as_json:
        print(json.dumps({"chain_id": net.chain_id, "nodes": rows}, indent=2))
        return
    table = Table(title=f"network {net.chain_id}")
    columns = ("node", "org", "role", "view", "pid", "height", "tip hash", "state root", "health")
    for column in columns:
        table.add_column(column)
    for r in rows:
        detail = escape(r["detail"] or "")
        if r["healthy"]:
            health = "[green]healthy[/]" + ("" if detail == "ok" else f" [yellow]{detail}[/]")
        else:
            health = f"[red]{detail}[/]"
        table.add_row(
            r["node_id"],
            r["org"],
            r["role"] or "-",
            str(r.get("view", "-") if r.get("view") is not None else "-"),
            str(r["pid"] or "-"),
            str(r["height"] if r["height"] is not None else "-"),
            (r["tip_hash"] or "-")[:16],
            (r["state_root"] or "-")[:16],
            health,
        )
    console.print(table)


@node_app.command("stop")
def node_stop(
    node: str,
    folder: DirOption = DEFAULT_DIR,
    kill: Annotated[bool, typer.Option(help="SIGKILL instead of SIGTERM.")] = False,
) -> None:
    """Stop one node."""
    try:
        net = LocalNetwork(folder)
        entry = net.node(node)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    console.print(
        f"{entry.node_id}: {'stopped' if net.stop(entry, kill=kill) else 'was not running'}"
    )


@node_app.command("start")
def node_start(
    node: str,
    folder: DirOption = DEFAULT_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 60.0,
) -> None:
    """Start (or restart) one node and wait until it is ready."""
    try:
        net = LocalNetwork(folder)
        entry = net.node(node)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    pid = net.start(entry)
    with _progress() as progress:
        _wait_ready(net, [entry], timeout, progress)
    console.print(f"{entry.node_id}: running (pid {pid})")


def _parse_arg(text: str) -> Any:
    """A CLI argument: a JSON literal (number, true/false, quoted string, list, map) or a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float):
        _fail(f"argument {text!r}: floating point numbers are not allowed (use integers)")
    return value if not isinstance(value, type(None)) else text


def _gateway(folder: Path, org: str | None, user: str) -> Any:
    net = LocalNetwork(folder)
    return net.gateway(org or net.orgs[0], user)


@app.command("login")
def login(
    org: Annotated[str | None, typer.Option("--org", help="Your organization.")] = None,
    user: Annotated[str, typer.Option("--user", help="Your member name.")] = "user1",
    node: Annotated[
        str | None, typer.Option("--node", help="A node of your organization (default: first).")
    ] = None,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Log in to a REST gateway with your signing key; print a short-lived access token
    for `Authorization: Bearer ...` (curl, scripts, a browser's session)."""
    from kyodo.client import rest_login

    try:
        net = LocalNetwork(folder)
        org = org or net.orgs[0]
        target = net.node(node) if node else next(n for n in net.nodes if n.org_id == org)
        if not target.rest:
            _fail(f"{target.node_id} serves no REST gateway (rest_port in node.json)")
        creds = net.user(org, user)
        cert_pem = (net.folder / "orgs" / org / "users" / user / "signing.pem").read_bytes()
        issued = rest_login(
            f"https://{target.rest}",
            certificate_pem=cert_pem,
            signer=creds.signer,
            ca_bundle=(net.folder / "ca-bundle.pem").read_bytes(),
        )
    except (KyodoError, StopIteration) as exc:
        code = getattr(exc, "code", "not_found")
        _fail(f"{exc or f'{org} has no node'} [{code}]")
        return
    if as_json:
        print(
            json.dumps(
                {
                    "access_token": issued.token,
                    "expires_at_ms": issued.expires_at_ms,
                    "identity": issued.identity,
                    "url": f"https://{target.rest}",
                }
            )
        )
        return
    print(issued.token)
    minutes = max(0, (issued.expires_at_ms - int(time.time() * 1000)) // 60_000)
    err.print(f"logged in as {issued.identity} at https://{target.rest}, for {minutes} minutes")


@tx_app.command("submit")
def tx_submit(
    contract: str,
    function: str,
    args: Annotated[list[str] | None, typer.Argument()] = None,
    org: OrgOption = None,
    user: UserOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Submit a signed transaction through a gateway of ORG and wait for finality."""
    values = [_parse_arg(a) for a in args or []]
    try:
        with _gateway(folder, org, user) as gw:
            outcome = gw.contract(contract).submit_transaction(function, *values)
    except ContractFailed as exc:
        if as_json:
            print(
                json.dumps(
                    {
                        "tx_id": exc.tx_id,
                        "height": exc.height,
                        "status": "failed",
                        "message": str(exc),
                    }
                )
            )
        else:
            console.print(f"tx {exc.tx_id} [red]failed[/] in block {exc.height}: {exc}")
        raise typer.Exit(2) from None
    except NotFinal as exc:
        _fail(f"{exc} (check later with `kyodo tx show {exc.tx_id}`)")
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    doc = {
        "tx_id": outcome.tx_id,
        "height": outcome.height,
        "tx_index": outcome.tx_index,
        "status": "ok",
        "result": _jsonable(outcome.result),
    }
    if as_json:
        print(json.dumps(doc))
    else:
        console.print(
            f"tx {outcome.tx_id}\n  block {outcome.height} (index {outcome.tx_index}), "
            f"[green]ok[/]\n  result: {json.dumps(doc['result'])}"
        )


@tx_app.command("query")
def tx_query(
    contract: str,
    function: str,
    args: Annotated[list[str] | None, typer.Argument()] = None,
    org: OrgOption = None,
    user: UserOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a function against committed state (nothing is written)."""
    values = [_parse_arg(a) for a in args or []]
    try:
        with _gateway(folder, org, user) as gw:
            result = gw.contract(contract).evaluate(function, *values)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    print(json.dumps(_jsonable(result)) if as_json else json.dumps(_jsonable(result), indent=2))


@tx_app.command("show")
def tx_show(
    tx_id: str,
    org: OrgOption = None,
    user: UserOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Show a committed transaction: call, creator, block, status and result."""
    try:
        raw_id = bytes.fromhex(tx_id)
    except ValueError:
        _fail(f"{tx_id!r} is not a hex transaction id")
    try:
        with _gateway(folder, org, user) as gw:
            found = gw.transaction(raw_id)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    tx = found.envelope.transaction()
    creator = load_certificate(tx.creator).subject
    doc = {
        "tx_id": tx_id,
        "creator": creator.rfc4514_string(),
        "height": found.height,
        "tx_index": found.tx_index,
        "contract": tx.contract,
        "function": tx.function,
        "args": _jsonable(list(tx.args)),
        "created_ms": tx.created_ms,
        "status": "ok" if found.status == 0 else "failed",
        "result": _jsonable(found.result),
        "message": found.message,
    }
    print(json.dumps(doc, indent=None if as_json else 2))


@block_app.command("show")
def block_show(
    height: Annotated[int, typer.Argument(help="Height (-1: tip).")] = -1,
    org: OrgOption = None,
    user: UserOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Show a block's header, certificate and transactions."""
    try:
        with _gateway(folder, org, user) as gw:
            block = decode_record(Block, gw.block(height))
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    h = block.header
    doc = {
        "height": h.height,
        "hash": block.block_hash().hex(),
        "prev_hash": h.prev_hash.hex(),
        "txs_root": h.txs_root.hex(),
        "results_root": h.results_root.hex(),
        "state_root": h.state_root.hex(),
        "timestamp_ms": h.timestamp_ms,
        "proposer": h.proposer,
        "certificate": [c.signer for c in block.certificate],
        "transactions": [
            {"tx_id": e.tx_id().hex(), "status": r.status, "message": r.message}
            for e, r in zip(block.txs, block.results, strict=True)
        ],
    }
    print(json.dumps(doc, indent=None if as_json else 2))


@app.command("verify")
def verify(node: str, folder: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Check a node's stored data offline; exit non-zero naming the first bad height."""
    try:
        net = LocalNetwork(folder)
        entry = net.node(node)
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    cfg = NodeConfig.load(entry.home)
    started = time.monotonic()
    try:
        genesis = load_genesis(cfg.resolve(entry.home, cfg.genesis))
        store = LedgerStore(cfg.resolve(entry.home, cfg.data_dir), read_only=True)
    except LedgerError as exc:
        _fail(f"{exc} [store]")
    try:
        with _progress() as progress:
            task = progress.add_task(f"verifying {entry.node_id}", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            tip = verify_store(store, genesis, progress=report)
    except LedgerError as exc:
        height = getattr(exc, "height", None)
        if as_json:
            print(
                json.dumps(
                    {
                        "node": entry.node_id,
                        "ok": False,
                        "height": height,
                        "error": type(exc).__name__,
                        "detail": str(exc),
                    }
                )
            )
            raise typer.Exit(1) from None
        _fail(f"{entry.node_id}: verification FAILED at height {height}: {exc}")
    finally:
        store.close()
    elapsed = time.monotonic() - started
    if as_json:
        print(
            json.dumps(
                {"node": entry.node_id, "ok": True, "height": tip, "seconds": round(elapsed, 3)}
            )
        )
    else:
        console.print(
            f"{entry.node_id}: [green]verified[/] blocks 0..{tip}, certificates, "
            f"transaction signatures and state ({elapsed:.2f} s)"
        )


@app.command("bench")
def bench(
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 10.0,
    contract: Annotated[
        str, typer.Option(help="asset_transfer, or a deployed contract like the cash sample.")
    ] = "asset_transfer",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Drive the running network with signed transfers; print tx/s and latency."""
    try:
        net = LocalNetwork(folder)
        with _progress() as progress:
            task = progress.add_task("benchmark", total=None)
            result = run_bench(
                net,
                clients=clients,
                duration_s=duration,
                progress=lambda m: progress.update(task, description=m),
                contract=contract,
            )
    except KyodoError as exc:
        _fail(f"{exc} [{exc.code}]")
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    lat = result.latency_ms
    console.print(
        Panel.fit(
            f"committed: {result.committed} tx in {result.duration_s} s = "
            f"[bold]{result.tps} tx/s[/]\n"
            f"finality latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
            f"max {lat['max']}\nfailures: {result.failures or 'none'}\nsetup: {result.setup}",
            title="kyodo bench",
        )
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def main() -> None:
    """Entry point of the ``kyodo`` command."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
