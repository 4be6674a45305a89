"""Shared builders for the ledger, store, executor and consensus tests.

Everything here is deterministic except key generation. A test network has one
organization (``org1``) with a real CA, one validator node (``org1-node0``) and
two users (``admin``, ``user1``); blocks built by :func:`build_block` are real:
signed transactions, correct roots, a proposer certificate, so that
:func:`kyodo.ledger.verify_store` accepts a store built from them.

The network can be written to a folder and read back (:meth:`LedgerNetwork.dump`,
:func:`load_network`) so that a child process can append blocks to the same chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kyodo.codec import encode
from kyodo.crypto import ZERO_HASH, Ed25519Signer
from kyodo.identity import CertificateAuthority, Member, Role
from kyodo.ledger import (
    Block,
    BlockHeader,
    CommitSignature,
    ConsensusParams,
    HistoryEntry,
    LedgerStore,
    NetworkConfig,
    NodeInfo,
    OrgInfo,
    PreparedState,
    StateEntry,
    Transaction,
    TxEnvelope,
    TxResult,
    TxStatus,
    commit_message,
    compute_results_root,
    compute_txs_root,
    encode_state_key,
    load_genesis,
    make_genesis_block,
    prepare_state,
    save_genesis,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CHAIN_ID = "kyodo-test"
ORG = "org1"
NODE_ID = "org1-node0"


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _seed(signer: Ed25519Signer) -> bytes:
    return signer.private_key.private_bytes_raw()


def _signer_from_seed(seed: bytes) -> Ed25519Signer:
    return Ed25519Signer(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


@dataclass(frozen=True, slots=True)
class Identity:
    """A member's signing key and DER certificate."""

    org: str
    role: Role
    name: str
    signer: Ed25519Signer
    cert_der: bytes

    def member(self) -> Member:
        """The Member that membership validation would return for this identity."""
        return Member(
            org=self.org,
            role=self.role,
            name=self.name,
            fingerprint=hashlib.sha256(self.cert_der).digest(),
            public_key=self.signer.public_key,
            not_after=NOW + timedelta(days=365),
        )


@dataclass(slots=True)
class LedgerNetwork:
    """A one-organization, one-validator network with real certificates."""

    config: NetworkConfig
    genesis: Block
    node: Identity
    users: dict[str, Identity] = field(default_factory=dict)

    def dump(self, folder: Path) -> None:
        """Write the genesis block and the (test-only, unencrypted) keys to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        save_genesis(folder / "genesis.block", self.genesis)
        doc = {
            name: {
                "role": ident.role.value,
                "seed": _seed(ident.signer).hex(),
                "cert": ident.cert_der.hex(),
            }
            for name, ident in {"__node__": self.node, **self.users}.items()
        }
        (folder / "keys.json").write_text(json.dumps(doc))


def make_network(*, chain_id: str = CHAIN_ID, tx_max_age_ms: int = 3_600_000) -> LedgerNetwork:
    """A fresh network: org1's CA, its node and its users admin and user1."""
    ca = CertificateAuthority.create(ORG, now=NOW - timedelta(days=1))

    def issue(name: str, role: Role) -> Identity:
        signer = Ed25519Signer.generate()
        pem = ca.issue_signing_cert(
            name=name, role=role, public_key=signer.private_key.public_key(), now=NOW
        )
        return Identity(org=ORG, role=role, name=name, signer=signer, cert_der=_der(pem))

    node = issue(NODE_ID, Role.NODE)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_pem = ca.issue_tls_cert(
        name=NODE_ID, role=Role.NODE, public_key=tls_key.public_key(), now=NOW
    )
    config = NetworkConfig(
        chain_id=chain_id,
        orgs=(OrgInfo(org_id=ORG, ca_cert_pem=ca.cert_pem),),
        nodes=(
            NodeInfo(
                node_id=NODE_ID,
                org_id=ORG,
                signing_cert=node.cert_der,
                tls_cert_pem=tls_pem,
                host="127.0.0.1",
                p2p_port=7051,
                gateway_port=7052,
                validator=True,
            ),
        ),
        consensus=ConsensusParams(
            max_batch_txs=100,
            max_batch_bytes=1 << 20,
            batch_timeout_ms=20,
            tx_max_age_ms=tx_max_age_ms,
        ),
        created_ms=NOW_MS,
        allow_fragile_topology=False,
    )
    users = {"admin": issue("admin", Role.ADMIN), "user1": issue("user1", Role.CLIENT)}
    return LedgerNetwork(config=config, genesis=make_genesis_block(config), node=node, users=users)


def load_network(folder: Path) -> LedgerNetwork:
    """Read back a network written by :meth:`LedgerNetwork.dump`."""
    genesis = load_genesis(folder / "genesis.block")
    assert genesis.config is not None
    doc = json.loads((folder / "keys.json").read_text())
    idents = {
        name: Identity(
            org=ORG,
            role=Role(entry["role"]),
            name=NODE_ID if name == "__node__" else name,
            signer=_signer_from_seed(bytes.fromhex(entry["seed"])),
            cert_der=bytes.fromhex(entry["cert"]),
        )
        for name, entry in doc.items()
    }
    node = idents.pop("__node__")
    return LedgerNetwork(config=genesis.config, genesis=genesis, node=node, users=idents)


# -- transactions -----------------------------------------------------------------------


def make_envelope(
    creator: Identity,
    contract: str,
    function: str,
    args: Sequence[Any] = (),
    *,
    chain_id: str = CHAIN_ID,
    created_ms: int = NOW_MS,
    nonce: bytes | None = None,
) -> TxEnvelope:
    """A signed transaction envelope (nonce derived from the arguments unless given)."""
    if nonce is None:
        material = repr((creator.name, contract, function, tuple(args), created_ms)).encode()
        nonce = hashlib.sha256(material).digest()[:16]
    payload = encode(
        Transaction(
            chain_id=chain_id,
            contract=contract,
            function=function,
            args=tuple(args),
            nonce=nonce,
            created_ms=created_ms,
            creator=creator.cert_der,
        )
    )
    return TxEnvelope(payload=payload, signature=creator.signer.sign(payload))


# -- blocks -----------------------------------------------------------------------------

Writes = Mapping[tuple[str, str], Any]
"""(namespace, key) -> value, or None to delete."""


def append_genesis(store: LedgerStore, net: LedgerNetwork) -> None:
    """Append ``net``'s genesis block to an empty store."""
    prepared = prepare_state(store, store.state_root(), 0, {}, [])
    store.append_block(
        net.genesis,
        state_records=prepared.state_records,
        history=prepared.history,
        tree_update=prepared.tree_update,
    )


def build_block(
    store: LedgerStore,
    net: LedgerNetwork,
    txs: Sequence[tuple[TxEnvelope, Writes]],
    *,
    timestamp_ms: int | None = None,
) -> tuple[Block, PreparedState]:
    """The next block on ``store``'s tip: ``txs`` with their writes, signed by the node."""
    tip = store.height()
    assert tip is not None, "append the genesis block first"
    height = tip + 1
    writes: dict[bytes, tuple[int, bytes, Any]] = {}
    history: list[tuple[bytes, int, bytes, Any]] = []
    results = []
    for index, (envelope, tx_writes) in enumerate(txs):
        tx_id = envelope.tx_id()
        for (namespace, key), value in sorted(tx_writes.items()):
            state_key = encode_state_key(namespace, key)
            writes[state_key] = (index, tx_id, value)
            history.append((state_key, index, tx_id, value))
        results.append(
            TxResult(tx_id=tx_id, status=int(TxStatus.OK), result=None, message="", events=())
        )
    prepared = prepare_state(store, store.state_root(), height, writes, history)
    header = BlockHeader(
        chain_id=net.config.chain_id,
        height=height,
        prev_hash=store.tip_hash(),
        txs_root=compute_txs_root(env for env, _ in txs),
        results_root=compute_results_root(results),
        state_root=prepared.tree_update.root,
        timestamp_ms=NOW_MS + height * 1000 if timestamp_ms is None else timestamp_ms,
        proposer=net.node.name,
        epoch=0,
        config_hash=ZERO_HASH,
    )
    signature = net.node.signer.sign(commit_message(header.chain_id, header.block_hash()))
    block = Block(
        header=header,
        txs=tuple(env for env, _ in txs),
        results=tuple(results),
        certificate=(CommitSignature(signer=net.node.name, signature=signature),),
        config=None,
    )
    return block, prepared


def append(store: LedgerStore, block: Block, prepared: PreparedState) -> None:
    """Append a block built by :func:`build_block`."""
    store.append_block(
        block,
        state_records=prepared.state_records,
        history=prepared.history,
        tree_update=prepared.tree_update,
    )


def append_writes(
    store: LedgerStore, net: LedgerNetwork, *tx_writes: Writes, user: str = "user1"
) -> Block:
    """Build and append a block with one transaction per ``tx_writes`` mapping."""
    tip = store.height()
    assert tip is not None
    txs = [
        (
            make_envelope(
                net.users[user],
                "kv",
                "put",
                [tip + 1, index],
                chain_id=net.config.chain_id,
                created_ms=NOW_MS + (tip + 1) * 1000,
            ),
            writes,
        )
        for index, writes in enumerate(tx_writes)
    ]
    block, prepared = build_block(store, net, txs)
    append(store, block, prepared)
    return block


# -- an in-memory StateReader -------------------------------------------------------------


class MemoryState:
    """Committed state in memory, with the LedgerStore's reading semantics."""

    def __init__(self, values: Mapping[tuple[str, str], Any] | None = None) -> None:
        self.entries: dict[tuple[str, str], StateEntry] = {}
        self.history: dict[tuple[str, str], list[HistoryEntry]] = {}
        for (namespace, key), value in (values or {}).items():
            self.entries[(namespace, key)] = StateEntry(value=value, height=0, tx_index=0)

    def get_state(self, namespace: str, key: str) -> StateEntry | None:
        return self.entries.get((namespace, key))

    def iter_state(
        self, namespace: str, start: str = "", end: str | None = None
    ) -> Iterator[tuple[str, StateEntry]]:
        keys = sorted(
            (k for ns, k in self.entries if ns == namespace),
            key=lambda k: k.encode(),
        )
        for key in keys:
            raw = key.encode()
            if raw < start.encode() or (end is not None and raw >= end.encode()):
                continue
            yield key, self.entries[(namespace, key)]

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> list[HistoryEntry]:
        return list(self.history.get((namespace, key), []))[:limit]
