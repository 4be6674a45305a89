"""How the nodes of one organization merge what they know of its subscriptions
(``EventHub.snapshot`` / ``merge``), on two hubs over real stores: checkpoints only move
forward, a deletion wins over the declaration it deleted and loses to a newer one, and a
replica naming another organization's subscription is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kyodo.client._events import replay_ended
from kyodo.codec import decode_record, encode
from kyodo.events import EventHub
from kyodo.events import _hub as hub_module
from kyodo.events._hub import _Stored
from kyodo.ledger import Block, LedgerStore
from kyodo.wire import (
    EventFilter,
    ReplicaEntry,
    StreamBatch,
    StreamOpen,
    SubscriptionReplica,
    SubscriptionSpec,
)
from tests._factories import append_genesis, append_writes, make_network
from tests.integration.test_event_delivery import Receiver

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


def run(
    tmp_path: Path,
    scenario: Callable[[EventHub, EventHub], Awaitable[None]],
    *,
    b_delivers: bool = True,
) -> None:
    store = LedgerStore(tmp_path / "ledger")
    net = make_network()
    append_genesis(store, net)
    for _ in range(3):
        append_writes(store, net, {("kv", "a"): 1})

    async def main() -> None:
        a = EventHub(tmp_path / "a", StoreReader(store), org="org1")
        b = EventHub(
            tmp_path / "b", StoreReader(store), org="org1", turn_rank=lambda: 0 if b_delivers else 1
        )
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


def test_a_replica_that_is_not_its_keys_or_beyond_the_tip_is_refused(tmp_path: Path) -> None:
    async def scenario(a: EventHub, b: EventHub) -> None:
        await a.declare(SPEC, "org1/client/user1")
        (replica,) = a.snapshot()
        (entry,) = replica.entries
        stored = decode_record(_Stored, entry.stored)
        for forged in (
            replace(stored, spec=replace(SPEC, name="other")),  # not the key's name
            replace(stored, owner="org2/client/user1"),  # another organization's
            replace(stored, checkpoint=(10**9, -1, -1)),  # beyond this node's tip
            replace(stored, checkpoint=(1, 2)),  # not a position
        ):
            bad = SubscriptionReplica(entries=(replace(entry, stored=encode(forged)),))
            assert await b.merge(bad) == 0
        assert b.list("org1") == []

    run(tmp_path, scenario)


def test_a_declaration_deleted_and_declared_again_keeps_its_webhook_worker(
    tmp_path: Path,
) -> None:
    """Replicas merged concurrently (each frame is its own task) apply one at a time: a
    deletion racing the declaration it deletes must not leave the next declaration of
    the name without a worker."""

    async def scenario(a: EventHub, b: EventHub) -> None:
        hook = replace(SPEC, webhook_url="http://127.0.0.1:9/hook", webhook_secret=b"s" * 32)
        await a.declare(hook, "org1/client/user1")
        declared = a.snapshot()
        await a.delete("sub", "org1")
        deleted = a.snapshot()
        await asyncio.gather(*(b.merge(r) for r in (*declared, *deleted)))
        assert b.list("org1") == []
        await a.declare(hook, "org1/client/user1")
        assert await sync(a, b) == 1
        worker = b._workers["org1/sub"]
        await asyncio.sleep(0)  # a worker that exits at once would be done by now
        assert not worker.done()

    run(tmp_path, scenario, b_delivers=False)


def test_a_node_out_of_turn_takes_a_stalled_webhook_over_and_hands_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node whose turn it is sends nothing of a webhook (it refused the declaration,
    say) while items wait: after TAKEOVER_S another node delivers them, and stops when
    news of it comes again."""
    monkeypatch.setattr(hub_module, "TAKEOVER_S", 0.3)
    receiver = Receiver(b"k" * 32)

    async def scenario(a: EventHub, b: EventHub) -> None:
        hook = replace(SPEC, webhook_url=receiver.url, webhook_secret=receiver.secret)
        await b.declare(hook, "org1/client/user1")  # b's turn never comes: a's is
        deadline = time.monotonic() + 20
        while len(receiver.received) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polls the receiver, which runs on its own thread
        assert [r["height"] for r in receiver.received] == [0, 1, 2, 3]
        assert "org1/sub" in b._took_over
        await sync(b, a)
        await a.flush()
        a._dirty.add("org1/sub")  # the node whose turn it is reports again
        replicas: list[SubscriptionReplica] = []
        a._replicate = replicas.append
        await a.flush()
        for replica in replicas:
            await b.merge(replica)
        assert "org1/sub" not in b._took_over

    try:
        run(tmp_path, scenario, b_delivers=False)
    finally:
        receiver.close()


def test_a_replay_ends_with_a_marker_the_consumer_closes_on(tmp_path: Path) -> None:
    """A replay's last message is an empty batch at or past ``until``; the SDKs close
    their side on it, so the node never ends the call under an acknowledgement on its
    way (which gRPC reports as a broken connection, and the consumer reconnected)."""

    async def scenario(a: EventHub, b: EventHub) -> None:
        session = a.open(
            StreamOpen(filter=EventFilter(kind="blocks"), after=(0, -1, -1), until_height=2),
            "org1/client/user1",
        )
        batches = [batch async for batch in session.batches()]
        a.release(session)
        assert [i.height for batch in batches for i in batch.items] == [0, 1, 2]
        assert [replay_ended(batch, 2) for batch in batches] == [False] * (len(batches) - 1) + [
            True
        ]
        assert not replay_ended(StreamBatch(items=(), tip=1), 2)  # a heartbeat before it

    run(tmp_path, scenario)
