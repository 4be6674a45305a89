"""The simulator's fake application: what stands in for contracts, state and keys.

The simulated nodes order and replicate *real* :class:`~kyodo.ledger.Block`
records; only the parts that would need the executor, the state tree and
private keys are replaced by cheap deterministic functions:

* every transaction "succeeds": its result is ``TxResult(status=OK)`` with no
  return value and no events;
* the state root after a block is ``sha256(parent state root + the block's
  tx ids in order)``, so re-execution is recomputing that hash;
* a node "signs" a block with a simulated MAC,
  ``sha256(b"sim-key" + node id + block hash)``; only the simulated node
  calls it for its own id, so in the simulation only that node can produce it.

These functions are shared by the shell (which builds and verifies blocks
with them) and the invariant checker (which re-checks every appended block
independently of the shell).
"""

from __future__ import annotations

from collections.abc import Iterable

from kyodo.crypto import sha256
from kyodo.ledger import (
    Block,
    ConsensusParams,
    NetworkConfig,
    NodeInfo,
    OrgInfo,
    TxEnvelope,
    TxResult,
    TxStatus,
    make_genesis_block,
)

__all__ = [
    "SIM_CHAIN_ID",
    "compute_sim_mac",
    "compute_sim_results",
    "compute_sim_state_root",
    "is_sim_mac_valid",
    "make_sim_genesis",
]

SIM_CHAIN_ID = "kyodo-sim"
"""Chain id of every simulated network."""

_ORG = "sim-org"


def compute_sim_mac(node_id: str, block_hash: bytes) -> bytes:
    """The simulated commit signature of ``node_id`` over a block hash."""
    return sha256(b"sim-key" + node_id.encode() + block_hash)


def is_sim_mac_valid(block: Block, block_hash: bytes | None = None) -> bool:
    """Whether the certificate is exactly one valid MAC, by the block's proposer.

    ``block_hash`` is the block's hash when the caller has it already.
    """
    proposer = block.header.proposer
    if len(block.certificate) != 1 or block.certificate[0].signer != proposer:
        return False
    signed = block_hash if block_hash is not None else block.block_hash()
    return block.certificate[0].signature == compute_sim_mac(proposer, signed)


def compute_sim_results(txs: Iterable[TxEnvelope]) -> tuple[TxResult, ...]:
    """The fake executor's results: every transaction succeeds with nothing to say."""
    return tuple(
        TxResult(tx_id=env.tx_id(), status=int(TxStatus.OK), result=None, message="", events=())
        for env in txs
    )


def compute_sim_state_root(parent_state_root: bytes, txs: Iterable[TxEnvelope]) -> bytes:
    """The fake state root after applying ``txs`` on top of ``parent_state_root``."""
    return sha256(parent_state_root + b"".join(env.tx_id() for env in txs))


def make_sim_genesis(node_ids: tuple[str, ...], params: ConsensusParams) -> Block:
    """A real genesis block for a network of validators ``node_ids``, one organization
    each (so no organization holds more than one vote).

    Certificates are empty: nothing in the simulation reads them.
    """
    nodes = tuple(
        NodeInfo(
            node_id=node_id,
            org_id=f"{_ORG}-{node_id}",
            signing_cert=b"",
            tls_cert_pem=b"",
            host="sim",
            p2p_port=0,
            gateway_port=0,
            validator=True,
        )
        for node_id in node_ids
    )
    config = NetworkConfig(
        chain_id=SIM_CHAIN_ID,
        orgs=tuple(OrgInfo(org_id=f"{_ORG}-{node_id}", ca_cert_pem=b"") for node_id in node_ids),
        nodes=nodes,
        consensus=params,
        created_ms=0,
        allow_fragile_topology=False,
    )
    return make_genesis_block(config)
