"""``kyodo proof tx|key|block`` and ``kyodo verify-proof``: proofs for auditors.

``kyodo proof`` asks a node (through its gateway, as a signed and audited call under
the ACL: ``transactions.read``, ``blocks.read``, ``state.read``) for a proof document
and writes it to a file. ``kyodo verify-proof`` checks one offline.

A proof document (``kyodo-proof/v1``, :mod:`kyodo.ledger._proofs`) proves a
block header, a transaction with its result, or a key's value (or absence) at
a height. Checking it needs nothing but the document and the network's genesis
block file: no node, no network access. The command prints what was proven,
or ``error: <message> [<reason>]`` and exits with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from kyodo.cli._app import DEFAULT_DIR, DirOption, JsonOption, console, err
from kyodo.client import KyodoError
from kyodo.ledger import LedgerError, TxStatus, load_genesis
from kyodo.ledger._proofs import ProofError, VerifiedProof, verify_proof_document
from kyodo.wire import ProofRequest

__all__ = ["MAX_PROOF_FILE_BYTES", "proof_app", "verify_proof_command", "verify_proof_file"]

MAX_PROOF_FILE_BYTES = 256 * 1024 * 1024
"""Largest proof file read (a trust path of many configuration blocks stays far below)."""

proof_app = typer.Typer(
    help="Check self-contained proofs of blocks, transactions and keys, offline.",
    no_args_is_help=True,
)


def _fetch(
    folder: Path, org: str | None, user: str, request: ProofRequest, out: Path | None
) -> None:
    """Ask a gateway for a proof and write it (or print it)."""
    from kyodo.cli._network import LocalNetwork

    try:
        net = LocalNetwork(folder)
        with net.gateway(org or net.orgs[0], user) as gw:
            document = gw.proof(request)
    except KyodoError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))} \\[{escape(exc.code)}]")
        raise typer.Exit(1) from None
    text = json.dumps(document, indent=1)
    if out is None:
        print(text)
        return
    out.write_text(text + "\n")
    console.print(
        f"{request.kind} proof at height {document['height']} written to {out}; check it with "
        f"kyodo verify-proof {out} --genesis {folder / 'genesis.block'}"
    )


OrgOption = Annotated[str | None, typer.Option("--org", help="Your organization.")]
UserOption = Annotated[str, typer.Option("--user", help="Who asks (the ACL decides).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Write the proof here.")]


@proof_app.command("tx")
def proof_tx(
    tx_id: str,
    org: OrgOption = None,
    user: UserOption = "user1",
    out: OutOption = None,
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """A proof that transaction TX_ID (hex) is in a certified block, with its result."""
    try:
        key = bytes.fromhex(tx_id)
    except ValueError:
        err.print("[bold red]error:[/] TX_ID is 64 hex digits")
        raise typer.Exit(1) from None
    _fetch(folder, org, user, ProofRequest(kind="tx", tx_id=key), out)


@proof_app.command("key")
def proof_key(
    contract: str,
    key: str,
    at: Annotated[int, typer.Option("--at", help="Height to prove the value at.")] = -1,
    org: OrgOption = None,
    user: UserOption = "user1",
    out: OutOption = None,
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """A proof of KEY's value (or absence) in CONTRACT's state, at the tip or --at."""
    _fetch(folder, org, user, ProofRequest(kind="key", namespace=contract, key=key, height=at), out)


@proof_app.command("block")
def proof_block(
    height: int,
    org: OrgOption = None,
    user: UserOption = "user1",
    out: OutOption = None,
    folder: DirOption = DEFAULT_DIR,
) -> None:
    """A proof that block HEIGHT's header was certified by the validators in force."""
    _fetch(folder, org, user, ProofRequest(kind="block", height=height), out)


def verify_proof_file(path: Path, genesis_path: Path) -> VerifiedProof:
    """Read a proof document and a genesis block file; return what the proof proves.

    Raises ProofError for every failure: an unreadable proof file (``io``), a
    genesis file that is not a genesis block (``genesis``), a file that is not
    JSON (``malformed``), and every refusal of
    :func:`~kyodo.ledger._proofs.verify_proof_document`.
    """
    try:
        genesis = load_genesis(Path(genesis_path))
    except LedgerError as exc:
        raise ProofError(str(exc), reason="genesis") from exc
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_PROOF_FILE_BYTES + 1)
    except OSError as exc:
        raise ProofError(f"cannot read proof file {path}: {exc}", reason="io") from exc
    if len(raw) > MAX_PROOF_FILE_BYTES:
        raise ProofError(
            f"proof file {path} is larger than {MAX_PROOF_FILE_BYTES} bytes", reason="malformed"
        )
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ProofError(f"proof file {path} is not JSON: {exc}", reason="malformed") from exc
    return verify_proof_document(doc, genesis)


def verify_proof_command(
    file: Annotated[Path, typer.Argument(help="The proof document (JSON).")],
    genesis: Annotated[
        Path, typer.Option("--genesis", help="The network's genesis block file (trusted).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Check FILE against the genesis block alone; print what it proves."""
    try:
        proven = verify_proof_file(file, genesis)
    except ProofError as exc:
        if as_json:
            print(json.dumps({"ok": False, "reason": exc.reason, "error": str(exc)}))
        err.print(f"[bold red]error:[/] {escape(str(exc))} \\[{escape(exc.reason)}]")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"ok": True, **proven.to_dict()}))
        return
    console.print(_describe(proven))


def _describe(proven: VerifiedProof) -> str:
    """What was proven, for people."""
    data = proven.to_dict()
    block = (
        f"block {proven.height} ({data['block_hash']}) of network {escape(proven.chain_id)}, "
        f"epoch {data['epoch']}, certified by its validators"
    )
    if proven.kind == "tx":
        status = _status_name(proven.status)
        lines = [
            f"[green]verified[/]: transaction {data['tx_id']}",
            f"  in {block}",
            f"  call: {escape(data['contract'])}.{escape(data['function'])}"
            f"({escape(_shorten(_dumps(data['args'])[1:-1]))})",
            f"  status: {status}",
            f"  result: {escape(_shorten(_dumps(data['result'])))}",
        ]
        if data["message"]:
            lines.append(f"  message: {escape(data['message'])}")
        return "\n".join(lines)
    if proven.kind == "key":
        name = f"{escape(str(proven.namespace))}/{escape(str(proven.key))}"
        if proven.version is None:
            what = f"[green]verified[/]: key {name} was absent"
        else:
            what = (
                f"[green]verified[/]: key {name} = {escape(_dumps(data['value']))}\n"
                f"  written at height {proven.version[0]}, transaction index {proven.version[1]}"
            )
        return f"{what}\n  as of {block}"
    return (
        f"[green]verified[/]: {block}\n"
        f"  timestamp_ms {data['timestamp_ms']}, proposer {escape(data['proposer'])}\n"
        f"  txs_root {data['txs_root']}\n  results_root {data['results_root']}\n"
        f"  state_root {data['state_root']}"
    )


def _status_name(status: int | None) -> str:
    names = {int(s): s.name for s in TxStatus}
    return names.get(status, str(status)) if status is not None else "unknown"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _shorten(text: str, limit: int = 200) -> str:
    """Long arguments (a whole configuration, say) in full only with --json."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
