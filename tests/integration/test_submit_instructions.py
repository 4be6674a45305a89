"""The instruction-submitting example on real processes: a CSV file and a SQLite table
of payment instructions, good and bad rows, and re-runs that apply nothing twice.

The script runs as a subprocess against the module's 4-organization network, as an
existing system would run it; balances are read back through the SDK.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from kyodo.cli._network import LocalNetwork
from kyodo.codec import encode
from kyodo.wire import Transaction, TxEnvelope, signed_part

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "submit_instructions.py"
SAMPLE = ROOT / "examples" / "data" / "instructions.csv"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SAMPLE_BALANCES = {  # opening balances, less and plus the 14 good rows of the sample
    "acme-operating": 10_000 - 6_375,
    "acme-payroll": 1_000 - 650 + 500,
    "nordic-steel": 1_200 + 95 + 640,
    "kansai-parts": 350 + 200 + 62 + 1_000 + 150 + 88,
    "rhine-logistics": 780 + 1_450 + 300 + 210,
}
SAMPLE_FAILURES = {
    "INS-1010": ("contract_error", "account baltic-freight does not exist"),
    "INS-1011": ("contract_error", "insufficient funds"),
    "INS-1012": ("invalid_amount", "amount must be a whole number of units: '12.50'"),
    "INS-1014": ("invalid_amount", "amount must be positive: -40"),
    "INS-1015": ("same_account", "source and target are the same account"),
    "INS-1017": ("invalid_amount", "amount is missing"),
}


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the example as an application would, output captured (not a terminal)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def summary(stdout: str) -> dict[str, int]:
    """The summary's counts, by label."""
    counts = {}
    for line in ANSI.sub("", stdout).splitlines():
        found = re.fullmatch(r"(rows|already applied|submitted|succeeded|failed) +(\d+)", line)
        if found:
            counts[found[1]] = int(found[2])
    return counts


def failure_groups(stdout: str) -> dict[str, int]:
    """The summary's failures by reason: reason -> count."""
    text = ANSI.sub("", stdout)
    assert "failures by reason" in text
    groups = text.split("failures by reason\n", 1)[1].splitlines()
    found = (re.fullmatch(r" +(\d+)  (.+)", line) for line in groups)
    return {m[2]: int(m[1]) for m in found if m}


def report(path: Path) -> list[dict[str, str]]:
    """The per-row report, in input order."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows and list(rows[0]) == ["id", "status", "tx_id", "height", "error_code", "error"]
    return rows


def balances(net: LocalNetwork, accounts: list[str]) -> dict[str, int]:
    """Balances read at another organization's node than the one the script used."""
    with net.gateway("org3") as gw:
        contract = gw.contract("asset_transfer")
        return {account: contract.evaluate("balance", account) for account in accounts}


def load_script() -> ModuleType:
    """The example as a module, to build journal entries as an earlier run would have."""
    spec = importlib.util.spec_from_file_location("submit_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def signed_long_ago(net: LocalNetwork, args: tuple[Any, ...]) -> TxEnvelope:
    """A transfer org2/user1 signed 10 minutes ago: past the ledger's 5-minute window."""
    user = net.user("org2")
    payload = encode(
        Transaction(
            chain_id=net.chain_id,
            contract="asset_transfer",
            function="transfer",
            args=args,
            nonce=os.urandom(16),
            created_ms=time.time_ns() // 1_000_000 - 600_000,
            creator=user.identity.certificate,
        )
    )
    return TxEnvelope(payload=payload, signature=user.signer.sign(signed_part(payload)))


def assert_clean_exit(result: subprocess.CompletedProcess[str], status: int) -> None:
    """The exit status expected, and never a traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output, output


def test_sample_csv_applies_good_rows_once_and_reports_each_bad_row(network, tmp_path):
    opened = run_script("--dir", str(network.folder), "--open-sample-accounts")
    assert_clean_exit(opened, 0)
    assert opened.stdout.count("opened ") == 5

    first = run_script(
        "--dir", str(network.folder), "--csv", str(SAMPLE), "--report", str(tmp_path / "1.csv")
    )
    assert_clean_exit(first, 1)
    assert summary(first.stdout) == {
        "rows": 21,
        "already applied": 0,
        "submitted": 16,
        "succeeded": 14,
        "failed": 7,
    }
    assert "progress 21/21: 14 ok, 7 failed" in first.stdout
    assert failure_groups(first.stdout) == {
        "ContractFailed [contract_error] account baltic-freight does not exist": 1,
        "ContractFailed [contract_error] insufficient funds": 1,
        "InvalidRow [invalid_amount] amount must be a whole number of units": 1,
        "InvalidRow [invalid_amount] amount must be positive": 1,
        "InvalidRow [invalid_amount] amount is missing": 1,
        "InvalidRow [same_account] source and target are the same account": 1,
        "InvalidRow [duplicate_id] duplicate id": 1,
    }
    rows = report(tmp_path / "1.csv")
    assert [r["id"] for r in rows[:-1]] == [f"INS-{n}" for n in range(1001, 1021)]
    assert rows[-1] == {
        "id": "INS-1008",
        "status": "failed",
        "tx_id": "",
        "height": "",
        "error_code": "duplicate_id",
        "error": "duplicate id: first at line 9",
    }
    by_id = {r["id"]: r for r in rows[:-1]}
    for row_id, (code, message) in SAMPLE_FAILURES.items():
        row = by_id.pop(row_id)
        assert row["status"] == "failed" and row["error_code"] == code
        assert row["error"].startswith(message), row
        on_ledger = code == "contract_error"  # recorded in a block, nothing written
        assert bool(row["tx_id"]) == on_ledger and bool(row["height"]) == on_ledger
    assert all(r["status"] == "succeeded" and len(r["tx_id"]) == 64 for r in by_id.values())
    assert balances(network, list(SAMPLE_BALANCES)) == SAMPLE_BALANCES

    second = run_script(
        "--dir", str(network.folder), "--csv", str(SAMPLE), "--report", str(tmp_path / "2.csv")
    )
    assert_clean_exit(second, 1)
    assert summary(second.stdout) == {
        "rows": 21,
        "already applied": 14,
        "submitted": 2,  # the two the ledger refused are tried again, and refused again
        "succeeded": 0,
        "failed": 7,
    }
    again = {r["id"]: r for r in report(tmp_path / "2.csv")[:-1]}
    for row_id, row in by_id.items():
        assert again[row_id]["status"] == "already_applied"
        assert (again[row_id]["tx_id"], again[row_id]["height"]) == (row["tx_id"], row["height"])
    assert balances(network, list(SAMPLE_BALANCES)) == SAMPLE_BALANCES

    reopened = run_script("--dir", str(network.folder), "--open-sample-accounts")
    assert_clean_exit(reopened, 0)
    assert reopened.stdout.count("exists: left as it is") == 5
    assert balances(network, list(SAMPLE_BALANCES)) == SAMPLE_BALANCES


def test_sqlite_table_resumes_an_interrupted_run_and_never_applies_a_row_twice(network, tmp_path):
    with network.gateway("org2") as gw, network.gateway("org2", "admin") as admin:
        gw.contract("asset_transfer").submit("create_account", "sq-payer")
        gw.contract("asset_transfer").submit("create_account", "sq-payee")
        admin.contract("asset_transfer").submit("issue", "sq-payer", 1_000)
        db = tmp_path / "erp.db"
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TABLE outgoing (id TEXT, source TEXT, target TEXT, amount INTEGER, "
                "reference TEXT, booked_by TEXT)"
            )
            conn.executemany(
                "INSERT INTO outgoing VALUES (?, ?, ?, ?, ?, 'erp')",
                [
                    ("Q-1", "sq-payer", "sq-payee", 100, "PO-1"),
                    ("Q-2", "sq-payer", "sq-payee", 250, "PO-2"),
                    ("Q-3", "sq-payer", "sq-payee", 12.5, "PO-3"),
                    ("Q-4", "sq-payer", "sq-payee", None, "PO-4"),
                    ("Q-5", "sq-payer", "sq-payee", 5_000, "PO-5"),
                    ("Q-6", "sq-payer", "sq-payee", 50, "PO-6"),
                ],
            )
        conn.close()
        # An earlier run stopped short: it journaled Q-1's envelope and sent it (the
        # ledger applied it) but never learned the outcome; it journaled Q-2's and
        # stopped before sending it; Q-6's too, but so long ago that it has expired. An
        # older run was killed mid-line.
        envelopes = {
            "Q-1": gw.sign("asset_transfer", "transfer", ("sq-payer", "sq-payee", 100)),
            "Q-2": gw.sign("asset_transfer", "transfer", ("sq-payer", "sq-payee", 250)),
            "Q-6": signed_long_ago(network, ("sq-payer", "sq-payee", 50)),
        }
        script = load_script()
        journal_path = tmp_path / "erp.journal"
        journal_path.write_text(f'{{"chain_id":"{network.chain_id}","row_id":"Q-1","st')
        journal = script.Journal(journal_path, network.chain_id)
        for row_id, envelope in envelopes.items():
            source, target, amount = envelope.transaction().args
            row = script.Instruction(
                row_id=row_id, line=0, source=source, target=target, amount=amount, reference=""
            )
            script.record_signed(journal, row, envelope)
        journal.close()
        assert gw.submit_envelope(envelopes["Q-1"]).state == "final"
    assert balances(network, ["sq-payer", "sq-payee"]) == {"sq-payer": 900, "sq-payee": 100}

    args = ["--dir", str(network.folder), "--sqlite", str(db), "--table", "outgoing"]
    args += ["--org", "org2", "--journal", str(journal_path), "--concurrency", "2"]
    first = run_script(*args, "--report", str(tmp_path / "1.csv"))
    assert_clean_exit(first, 1)
    assert summary(first.stdout) == {
        "rows": 6,
        "already applied": 1,
        "submitted": 3,
        "succeeded": 2,
        "failed": 3,
    }
    rows = {r["id"]: r for r in report(tmp_path / "1.csv")}
    assert rows["Q-1"]["status"] == "already_applied"
    assert rows["Q-1"]["tx_id"] == envelopes["Q-1"].tx_id().hex()
    assert rows["Q-2"]["status"] == "succeeded"  # the journaled envelope, not a new one
    assert rows["Q-2"]["tx_id"] == envelopes["Q-2"].tx_id().hex()
    assert rows["Q-6"]["status"] == "succeeded"  # expired unsent: signed afresh
    assert rows["Q-6"]["tx_id"] not in ("", envelopes["Q-6"].tx_id().hex())
    assert rows["Q-3"]["error"] == "amount must be a whole number of units: '12.5'"
    assert rows["Q-4"]["error"] == "amount is missing"
    assert rows["Q-5"]["error_code"] == "contract_error"
    assert "insufficient funds" in rows["Q-5"]["error"]
    assert balances(network, ["sq-payer", "sq-payee"]) == {"sq-payer": 600, "sq-payee": 400}
    states = [json.loads(line)["state"] for line in journal_path.read_text().splitlines()[1:]]
    assert states.count("applied") == 3 and states.count("failed") == 1

    with sqlite3.connect(db) as conn:  # Q-2 edited at the source after it was paid
        conn.execute("UPDATE outgoing SET amount = 260 WHERE id = 'Q-2'")
    conn.close()
    second = run_script(*args, "--report", str(tmp_path / "2.csv"), TTY_COMPATIBLE="1")
    assert_clean_exit(second, 1)  # a terminal: the live bar, then the same summary
    assert summary(second.stdout) == {
        "rows": 6,
        "already applied": 2,
        "submitted": 1,
        "succeeded": 0,
        "failed": 4,
    }
    rows = {r["id"]: r for r in report(tmp_path / "2.csv")}
    assert rows["Q-2"]["status"] == "failed" and rows["Q-2"]["error_code"] == "changed"
    assert balances(network, ["sq-payer", "sq-payee"]) == {"sq-payer": 600, "sq-payee": 400}


def test_setup_and_usage_errors_exit_2_with_a_message(network, tmp_path):
    db = tmp_path / "sample.db"
    created = run_script("--sqlite", str(db), "--table", "instructions", "--create-sample")
    assert_clean_exit(created, 0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM instructions").fetchone() == (21,)
    conn.close()
    cases: list[tuple[list[str], str]] = [
        (["--sqlite", str(db), "--table", "instructions", "--create-sample"], "already exists"),
        (["--dir", str(tmp_path / "none"), "--csv", str(SAMPLE)], "no network in"),
        (["--dir", str(network.folder), "--sqlite", str(db), "--table", "x;y"], "table name"),
        (["--dir", str(network.folder), "--sqlite", str(db), "--table", "nope"], "no such table"),
        (["--dir", str(network.folder), "--csv", str(tmp_path / "nope.csv")], "cannot read"),
        (["--dir", str(network.folder), "--csv", str(SAMPLE), "--org", "org9"], "no organization"),
        (["--dir", str(network.folder), "--csv", str(SAMPLE), "--user", "eve"], "cannot load user"),
        (["--dir", str(network.folder), "--csv", str(SAMPLE), "--concurrency", "0"], "concurrency"),
    ]
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("INS-1,a,b,10\n")
    cases.append((["--dir", str(network.folder), "--csv", str(headerless)], "has no column"))
    unreachable = tmp_path / "unreachable"  # the network's credentials, a closed port
    unreachable.mkdir()
    for name in ("orgs", "ca-bundle.pem"):
        (unreachable / name).symlink_to(network.folder / name)
    doc = json.loads((network.folder / "network.json").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    doc["nodes"] = [{**node, "gateway": closed} for node in doc["nodes"]]
    (unreachable / "network.json").write_text(json.dumps(doc))
    cases.append((["--dir", str(unreachable), "--csv", str(SAMPLE)], "cannot reach the gateway"))
    for args, message in cases:
        result = run_script(*args)
        assert_clean_exit(result, 2)
        assert message in result.stderr, (args, result.stderr)
