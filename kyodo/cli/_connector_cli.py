"""``kyodo connector postgres``: mirror contracts into PostgreSQL for reporting systems.

Follows the chosen contracts' events and state changes through a gateway of your
organization (several gateways: failover) and writes them, with the checkpoint,
in one PostgreSQL transaction per batch, so a restart - of this command, of
PostgreSQL, of the node - neither loses nor repeats a row
(:mod:`kyodo.connectors.postgres`, docs/connectors.md). State changes need the
``state.read`` ACL: run it as an auditor or an admin.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer
from rich.markup import escape

from kyodo.cli._app import DEFAULT_DIR, DirOption, console, err
from kyodo.cli._network import LocalNetwork
from kyodo.client import KyodoError, aio

connector_app = typer.Typer(
    help="Connectors for existing systems (PostgreSQL mirroring).", no_args_is_help=True
)


@connector_app.command("postgres")
def connector_postgres(
    dsn: Annotated[str, typer.Option(help="libpq connection string of the reporting database.")],
    contracts: Annotated[
        str, typer.Option(help="Comma-separated contracts to mirror (all if empty).")
    ] = "",
    name: Annotated[str, typer.Option(help="This mirror's name (its checkpoint row).")] = "default",
    schema: Annotated[str, typer.Option(help="PostgreSQL schema of the tables.")] = "kyodo",
    org: Annotated[str | None, typer.Option("--org", help="Your organization.")] = None,
    who: Annotated[
        str, typer.Option("--as", help="Who reads: state changes need state.read.")
    ] = "admin",
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Mirror contracts' events and state changes into PostgreSQL until Ctrl-C."""
    from kyodo.connectors import ConnectorError, MirrorProgress, PostgresMirror

    chosen = tuple(c for c in contracts.split(",") if c)
    try:
        net = LocalNetwork(folder)
        org = org or net.orgs[0]
        addresses = [n.gateway for n in net.nodes if n.org_id == org]
        credentials = net.user(org, who)
    except KyodoError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    totals = {"rows": 0, "items": 0}

    def progress(step: MirrorProgress) -> None:
        totals["rows"] += step.rows
        totals["items"] += step.items
        h, t, i = step.checkpoint
        console.print(
            f"mirrored up to {h}.{t}.{i}: {totals['items']} items, {totals['rows']} rows",
            highlight=False,
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with aio.connect_user(credentials, addresses) as gateway:
            network = gateway.network()
            with PostgresMirror(dsn, name=name, contracts=chosen, schema=schema) as mirror:
                err.print(
                    f"mirroring {', '.join(chosen) or 'every contract'} from {gateway.address} "
                    f"into {schema} (Ctrl-C to stop)"
                )
                await mirror.run(
                    lambda after: network.events(
                        contracts=chosen, include_state=True, after=after, window=1024
                    ),
                    stop=stop,
                    on_progress=progress,
                )

    try:
        asyncio.run(run())
    except (KyodoError, ConnectorError) as exc:
        code = getattr(exc, "code", getattr(exc, "reason", "error"))
        err.print(f"[bold red]error:[/] {escape(str(exc))} \\[{escape(str(code))}]")
        raise typer.Exit(1) from exc
    err.print(f"stopped: {totals['items']} items, {totals['rows']} rows written")
