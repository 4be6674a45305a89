"""The ledger's records: transactions, blocks, results, certificates, configuration.

Every record here is a frozen dataclass with one canonical encoding
(:mod:`kyodo.codec`). A transaction travels as a :class:`TxEnvelope`: the
canonical bytes of the :class:`Transaction` plus the creator's signature over
exactly those bytes, so the transaction id (SHA-256 of the payload) and the
signature never depend on re-encoding.

A block's identity is the hash of its :class:`BlockHeader`. The header
commits to the transactions (RFC 6962 Merkle root of the envelopes), to their
results (root of the encoded :class:`TxResult` records) and to the world state
after the block (the state tree's root). The commit certificate is kept
beside the header, outside the hash, because it signs that hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from kyodo.codec import encode, record
from kyodo.crypto import sha256
from kyodo.wire import (
    Event,
    Transaction,
    TxEnvelope,
    TxId,
    TxResult,
    TxStatus,
    compute_tx_id,
)

__all__ = [
    "GENESIS_HEIGHT",
    "Block",
    "BlockHeader",
    "CommitSignature",
    "ConsensusParams",
    "Event",
    "Height",
    "NetworkConfig",
    "NodeInfo",
    "OrgInfo",
    "Transaction",
    "TxEnvelope",
    "TxId",
    "TxResult",
    "TxStatus",
    "commit_message",
    "compute_tx_id",
]

Height = NewType("Height", int)
"""A block's position in the chain; the genesis block is height 0."""

GENESIS_HEIGHT = Height(0)


@record(20, version=2)  # 2: view
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader:
    """What a block's hash commits to."""

    chain_id: str
    height: Height
    prev_hash: bytes
    """Hash of the previous block's header (32 zero bytes for genesis)."""
    txs_root: bytes
    """RFC 6962 Merkle root of the transaction envelopes' canonical bytes."""
    results_root: bytes
    """RFC 6962 Merkle root of the canonical bytes of each :class:`TxResult`."""
    state_root: bytes
    """Root of the world-state tree after applying this block."""
    timestamp_ms: int
    """Set by the proposer; never earlier than the previous block's. Contracts see it."""
    proposer: str
    """Node id of the validator that proposed the block."""
    epoch: int
    """Configuration epoch the block was ordered under (validator set version)."""
    config_hash: bytes
    """SHA-256 of the canonical :class:`NetworkConfig` the block carries, or 32 zero bytes."""
    view: int = 0
    """The consensus view the block was proposed in (never lower than its parent's): the
    chain's record of leader changes, from which every node derives the same blacklist."""

    def block_hash(self) -> bytes:
        """SHA-256 of the header's canonical encoding: the block's identity."""
        return sha256(encode(self))


@record(21)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitSignature:
    """One validator's signature over :func:`commit_message` of a block."""

    signer: str
    """Node id of the validator."""
    signature: bytes


def commit_message(chain_id: str, block_hash: bytes) -> bytes:
    """The bytes a validator signs to commit a block (domain separated)."""
    return b"kyodo/commit/v1\x00" + chain_id.encode() + b"\x00" + block_hash


@record(22)
@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A header, its transactions and results, and the commit certificate."""

    header: BlockHeader
    txs: tuple[TxEnvelope, ...]
    results: tuple[TxResult, ...]
    certificate: tuple[CommitSignature, ...]
    """Commit signatures by validators in force at this height; empty for genesis."""
    config: NetworkConfig | None
    """The network configuration, carried by the genesis block (and, later, by
    reconfiguration blocks); None otherwise. Committed through ``config_hash``."""

    def block_hash(self) -> bytes:
        """The block's identity (hash of its header)."""
        return self.header.block_hash()


@record(30, version=2)  # 2: crl_der
@dataclass(frozen=True, slots=True, kw_only=True)
class OrgInfo:
    """A member organization."""

    org_id: str
    ca_cert_pem: bytes
    """The organization's root CA certificate (PEM)."""
    crl_der: bytes = b""
    """The organization's certificate revocation list (DER, signed by its CA); empty:
    nothing revoked."""


@record(31)
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """A node of the network, as every other node knows it."""

    node_id: str
    org_id: str
    signing_cert: bytes
    """DER signing certificate (Ed25519 key) the node signs blocks and votes with."""
    tls_cert_pem: bytes
    """The node's TLS certificate; a peer presenting any other is refused."""
    host: str
    p2p_port: int
    gateway_port: int
    validator: bool
    """Whether the node votes; a configured non-validator follows as an observer."""


@record(32)
@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusParams:
    """Ordering limits, agreed by the whole network."""

    max_batch_txs: int
    """Most transactions in one block."""
    max_batch_bytes: int
    """Most payload bytes in one block."""
    batch_timeout_ms: int
    """Longest a waiting transaction is held before a (partial) block is cut."""
    tx_max_age_ms: int
    """A transaction created longer ago than this (or this far in the future) is refused."""


@record(34)
@dataclass(frozen=True, slots=True, kw_only=True)
class AclEntry:
    """One access rule of the network: a resource and the policy guarding it
    (see :mod:`kyodo.policy` for the resource names and the defaults)."""

    resource: str
    policy: str


@record(33, version=5)  # 2: allow_fragile_topology; 3: epoch; 4: admin_policy; 5: acls
@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """The network's configuration: carried by the genesis block (epoch 0) and by each
    configuration block (epoch + 1, in force from the next height on)."""

    chain_id: str
    orgs: tuple[OrgInfo, ...]
    nodes: tuple[NodeInfo, ...]
    consensus: ConsensusParams
    created_ms: int
    allow_fragile_topology: bool
    """The operators accepted that one organization holds more than f validator votes
    (shown as a warning in every node's status and metrics)."""
    epoch: int = 0
    """Version of the configuration: 0 at genesis, +1 with every change."""
    admin_policy: str = ""
    """Who must approve a change of this configuration, in the policy language
    (``kyodo.policy``); "" means the admins of a majority of the organizations."""
    acls: tuple[AclEntry, ...] = ()
    """Access rules that differ from ``kyodo.policy.DEFAULT_ACLS``, applied by every
    node: by gateways to each call, by the executor to each transaction."""

    def node(self, node_id: str) -> NodeInfo | None:
        """The node with this id, or None."""
        for info in self.nodes:
            if info.node_id == node_id:
                return info
        return None

    def validators(self) -> tuple[NodeInfo, ...]:
        """The voting nodes, in configuration order."""
        return tuple(n for n in self.nodes if n.validator)
