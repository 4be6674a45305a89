"""The PostgreSQL mirror end to end: real nodes, a real PostgreSQL, the asyncio SDK.

An admin (state changes need ``state.read``) mirrors ``asset_transfer`` while a
client moves funds; the mirror is stopped mid-way (its task cancelled) and started
again while transfers go on. At the end the mirrored tables must equal the ledger:
``state`` the accounts read through the SDK, ``events`` and ``state_changes`` each
item of the ledger's stream exactly once, and the checkpoint its last position.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from kyodo.cli._network import LocalNetwork
from kyodo.client import ContractFailed, LedgerEvent
from kyodo.client.aio import AsyncContract, AsyncNetwork, connect_user
from kyodo.connectors import PostgresMirror
from tests.integration.conftest import wait_until as wait
from tests.integration.conftest import wait_until_async as wait_until  # the asyncio one
from tests.integration.test_network import KYODO
from tests.postgres import postgres_dsn, postgres_server

__all__ = ["postgres_dsn", "postgres_server"]  # the fixtures, imported to be found

T = TypeVar("T")
Position = tuple[int, int, int]
DEADLINE_S = 240.0
ACCOUNTS = [f"pm-{i}" for i in range(4)]
ITEMS_PER_CALL = {"create_account": 2, "issue": 2, "transfer": 3}
"""Stream items of one successful call: its event, then one state change per key."""
WINDOW = 16
"""Items the node sends ahead of acknowledgements: small, so the run crosses many."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test's coroutine in a fresh event loop, failing after DEADLINE_S."""
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def query(dsn: str, statement: str, schema: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``statement`` with ``{schema}`` replaced by the quoted schema name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        composed = sql.SQL(statement).format(schema=sql.Identifier(schema))
        return conn.execute(composed, args).fetchall()


def stored_checkpoint(dsn: str, schema: str, name: str) -> Position | None:
    """The mirror's checkpoint as stored (None before the first batch)."""
    rows = query(
        dsn, "SELECT height, tx_index, idx FROM {schema}.checkpoints WHERE name = %s", schema, name
    )
    if not rows or rows[0][0] is None:
        return None
    height, tx_index, index = rows[0]
    return (height, tx_index, index)


class Transfers:
    """The client's transfers between the accounts it owns, with what they emitted."""

    def __init__(self, contract: AsyncContract) -> None:
        self._contract = contract
        self._n = itertools.count()
        self.items = 0
        """Stream items the successful calls emitted (events and state changes)."""
        self.succeeded = 0
        """Successful calls: one event each."""
        self.failed = 0
        self.last: tuple[int, int] | None = None
        """(height, tx_index) of the last successful call."""

    async def call(self, function: str, *args: Any) -> None:
        """One call, counting its items if it succeeds (a failure emits none)."""
        try:
            done = await self._contract.submit_transaction(function, *args)
        except ContractFailed:
            self.failed += 1
            return
        self.items += ITEMS_PER_CALL[function]
        self.succeeded += 1
        self.last = (done.height, done.tx_index)

    async def run(self, count: int) -> None:
        """``count`` transfers; every seventh asks for more than the source holds."""
        for _ in range(count):
            n = next(self._n)
            source, target = ACCOUNTS[n % 4], ACCOUNTS[(n + 1 + n // 4) % 4]
            if source == target:
                target = ACCOUNTS[(n + 2) % 4]
            amount = 10**9 if n % 7 == 6 else 1 + (n * 13) % 40
            await self.call("transfer", source, target, amount)


async def read_ledger(network: AsyncNetwork, count: int) -> list[LedgerEvent]:
    """The first ``count`` items of the ledger's asset_transfer events and state changes."""
    stream = network.events(contracts=("asset_transfer",), include_state=True, window=1024)
    got: list[LedgerEvent] = []
    async with stream:
        async for item in stream:
            got.append(item)
            await item.ack()
            if len(got) == count:
                break
    return got


def test_mirror_follows_the_ledger_exactly_once_across_a_restart(
    network: LocalNetwork, postgres_dsn: str
) -> None:
    org = network.orgs[0]
    address = network.node(org).gateway
    schema = f"e2e_{os.getpid()}"
    name = "asset-mirror"

    async def main() -> tuple[list[LedgerEvent], dict[str, Any], int]:
        async with (
            connect_user(network.user(org, "admin"), address) as admin,
            connect_user(network.user(org), address) as client,
        ):
            transfers = Transfers(client.contract("asset_transfer"))
            for account in ACCOUNTS:
                await transfers.call("create_account", account)
            issuer = Transfers(admin.contract("asset_transfer"))
            for account in ACCOUNTS:
                await issuer.call("issue", account, 500)

            def source(after: Position | None) -> AsyncIterator[LedgerEvent]:
                # a small window: the mirror must acknowledge each batch it committed,
                # or the node stops sending after WINDOW items
                return admin.network().events(
                    contracts=("asset_transfer",),
                    include_state=True,
                    after=after,
                    window=WINDOW,
                )

            def start_mirror() -> asyncio.Task[None]:
                """A mirror process, as it were: its own connection, run until cancelled."""

                async def mirror() -> None:
                    with PostgresMirror(
                        postgres_dsn, name=name, contracts=("asset_transfer",), schema=schema
                    ) as mirror:
                        await mirror.run(source, batch_max=50, linger_s=0.05)

                return asyncio.create_task(mirror())

            async def checkpoint() -> Position | None:
                return await asyncio.to_thread(stored_checkpoint, postgres_dsn, schema, name)

            mirror = start_mirror()
            await transfers.run(25)
            await wait_until(checkpoint, timeout_s=30, what="the mirror's first batch")
            mirror.cancel()  # stopped mid-way; a batch being written is let finish
            with contextlib.suppress(asyncio.CancelledError):
                await mirror
            stopped_at = await checkpoint()
            await transfers.run(25)  # while the mirror is down
            mirror = start_mirror()
            await transfers.run(25)  # while it catches up

            expected = transfers.items + issuer.items
            ledger = await read_ledger(admin.network(), expected)
            last = ledger[-1].position

            async def caught_up() -> bool:
                return await checkpoint() == last

            await wait_until(caught_up, timeout_s=60, what=f"the mirror at {last}")
            mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mirror

            assert stopped_at is not None and stopped_at < last
            assert transfers.failed > 0  # failed transfers emit nothing, and are not mirrored
            balances = {
                f"account/{account}": await client.contract("asset_transfer").evaluate(
                    "account", account
                )
                for account in ACCOUNTS
            }
        # the reference stream ends exactly with the last transfer: no item was missed
        assert last[:2] == transfers.last
        return ledger, balances, transfers.succeeded + issuer.succeeded

    ledger, balances, calls = run(main())
    last = ledger[-1].position
    state = query(
        postgres_dsn, "SELECT contract, key, value FROM {schema}.state ORDER BY key", schema
    )
    assert state == [("asset_transfer", key, value) for key, value in sorted(balances.items())]
    assert sum(v["balance"] for v in balances.values()) == 500 * len(ACCOUNTS)
    events = query(
        postgres_dsn,
        "SELECT idempotency_key FROM {schema}.events ORDER BY height, tx_index, idx",
        schema,
    )
    assert len(events) == calls  # one event per successful call, each once
    assert [key for (key,) in events] == [e.idempotency_key for e in ledger if e.kind == "event"]
    changes = query(
        postgres_dsn,
        "SELECT idempotency_key FROM {schema}.state_changes ORDER BY height, tx_index, idx",
        schema,
    )
    assert [key for (key,) in changes] == [e.idempotency_key for e in ledger if e.kind == "state"]
    assert stored_checkpoint(postgres_dsn, schema, name) == last


def test_the_connector_command_mirrors_until_interrupted(
    network: LocalNetwork, postgres_dsn: str
) -> None:
    """``kyodo connector postgres`` as an operator runs it: it mirrors, reports progress,
    and on Ctrl-C writes what it holds and stops cleanly; started again, it goes on from
    its checkpoint without writing a row twice."""
    schema = f"cli_{os.getpid()}"
    command = [
        *KYODO, "connector", "postgres", "--dsn", postgres_dsn, "--contracts", "asset_transfer",
        "--schema", schema, "--name", "cli", "--dir", str(network.folder),
    ]  # fmt: skip
    accounts = [f"cli-{os.getpid()}-{i}" for i in range(6)]

    def key_of(account: str) -> str:
        return f"account/{account}"  # asset_transfer's state key of an account

    def mirrored() -> set[str]:
        try:
            rows = query(postgres_dsn, "SELECT key FROM {schema}.state", schema)
        except psycopg.Error:
            return set()
        return {r[0] for r in rows}

    def run_until(expected: set[str]) -> str:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait(lambda: expected <= mirrored(), timeout_s=60, what="the accounts mirrored")
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()
        return out.decode() + err.decode()

    with network.gateway("org1") as gw:
        contract = gw.contract("asset_transfer")
        for account in accounts[:3]:
            contract.submit("create_account", account)
        output = run_until({key_of(a) for a in accounts[:3]})
        assert "mirroring asset_transfer" in output and "stopped:" in output
        for account in accounts[3:]:
            contract.submit("create_account", account)
    output = run_until({key_of(a) for a in accounts})  # on from its checkpoint
    assert "stopped:" in output
    events = query(
        postgres_dsn,
        "SELECT idempotency_key FROM {schema}.events WHERE payload->>'account' LIKE %s",
        schema,
        f"cli-{os.getpid()}-%",
    )
    assert len(events) == len(accounts) == len({e[0] for e in events})
