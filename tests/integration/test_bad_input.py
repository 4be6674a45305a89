"""Bad input on real processes: typed rejections; nodes keep running and lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kyodo.cli._network import LocalNetwork, NodeEntry
from kyodo.client import KyodoError, TransactionRejected, Unauthenticated, Unavailable
from kyodo.client._gateway import Gateway
from kyodo.codec import decode_record, encode
from kyodo.consensus import PrePrepare, SyncResponse
from kyodo.crypto import ZERO_HASH, Ed25519Signer, load_private_key
from kyodo.identity import CertificateAuthority, Role
from kyodo.ledger import (
    Block,
    BlockHeader,
    CommitSignature,
    TxEnvelope,
    TxResult,
    commit_message,
    compute_results_root,
    compute_txs_root,
)
from kyodo.p2p import client_context, encode_frame
from kyodo.wire import SubmitRequest, Transaction, TxStatusResponse
from tests.integration.conftest import node_status, wait_converged, wait_until


def passphrase(net: LocalNetwork, org: str) -> bytes:
    return (net.folder / "orgs" / org / "passphrase").read_bytes().strip()


def metric(node: NodeEntry, name: str, **labels: str) -> float:
    """Current value of a node's Prometheus metric (0 if not yet exported)."""
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read()
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + ("{" + label + "}" if label else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text.decode())
    return float(found.group(1)) if found else 0.0


def node_tls(net: LocalNetwork, node: NodeEntry) -> ssl.SSLContext:
    """A client TLS context presenting ``node``'s own TLS certificate (as that node would)."""
    key = load_private_key(node.home / "tls.key", passphrase(net, node.org_id))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle = (net.folder / "ca-bundle.pem").read_bytes()
    return client_context([bundle], (node.home / "tls.pem").read_bytes(), key)


@contextlib.asynccontextmanager
async def _connection(
    port: int, ctx: ssl.SSLContext
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TLS connection to a node's p2p port; the socket is closed whatever happens."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=ctx, server_hostname="127.0.0.1"
        )
        yield reader, writer
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
        sock.close()


def send_to_peer(port: int, ctx: ssl.SSLContext, data: bytes) -> bytes:
    """Write raw bytes on a p2p connection; return what came back before the node closed it."""

    async def run() -> bytes:
        async with _connection(port, ctx) as (reader, writer):
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), timeout=10)  # b"" once closed

    return asyncio.run(run())


def send_and_hold(port: int, ctx: ssl.SSLContext, data: bytes, until: object) -> None:
    """Write bytes and keep the connection open until ``until()`` holds (deadline 20 s)."""

    async def run() -> None:
        async with _connection(port, ctx) as (_reader, writer):
            writer.write(data)
            await writer.drain()
            deadline = time.monotonic() + 20
            while not until() and time.monotonic() < deadline:  # type: ignore[operator]
                await asyncio.sleep(0.05)

    asyncio.run(run())


def node_signer(net: LocalNetwork, node_id: str) -> Ed25519Signer:
    """The real signing key of a node (the test plays a compromised validator)."""
    node = net.node(node_id)
    key = load_private_key(node.home / "signing.key", passphrase(net, node.org_id))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return Ed25519Signer(key)


def next_block(
    gw: Gateway, *, proposer: str, state_root: bytes | None = None, prev_hash: bytes | None = None
) -> Block:
    """An uncertified block on top of the tip holding one call to a function that does not
    exist. Its real outcome is known without executing it: status UNKNOWN_FUNCTION, no
    writes, so the true state root is the tip's. ``state_root``/``prev_hash`` override it.
    """
    tip = decode_record(Block, gw.block(-1))
    envelope = gw.sign("asset_transfer", "no_such_function", ())
    result = TxResult(
        tx_id=envelope.tx_id(),
        status=2,
        result=None,
        events=(),
        message="contract 'asset_transfer' has no function 'no_such_function'",
    )
    header = BlockHeader(
        chain_id=tip.header.chain_id,
        height=tip.header.height + 1,
        prev_hash=prev_hash if prev_hash is not None else tip.block_hash(),
        txs_root=compute_txs_root((envelope,)),
        results_root=compute_results_root((result,)),
        state_root=state_root if state_root is not None else tip.header.state_root,
        timestamp_ms=max(time.time_ns() // 1_000_000, tip.header.timestamp_ms),
        proposer=proposer,
        epoch=0,
        config_hash=ZERO_HASH,
    )
    return Block(header=header, txs=(envelope,), results=(result,), config=None, certificate=())


def certify(block: Block, signers: dict[str, Ed25519Signer]) -> Block:
    """``block`` with commit signatures by ``signers`` (real keys: a compromised quorum)."""
    message = commit_message(block.header.chain_id, block.block_hash())
    return replace(
        block,
        certificate=tuple(
            CommitSignature(signer=name, signature=signer.sign(message))
            for name, signer in sorted(signers.items())
        ),
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("proposal_with_wrong_state_root", "state_root"),
        ("synced_block_with_forged_certificate", "certificate"),
        ("synced_block_certified_by_a_quorum_but_broken_link", "prev_hash"),
        ("synced_block_certified_by_a_quorum_but_wrong_state_root", "state_root"),
    ],
)
def test_tampered_block_sent_to_a_validator_is_rejected_and_not_stored(network, case, reason):
    """Whether it comes as the leader's proposal or as a certified block in a sync, a
    block is appended only if it verifies and re-executes to its roots: even q real
    commit signatures (a compromised quorum) do not make a wrong state root acceptable."""
    before = wait_converged(network)
    leader = next(n.node_id for n in network.nodes if node_status(network, n).role == "leader")
    others = [n for n in network.nodes if n.node_id != leader]
    target = others[-1]
    rejected_before = metric(target, "kyodo_blocks_rejected_total", reason=reason)
    quorum = {n.node_id: node_signer(network, n.node_id) for n in network.nodes[:3]}
    with network.gateway(others[0].org_id) as gw:
        if case == "proposal_with_wrong_state_root":
            block = next_block(gw, proposer=leader, state_root=os.urandom(32))
            message: object = PrePrepare(view=before.view, height=block.header.height, block=block)
            sender = network.node(leader)  # only the real leader's identity is heard
        elif case == "synced_block_with_forged_certificate":
            forged = {name: Ed25519Signer.generate() for name in quorum}
            block = certify(next_block(gw, proposer=leader), forged)
            message = SyncResponse(blocks=(block,))
            sender = others[0]
        elif case == "synced_block_certified_by_a_quorum_but_broken_link":
            block = certify(next_block(gw, proposer=leader, prev_hash=os.urandom(32)), quorum)
            message = SyncResponse(blocks=(block,))
            sender = others[0]
        else:
            block = certify(next_block(gw, proposer=leader, state_root=os.urandom(32)), quorum)
            message = SyncResponse(blocks=(block,))
            sender = others[0]
    send_and_hold(
        target.p2p_port,
        node_tls(network, sender),
        encode_frame(encode(message)),
        until=lambda: (
            metric(target, "kyodo_blocks_rejected_total", reason=reason) > rejected_before
        ),
    )
    assert metric(target, "kyodo_blocks_rejected_total", reason=reason) == rejected_before + 1
    status = node_status(network, target)
    assert status.height == before.height and status.tip_hash == before.tip_hash
    with network.gateway(others[0].org_id) as gw:  # the chain goes on without it
        outcome = gw.contract("asset_transfer").submit_transaction(
            "create_account", f"after-{case}"
        )
        stored = decode_record(Block, gw.block(outcome.height))
    assert stored.block_hash() != block.block_hash()
    wait_converged(network)


def test_malformed_message_is_rejected_and_the_node_keeps_running(network):
    target = network.node("org3-node0")
    before = metric(target, "kyodo_peer_messages_rejected_total", reason="malformed")
    send_and_hold(
        target.p2p_port,
        node_tls(network, network.node("org1-node0")),
        encode_frame(b"\x85\x01\x02garbage that is not canonical cbor"),
        until=lambda: (
            metric(target, "kyodo_peer_messages_rejected_total", reason="malformed") > before
        ),
    )
    assert metric(target, "kyodo_peer_messages_rejected_total", reason="malformed") == before + 1
    assert node_status(network, target).healthy


def test_oversized_frame_closes_the_connection_and_the_node_keeps_running(network):
    target = network.node("org3-node0")
    header = struct.pack(">I", 32 * 1024 * 1024 + 1)  # one byte over the configured limit
    reply = send_to_peer(
        target.p2p_port, node_tls(network, network.node("org1-node0")), header + b"x" * 100
    )
    assert reply == b""  # closed by the node, nothing read beyond the header
    log = (target.home / "node.log").read_text()
    assert "FrameTooLargeError" in log
    assert node_status(network, target).healthy


def evil_ca(org: str) -> tuple[CertificateAuthority, datetime]:
    now = datetime.now(UTC)
    return CertificateAuthority.create(org, now=now), now


def test_peer_with_a_certificate_from_an_unknown_ca_cannot_connect(network, tmp_path: Path):
    ca, now = evil_ca("org1")  # same organization name, different key
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_tls_cert(
        name="org1-node0",
        role=Role.NODE,
        public_key=key.public_key(),
        now=now,
        hosts=("127.0.0.1",),
    )
    bundle = (network.folder / "ca-bundle.pem").read_bytes()
    ctx = client_context([bundle], cert, key)
    target = network.node("org2-node0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        reply = send_to_peer(target.p2p_port, ctx, encode_frame(b"hello"))
        if reply == b"":  # TLS 1.3: the server's refusal may surface on first read
            raise ConnectionError("closed by peer")
    assert node_status(network, target).healthy


def test_member_certificate_that_is_not_a_node_cannot_pose_as_a_peer(network):
    user_dir = network.folder / "orgs" / "org1" / "users" / "user1"
    key = load_private_key(user_dir / "tls.key", passphrase(network, "org1"))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ctx = client_context(
        [(network.folder / "ca-bundle.pem").read_bytes()], (user_dir / "tls.pem").read_bytes(), key
    )
    target = network.node("org2-node0")
    assert send_to_peer(target.p2p_port, ctx, encode_frame(b"x")) == b""
    assert (
        "is not the TLS certificate of any configured node"
        in (target.home / "node.log").read_text()
    )


def test_transaction_signed_by_an_unknown_ca_is_rejected(network):
    ca, now = evil_ca("org1")
    key = ed25519.Ed25519PrivateKey.generate()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = ca.issue_signing_cert(
        name="mallory", role=Role.ADMIN, public_key=key.public_key(), now=now
    )
    forged_cert = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    with network.gateway("org1") as gw:
        gw._signer = Ed25519Signer(key)
        gw.identity = type(gw.identity)(certificate=forged_cert, chain_id=network.chain_id)
        with pytest.raises(TransactionRejected) as refused:
            gw.contract("asset_transfer").submit("issue", "load-0-a", 1_000_000)
    assert refused.value.reason == "unknown_ca"


def test_client_of_another_organization_is_refused_by_the_gateway(network):
    with (
        network.user("org2").connect(network.node("org1").gateway, retries=0) as gw,
        pytest.raises(Unauthenticated),
    ):
        gw.contract("asset_transfer").evaluate("balance", "x")


def test_client_certificate_from_an_unknown_ca_cannot_open_a_gateway_channel(network):
    ca, now = evil_ca("org1")
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    cert = ca.issue_tls_cert(name="user1", role=Role.CLIENT, public_key=key.public_key(), now=now)
    user = network.user("org1")
    from kyodo.client import TlsCredentials, connect

    tls = TlsCredentials(
        root_certificates=(network.folder / "ca-bundle.pem").read_bytes(),
        certificate_chain=cert,
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with (
        connect(
            user.identity,
            user.signer,
            network.node("org1").gateway,
            tls=tls,
            retries=0,
            timeout_s=5,
        ) as gw,
        pytest.raises(Unavailable),
    ):
        gw.status()


def raw_submit(gw: Gateway, envelope: TxEnvelope) -> TxStatusResponse:
    return gw.call(
        "Submit", SubmitRequest(envelope=envelope, wait_ms=20_000), TxStatusResponse, timeout_s=30
    )


def test_replayed_transaction_is_rejected_as_duplicate_on_every_gateway(network):
    with network.gateway("org1") as gw:
        envelope = gw.sign("asset_transfer", "create_account", ("replayed",))
        assert raw_submit(gw, envelope).state == "final"
        with pytest.raises(TransactionRejected) as again:
            raw_submit(gw, envelope)
        assert again.value.reason == "duplicate"
    with network.user("org1").connect(network.node("org1").gateway) as gw:
        with pytest.raises(TransactionRejected) as elsewhere:
            raw_submit(gw, envelope)
        assert elsewhere.value.reason == "duplicate"


def test_forged_signature_is_rejected(network):
    with network.gateway("org1") as gw:
        envelope = gw.sign("asset_transfer", "create_account", ("forged",))
        bad = TxEnvelope(
            payload=envelope.payload,
            signature=bytes([envelope.signature[0] ^ 1]) + envelope.signature[1:],
        )
        with pytest.raises(TransactionRejected) as refused:
            raw_submit(gw, bad)
    assert refused.value.reason == "bad_signature"


def signed(gw: Gateway, **overrides: object) -> TxEnvelope:
    fields = {
        "chain_id": gw.identity.chain_id,
        "contract": "asset_transfer",
        "function": "create_account",
        "args": ("x",),
        "nonce": os.urandom(16),
        "created_ms": time.time_ns() // 1_000_000,
        "creator": gw.identity.certificate,
    }
    fields.update(overrides)
    payload = encode(Transaction(**fields))  # type: ignore[arg-type]
    return TxEnvelope(payload=payload, signature=gw._signer.sign(payload))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"created_ms": 1_000}, "expired"),
        ({"chain_id": "another-network"}, "wrong_chain"),
        ({"args": ("y" * 70_000,)}, "too_large"),
        ({"nonce": b"short"}, "malformed"),
    ],
)
def test_invalid_transactions_are_rejected_with_their_reason(network, overrides, reason):
    with network.gateway("org2") as gw, pytest.raises(TransactionRejected) as refused:
        raw_submit(gw, signed(gw, **overrides))
    assert refused.value.reason == reason


def test_oversized_and_malformed_requests_are_refused_with_typed_errors(network):
    with network.gateway("org2", retries=0) as gw:
        with pytest.raises(KyodoError) as too_big:
            raw_submit(gw, signed(gw, args=("z" * 2_000_000,)))
        assert too_big.value.code == "too_large"
        stub = gw.channel().unary_unary("/kyodo.v1.Gateway/Submit")
        import grpc

        with pytest.raises(grpc.RpcError) as malformed:
            stub(b"\xff\xfe not a request", timeout=10)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in malformed.value.details()


def test_after_all_bad_input_every_node_is_healthy_and_nothing_was_lost(network):
    tip = wait_converged(network)
    with network.gateway("org4") as gw:
        assert gw.contract("asset_transfer").evaluate("account", "replayed")["owner"] == (
            "org1/user1"
        )
    assert all(node_status(network, n).healthy for n in network.nodes)
    assert tip.height >= 4  # three blocks after tampering attempts, one replayed create
    wait_until(
        lambda: all(network.pid(n) for n in network.nodes),
        timeout_s=1,
        what="every node process alive",
    )


def test_every_gateway_call_allowed_or_refused_leaves_an_audit_record(network):
    import json as _json

    with network.gateway("org1") as gw:
        outcome = gw.contract("asset_transfer").submit_transaction("create_account", "audited")
    with (
        network.user("org3").connect(network.node("org1").gateway, retries=0) as gw,
        pytest.raises(Unauthenticated),
    ):
        gw.status()
    log_path = network.node("org1").home / "node.log"

    def audit_records() -> list[dict]:
        lines = log_path.read_text().splitlines()
        return [r for r in map(_json.loads, lines) if r.get("event") == "audit"]

    allowed = wait_until(
        lambda: [r for r in audit_records() if f"tx:{outcome.tx_id}" in r.get("subject", "")],
        timeout_s=10,
        what="the audit record of the submit",
    )
    assert allowed[0]["caller"] == "org1/client/user1" and allowed[0]["decision"] == "allowed"
    assert allowed[0]["method"] == "Submit" and len(allowed[0]["response_sha256"]) == 64
    refused = [
        r
        for r in audit_records()
        if r["decision"] == "refused" and "O=org3" in r["caller"] and r["code"] == "unauthenticated"
    ]
    assert refused and refused[-1]["caller"].startswith("presented:")
    assert "passphrase" not in log_path.read_text()
