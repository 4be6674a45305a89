"""A real local network for integration tests: 4 organizations, 4 node processes.

Nodes are real OS processes on 127.0.0.1 talking mutual TLS; the fixture
waits on readiness with a deadline and stops every process afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kyodo.cli._network import LocalNetwork, NodeEntry, create_network
from kyodo.client import KyodoError


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


async def wait_until_async(
    predicate: Callable[[], Awaitable[Any]], *, timeout_s: float, what: str
) -> Any:
    """The asyncio twin of ``wait_until``: await ``predicate`` until it returns a truthy
    value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def node_status(net: LocalNetwork, node: NodeEntry) -> Any:
    """The node's NodeStatus, or None if it does not answer."""
    try:
        return net.status(node)
    except KyodoError:
        return None


def statuses(net: LocalNetwork) -> list[Any]:
    """Every node's status (None for a node that does not answer)."""
    return [node_status(net, n) for n in net.nodes]


def wait_converged(net: LocalNetwork, *, timeout_s: float = 30.0) -> Any:
    """Wait until every node answers with the same height, tip hash and state root."""

    seen: list[Any] = []

    def converged() -> Any:
        all_status = statuses(net)
        seen[:] = all_status
        if any(s is None for s in all_status):
            return None
        tips = {(s.height, s.tip_hash, s.state_root) for s in all_status}
        return all_status[0] if len(tips) == 1 else None

    try:
        return wait_until(converged, timeout_s=timeout_s, what="all nodes at the same tip")
    except AssertionError as exc:  # say what each node last answered
        lines = [
            f"{n.node_id}: no answer"
            if s is None
            else f"{n.node_id}: height {s.height} tip {s.tip_hash.hex()[:12]} "
            f"root {s.state_root.hex()[:12]} {s.role} view {s.view} "
            f"healthy={s.healthy} {s.detail!r}"
            for n, s in zip(net.nodes, seen, strict=False)
        ]
        raise AssertionError(f"{exc}\n" + "\n".join(lines)) from None


def start_network(folder: Path, orgs: int = 4, **options: Any) -> LocalNetwork:
    """Create and start a network; wait until every node is healthy."""
    net = create_network(folder, orgs=orgs, progress=lambda _m: None, **options)
    for node in net.nodes:
        net.start(node)
    wait_until(
        lambda: all(s is not None and s.healthy for s in statuses(net)),
        timeout_s=60,
        what="every node healthy",
    )
    return net


def stop_network(net: LocalNetwork) -> None:
    """Stop every node process (SIGKILL: the tests do not need a clean shutdown)."""
    for node in net.nodes:
        net.stop(node, kill=True)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A running 4-organization network, shared by the tests of one module."""
    net = start_network(tmp_path_factory.mktemp("net") / "kyodo-network")
    try:
        yield net
    finally:
        stop_network(net)


@pytest.fixture(scope="module")
def pair_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Two organizations of two validators each (org1 has two nodes to fail over to),
    shared by the tests of one module."""
    net = start_network(
        tmp_path_factory.mktemp("net") / "kyodo-network",
        orgs=2,
        validators_per_org=2,
        allow_fragile_topology=True,
    )
    try:
        yield net
    finally:
        stop_network(net)
