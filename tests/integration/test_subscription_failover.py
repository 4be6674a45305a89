"""A subscription, and a logout, belong to the organization, not to one node (real
processes).

Two organizations of two validators each. A subscription declared on one node of org1
reaches the other, with its checkpoint; a deletion too, and a node that was down when
it happened learns it when it comes back. Webhooks are delivered by the first live node
of the organization: when it dies, the other takes over from the last checkpoint it
heard of, and every event reaches the receiver (a repeat has the same idempotency key).
A REST token is accepted by every gateway of its organization; logged out at one, it is
refused at the others, also by one that restarts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kyodo.cli._network import LocalNetwork, NodeEntry
from kyodo.client import NotFound, Subscription, Unauthenticated, Unavailable, rest_call, rest_login
from tests.integration.conftest import wait_until
from tests.integration.test_event_delivery import Receiver


def org1_nodes(net: LocalNetwork) -> tuple[NodeEntry, NodeEntry]:
    first, second = sorted((n for n in net.nodes if n.org_id == "org1"), key=lambda n: n.node_id)
    return first, second


def subscription_on(net: LocalNetwork, node: NodeEntry, name: str) -> Any:
    """The subscription as ``node`` knows it, or None (Unavailable while it starts)."""
    try:
        with net.gateway("org1", node=node, retries=0, timeout_s=5) as gw:
            return gw.network().subscription(name)
    except NotFound:
        return None


def delivering(net: LocalNetwork, node: NodeEntry, name: str) -> bool:
    """``node`` answers, and delivers webhook subscription ``name``."""
    try:
        info = subscription_on(net, node, name)
    except Unavailable:
        return False
    return info is not None and info.connected


def gone_from(net: LocalNetwork, node: NodeEntry, name: str) -> bool:
    """``node`` answers, and knows no subscription ``name``."""
    try:
        return subscription_on(net, node, name) is None
    except Unavailable:
        return False


def create_accounts(net: LocalNetwork, prefix: str, n: int) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(n)]
    with net.gateway("org2") as gw:
        for name in names:
            gw.contract("asset_transfer").submit("create_account", name)
    return names


def test_a_declaration_its_checkpoint_and_its_deletion_reach_the_other_node(
    pair_network: LocalNetwork,
) -> None:
    net = pair_network
    first, second = org1_nodes(net)
    sub = Subscription(name="shared", contracts=("asset_transfer",), names=("AccountCreated",))
    with net.gateway("org1", node=second) as gw:
        network = gw.network()
        network.subscribe(sub)
        create_accounts(net, "shared", 3)
        with network.events(sub) as stream:
            events = iter(stream)  # kept: a dropped iterator closes the stream
            got = [next(events) for _ in range(3)]
            got[-1].ack()
    on_first = wait_until(
        lambda: (
            (s := subscription_on(net, first, "shared")) is not None
            and tuple(s.checkpoint) == tuple(got[-1].position)
            and s
        ),
        timeout_s=15,
        what="the declaration and its checkpoint on the other node",
    )
    assert on_first.acked == 3
    # the other node serves the same consumer from where it stopped
    create_accounts(net, "shared-after", 1)
    with net.gateway("org1", node=first) as gw, gw.network().events(sub) as stream:
        assert next(iter(stream)).payload["account"] == "shared-after-0"
    # a deletion made while a node is down reaches it when it comes back
    assert net.stop(first)
    with net.gateway("org1", node=second) as gw:
        gw.network().unsubscribe("shared")
    net.start(first)
    wait_until(
        lambda: gone_from(net, first, "shared"),
        timeout_s=30,
        what="the node that was down to learn of the deletion",
    )
    # nor does the node that was down bring it back to the other: once a declaration
    # made on it after its return has reached the other node, that one still has none
    with net.gateway("org1", node=first) as gw:
        gw.network().subscribe(replace(sub, name="after-return"))
    wait_until(
        lambda: subscription_on(net, second, "after-return") is not None,
        timeout_s=15,
        what="a later declaration to reach the other node",
    )
    assert subscription_on(net, second, "shared") is None


def test_webhooks_are_delivered_by_the_next_node_when_the_first_dies(
    pair_network: LocalNetwork,
) -> None:
    net = pair_network
    first, second = org1_nodes(net)
    receiver = Receiver(b"f" * 32)
    try:
        sub = Subscription(
            name="failover-hook",
            contracts=("asset_transfer",),
            names=("AccountCreated",),
            webhook_url=receiver.url,
            webhook_secret=receiver.secret,
        )
        with net.gateway("org1", node=second) as gw:  # declared on the second node
            gw.network().subscribe(sub)
        before = create_accounts(net, "hook-before", 3)

        def accounts() -> set[str]:
            return {r["payload"]["account"] for r in list(receiver.received)}

        wait_until(lambda: set(before) <= accounts(), timeout_s=30, what="delivery")
        # the first node of the organization delivers while it is up
        info = wait_until(
            lambda: (
                (s := subscription_on(net, first, "failover-hook")) is not None
                and s.connected
                and s
            ),
            timeout_s=15,
            what="the first node to deliver",
        )
        assert not subscription_on(net, second, "failover-hook").connected
        wait_until(  # the checkpoint reached the second node: it would start there
            lambda: subscription_on(net, second, "failover-hook").acked >= info.acked >= 3,
            timeout_s=15,
            what="the deliverer's checkpoint on the second node",
        )
        assert net.stop(first, kill=True)
        during = create_accounts(net, "hook-during", 3)
        wait_until(
            lambda: set(during) <= accounts(), timeout_s=60, what="delivery by the second node"
        )
        assert subscription_on(net, second, "failover-hook").connected
        net.start(first)
        wait_until(  # back, the first node takes its turn again, and the second stops
            lambda: (
                delivering(net, first, "failover-hook")
                and not delivering(net, second, "failover-hook")
            ),
            timeout_s=30,
            what="the first node to deliver again",
        )
        after = create_accounts(net, "hook-after", 3)
        wait_until(lambda: set(after) <= accounts(), timeout_s=60, what="delivery after return")
        keys = [r["idempotency_key"] for r in receiver.received]
        by_key: dict[str, set[str]] = {}
        for r in receiver.received:
            by_key.setdefault(r["idempotency_key"], set()).add(r["payload"]["account"])
        assert all(len(v) == 1 for v in by_key.values()), "a key names one event"
        assert len(set(keys)) == len(before) + len(during) + len(after)
        # each handover starts from the last checkpoint the next node heard of: a repeat
        # is at most an item in flight, never the history (9 events here)
        assert len(keys) - len(set(keys)) <= 2, keys
        assert receiver.bad_signatures == 0
    finally:
        receiver.close()


def test_a_logout_holds_at_every_gateway_of_the_organization(pair_network: LocalNetwork) -> None:
    net = pair_network
    first, second = org1_nodes(net)
    bundle = (net.folder / "ca-bundle.pem").read_bytes()
    pem = (net.folder / "orgs" / "org1" / "users" / "user1" / "signing.pem").read_bytes()

    def login() -> str:
        return rest_login(
            f"https://{first.rest}",
            certificate_pem=pem,
            signer=net.user("org1").signer,
            ca_bundle=bundle,
        ).token

    def call(node: NodeEntry, method: str, path: str, token: str) -> Any:
        return rest_call(f"https://{node.rest}", method, path, ca_bundle=bundle, token=token)

    def refused_at(node: NodeEntry, token: str) -> str | None:
        try:
            call(node, "GET", "/v1/whoami", token)
        except Unauthenticated as exc:
            return exc.code
        except Unavailable:
            return None
        return None

    token, later = login(), login()
    for node in (first, second):  # one login, every gateway of the organization
        assert call(node, "GET", "/v1/whoami", token)["identity"].startswith("org1/")
    call(first, "POST", "/v1/auth/logout", token)
    wait_until(
        lambda: refused_at(second, token) == "auth.token_revoked",
        timeout_s=15,
        what="the logout to reach the other gateway",
    )
    # logged out while the other node is down: it learns when it connects again, and
    # still refuses the first one, which it kept across its restart
    assert net.stop(second)
    call(first, "POST", "/v1/auth/logout", later)
    net.start(second)
    wait_until(
        lambda: refused_at(second, later) == "auth.token_revoked",
        timeout_s=30,
        what="the restarted gateway to learn of the logout made while it was down",
    )
    assert refused_at(second, token) == "auth.token_revoked"
