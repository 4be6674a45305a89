"""Event streams end to end on real nodes: durable subscriptions, acknowledgements,
filters, inline streams with a consumer-side checkpoint, access rules."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kyodo.cli._network import LocalNetwork
from kyodo.client import (
    AccessDenied,
    Conflict,
    FileCheckpointer,
    InvalidRequest,
    LedgerEvent,
    NotFound,
    Subscription,
)
from tests.integration.conftest import wait_until
from tests.integration.test_network import KYODO, kyodo


def take(stream: Iterator[LedgerEvent], n: int, *, ack: bool = True) -> list[LedgerEvent]:
    """The next ``n`` events of a stream (acknowledging each)."""
    out = []
    for event in stream:
        out.append(event)
        if ack:
            event.ack()
        if len(out) == n:
            break
    return out


def test_named_subscription_resumes_after_last_ack(network: LocalNetwork) -> None:
    org = network.orgs[0]
    with network.gateway(org) as gw:
        net = gw.network()
        sub = Subscription(
            name="acct-events", contracts=("asset_transfer",), names=("AccountCreated",)
        )
        info = net.subscribe(sub)
        assert info.filter.kind == "events" and info.acked == 0
        contract = net.contract("asset_transfer")
        for i in range(5):
            contract.submit("create_account", f"ev-{i}")
        with net.events(sub) as stream:
            first = take(iter(stream), 3)
        assert [e.payload["account"] for e in first] == ["ev-0", "ev-1", "ev-2"]
        assert all(e.kind == "event" and e.name == "AccountCreated" for e in first)
        assert [e.position for e in first] == sorted(e.position for e in first)
        wait_until(
            lambda: net.subscription("acct-events").acked == 3,
            timeout_s=10,
            what="three acknowledgements recorded",
        )
        with net.events(sub) as stream:
            rest = take(iter(stream), 2)
        assert [e.payload["account"] for e in rest] == ["ev-3", "ev-4"]
        assert rest[0].idempotency_key.startswith("event:")
        assert tuple(net.subscription("acct-events").checkpoint) <= rest[-1].position


def test_unacked_events_are_delivered_again_with_the_same_key(network: LocalNetwork) -> None:
    org = network.orgs[1]
    with network.gateway(org) as gw:
        net = gw.network()
        sub = Subscription(name="redeliver", contracts=("asset_transfer",))
        net.subscribe(sub)
        net.contract("asset_transfer").submit("create_account", "rd-1")
        with net.events(sub) as stream:
            seen = take(iter(stream), 1, ack=False)
        with net.events(sub) as stream:
            again = take(iter(stream), 1)
        assert again[0].idempotency_key == seen[0].idempotency_key
        assert again[0].payload == seen[0].payload


def test_declaring_another_filter_under_the_same_name_is_refused(network: LocalNetwork) -> None:
    with network.gateway(network.orgs[0]) as gw:
        net = gw.network()
        net.subscribe(Subscription(name="same", kind="transactions"))
        net.subscribe(Subscription(name="same", kind="transactions"))  # the same: fine
        with pytest.raises(Conflict):
            net.subscribe(Subscription(name="same", kind="blocks"))
        net.unsubscribe("same")
        with pytest.raises(NotFound):
            net.subscription("same")


def test_subscriptions_are_private_to_their_organization(network: LocalNetwork) -> None:
    a, b = network.orgs[0], network.orgs[1]
    with network.gateway(a) as gw:
        gw.network().subscribe(Subscription(name="mine", kind="blocks"))
    # another organization's member, on a node of its own org, does not see it
    with network.gateway(b) as gw:
        assert "mine" not in [s.name for s in gw.network().subscriptions()]
        with pytest.raises(NotFound):
            gw.network().subscription("mine")


def test_transactions_stream_carries_status(network: LocalNetwork) -> None:
    org = network.orgs[2]
    with network.gateway(org) as gw:
        net = gw.network()
        tip = gw.status().height
        contract = net.contract("asset_transfer")
        contract.submit("create_account", "tx-ok")
        with pytest.raises(Exception):  # noqa: B017 - any failure is recorded with its code
            contract.submit("transfer", "tx-ok", "nobody", 5)
        with net.events(
            kind="transactions", contracts=("asset_transfer",), after=(tip + 1, -1, -1)
        ) as stream:
            got = take(iter(stream), 2)
    assert [e.name for e in got] == ["create_account", "transfer"]
    assert got[0].status == "OK" and got[1].status == "contract_error"
    assert got[1].message


def test_inline_stream_with_file_checkpointer(network: LocalNetwork, tmp_path: Path) -> None:
    org = network.orgs[3]
    with network.gateway(org) as gw:
        net = gw.network()
        tip = gw.status().height
        checkpoint = FileCheckpointer(tmp_path / "cp.json")
        checkpoint.save((tip + 1, -1, -1))
        contract = net.contract("asset_transfer")
        for i in range(3):
            contract.submit("create_account", f"cp-{i}")
        with net.events(names=("AccountCreated",), checkpointer=checkpoint) as stream:
            first = take(iter(stream), 2)
        assert checkpoint.load() == first[-1].position
        with net.events(names=("AccountCreated",), checkpointer=checkpoint) as stream:
            (third,) = take(iter(stream), 1)
    assert [e.payload["account"] for e in [*first, third]] == ["cp-0", "cp-1", "cp-2"]


def test_state_changes_need_state_read(network: LocalNetwork) -> None:
    org = network.orgs[0]
    # a client: state.read is for auditors and admins
    with network.gateway(org) as gw, pytest.raises(AccessDenied):
        gw.network().subscribe(
            Subscription(name="state", contracts=("asset_transfer",), include_state=True)
        )
    with network.gateway(org, "admin") as admin:
        tip = admin.status().height
        admin.contract("asset_transfer").submit("create_account", "st-1")
        with admin.network().events(
            contracts=("asset_transfer",), include_state=True, after=(tip + 1, -1, -1)
        ) as stream:
            got = take(iter(stream), 2)
    assert got[0].kind == "event"
    assert got[1].kind == "state" and got[1].contract == "asset_transfer"
    assert got[1].index == got[0].index + 1 and got[1].tx_id == got[0].tx_id


def test_live_events_arrive_while_streaming(network: LocalNetwork) -> None:
    org = network.orgs[1]
    with network.gateway(org) as gw:
        net = gw.network()
        sub = Subscription(name="live", names=("AccountCreated",))
        net.subscribe(sub)  # latest: from the next block on
        got: list[LedgerEvent] = []
        stream = net.events(sub)

        def consume() -> None:
            got.extend(take(iter(stream), 3))

        consumer = threading.Thread(target=consume)
        consumer.start()
        for i in range(3):
            net.contract("asset_transfer").submit("create_account", f"live-{i}")
        consumer.join(timeout=30)
        stream.close()
    assert [e.payload["account"] for e in got] == ["live-0", "live-1", "live-2"]


def test_cli_tail_and_replay(network: LocalNetwork) -> None:
    folder = network.folder
    with network.gateway(network.orgs[0]) as gw:
        start = gw.status().height + 1
        tail = subprocess.Popen(
            [*KYODO, "events", "tail", "--name", "AccountCreated", "--count", "2", "--json",
             "--dir", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert tail.stderr is not None
            following = tail.stderr.readline()  # tail follows from the tip it saw at start
            assert following.startswith("following from block"), following
            start = int(following.split()[3])
            contract = gw.contract("asset_transfer")
            created = []
            deadline_items = 0
            while tail.poll() is None and deadline_items < 20:
                contract.submit("create_account", f"tail-{deadline_items}")
                created.append(f"tail-{deadline_items}")
                deadline_items += 1
            out, errors = tail.communicate(timeout=30)
        finally:
            tail.kill()
        assert tail.returncode == 0, errors
        lines = [json.loads(line) for line in out.splitlines()]
        assert len(lines) == 2 and all(line["name"] == "AccountCreated" for line in lines)
        assert [line["payload"]["account"] for line in lines] == created[:2]
        end = gw.status().height
    replay = kyodo(
        "events", "replay", "--from", str(start), "--to", str(end), "--name", "AccountCreated",
        "--json", folder=folder,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    replayed = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [r["payload"]["account"] for r in replayed] == created
    assert all(start <= r["height"] <= end for r in replayed)
    assert f"{len(created)} items from blocks {start}..{end}" in replay.stderr


def test_a_deleted_subscription_ends_its_stream_and_is_not_declared_again(
    network: LocalNetwork,
) -> None:
    with network.gateway(network.orgs[2]) as gw:
        net = gw.network()
        sub = Subscription(name="short-lived", kind="blocks")
        net.subscribe(sub)
        errors: list[Exception] = []
        stream = net.events(sub)

        def consume() -> None:
            try:
                for event in stream:
                    event.ack()
            except Exception as exc:
                errors.append(exc)

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_until(lambda: net.subscription("short-lived").connected, timeout_s=10, what="open")
        net.unsubscribe("short-lived")
        consumer.join(timeout=20)
        assert not consumer.is_alive()
        assert isinstance(errors[0], NotFound), errors
        with pytest.raises(NotFound):
            net.subscription("short-lived")


def test_a_consumer_cannot_claim_a_position_beyond_the_tip(network: LocalNetwork) -> None:
    with network.gateway(network.orgs[3]) as gw:
        net = gw.network()
        sub = Subscription(name="far-future", kind="blocks")
        with pytest.raises(InvalidRequest):
            net.subscribe(sub, after=(10**12, 0, 0))
        info = net.subscribe(sub)
        with pytest.raises(InvalidRequest), net.events(sub, after=(10**12, 0, 0)) as stream:
            next(iter(stream))
        assert tuple(net.subscription("far-future").checkpoint) == tuple(info.checkpoint)


def test_streams_per_identity_are_capped(network: LocalNetwork) -> None:
    with network.gateway(network.orgs[3], "admin") as gw:
        net = gw.network()
        streams = [net.events(kind="blocks", after=(0, -1, -1)) for _ in range(9)]
        iterators = [iter(stream) for stream in streams]  # kept: a dropped one closes
        try:
            for iterator in iterators[:8]:
                next(iterator)  # open, with its first block
            with pytest.raises(InvalidRequest) as refused:
                next(iterators[8])
            assert refused.value.code == "events.limit"
        finally:
            for stream in streams:
                stream.close(flush_s=0.5)
