"""``kyodo events``: watch, replay and manage event streams.

``tail`` follows new items as they are committed; ``replay --from H`` prints the
items of a range of blocks and stops (with progress on stderr); both filter like
a subscription and keep nothing on the node. ``subscribe``, ``list``, ``status``
and ``delete`` manage your organization's durable subscriptions on its node
(webhook failures and dead letters show in ``status``).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, console, err
from kyodo.cli._network import LocalNetwork
from kyodo.client import Gateway, KyodoError, LedgerEvent, Subscription
from kyodo.events import info_json, jsonable
from kyodo.wire import EVENT_KINDS, SubscriptionInfo

events_app = typer.Typer(
    help="Watch, replay and manage event streams (subscriptions, webhooks).",
    no_args_is_help=True,
)

OrgOption = Annotated[
    str | None, typer.Option("--org", help="Your organization (its node serves you).")
]
AsOption = Annotated[str, typer.Option("--as", help="Who you are (a user of --org).")]
KindOption = Annotated[
    str, typer.Option("--kind", help="events, transactions (with status) or blocks.")
]
ContractOption = Annotated[
    list[str] | None, typer.Option("--contract", help="Only this contract (repeatable).")
]
NameOption = Annotated[
    list[str] | None, typer.Option("--name", help="Only this event name (repeatable).")
]
StateOption = Annotated[
    bool, typer.Option("--state", help="Also the contracts' state changes (state.read).")
]


def _fail(exc: KyodoError) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))} \\[{escape(exc.code)}]")
    raise typer.Exit(1)


def _check_kind(kind: str) -> None:
    if kind not in EVENT_KINDS:
        err.print(f"[bold red]error:[/] --kind is one of {', '.join(EVENT_KINDS)}")
        raise typer.Exit(2)


def _gateway(folder: Any, org: str | None, who: str) -> Gateway:
    net = LocalNetwork(folder)
    org = org or net.orgs[0]
    addresses = [n.gateway for n in net.nodes if n.org_id == org]
    if not addresses:
        raise KyodoError(f"no node of organization {org!r} in {folder}", code="not_found")
    return net.user(org, who).connect(addresses)


def _line(event: LedgerEvent) -> str:
    where = f"{event.height}.{event.tx_index}.{event.index}"
    if event.kind == "block":
        return f"{where:>14}  block    {event.payload['tx_count']} txs {event.payload['hash'][:16]}"
    if event.kind == "transaction":
        return (
            f"{where:>14}  tx       {event.contract}.{event.name} {event.status}"
            f"{' ' + event.message if event.message else ''}  {event.tx_id[:16]}"
        )
    if event.kind == "state":
        value = json.dumps(jsonable(event.payload))
        return f"{where:>14}  state    {event.contract}/{event.key} = {value[:120]}"
    payload = json.dumps(jsonable(event.payload))
    return f"{where:>14}  event    {event.contract}.{event.name} {payload[:120]}"


def _emit(event: LedgerEvent, as_json: bool) -> None:
    if as_json:
        data = event.as_dict()
        data["payload"] = jsonable(data["payload"])
        print(json.dumps(data, separators=(",", ":")), flush=True)
    else:
        console.print(escape(_line(event)), highlight=False)


@events_app.command("tail")
def events_tail(
    kind: KindOption = "events",
    contract: ContractOption = None,
    name: NameOption = None,
    state: StateOption = False,
    count: Annotated[int, typer.Option(help="Stop after this many items (0: never).")] = 0,
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Follow new items as blocks are committed (Ctrl-C to stop)."""
    _check_kind(kind)
    seen = 0
    try:
        with _gateway(folder, org, who) as gw:
            start = (gw.status().height + 1, -1, -1)
            err.print(f"following from block {start[0]} on {gw.address} (Ctrl-C to stop)")
            with gw.network().events(
                kind=kind,
                contracts=tuple(contract or ()),
                names=tuple(name or ()),
                include_state=state,
                after=start,
            ) as stream:
                for event in stream:
                    _emit(event, as_json)
                    event.ack()
                    seen += 1
                    if count and seen >= count:
                        break
    except KyodoError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print(f"stopped after {seen} items")


@events_app.command("replay")
def events_replay(
    from_height: Annotated[int, typer.Option("--from", help="First block.")] = 0,
    to_height: Annotated[
        int, typer.Option("--to", help="Last block (default: the tip when it starts).")
    ] = -1,
    kind: KindOption = "events",
    contract: ContractOption = None,
    name: NameOption = None,
    state: StateOption = False,
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Print the items of blocks FROM..TO in ledger order, then stop."""
    _check_kind(kind)
    if from_height < 0:
        err.print("[bold red]error:[/] --from is a height (>= 0)")
        raise typer.Exit(2)
    items = 0
    try:
        with _gateway(folder, org, who) as gw:
            last = gw.status().height if to_height < 0 else to_height
            if last < from_height:
                err.print(f"nothing to replay: the tip is {last}")
                return
            progress = Progress(
                TextColumn("replaying blocks"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[items]} items"),
                console=err,
                transient=True,
            )
            with (
                progress,
                gw.network().events(
                    kind=kind,
                    contracts=tuple(contract or ()),
                    names=tuple(name or ()),
                    include_state=state,
                    after=(from_height, -1, -1),
                    until=last,
                ) as stream,
            ):
                task = progress.add_task("replay", total=last - from_height + 1, items=0)
                for event in stream:
                    _emit(event, as_json)
                    event.ack()
                    items += 1
                    progress.update(
                        task, completed=event.height - from_height, items=items, refresh=False
                    )
                progress.update(task, completed=last - from_height + 1, items=items)
    except KyodoError as exc:
        _fail(exc)
    err.print(f"{items} items from blocks {from_height}..{last}")


def _info_row(info: SubscriptionInfo) -> list[str]:
    flt = info.filter
    what = flt.kind
    if flt.contracts:
        what += " of " + ",".join(flt.contracts)
    if flt.names:
        what += " named " + ",".join(flt.names)
    if flt.include_state:
        what += " +state"
    delivery = info.webhook_url or "pull"
    return [
        info.name,
        what,
        ".".join(str(x) for x in info.checkpoint),
        str(info.acked),
        delivery,
        "yes" if info.connected else "no",
        str(len(info.dead_letters)),
        info.last_error,
    ]


def _table(infos: list[SubscriptionInfo]) -> Table:
    table = Table(title="subscriptions")
    for column in ("name", "delivers", "checkpoint", "acked", "delivery", "open", "dead", "error"):
        table.add_column(column)
    for info in infos:
        table.add_row(*(escape(c) for c in _info_row(info)))
    return table


@events_app.command("subscribe")
def events_subscribe(
    subscription: Annotated[str, typer.Argument(help="The subscription's name.")],
    kind: KindOption = "events",
    contract: ContractOption = None,
    name: NameOption = None,
    state: StateOption = False,
    start: Annotated[
        str, typer.Option(help="oldest, latest, or a height to start at (fixed at creation).")
    ] = "latest",
    webhook: Annotated[str, typer.Option(help="Deliver by POST to this URL.")] = "",
    secret_env: Annotated[
        str, typer.Option(help="Environment variable holding the webhook's HMAC secret.")
    ] = "KYODO_WEBHOOK_SECRET",  # noqa: S107 - the name of a variable, not a secret
    max_attempts: Annotated[int, typer.Option(help="Webhook tries before a dead letter.")] = 8,
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Create a durable subscription (the same declaration again changes nothing)."""
    _check_kind(kind)
    secret = os.environ.get(secret_env, "").encode() if webhook else b""
    if webhook and not secret:
        err.print(f"[bold red]error:[/] set the webhook secret in ${secret_env}")
        raise typer.Exit(2)
    start_kind, height = start, 0
    if start.isdigit():
        start_kind, height = "height", int(start)
    try:
        with _gateway(folder, org, who) as gw:
            info = gw.network().subscribe(
                Subscription(
                    name=subscription,
                    kind=kind,
                    contracts=tuple(contract or ()),
                    names=tuple(name or ()),
                    include_state=state,
                    start=start_kind,
                    start_height=height,
                    webhook_url=webhook,
                    webhook_secret=secret,
                    max_attempts=max_attempts,
                )
            )
    except KyodoError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(info_json(info)))
    else:
        console.print(_table([info]))


@events_app.command("list")
def events_list(
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Your organization's subscriptions on its node."""
    try:
        with _gateway(folder, org, who) as gw:
            infos = gw.network().subscriptions()
    except KyodoError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([info_json(i) for i in infos]))
    else:
        console.print(_table(infos))


@events_app.command("status")
def events_status(
    subscription: Annotated[str, typer.Argument(help="The subscription's name.")],
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Where a subscription stands: checkpoint, webhook failures, dead letters."""
    try:
        with _gateway(folder, org, who) as gw:
            info = gw.network().subscription(subscription)
    except KyodoError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(info_json(info)))
        return
    console.print(_table([info]))
    for letter in info.dead_letters:
        console.print(
            f"dead letter {escape(letter.key)}: {letter.attempts} attempts, {escape(letter.error)}"
        )


@events_app.command("delete")
def events_delete(
    subscription: Annotated[str, typer.Argument(help="The subscription's name.")],
    org: OrgOption = None,
    who: AsOption = "user1",
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Delete a subscription (its stream ends, its webhook stops)."""
    try:
        with _gateway(folder, org, who) as gw:
            gw.network().unsubscribe(subscription)
    except KyodoError as exc:
        _fail(exc)
    console.print(f"deleted {escape(subscription)}")
