"""``kyodo audit``: query, export and verify a node's tamper-evident audit log.

Every gateway call a node serves (reads included) and every admin action is a
record in that node's audit log (:mod:`kyodo.audit`): who, what, when, from where,
the decision and the rule, the hash of the response. Reading the log is itself an
access-controlled (``audit.read``) and recorded call.

``export`` writes records with inclusion proofs under a root the node signs now.
``verify`` checks such a file offline: any changed, removed, inserted or reordered
record fails, named by its number. With the network folder it also checks the
signature against the node key in the configuration and shows the root the node
last anchored on the ledger.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.markup import escape
from rich.table import Table

from kyodo.audit import AuditVerificationError, verify_export
from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, console, err
from kyodo.cli._network import LocalNetwork
from kyodo.client import KyodoError
from kyodo.wire import AuditExportRequest, AuditQueryRequest

audit_app = typer.Typer(
    help="Query, export and verify a node's tamper-evident audit log.", no_args_is_help=True
)

OrgOption = Annotated[str | None, typer.Option("--org", help="Whose node's log (default org1).")]
AsOption = Annotated[
    str, typer.Option("--as", help="Who asks: audit.read allows auditors and admins.")
]


def _fail(exc: Exception, code: str) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))} \\[{escape(code)}]")
    raise typer.Exit(1)


def _time_ms(text: str | None) -> int:
    if not text:
        return -1
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@audit_app.command("query")
def audit_query(
    user: Annotated[str, typer.Option("--user", help="Exactly this caller (org/role/name).")] = "",
    since: Annotated[str, typer.Option(help="From (ISO time or ms since the epoch).")] = "",
    until: Annotated[str, typer.Option(help="Until (ISO time or ms), excluded.")] = "",
    key: Annotated[str, typer.Option("--key", help="Subject contains (tx id, key...).")] = "",
    op: Annotated[str, typer.Option("--op", help="Operation (GetBlock, Submit...).")] = "",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    org: OrgOption = None,
    who: AsOption = "admin",
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Records of a node's audit log, by caller, time range, subject or operation."""
    try:
        net = LocalNetwork(folder)
        with net.gateway(org or net.orgs[0], who) as gw:
            records, size = gw.audit_query(
                AuditQueryRequest(
                    identity=user,
                    since_ms=_time_ms(since),
                    until_ms=_time_ms(until),
                    subject_contains=key,
                    operation=op,
                    limit=limit,
                )
            )
    except (KyodoError, ValueError) as exc:
        _fail(exc, getattr(exc, "code", "usage"))
        return
    rows = [_row(r) for r in records]
    if as_json:
        print(json.dumps({"size": size, "records": rows}))
        return
    table = Table(title=f"audit log: {len(rows)} of {size} records")
    for column in ("seq", "time", "who", "operation", "subject", "decision"):
        table.add_column(column)
    for row in rows:
        decision = row["decision"] + (f" ({row['rule']})" if row["rule"] else "")
        table.add_row(
            str(row["seq"]),
            row["time"],
            escape(row["identity"]),
            escape(row["operation"]),
            escape(row["subject"][:60]),
            escape(decision),
        )
    console.print(table)


def _row(record: Any) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "time": datetime.fromtimestamp(record.time_ms / 1000, UTC).isoformat(timespec="seconds"),
        "identity": record.identity,
        "tls_identity": record.tls_identity,
        "peer": record.peer,
        "transport": record.transport,
        "operation": record.operation,
        "subject": record.subject,
        "decision": record.decision,
        "rule": record.rule,
        "detail": record.detail,
        "response_sha256": record.response_sha256.hex(),
    }


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="Write the export here.")],
    start: Annotated[int, typer.Option("--from", help="First record.")] = 0,
    end: Annotated[int, typer.Option("--to", help="End (excluded; -1: the last).")] = -1,
    with_proofs: Annotated[
        bool, typer.Option("--with-proofs/--without-proofs", help="Inclusion proofs.")
    ] = True,
    org: OrgOption = None,
    who: AsOption = "admin",
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """Export records [--from, --to) under a root the node signs now."""
    try:
        net = LocalNetwork(folder)
        with net.gateway(org or net.orgs[0], who) as gw:
            response = gw.audit_export(
                AuditExportRequest(from_seq=start, to_seq=end, with_proofs=with_proofs)
            )
    except KyodoError as exc:
        _fail(exc, exc.code)
        return
    document = json.loads(response.document)
    wrapped = {
        "node_id": response.node_id,
        "signing_cert": response.signing_cert.hex(),
        "export": document,
    }
    out.write_text(json.dumps(wrapped, indent=1) + "\n")
    console.print(
        f"{len(document['records'])} records of {response.node_id} "
        f"[{document['from']}, {document['to']}) written to {out}; "
        f"check with: kyodo audit verify {out}"
    )


@audit_app.command("verify")
def audit_verify(
    file: Path,
    folder: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Check an export: every record's hash, chain link and inclusion proof, and the
    node's signature over the root; name the first record that was tampered with."""
    try:
        wrapped = json.loads(file.read_text())
        document = wrapped["export"]
        node_id = str(wrapped["node_id"])
        cert = x509.load_der_x509_certificate(bytes.fromhex(wrapped["signing_cert"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(exc, "malformed")
        return
    public_key = cert.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    configured = _configured_key(folder, node_id)
    if configured is not None and configured != public_key:
        _fail(ValueError(f"the export's key is not {node_id}'s key in the configuration"), "key")
    try:
        report = verify_export(document, public_key=public_key)
    except AuditVerificationError as exc:
        if as_json:
            print(
                json.dumps({"ok": False, "seq": exc.seq, "reason": exc.reason, "error": str(exc)})
            )
        _fail(exc, exc.reason)
        return
    anchored = _anchored(folder, node_id)
    checkpoint = document.get("checkpoint") or {}
    result = {
        "ok": True,
        "node_id": node_id,
        "records": len(document["records"]),
        "from": document["from"],
        "to": document["to"],
        "tree_size": document["tree_size"],
        "signed_by_configured_key": configured is not None,
        "anchored": anchored,
        "report": str(report),
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"[green]verified[/]: records [{document['from']}, {document['to']}) of {node_id}'s "
        f"audit log, in a tree of {document['tree_size']} records signed by "
        f"{'the key the configuration names' if configured else 'the key in the export'} "
        f"at {checkpoint.get('time_ms')} ms"
    )
    if anchored is not None:
        console.print(
            f"  the ledger holds {node_id}'s root of {anchored['size']} records "
            f"(height {anchored['height']}, root {anchored['root']})"
        )


def _network_or_none(folder: Path) -> LocalNetwork | None:
    try:
        return LocalNetwork(folder)
    except KyodoError:
        return None


def _configured_key(folder: Path, node_id: str) -> bytes | None:
    net = _network_or_none(folder)
    if net is None:
        return None
    try:
        info = net.current_config().node(node_id)
    except KyodoError:
        return None
    if info is None:
        return None
    cert = x509.load_der_x509_certificate(info.signing_cert)
    return cert.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _anchored(folder: Path, node_id: str) -> dict[str, Any] | None:
    net = _network_or_none(folder)
    if net is None:
        return None
    try:
        with net.gateway(net.orgs[0], "admin") as gw:
            org = next((n.org_id for n in net.nodes if n.node_id == node_id), "")
            found = gw.contract("_audit").evaluate("latest", org, node_id)
    except KyodoError:
        return None
    if found is None:
        return None
    return {"size": found["size"], "root": bytes(found["root"]).hex(), "height": found["height"]}


@audit_app.command("anchor")
def audit_anchor(
    org: OrgOption = None, who: AsOption = "admin", folder: DirOption = DEFAULT_DIR
) -> None:
    """Anchor a node's audit-log root on the ledger now (it also does so periodically)."""
    try:
        net = LocalNetwork(folder)
        with net.gateway(org or net.orgs[0], who) as gw:
            status = gw.audit_anchor()
    except KyodoError as exc:
        _fail(exc, exc.code)
        return
    if status.state != "final" or status.status != 0:
        _fail(ValueError(f"the anchor was not final: {status.message}"), "not_final")
    console.print(f"anchored in block {status.height}: {status.result}")


__all__ = ["audit_app"]
