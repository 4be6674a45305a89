"""``python -m kyodo.node HOME``: run one node (what ``kyodo network up`` starts)."""

from __future__ import annotations

import sys
from pathlib import Path

from kyodo.node import run_node

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kyodo.node NODE_HOME")
    run_node(Path(sys.argv[1]))
