"""How the nodes of one organization merge what they know of its subscriptions
(``EventHub.snapshot`` / ``merge``), on two hubs over real stores: checkpoints only move
forward, a deletion wins over the declaration it deleted and loses to a newer one, and a
replica naming another organization's subscription is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from kyodo.events import EventHub
from kyodo.ledger import Block, LedgerStore
from kyodo.wire import EventFilter, ReplicaEntry, SubscriptionReplica, SubscriptionSpec
from tests._factories import append_genesis, append_writes, make_network

SPEC = SubscriptionSpec(name="sub", filter=EventFilter(kind="blocks"), start="oldest")


class StoreReader:
    """A hub's view of a real store (what the node's ``_HubLedger`` is)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(1)

    def tip(self) -> int:
        return self.store.height() or 0

    def block(self, height: int) -> Block:
        block = self.store.get_block(height)
        assert block is not None
        return block

    def writes(self, height: int) -> Sequence[Any] | None:
        return self.store.get_writes(height)

    def in_reader(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self.pool, fn)


def run(tmp_path: Path, scenario: Callable[[EventHub, EventHub], Awaitable[None]]) -> None:
    store = LedgerStore(tmp_path / "ledger")
    net = make_network()
    append_genesis(store, net)
    for _ in range(3):
        append_writes(store, net, {("kv", "a"): 1})

    async def main() -> None:
        a = EventHub(tmp_path / "a", StoreReader(store), org="org1")
        b = EventHub(tmp_path / "b", StoreReader(store), org="org1")
        a.start()
        b.start()
        try:
            await scenario(a, b)
        finally:
            await a.close()
            await b.close()

    try:
        asyncio.run(main())
    finally:
        store.close()


async def sync(source: EventHub, target: EventHub) -> int:
    return sum([await target.merge(r) for r in source.snapshot()])


def test_a_checkpoint_moves_forward_only(tmp_path: Path) -> None:
    async def scenario(a: EventHub, b: EventHub) -> None:
        await a.declare(SPEC, "org1/client/user1")
        assert await sync(a, b) == 1
        assert b.get("sub", "org1").checkpoint == a.get("sub", "org1").checkpoint
        a.record_ack("org1/sub", (2, -1, 0), 2)
        await a.flush()
        assert await sync(a, b) == 1
        assert tuple(b.get("sub", "org1").checkpoint) == (2, -1, 0)
        assert b.get("sub", "org1").acked == 2
        assert await sync(a, b) == 0  # the same again changes nothing
        b.record_ack("org1/sub", (3, -1, 0), 1)
        await b.flush()
        assert await sync(a, b) == 0  # an older checkpoint does not move b back
        assert tuple(b.get("sub", "org1").checkpoint) == (3, -1, 0)

    run(tmp_path, scenario)


def test_a_deletion_wins_over_its_declaration_and_loses_to_a_newer_one(tmp_path: Path) -> None:
    async def scenario(a: EventHub, b: EventHub) -> None:
        await a.declare(SPEC, "org1/client/user1")
        await sync(a, b)
        old = a.snapshot()
        await b.delete("sub", "org1")
        assert await sync(b, a) == 1  # the deletion reaches a
        assert a.list("org1") == []
        for replica in old:  # the declaration from before it does not come back
            assert await a.merge(replica) == 0
        assert a.list("org1") == []
        await a.declare(SPEC, "org1/client/user1")  # declared again, after the deletion
        assert await sync(a, b) == 1
        assert [i.name for i in b.list("org1")] == ["sub"]

    run(tmp_path, scenario)


def test_a_replica_of_another_organization_or_malformed_is_refused(tmp_path: Path) -> None:
    async def scenario(a: EventHub, b: EventHub) -> None:
        await a.declare(SPEC, "org1/client/user1")
        (replica,) = a.snapshot()
        (entry,) = replica.entries
        foreign = SubscriptionReplica(entries=(replace(entry, key="org2/sub"),))
        assert await b.merge(foreign) == 0 and b.list("org2") == []
        garbage = SubscriptionReplica(entries=(ReplicaEntry(key="org1/x", stored=b"\x01"),))
        assert await b.merge(garbage) == 0 and b.list("org1") == []

    run(tmp_path, scenario)
