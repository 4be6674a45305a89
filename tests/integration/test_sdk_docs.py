"""The examples of docs/sdk.md run as written, against a real network.

Every ```python block of the guide whose first line is ``# example: <name>`` is
run as a script with the network folder in ``KYODO_NETWORK`` (and ``KYODO_ORG``
left to its default, ``org1``): it must exit 0 and print every line its
``# prints: <line>`` comments promise. The other Python blocks (shapes that need
an HSM, say) must at least compile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kyodo.cli._network import LocalNetwork

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "sdk.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"# example: ([a-z0-9-]+)\n")
PROMISE = re.compile(r"#\s*prints:\s*(.+?)\s*$", re.M)
RUN_TIMEOUT_S = 120


def python_blocks() -> list[str]:
    """Every ```python block of the guide, in order."""
    return BLOCK.findall(GUIDE.read_text())


def examples() -> list[tuple[str, str]]:
    """(name, source) of every runnable example."""
    found = []
    for source in python_blocks():
        if marker := MARKER.match(source):
            found.append((marker.group(1), source))
    return found


def promised_lines(source: str) -> list[str]:
    """The lines an example says it prints."""
    return PROMISE.findall(source)


def test_the_guide_has_runnable_examples() -> None:
    names = [name for name, _ in examples()]
    assert len(names) >= 10, names
    assert len(set(names)) == len(names), f"example names repeat: {names}"
    for name, source in examples():
        assert "KYODO_NETWORK" in source, f"{name} does not read the network folder"
        assert promised_lines(source), f"{name} promises no output to check"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_block_compiles(index: int) -> None:
    compile(python_blocks()[index], f"{GUIDE.name} block {index + 1}", "exec")


@pytest.mark.parametrize(("name", "source"), examples(), ids=[n for n, _ in examples()])
def test_example_runs_as_written(
    network: LocalNetwork, tmp_path: Path, name: str, source: str
) -> None:
    script = tmp_path / f"{name.replace('-', '_')}.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "KYODO_ORG"}
    env["KYODO_NETWORK"] = str(network.folder)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    printed = [line.strip() for line in done.stdout.splitlines()]
    for line in promised_lines(source):
        assert line in printed, f"{name} did not print {line!r}; it printed:\n{done.stdout}"
