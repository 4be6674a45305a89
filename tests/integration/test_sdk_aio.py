"""The asyncio SDK (kyodo.client.aio) end to end on real nodes: calls, typed errors,
submit_async, durable subscriptions with ack and resume, inline streams with a
checkpointer, closing a stream from another task, and failover from a dead address.

Each test is a plain function running its coroutine with ``asyncio.run`` under a
deadline (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kyodo.cli._network import LocalNetwork
from kyodo.client import (
    AccessDenied,
    ContractFailed,
    FileCheckpointer,
    LedgerEvent,
    NotFound,
    Subscription,
    TransactionRejected,
)
from kyodo.client.aio import AsyncGateway, connect_user
from kyodo.wire import TxEnvelope
from tests.integration.conftest import wait_until_async as wait_until

T = TypeVar("T")
_sync_accounts = itertools.count()
DEADLINE_S = 120.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test's coroutine in a fresh event loop, failing after DEADLINE_S."""
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def gateway(network: LocalNetwork, org: str, user: str = "user1", **kw: Any) -> AsyncGateway:
    """An asyncio gateway connection to ``org``'s node (created in the running loop)."""
    return connect_user(network.user(org, user), network.node(org).gateway, **kw)


def dead_address() -> str:
    """host:port on 127.0.0.1 where nothing listens (a port bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class Proxy:
    """A TCP relay to ``target`` on a free port of 127.0.0.1 that can be killed: its
    connections are reset and the port refuses new ones (a gateway lost mid-stream)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            self._tasks.add(asyncio.create_task(task))

    async def kill(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def caught_up_tip(gw: AsyncGateway) -> int:
    """A height this gateway's node has committed, at or after every transaction the
    earlier tests saw final (possibly on other nodes): a transaction of its own is final
    here only once every block before it is. Streams ``after`` it, and subscriptions
    declared from here on (``latest``), see nothing of the earlier tests."""
    done = await gw.contract("asset_transfer").submit_transaction(
        "create_account", f"aio-sync-{next(_sync_accounts)}"
    )
    return done.height


async def take(
    stream: AsyncIterator[LedgerEvent], n: int, *, ack: bool = True
) -> list[LedgerEvent]:
    """The next ``n`` items of a stream (acknowledging each)."""
    out: list[LedgerEvent] = []
    async for event in stream:
        out.append(event)
        if ack:
            await event.ack()
        if len(out) == n:
            break
    return out


def test_submit_evaluate_and_reads(network: LocalNetwork) -> None:
    org = network.orgs[0]

    async def main() -> None:
        async with gateway(network, org, "admin") as gw:
            contract = gw.network().contract("asset_transfer")
            await contract.submit("create_account", "aio-a")
            await contract.submit("create_account", "aio-b")
            await contract.submit("issue", "aio-a", 100)
            done = await contract.submit_transaction("transfer", "aio-a", "aio-b", 30)
            assert done.result["source_balance"] == 70
            assert await contract.evaluate("balance", "aio-a") == 70
            assert await gw.contract("asset_transfer").evaluate("balance", "aio-b") == 30
            assert (await gw.status()).height >= done.height
            assert await gw.block(done.height)
            found = await gw.transaction(bytes.fromhex(done.tx_id))
            assert found.height == done.height and found.tx_index == done.tx_index
            names = [c["name"] for c in await gw.network().contracts()]
            assert "asset_transfer" in names

    run(main())


def test_submit_async_then_status_and_result(network: LocalNetwork) -> None:
    org = network.orgs[1]

    async def main() -> None:
        async with gateway(network, org) as gw:
            contract = gw.contract("asset_transfer")
            commit = await contract.submit_async("create_account", "aio-async")
            state = await commit.status(wait_s=20)
            assert (state.state, state.code, state.tx_id) == ("final", "OK", commit.tx_id)
            result = await commit.result(wait_s=20)
            assert result.tx_id == commit.tx_id and result.height == state.height
            assert result.result["account"] == "aio-async"

            failing = await contract.submit_async("transfer", "aio-async", "nobody", 5)
            assert (await failing.status(wait_s=20)).code == "contract_error"
            with pytest.raises(ContractFailed, match="nobody does not exist") as refused:
                await failing.result(wait_s=20)
            assert refused.value.tx_id == failing.tx_id and refused.value.height

    run(main())


def test_errors_are_typed(network: LocalNetwork) -> None:
    org = network.orgs[2]

    async def main() -> None:
        async with gateway(network, org) as gw:
            contract = gw.contract("asset_transfer")
            await contract.submit("create_account", "aio-err")
            await contract.submit("create_account", "aio-err-2")
            with pytest.raises(ContractFailed, match="insufficient funds") as refused:
                await contract.submit("transfer", "aio-err", "aio-err-2", 5, wait_s=20)
            assert refused.value.code == "contract_error" and refused.value.height
            with pytest.raises(ContractFailed, match="account aio-none does not exist"):
                await contract.evaluate("balance", "aio-none")
            with pytest.raises(ContractFailed, match="only an admin may issue"):
                await contract.submit("issue", "aio-err", 5)
            with pytest.raises(NotFound):
                await gw.transaction(b"\x00" * 32)
            with pytest.raises(NotFound):
                await gw.network().subscription("aio-no-such")
            with pytest.raises(AccessDenied):  # state.read is for auditors and admins
                await gw.network().subscribe(
                    Subscription(name="aio-st", contracts=("asset_transfer",), include_state=True)
                )
            envelope = gw.sign("asset_transfer", "create_account", ("aio-twice",))
            await gw.submit_envelope(envelope)
            again = await gw.submit_envelope(envelope)  # a retry reports the first one
            assert again.state == "final" and again.tx_id == envelope.tx_id()
            other = gw.sign("asset_transfer", "create_account", ("aio-x",))
            forged = TxEnvelope(payload=other.payload, signature=bytes(64))
            with pytest.raises(TransactionRejected) as rejected:
                await gw.submit_envelope(forged)
            assert rejected.value.reason == "bad_signature"

    run(main())


def test_named_subscription_resumes_after_last_ack(network: LocalNetwork) -> None:
    org = network.orgs[0]

    async def main() -> None:
        async with gateway(network, org) as gw:
            net = gw.network()
            sub = Subscription(
                name="aio-acct-events", contracts=("asset_transfer",), names=("AccountCreated",)
            )
            await caught_up_tip(gw)
            info = await net.subscribe(sub)
            assert info.filter.kind == "events" and info.acked == 0
            contract = net.contract("asset_transfer")
            for i in range(5):
                await contract.submit("create_account", f"aio-ev-{i}")
            async with net.events(sub) as stream:
                first = await take(stream, 3)
            assert [e.payload["account"] for e in first] == [f"aio-ev-{i}" for i in range(3)]
            assert all(e.kind == "event" and e.name == "AccountCreated" for e in first)
            assert [e.position for e in first] == sorted(e.position for e in first)

            async def three_acked() -> bool:
                return (await net.subscription("aio-acct-events")).acked == 3

            await wait_until(three_acked, timeout_s=10, what="three acknowledgements recorded")
            async with net.events(sub) as stream:
                rest = await take(stream, 2)
            assert [e.payload["account"] for e in rest] == ["aio-ev-3", "aio-ev-4"]
            assert rest[0].idempotency_key.startswith("event:")
            assert (
                tuple((await net.subscription("aio-acct-events")).checkpoint) <= rest[-1].position
            )

            # unacknowledged: delivered again (by name), with the same key
            await contract.submit("create_account", "aio-ev-5")
            async with net.events(sub) as stream:
                (seen,) = await take(stream, 1, ack=False)
            async with net.events("aio-acct-events") as stream:
                (again,) = await take(stream, 1)
            assert seen.payload["account"] == "aio-ev-5"
            assert (again.idempotency_key, again.payload) == (seen.idempotency_key, seen.payload)
            await net.unsubscribe("aio-acct-events")
            assert "aio-acct-events" not in [s.name for s in await net.subscriptions()]

    run(main())


def test_inline_stream_with_file_checkpointer(network: LocalNetwork, tmp_path: Path) -> None:
    org = network.orgs[3]

    async def main() -> None:
        async with gateway(network, org) as gw:
            net = gw.network()
            tip = await caught_up_tip(gw)
            checkpoint = FileCheckpointer(tmp_path / "cp.json")
            checkpoint.save((tip + 1, -1, -1))
            contract = net.contract("asset_transfer")
            for i in range(3):
                await contract.submit("create_account", f"aio-cp-{i}")
            async with net.events(names=("AccountCreated",), checkpointer=checkpoint) as stream:
                first = await take(stream, 2)
            assert checkpoint.load() == first[-1].position
            assert stream.acked == first[-1].position
            async with net.events(names=("AccountCreated",), checkpointer=checkpoint) as stream:
                (third,) = await take(stream, 1)
            accounts = [e.payload["account"] for e in [*first, third]]
            assert accounts == ["aio-cp-0", "aio-cp-1", "aio-cp-2"]

    run(main())


def test_transactions_stream_carries_status(network: LocalNetwork) -> None:
    org = network.orgs[2]

    async def main() -> None:
        async with gateway(network, org) as gw:
            net = gw.network()
            tip = await caught_up_tip(gw)
            contract = net.contract("asset_transfer")
            await contract.submit("create_account", "aio-tx-ok")
            with pytest.raises(ContractFailed):
                await contract.submit("transfer", "aio-tx-ok", "nobody", 5)
            async with net.events(
                kind="transactions", contracts=("asset_transfer",), after=(tip + 1, -1, -1)
            ) as stream:
                got = await take(stream, 2)
        assert [e.name for e in got] == ["create_account", "transfer"]
        assert got[0].status == "OK" and got[1].status == "contract_error"
        assert "nobody does not exist" in got[1].message

    run(main())


def test_state_changes_for_an_admin(network: LocalNetwork) -> None:
    org = network.orgs[1]

    async def main() -> None:
        async with gateway(network, org, "admin") as admin:
            tip = await caught_up_tip(admin)
            await admin.contract("asset_transfer").submit("create_account", "aio-st-1")
            async with admin.network().events(
                contracts=("asset_transfer",), include_state=True, after=(tip + 1, -1, -1)
            ) as stream:
                got = await take(stream, 2)
        assert got[0].kind == "event"
        assert got[1].kind == "state" and got[1].key == "account/aio-st-1"
        assert got[1].index == got[0].index + 1 and got[1].tx_id == got[0].tx_id

    run(main())


def test_live_events_and_close_from_another_task(network: LocalNetwork) -> None:
    org = network.orgs[1]

    async def main() -> None:
        async with gateway(network, org) as gw:
            net = gw.network()
            sub = Subscription(name="aio-live", names=("AccountCreated",))
            await caught_up_tip(gw)
            await net.subscribe(sub)  # latest: from the next block on
            stream = net.events(sub)
            got: list[LedgerEvent] = []

            async def consume() -> None:
                async for event in stream:  # runs until closed by the other task
                    got.append(event)
                    await event.ack()

            consumer = asyncio.create_task(consume())
            for i in range(3):
                await net.contract("asset_transfer").submit("create_account", f"aio-live-{i}")

            async def all_three() -> bool:
                return len(got) == 3

            await wait_until(all_three, timeout_s=20, what="three live events")
            await stream.close()
            await asyncio.wait_for(consumer, 10)  # iteration stopped, without an error
            assert [e.payload["account"] for e in got] == [f"aio-live-{i}" for i in range(3)]

            async def acked() -> bool:
                return (await net.subscription("aio-live")).acked == 3

            await wait_until(acked, timeout_s=10, what="the acks flushed on close")

    run(main())


def test_failover_from_a_dead_address(network: LocalNetwork) -> None:
    org = network.orgs[3]
    live = network.node(org).gateway
    credentials = network.user(org)

    async def main() -> None:
        # calls: the dead address first, then the live one
        async with connect_user(credentials, [dead_address(), live]) as gw:
            contract = gw.contract("asset_transfer")
            await contract.submit("create_account", "aio-fo-1")
            assert gw.address == live
            assert await contract.evaluate("account", "aio-fo-1")

        # concurrent calls failing on the same dead channel move on once, not once each
        async with connect_user(credentials, [dead_address(), live], retries=1) as gw:
            contract = gw.contract("asset_transfer")
            found = await asyncio.gather(
                *(contract.evaluate("balance", "aio-fo-1") for _ in range(8))
            )
            assert found == [0] * 8 and gw.address == live

        # an inline stream whose first attempt meets the dead address
        async with connect_user(credentials, [dead_address(), live]) as gw:
            tip = await caught_up_tip(gw)
        async with connect_user(credentials, live) as writer:
            await writer.contract("asset_transfer").submit("create_account", "aio-fo-2")
        async with connect_user(credentials, [dead_address(), live]) as gw:
            async with gw.network().events(
                names=("AccountCreated",), after=(tip + 1, -1, -1)
            ) as stream:
                (event,) = await take(stream, 1)
            assert event.payload["account"] == "aio-fo-2"
            assert stream.reconnects == 1 and gw.address == live

        # a named subscription declared through the failover, resumed after its ack
        sub = Subscription(name="aio-fo-sub", names=("AccountCreated",))
        async with connect_user(credentials, [dead_address(), live]) as gw:
            await caught_up_tip(gw)
            await gw.network().subscribe(sub)
            await gw.contract("asset_transfer").submit("create_account", "aio-fo-3")
            await gw.contract("asset_transfer").submit("create_account", "aio-fo-4")
        async with connect_user(credentials, [dead_address(), live]) as gw:
            async with gw.network().events(sub) as stream:
                (first,) = await take(stream, 1)
            async with gw.network().events(sub) as stream:
                (second,) = await take(stream, 1)
            assert [first.payload["account"], second.payload["account"]] == [
                "aio-fo-3",
                "aio-fo-4",
            ]
            await gw.network().unsubscribe("aio-fo-sub")

    run(main())


def test_a_stream_fails_over_mid_way_and_resumes_after_its_last_ack(
    network: LocalNetwork,
) -> None:
    org = network.orgs[2]
    live = network.node(org).gateway
    credentials = network.user(org)

    async def main() -> None:
        proxy = await Proxy(live).start()
        sub = Subscription(name="aio-midway", names=("AccountCreated",))
        async with connect_user(credentials, [proxy.address, live]) as gw:
            net = gw.network()
            await caught_up_tip(gw)
            await net.subscribe(sub)
            for i in range(4):
                await net.contract("asset_transfer").submit("create_account", f"aio-mw-{i}")
            async with net.events(sub) as stream:
                first = await take(stream, 2)
                assert gw.address == proxy.address
                await proxy.kill()  # the gateway in use is lost mid-stream
                async with connect_user(credentials, live) as writer:
                    for i in range(4, 6):
                        await writer.contract("asset_transfer").submit(
                            "create_account", f"aio-mw-{i}"
                        )
                rest = await take(stream, 4)
            assert stream.reconnects >= 1 and gw.address == live
            accounts = [e.payload["account"] for e in [*first, *rest]]
            assert accounts == [f"aio-mw-{i}" for i in range(6)]  # each once, in order

            async def all_acked() -> bool:
                return (await net.subscription("aio-midway")).acked >= 2

            await wait_until(all_acked, timeout_s=10, what="acks on the second gateway")
            assert tuple((await net.subscription("aio-midway")).checkpoint) == rest[-1].position

    run(main())


def test_a_replay_ends_after_its_last_block(network: LocalNetwork) -> None:
    org = network.orgs[0]

    async def main() -> None:
        async with gateway(network, org) as gw:
            net = gw.network()
            contract = net.contract("asset_transfer")
            tip = await caught_up_tip(gw)
            done = [
                await contract.submit_transaction("create_account", f"aio-rp-{i}") for i in range(3)
            ]
            await contract.submit("create_account", "aio-rp-after")  # in a later block
            got: list[LedgerEvent] = []
            async with net.events(
                names=("AccountCreated",), after=(tip + 1, -1, -1), until=done[-1].height
            ) as stream:
                async for event in stream:  # ends by itself after block `until`
                    got.append(event)
                    await event.ack()
            assert [e.payload["account"] for e in got] == [f"aio-rp-{i}" for i in range(3)]
            assert stream.reconnects == 0

    run(main())


def test_a_failover_by_another_call_does_not_break_a_stream(network: LocalNetwork) -> None:
    org = network.orgs[3]
    live = network.node(org).gateway

    async def main() -> None:
        # two entries for the same gateway: a failover closes the channel in use
        async with connect_user(network.user(org), [live, live]) as gw:
            net = gw.network()
            sub = Subscription(name="aio-under", names=("AccountCreated",))
            await caught_up_tip(gw)
            await net.subscribe(sub)
            contract = net.contract("asset_transfer")
            await contract.submit("create_account", "aio-under-0")
            async with net.events(sub) as stream:
                (first,) = await take(stream, 1)
                pending = asyncio.create_task(contract.evaluate("balance", "aio-under-0"))
                await asyncio.sleep(0)  # the query is under way on the channel...
                await gw.failover()  # ...that a failed call elsewhere closes now
                assert await pending == 0  # retried on the next channel
                await contract.submit("create_account", "aio-under-1")
                (second,) = await take(stream, 1)
            assert [first.payload["account"], second.payload["account"]] == [
                "aio-under-0",
                "aio-under-1",
            ]
            assert stream.reconnects == 1
            await net.unsubscribe("aio-under")

    run(main())
