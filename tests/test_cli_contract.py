"""``kyodo contract new | test | package`` as an author runs them (no network needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kyodo.codec import decode_record
from kyodo.contracts import ContractPackage

KYODO = [sys.executable, "-m", "kyodo.cli._main"]


def kyodo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KYODO, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_new_scaffolds_a_contract_whose_tests_pass(tmp_path: Path) -> None:
    made = kyodo("contract", "new", "loan_book", "--into", "loans", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "loans" / "loan_book.py").exists()
    tested = kyodo("contract", "test", "loans/loan_book.py", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "the verifier accepts it" in tested.stdout and "2 passed" in tested.stdout
    again = kyodo("contract", "new", "loan_book", "--into", "loans", cwd=tmp_path)
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_package_writes_the_hash_organizations_approve(tmp_path: Path) -> None:
    kyodo("contract", "new", "ledger_notes", cwd=tmp_path)
    made = kyodo(
        "contract", "package", "ledger_notes.py", "--version", "0.3.0",
        "--access", "*.admin", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    package = decode_record(ContractPackage, Path(tmp_path / doc["file"]).read_bytes())
    assert package.name == "ledger_notes" and package.version == "0.3.0"
    assert package.access == ("*.admin",) and package.package_hash().hex() == doc["hash"]


def test_package_and_test_refuse_code_the_verifier_refuses(tmp_path: Path) -> None:
    kyodo("contract", "new", "bad", cwd=tmp_path)
    source = tmp_path / "bad.py"
    source.write_text(source.read_text() + "\nimport time\n")
    for command in (("contract", "package", "bad.py"), ("contract", "test", "bad.py")):
        refused = kyodo(*command, cwd=tmp_path)
        assert refused.returncode == 1
        assert "bad.py:" in refused.stderr and "clock access" in refused.stderr
    missing = kyodo("contract", "test", "nothing.py", cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
