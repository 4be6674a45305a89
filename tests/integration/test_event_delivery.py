"""Event delivery over every transport, on real nodes: Server-Sent Events and
WebSocket (REST, bearer tokens), signed webhooks with retries and a dead-letter list,
the standard gRPC health service, per-identity rate limits."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.sync.client import connect as ws_connect

from kyodo.cli._network import LocalNetwork
from kyodo.client import RateLimited
from kyodo.codec import decode_record
from kyodo.events import SIGNATURE_HEADER, verify_webhook
from kyodo.wire import ErrorBody
from tests.integration.conftest import wait_until
from tests.integration.test_rest_login import base, bundle, login


def client(network: LocalNetwork, token: str) -> httpx.Client:
    context = ssl.create_default_context(cadata=bundle(network).decode())
    return httpx.Client(
        base_url=base(network),
        verify=context,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def sse_items(lines: Iterator[str], n: int) -> list[dict[str, Any]]:
    """The next ``n`` items of an SSE stream (id, event and data lines)."""
    items: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            items.append(current)
            current = {}
            if len(items) == n:
                break
    return items


def test_sse_named_subscription_with_ack(network: LocalNetwork) -> None:
    token = login(network)
    with client(network, token) as http:
        created = http.post(
            "/v1/subscriptions",
            json={"name": "sse-sub", "contracts": ["asset_transfer"], "names": ["AccountCreated"]},
        )
        assert created.status_code == 201, created.text
        assert http.post("/v1/subscriptions", json={
            "name": "sse-sub", "contracts": ["asset_transfer"], "names": ["AccountCreated"]
        }).status_code == 200  # fmt: skip
        with network.gateway("org1") as gw:
            for i in range(3):
                gw.contract("asset_transfer").submit("create_account", f"sse-{i}")
        with http.stream("GET", "/v1/subscriptions/sse-sub/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()  # kept: a closed line iterator closes the connection
            got = sse_items(lines, 2)
            acked = http.post(
                "/v1/subscriptions/sse-sub/ack", json={"position": got[-1]["data"]["position"]}
            )
            assert acked.status_code == 200, acked.text
        assert [g["data"]["payload"]["account"] for g in got] == ["sse-0", "sse-1"]
        assert got[0]["event"] == "event" and got[0]["id"] == "{}.{}.{}".format(
            *got[0]["data"]["position"]
        )
        status = http.get("/v1/subscriptions/sse-sub").json()
        assert status["checkpoint"] == got[-1]["data"]["position"] and status["acked"] == 2
        # the next stream starts after the acknowledged item; wait_s ends it after the backlog
        with http.stream("GET", "/v1/subscriptions/sse-sub/events?wait_s=0") as stream:
            rest = sse_items(stream.iter_lines(), 10)
        assert [r["data"]["payload"]["account"] for r in rest] == ["sse-2"]
        # acknowledging without an open stream is refused, with a problem+json
        refused = http.post("/v1/subscriptions/sse-sub/ack", json={"position": [1, 0, 0]})
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "events.no_session"


def test_sse_inline_resumes_from_last_event_id(network: LocalNetwork) -> None:
    token = login(network)
    with network.gateway("org1") as gw:
        tip = gw.status().height
        for i in range(3):
            gw.contract("asset_transfer").submit("create_account", f"inl-{i}")
    with client(network, token) as http:
        query = f"/v1/events?names=AccountCreated&after={tip + 1}.-1.-1&wait_s=0"
        with http.stream("GET", query) as stream:
            first = sse_items(stream.iter_lines(), 3)
        assert [f["data"]["payload"]["account"] for f in first] == ["inl-0", "inl-1", "inl-2"]
        with http.stream(
            "GET", query, headers={"Last-Event-ID": first[0]["id"]}
        ) as stream:  # a reconnecting browser: after the last item it saw
            again = sse_items(stream.iter_lines(), 3)
        assert [a["id"] for a in again] == [f["id"] for f in first[1:]]
        bad = http.get("/v1/events?after=zero")
        assert bad.status_code == 400 and bad.json()["code"] == "malformed"


def test_websocket_subscription(network: LocalNetwork) -> None:
    token = login(network)
    with client(network, token) as http:
        assert http.post("/v1/subscriptions", json={
            "name": "ws-sub", "kind": "transactions", "contracts": ["asset_transfer"]
        }).status_code == 201  # fmt: skip
        with network.gateway("org1") as gw:
            gw.contract("asset_transfer").submit("create_account", "ws-1")
        context = ssl.create_default_context(cadata=bundle(network).decode())
        url = base(network).replace("https://", "wss://") + "/v1/subscriptions/ws-sub/ws"
        with ws_connect(url, ssl=context, open_timeout=10) as ws:
            ws.send(json.dumps({"token": token}))
            items: list[dict[str, Any]] = []
            while not items:
                items = json.loads(ws.recv(timeout=15))["items"]
            assert items[0]["kind"] == "transaction" and items[0]["name"] == "create_account"
            assert items[0]["status"] == "OK"
            ws.send(json.dumps({"ack": items[0]["position"]}))
            wait_until(
                lambda: http.get("/v1/subscriptions/ws-sub").json()["acked"] == 1,
                timeout_s=10,
                what="the WebSocket acknowledgement recorded",
            )
        with ws_connect(url, ssl=context, open_timeout=10) as ws:  # a bad token: refused
            ws.send(json.dumps({"token": "kyt1.forged"}))
            refusal = json.loads(ws.recv(timeout=10))
        assert refusal["error"].startswith("auth.")


class Receiver:
    """A webhook receiver on 127.0.0.1: refuses the first ``fail`` deliveries of each
    item with 503, checks every signature."""

    def __init__(self, secret: bytes, *, fail: int = 0, always_fail: bool = False) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self.bad_signatures = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify_webhook(receiver.secret, self.headers[SIGNATURE_HEADER], body):
                    receiver.bad_signatures += 1
                key = self.headers["Kyodo-Idempotency-Key"]
                receiver.attempts[key] = receiver.attempts.get(key, 0) + 1
                if always_fail or receiver.attempts[key] <= fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_signed_retried_in_order_then_dead_lettered(network: LocalNetwork) -> None:
    token = login(network)
    flaky = Receiver(b"s" * 32, fail=1)
    broken = Receiver(b"t" * 32, always_fail=True)
    try:
        with client(network, token) as http:
            for name, receiver, attempts in (("hook", flaky, 8), ("dead", broken, 2)):
                made = http.post("/v1/subscriptions", json={
                    "name": name, "names": ["AccountCreated"], "webhook_url": receiver.url,
                    "webhook_secret": receiver.secret.decode(), "max_attempts": attempts,
                })  # fmt: skip
                assert made.status_code == 201, made.text
                assert "webhook_secret" not in made.json()
            with network.gateway("org1") as gw:
                for i in range(3):
                    gw.contract("asset_transfer").submit("create_account", f"wh-{i}")
            wait_until(lambda: len(flaky.received) == 3, timeout_s=30, what="3 webhooks")
            assert [r["payload"]["account"] for r in flaky.received] == ["wh-0", "wh-1", "wh-2"]
            assert all(n == 2 for n in flaky.attempts.values())  # one refusal, one retry
            assert flaky.bad_signatures == 0
            dead = wait_until(
                lambda: (s := http.get("/v1/subscriptions/dead").json())["dead_letters"][2:] and s,
                timeout_s=30,
                what="three dead letters",
            )
            assert [d["idempotency_key"] for d in dead["dead_letters"]] == [
                r["idempotency_key"] for r in flaky.received
            ]
            assert dead["dead_letters"][0]["attempts"] == 2
            assert dead["last_error"] == "HTTP 503"
            refused = http.post("/v1/subscriptions", json={
                "name": "ssrf", "webhook_url": "file:///etc/passwd", "webhook_secret": "x" * 16,
            })  # fmt: skip
            assert refused.status_code == 400 and refused.json()["code"] == "events.invalid"
            # 169.254.169.254 (cloud metadata) written as a number: resolved, then refused
            assert http.post("/v1/subscriptions", json={
                "name": "metadata", "names": ["AccountCreated"], "max_attempts": 1,
                "webhook_url": "http://2852039166/latest", "webhook_secret": "x" * 16,
            }).status_code == 201  # fmt: skip
            with network.gateway("org1") as gw:
                gw.contract("asset_transfer").submit("create_account", "wh-meta")
            letters = wait_until(
                lambda: http.get("/v1/subscriptions/metadata").json()["dead_letters"],
                timeout_s=30,
                what="the metadata webhook dead-lettered",
            )
            assert letters[0]["error"] == "refused: address not allowed"
    finally:
        flaky.close()
        broken.close()


def test_standard_grpc_health_service(network: LocalNetwork) -> None:
    creds = network.user("org1")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.tls.root_certificates,
        private_key=creds.tls.private_key,
        certificate_chain=creds.tls.certificate_chain,
    )
    with grpc.secure_channel(network.node("org1-node0").gateway, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "kyodo.v1.Gateway"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as missing:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_health_watches_count_in_the_stream_caps(network: LocalNetwork) -> None:
    """A Health.Watch lives as long as its client wants: like an event stream, one
    identity may hold 8 on a node; the ninth is refused, and one ended frees a place."""
    creds = network.user("org3")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.tls.root_certificates,
        private_key=creds.tls.private_key,
        certificate_chain=creds.tls.certificate_chain,
    )
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.secure_channel(network.node("org3-node0").gateway, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(request, timeout=60) for _ in range(8)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.Watch(request, timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(refused.value.trailing_metadata() or ())
            body = decode_record(ErrorBody, trailers["kyodo-error-bin"], max_size=4096)
            assert body.code == "events.limit"
            watches.pop().cancel()
            again = wait_until(
                lambda: _one_watch(stub, request), timeout_s=10, what="a place freed"
            )
            again.cancel()
        finally:
            for watch in watches:
                watch.cancel()


def _one_watch(stub: Any, request: Any) -> Any:
    """A watch that opened (its first answer came), or None if it was refused."""
    watch = stub.Watch(request, timeout=10)
    try:
        next(watch)
    except grpc.RpcError:
        return None
    return watch


def test_login_challenges_are_rate_limited_per_client_address(network: LocalNetwork) -> None:
    pem = (network.folder / "orgs" / "org2" / "users" / "user1" / "signing.pem").read_text()
    context = ssl.create_default_context(cadata=bundle(network).decode())
    refused = None
    with httpx.Client(base_url=base(network, "org2"), verify=context, timeout=10) as http:
        for _ in range(1000):
            answer = http.post("/v1/auth/challenge", json={"certificate": pem})
            if answer.status_code == 429:
                refused = answer
                break
            assert answer.status_code == 200, answer.text
        assert refused is not None, "1000 challenges in a row were all served"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        # the same address, after the wait it was told, is served again
        time.sleep(float(refused.headers["Retry-After"]))  # the wait the server asked for
        again = http.post("/v1/auth/challenge", json={"certificate": pem})
        assert again.status_code == 200, again.text


def test_grpc_calls_are_rate_limited_per_identity_and_the_sdk_waits(
    network: LocalNetwork,
) -> None:
    refused = None
    with network.gateway("org3", "admin", retries=0) as gw:  # an identity of its own
        for _ in range(2000):
            try:
                gw.status()
            except RateLimited as exc:
                refused = exc
                break
        assert refused is not None, "2000 calls in a row were all served"
        assert refused.code == "rate_limited" and refused.retry_after_s
    with network.gateway("org3", "admin") as patient:  # the default: wait, then retry
        assert patient.status().height >= 0
    with network.gateway("org3", "user1", retries=0) as other:  # others are not limited
        assert other.status().height >= 0
