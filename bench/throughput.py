"""Throughput benchmark: what `kyodo bench` runs (kyodo/cli/_bench.py).

    python bench/throughput.py --clients 16 --duration 10 [--dir kyodo-network] [--json]

Needs a running network (`kyodo network up`). Prints committed tx/s, finality
latency p50/p95/p99 and the setup.
"""

from __future__ import annotations

import sys

from kyodo.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", *sys.argv[1:]]))
