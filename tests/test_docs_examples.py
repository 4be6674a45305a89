"""The examples in docs/contracts.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def test_the_worked_example_and_its_test_pass_kyodo_contract_test(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    contract = next(b for b in blocks if "class Invoices(Contract)" in b)
    test = next(b for b in blocks if "LocalLedger" in b and "def test_" in b)
    (tmp_path / "invoices.py").write_text(contract)
    (tmp_path / "test_invoices.py").write_text(test)
    done = subprocess.run(
        [sys.executable, "-m", "kyodo.cli._main", "contract", "test", "invoices.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the verifier accepts it" in done.stdout and "1 passed" in done.stdout
