"""Payment instructions from an existing system, submitted to the ledger as transfers.

A back office keeps payment instructions in a CSV export or a database table.
This script reads them, checks every row, submits the good ones as
``asset_transfer.transfer(source, target, amount)`` transactions through the
gateway of the user's own organization, and reports what became of each row.

    python examples/submit_instructions.py --dir kyodo-network --open-sample-accounts
    python examples/submit_instructions.py --dir kyodo-network \\
        --csv examples/data/instructions.csv --report report.csv
    python examples/submit_instructions.py --sqlite pay.db --table instructions --create-sample
    python examples/submit_instructions.py --dir kyodo-network --sqlite pay.db --table instructions

The first command opens the accounts the sample file names (owned by ``--user``)
and issues their opening balances as the organization's admin; accounts that
exist are left alone. ``--create-sample`` copies the sample file into a new
SQLite table and exits.

**Input.** A CSV file with a header row, or a SQLite table, with the columns:

``id``
    The instruction's id in the source system, unique in the input (1 to 64
    characters). It is the idempotency key: see below.
``source``
    The account to pay from; it must be owned by ``--org``/``--user``.
``target``
    The account to pay to.
``amount``
    A whole number of units, 1 to 10^15 (``12.50``, ``-40`` or an empty cell
    fail the row).
``reference``
    Free text (an invoice number). The ledger's transfer has no memo field, so
    the reference stays in the journal and the report, for reconciliation.

Other columns are ignored. Each row is checked before anything is sent; a bad
row fails with its reason and the others go on.

**Progress and outcome.** Rows are submitted by ``--concurrency`` threads (the
SDK is synchronous; a gateway connection is shared), so rows run in no fixed
order: if one row depends on another's funds, use ``--concurrency 1``. A
progress bar shows the counts on a terminal; otherwise a line is printed at
every tenth of the rows. The summary gives the rows submitted, succeeded and
failed, the failures grouped by reason (the SDK's error class, its code and
the message up to its first colon), and ``--report FILE`` writes one CSV line
per row: ``id, status, tx_id, height, error_code, error``, with status one of
``succeeded``, ``already_applied``, ``failed`` or ``pending`` (not final in
time: run again to resolve it).

Exit status: 0 when every row is applied (now or by an earlier run), 1 when
some failed or are pending, 2 on a usage, input or connection error (a
message, no traceback).

**Idempotent re-runs: a write-ahead journal.** A transaction id cannot be made
a function of the row id: it is the hash of the signed payload, which holds a
random nonce and the signing time, and the ledger refuses a transaction signed
more than ``tx_max_age_ms`` (5 minutes on a local network) away from its clock.
So a re-run an hour later must sign afresh, and only a record of what was sent
can keep it from paying twice. The script keeps that record, a journal of JSON lines,
``DIR/submit_instructions.journal`` by default (``--journal`` to choose):

1. before a row is submitted, the signed envelope (payload and signature, so
   its tx id) is appended and synced to disk: ``state: signed``;
2. once the transaction is final, ``state: applied`` (with its height) or
   ``state: failed`` (the contract refused it: nothing was written) follows.

A re-run looks up each row id (under the network's chain id, so a fresh
network starts afresh): ``applied`` is skipped and reported
``already_applied``; ``failed`` is tried again with a new transaction;
``signed`` (the run stopped, or the outcome was not known in time) is
resolved first: the gateway is asked for that tx id's status, and if it does
not know it, the *same* envelope is submitted again, which the ledger can apply
at most once. Only when that envelope is refused as expired, and is still not
on the ledger, can it never be applied, and the row is signed afresh. A row
whose source, target or amount changed since it was applied or signed fails as
``changed`` instead. One journal per network, keyed by instruction id, also
keeps the same instruction in two files from being paid twice. The journal is
locked while a run uses it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kyodo.client import (
    AccessDenied,
    ContractFailed,
    Gateway,
    KyodoError,
    NotFinal,
    TransactionRejected,
    load_user,
)
from kyodo.wire import FAILURE_CODES, TxEnvelope, TxStatusResponse

CONTRACT = "asset_transfer"
COLUMNS = ("id", "source", "target", "amount", "reference")
REPORT_COLUMNS = ("id", "status", "tx_id", "height", "error_code", "error")
SAMPLE = Path(__file__).resolve().parent / "data" / "instructions.csv"
SAMPLE_ACCOUNTS = {
    "acme-operating": 10_000,
    "acme-payroll": 1_000,
    "nordic-steel": 0,
    "kansai-parts": 0,
    "rhine-logistics": 0,
}
"""The accounts ``--open-sample-accounts`` opens, with their opening balances."""
MAX_AMOUNT = 10**15
MAX_ID_CHARS = 64
MAX_ACCOUNT_CHARS = 128
MAX_ROWS = 100_000
MAX_CONCURRENCY = 32
WAIT_S = 30.0
"""How long one submission waits for finality before the row is reported pending."""
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DIGITS = re.compile(r"[0-9]+")

console = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)


class UsageError(Exception):
    """Bad arguments, unreadable input or no connection: exit status 2, a message only."""


class InvalidRow(KyodoError):
    """A row that fails the script's own checks; it is never submitted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """One row of the input, checked."""

    row_id: str
    """The source system's id: the idempotency key."""
    line: int
    """Where the row is: the CSV line or the table row number (1-based, for messages)."""
    source: str
    target: str
    amount: int
    """Whole units, 1 to MAX_AMOUNT (0 when ``problem`` is set)."""
    reference: str
    problem: InvalidRow | None = None
    """Why the row is refused before submission; None for a good row."""

    @property
    def digest(self) -> str:
        """What the ledger applies for this row (source, target, amount), hashed: the
        journal's check that a row did not change between runs."""
        applied = json.dumps([self.source, self.target, self.amount])
        return hashlib.sha256(applied.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one row in this run."""

    row_id: str
    status: str
    """``succeeded``, ``already_applied``, ``failed`` or ``pending``."""
    submitted: bool = False
    """True if an envelope for this row was sent to the gateway in this run."""
    tx_id: str = ""
    height: int | None = None
    error_class: str = ""
    error_code: str = ""
    error: str = ""

    @property
    def reason(self) -> str:
        """The failure's group in the summary: class, code, message up to its first colon."""
        return f"{self.error_class} [{self.error_code}] {self.error.split(':', 1)[0]}"


# -- reading and checking the input ---------------------------------------------------


def check_row(values: dict[str, Any], line: int) -> Instruction:
    """An Instruction from one input row; a bad row carries its ``problem``."""
    text = {name: "" if values.get(name) is None else str(values[name]).strip() for name in COLUMNS}
    try:
        check_id(text["id"])
        check_account("source", text["source"])
        check_account("target", text["target"])
        if text["source"] == text["target"]:
            raise InvalidRow("source and target are the same account", code="same_account")
        amount, problem = parse_amount(text["amount"]), None
    except InvalidRow as exc:
        amount, problem = 0, exc
    return Instruction(
        row_id=text["id"],
        line=line,
        source=text["source"],
        target=text["target"],
        amount=amount,
        reference=text["reference"],
        problem=problem,
    )


def check_id(row_id: str) -> None:
    """Refuse an id the journal could not key on."""
    if not row_id:
        raise InvalidRow("id is missing", code="invalid_id")
    if len(row_id) > MAX_ID_CHARS or not row_id.isprintable():
        raise InvalidRow(
            f"id must be 1 to {MAX_ID_CHARS} printable characters: {row_id[:80]!r}",
            code="invalid_id",
        )


def check_account(column: str, account: str) -> None:
    """Refuse an account id the contract would refuse anyway."""
    if not account or len(account) > MAX_ACCOUNT_CHARS:
        raise InvalidRow(
            f"{column} account must be 1 to {MAX_ACCOUNT_CHARS} characters: {account[:80]!r}",
            code="invalid_account",
        )


def parse_amount(raw: str) -> int:
    """Whole units from the text of the amount column (no sign, decimals or separators)."""
    if not raw:
        raise InvalidRow("amount is missing", code="invalid_amount")
    if raw.startswith("-") and _DIGITS.fullmatch(raw[1:]):
        raise InvalidRow(f"amount must be positive: {raw}", code="invalid_amount")
    if not _DIGITS.fullmatch(raw):
        raise InvalidRow(
            f"amount must be a whole number of units: {raw[:40]!r}", code="invalid_amount"
        )
    amount = int(raw)
    if not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRow(f"amount must be between 1 and {MAX_AMOUNT}: {raw}", code="invalid_amount")
    return amount


def mark_duplicates(rows: list[Instruction]) -> list[Instruction]:
    """Fail every repeat of an id after its first row: which one is meant is unknowable,
    and the journal keys on the id."""
    first: dict[str, int] = {}
    checked = []
    for row in rows:
        seen = first.setdefault(row.row_id, row.line)
        if row.problem is None and seen != row.line:
            problem = InvalidRow(f"duplicate id: first at line {seen}", code="duplicate_id")
            checked.append(dataclasses.replace(row, amount=0, problem=problem))
        else:
            checked.append(row)
    return checked


def read_csv(path: Path) -> list[Instruction]:
    """Every row of a CSV file with a header (UTF-8, with or without a byte order mark)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            check_columns(reader.fieldnames or (), f"{path}")
            rows = [check_row(values, reader.line_num) for values in limited(reader, path)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    return mark_duplicates(rows)


def read_table(path: Path, table: str) -> list[Instruction]:
    """Every row of a SQLite table (opened read-only)."""
    check_table_name(table)
    if not path.is_file():
        raise UsageError(f"no SQLite database at {path}")
    query = f'SELECT {", ".join(COLUMNS)} FROM "{table}"'  # noqa: S608 - name checked above
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            records = enumerate(limited(db.execute(query), path), 1)
            rows = [check_row(dict(zip(COLUMNS, r, strict=True)), n) for n, r in records]
    except sqlite3.Error as exc:
        raise UsageError(
            f"cannot read table {table} of {path}: {exc} (columns needed: {', '.join(COLUMNS)})"
        ) from exc
    return mark_duplicates(rows)


def check_columns(found: Iterable[str], where: str) -> None:
    """Refuse input without the columns the script needs."""
    missing = [name for name in COLUMNS if name not in set(found)]
    if missing:
        raise UsageError(
            f"{where} has no column {', '.join(missing)} (columns needed: {', '.join(COLUMNS)})"
        )


def check_table_name(table: str) -> None:
    """Table names are pasted into SQL: letters, digits and underscores only."""
    if not _TABLE_NAME.fullmatch(table):
        raise UsageError(f"table name must be letters, digits and underscores: {table!r}")


def limited(records: Iterable[Any], where: Path) -> Iterator[Any]:
    """``records``, refusing more than MAX_ROWS (the whole input is held in memory)."""
    for n, record in enumerate(records):
        if n == MAX_ROWS:
            raise UsageError(f"{where} has more than {MAX_ROWS} rows; split it")
        yield record


def create_sample_table(path: Path, table: str) -> int:
    """Copy the sample CSV into a new table ``table`` of ``path``; the number of rows."""
    check_table_name(table)
    with SAMPLE.open(newline="") as file:
        rows = [tuple(values[name] for name in COLUMNS) for values in csv.DictReader(file)]
    try:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(
                f'CREATE TABLE "{table}" (id TEXT NOT NULL, source TEXT, target TEXT, '
                "amount INTEGER, reference TEXT)"
            )  # INTEGER affinity, as a real table would have: '12.50' is stored as 12.5
            db.executemany(f'INSERT INTO "{table}" VALUES (?, ?, ?, ?, ?)', rows)  # noqa: S608
    except sqlite3.Error as exc:
        raise UsageError(f"cannot create table {table} in {path}: {exc}") from exc
    return len(rows)


# -- the journal ----------------------------------------------------------------------


class Journal:
    """The write-ahead record of what was sent (see the module docstring).

    One JSON object per line; the last line for a (chain id, row id) wins. A torn
    last line, left by a crash while writing, is skipped: a ``signed`` line is
    synced before its envelope is sent, so a torn one was never sent.
    """

    def __init__(self, path: Path, chain_id: str) -> None:
        self.path = path
        self.chain_id = chain_id
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        try:
            self._file: TextIO = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot open the journal {path}: {exc}") from exc
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.close()
            raise UsageError(f"another run is using the journal {path}") from exc
        self._file.seek(0)
        text = self._file.read()
        for line in text.splitlines():
            self._load_line(line)
        if text and not text.endswith("\n"):  # end the torn line, or the next one joins it
            self._file.write("\n")
            self._file.flush()

    def _load_line(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return
        if isinstance(entry, dict) and entry.get("chain_id") == self.chain_id:
            self._latest[entry["row_id"]] = entry

    def get(self, row_id: str) -> dict[str, Any] | None:
        """The latest entry for ``row_id`` on this network, or None."""
        with self._lock:
            return self._latest.get(row_id)

    def append(self, row_id: str, state: str, **fields: Any) -> None:
        """Record ``state`` for ``row_id``, on disk before returning."""
        entry = {"chain_id": self.chain_id, "row_id": row_id, "state": state, **fields}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._latest[row_id] = entry

    def close(self) -> None:
        """Release the lock and the file."""
        self._file.close()


# -- submitting -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """What every worker thread shares: one gateway connection and the journal."""

    gateway: Gateway
    journal: Journal


def apply_row(run: Run, row: Instruction) -> Outcome:
    """Take one row to its outcome; a refusal or a lost connection fails the row alone."""
    try:
        return apply_row_once(run, row)
    except KyodoError as exc:
        prior = run.journal.get(row.row_id) or {}
        return failed(row, exc, tx_id=prior.get("tx_id", ""))


def apply_row_once(run: Run, row: Instruction) -> Outcome:
    """Take one row to its outcome, consulting the journal so nothing is applied twice."""
    if row.problem is not None:
        return failed(row, row.problem)
    prior = run.journal.get(row.row_id)
    if prior is not None and prior["state"] in ("signed", "applied"):
        if prior["digest"] != row.digest:
            tx = prior["tx_id"][:16]
            message = f"row changed since it was {prior['state']}: as tx {tx}, not submitted"
            return failed(row, InvalidRow(message, code="changed"), tx_id=prior["tx_id"])
        if prior["state"] == "applied":
            return Outcome(
                row_id=row.row_id,
                status="already_applied",
                tx_id=prior["tx_id"],
                height=prior["height"],
            )
        resumed = resume(run, row, prior)
        if resumed is not None:
            return resumed
    envelope = run.gateway.sign(CONTRACT, "transfer", (row.source, row.target, row.amount))
    record_signed(run.journal, row, envelope)
    return submit(run, row, envelope)


def record_signed(journal: Journal, row: Instruction, envelope: TxEnvelope) -> None:
    """Journal ``envelope`` as the row's transaction, before it may be sent."""
    journal.append(
        row.row_id,
        "signed",
        digest=row.digest,
        reference=row.reference,
        tx_id=envelope.tx_id().hex(),
        payload=envelope.payload.hex(),
        signature=envelope.signature.hex(),
    )


def resume(run: Run, row: Instruction, prior: dict[str, Any]) -> Outcome | None:
    """Settle an envelope an earlier run signed; None when it can never be applied
    (so the row may be signed afresh)."""
    envelope = TxEnvelope(
        payload=bytes.fromhex(prior["payload"]), signature=bytes.fromhex(prior["signature"])
    )
    tx_id = prior["tx_id"]
    status = run.gateway.tx_status(bytes.fromhex(tx_id), wait_s=WAIT_S)
    if status.state == "final":
        return settle(run, row, status, tx_id)
    if status.state == "pending":
        return finish(run, row, status, tx_id, submitted=False)
    try:  # unknown to the gateway: the same envelope again, so it is applied at most once
        response = run.gateway.submit_envelope(envelope, wait_s=WAIT_S)
    except TransactionRejected as exc:
        if exc.reason != "expired":
            raise
    else:
        return finish(run, row, response, tx_id, submitted=True)
    status = run.gateway.tx_status(bytes.fromhex(tx_id))  # too old to be ordered now: it
    return settle(run, row, status, tx_id) if status.state == "final" else None  # never will


def settle(run: Run, row: Instruction, status: TxStatusResponse, tx_id: str) -> Outcome | None:
    """A final transaction found by a re-run: applied earlier, or None if the contract
    refused it (nothing written, so the row is tried again)."""
    outcome = finish(run, row, status, tx_id, submitted=False)
    if outcome.status == "succeeded":
        return Outcome(
            row_id=row.row_id, status="already_applied", tx_id=tx_id, height=outcome.height
        )
    return None


def submit(run: Run, row: Instruction, envelope: TxEnvelope) -> Outcome:
    """Send a journaled envelope and wait for finality."""
    tx_id = envelope.tx_id().hex()
    try:
        response = run.gateway.submit_envelope(envelope, wait_s=WAIT_S)
    except KyodoError as exc:  # the journal keeps it signed: a re-run resolves it
        return failed(row, exc, tx_id=tx_id, submitted=True)
    return finish(run, row, response, tx_id, submitted=True)


def finish(
    run: Run, row: Instruction, response: TxStatusResponse, tx_id: str, *, submitted: bool
) -> Outcome:
    """Record and report a transaction's status, mapped to the SDK's errors as
    ``Contract.submit_transaction`` maps them (this script signs and submits the
    envelope itself, to journal it first)."""
    if response.state != "final":
        late = NotFinal(f"not final after {WAIT_S:.0f} s: run again to resolve", tx_id=tx_id)
        return failed(row, late, tx_id=tx_id, submitted=submitted, status="pending")
    if response.status != 0:
        run.journal.append(row.row_id, "failed", tx_id=tx_id, height=response.height)
        code = FAILURE_CODES.get(response.status, "contract_error")
        kind = AccessDenied if code == "access_denied" else ContractFailed
        error = kind(response.message, code=code, tx_id=tx_id, height=response.height)
        return failed(row, error, tx_id=tx_id, submitted=submitted, height=response.height)
    run.journal.append(
        row.row_id, "applied", digest=row.digest, tx_id=tx_id, height=response.height
    )
    return Outcome(
        row_id=row.row_id,
        status="succeeded",
        submitted=submitted,
        tx_id=tx_id,
        height=response.height,
    )


def failed(
    row: Instruction,
    error: KyodoError,
    *,
    tx_id: str = "",
    height: int | None = None,
    submitted: bool = False,
    status: str = "failed",
) -> Outcome:
    """A row that did not get applied, and why."""
    return Outcome(
        row_id=row.row_id,
        status=status,
        submitted=submitted,
        tx_id=tx_id,
        height=height,
        error_class=type(error).__name__,
        error_code=error.code,
        error=str(error),
    )


def submit_all(run: Run, rows: list[Instruction], concurrency: int) -> list[Outcome]:
    """Every row's outcome, in input order; ``concurrency`` rows in flight at most."""
    outcomes: dict[int, Outcome] = {}
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=concurrency))
        stack.callback(pool.shutdown, cancel_futures=True)  # on Ctrl-C, stop at once
        futures: dict[Future[Outcome], int] = {
            pool.submit(apply_row, run, row): n for n, row in enumerate(rows)
        }
        with progress_display(len(rows)) as on_done:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                on_done(outcome)
    return [outcomes[n] for n in range(len(rows))]


@contextmanager
def progress_display(total: int) -> Iterator[Callable[[Outcome], None]]:
    """A callback to count each finished row: a live bar on a terminal, otherwise a
    plain line at every tenth of the rows (logs and pipes get no control codes)."""
    counts: Counter[bool] = Counter()
    if console.is_terminal:
        columns = (
            TextColumn("submitting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[bad]} failed[/]"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("rows", total=total, ok=0, bad=0)

            def on_bar(outcome: Outcome) -> None:
                counts[is_ok(outcome)] += 1
                bar.update(task, advance=1, ok=counts[True], bad=counts[False])

            yield on_bar
        return
    step = max(1, total // 10)

    def on_line(outcome: Outcome) -> None:
        counts[is_ok(outcome)] += 1
        done = counts[True] + counts[False]
        if done % step == 0 or done == total:
            console.print(f"progress {done}/{total}: {counts[True]} ok, {counts[False]} failed")

    yield on_line


def is_ok(outcome: Outcome) -> bool:
    """Applied, now or by an earlier run."""
    return outcome.status in ("succeeded", "already_applied")


# -- reporting ------------------------------------------------------------------------


def print_summary(outcomes: list[Outcome]) -> None:
    """The counts, then the failures grouped by reason, most frequent first."""
    statuses = Counter(o.status for o in outcomes)
    problems = [o for o in outcomes if not is_ok(o)]
    console.rule("summary")
    for label, count in (
        ("rows", len(outcomes)),
        ("already applied", statuses["already_applied"]),
        ("submitted", sum(o.submitted for o in outcomes)),
        ("succeeded", statuses["succeeded"]),
        ("failed", len(problems)),
    ):
        console.print(f"{label:<16}{count:>6}")
    if statuses["pending"]:
        console.print(f"({statuses['pending']} pending: run again to resolve them)")
    if problems:
        console.print("failures by reason")
        for reason, count in Counter(o.reason for o in problems).most_common():
            console.print(f"{count:>6}  {escape(reason)}")


def write_report(path: Path, outcomes: list[Outcome]) -> None:
    """One CSV line per row (see the module docstring)."""
    try:
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(REPORT_COLUMNS)
            for o in outcomes:
                height = "" if o.height is None else o.height
                writer.writerow((o.row_id, o.status, o.tx_id, height, o.error_code, o.error))
    except OSError as exc:
        raise UsageError(f"cannot write the report {path}: {exc}") from exc


# -- the network ----------------------------------------------------------------------


def connect_user(folder: Path, org: str, user: str) -> tuple[Gateway, str]:
    """A connection to a gateway of ``org`` as ``user``, checked to answer; and the
    network's chain id."""
    try:
        network = json.loads((folder / "network.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"no network in {folder} (run `kyodo network up --dir {folder}`)") from exc
    gateways = [n["gateway"] for n in network["nodes"] if n["org_id"] == org]
    if not gateways:
        raise UsageError(f"no organization {org!r} in {folder}; orgs: {', '.join(network['orgs'])}")
    try:
        credentials = load_user(
            folder / "orgs" / org / "users" / user,
            passphrase=(folder / "orgs" / org / "passphrase").read_bytes().strip(),
            chain_id=network["chain_id"],
            ca_bundle=folder / "ca-bundle.pem",
        )
    except (OSError, KyodoError) as exc:
        raise UsageError(f"cannot load user {org}/{user}: {exc}") from exc
    gateway = credentials.connect(gateways[0], retries=2)
    try:
        gateway.status()
    except KyodoError as exc:
        gateway.close()
        raise UsageError(f"cannot reach the gateway of {org} at {gateways[0]}: {exc}") from exc
    return gateway, network["chain_id"]


def open_sample_accounts(folder: Path, org: str, user: str) -> None:
    """Open the sample's accounts as ``user`` and fund the new ones as ``org``'s admin."""
    user_gateway, _ = connect_user(folder, org, user)
    admin_gateway, _ = connect_user(folder, org, "admin")
    with user_gateway, admin_gateway:
        for account, balance in SAMPLE_ACCOUNTS.items():
            try:
                user_gateway.contract(CONTRACT).submit("create_account", account)
                if balance:
                    admin_gateway.contract(CONTRACT).submit("issue", account, balance)
            except KyodoError as exc:
                if "already exists" not in str(exc):
                    raise UsageError(f"cannot open {account}: {exc}") from exc
                console.print(f"{account} exists: left as it is")
                continue
            console.print(f"opened {account} for {org}/{user} with {balance}")


# -- the command ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Submit payment instructions from a CSV file or a SQLite table.",
        epilog="Columns: " + ", ".join(COLUMNS) + ". See the module docstring for details.",
    )
    parser.add_argument("--dir", type=Path, help="the network folder (kyodo network up --dir)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a CSV file with a header row")
    source.add_argument("--sqlite", type=Path, help="a SQLite database (with --table)")
    source.add_argument(
        "--open-sample-accounts",
        action="store_true",
        help="open and fund the accounts the sample file names, then exit",
    )
    parser.add_argument("--table", help="the table of --sqlite to read")
    parser.add_argument(
        "--create-sample", action="store_true", help="copy the sample into a new --table, exit"
    )
    parser.add_argument("--org", default="org1", help="the user's organization (org1)")
    parser.add_argument("--user", default="user1", help="the user who owns the sources (user1)")
    parser.add_argument(
        "--concurrency",
        type=concurrency,
        default=4,
        help=f"rows in flight at once, 1 to {MAX_CONCURRENCY} (4)",
    )
    parser.add_argument("--report", type=Path, help="write a CSV line per row here")
    parser.add_argument(
        "--journal", type=Path, help="the journal (DIR/submit_instructions.journal)"
    )
    args = parser.parse_args(argv)
    if args.sqlite is not None and not args.table:
        parser.error("--sqlite needs --table")
    if args.create_sample and args.sqlite is None:
        parser.error("--create-sample needs --sqlite and --table")
    if args.dir is None and not args.create_sample:
        parser.error("--dir is required")
    return args


def concurrency(text: str) -> int:
    """An argparse type: an integer from 1 to MAX_CONCURRENCY."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_CONCURRENCY}")
    return int(text)


def run_command(args: argparse.Namespace) -> int:
    """Do what the arguments ask; the exit status."""
    if args.create_sample:
        count = create_sample_table(args.sqlite, args.table)
        console.print(f"created table {args.table} in {args.sqlite} with {count} sample rows")
        return 0
    if args.open_sample_accounts:
        open_sample_accounts(args.dir, args.org, args.user)
        return 0
    rows = read_csv(args.csv) if args.csv else read_table(args.sqlite, args.table)
    where = args.csv or f"{args.sqlite} table {args.table}"
    console.print(f"{len(rows)} rows from {where}, {sum(r.problem is not None for r in rows)} bad")
    gateway, chain_id = connect_user(args.dir, args.org, args.user)
    journal_path = args.journal or args.dir / "submit_instructions.journal"
    with gateway, closing(Journal(journal_path, chain_id)) as journal:
        outcomes = submit_all(Run(gateway, journal), rows, args.concurrency)
    print_summary(outcomes)
    if args.report:
        write_report(args.report, outcomes)
        console.print(f"report: {args.report}")
    console.print(f"journal: {journal_path}")
    return 0 if all(is_ok(o) for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    """The entry point: the exit status, and a message instead of a traceback for
    anything the user can fix."""
    args = parse_args(argv)
    try:
        return run_command(args)
    except UsageError as exc:
        stderr.print(f"error: {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        stderr.print("interrupted: run again to resume (the journal has every row sent)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
