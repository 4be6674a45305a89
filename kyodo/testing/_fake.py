"""The simulator's fake application: what stands in for contracts, state and keys.

The simulated nodes order and replicate *real* :class:`~kyodo.ledger.Block`
records; only the parts that would need the executor, the state tree,
certificates and private keys are replaced by cheap deterministic functions:

* **Transactions.** A client's envelope carries the payload
  ``kyodo-sim-tx/<client>/<created_ms>/<nonce hex>`` and the client
  "signature" ``sha256(b"sim-client/" + payload)``. A node admits and orders
  only well-formed, well-signed envelopes whose ``created_ms`` lies within
  the network's ``tx_max_age_ms`` of the time of the check (admission time,
  block time), as the real node does with ``check_envelope``.
* **Execution.** Every transaction succeeds: its result is
  ``TxResult(status=OK)`` with no return value and no events. The state root
  after a block is ``sha256(parent state root + the block's tx ids in
  order)``, so re-executing a block is recomputing that hash.
* **Keys.** Validator ``v`` signs ``m`` as
  ``sha256(b"sim-key/" + v + b"/" + m)``. Only the simulated node calls it
  for its own id (a Byzantine node signs only as itself), so in the
  simulation only ``v`` produces ``v``'s signatures.
* **Certificates.** A block is certified when its certificate holds valid
  commit signatures over :func:`~kyodo.ledger.commit_message` by at least q
  distinct validators.

These functions are shared by the shell (which builds and verifies blocks
with them), the Byzantine behaviours, and the invariant checker (which
re-checks every stored block independently of the shell).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kyodo.crypto import ZERO_HASH, sha256
from kyodo.ledger import (
    Block,
    BlockHeader,
    ConsensusParams,
    Height,
    NetworkConfig,
    NodeInfo,
    OrgInfo,
    TxEnvelope,
    TxResult,
    TxStatus,
    commit_message,
    compute_results_root,
    compute_txs_root,
    make_genesis_block,
)

__all__ = [
    "SIM_CHAIN_ID",
    "SimTx",
    "compute_sim_signature",
    "compute_sim_state_root",
    "count_commit_signers",
    "is_sim_signature_valid",
    "make_sim_block",
    "make_sim_genesis",
    "make_sim_tx",
    "read_sim_tx",
]

SIM_CHAIN_ID = "kyodo-sim"
"""Chain id of every simulated network."""

_ORG = "sim-org"
_TX_PREFIX = b"kyodo-sim-tx/"


def compute_sim_signature(node_id: str, message: bytes) -> bytes:
    """``node_id``'s simulated signature over ``message``."""
    return sha256(b"sim-key/" + node_id.encode() + b"/" + message)


def is_sim_signature_valid(node_id: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``node_id``'s simulated signature over ``message``."""
    return signature == compute_sim_signature(node_id, message)


def count_commit_signers(
    block: Block, validators: Iterable[str], block_hash: bytes | None = None
) -> int:
    """Distinct validators with a valid commit signature in ``block``'s certificate.

    ``block_hash`` is the block's hash when the caller has it already.
    """
    allowed = set(validators)
    signed = block_hash if block_hash is not None else block.block_hash()
    message = commit_message(block.header.chain_id, signed)
    return len(
        {
            c.signer
            for c in block.certificate
            if c.signer in allowed and is_sim_signature_valid(c.signer, message, c.signature)
        }
    )


@dataclass(frozen=True, slots=True)
class SimTx:
    """What a node reads from a well-formed, well-signed simulated transaction."""

    client: str
    created_ms: int
    """The client's clock when it signed; bounds the transaction's age."""


def make_sim_tx(client: str, created_ms: int, nonce: bytes) -> TxEnvelope:
    """A signed transaction of ``client`` created at ``created_ms`` (``nonce`` makes it
    unique)."""
    assert "/" not in client and created_ms >= 0
    payload = _TX_PREFIX + b"%s/%d/%s" % (client.encode(), created_ms, nonce.hex().encode())
    return TxEnvelope(payload=payload, signature=_client_signature(payload))


def read_sim_tx(envelope: TxEnvelope) -> SimTx | None:
    """The client and creation time of a well-formed, well-signed transaction, else None."""
    payload = envelope.payload
    if not payload.startswith(_TX_PREFIX) or envelope.signature != _client_signature(payload):
        return None
    fields = payload[len(_TX_PREFIX) :].split(b"/")
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return SimTx(client=fields[0].decode(errors="replace"), created_ms=int(fields[1]))


def _client_signature(payload: bytes) -> bytes:
    return sha256(b"sim-client/" + payload)


def compute_sim_results(txs: Iterable[TxEnvelope]) -> tuple[TxResult, ...]:
    """The fake executor's results: every transaction succeeds with nothing to say."""
    return tuple(
        TxResult(tx_id=env.tx_id(), status=int(TxStatus.OK), result=None, message="", events=())
        for env in txs
    )


def compute_sim_state_root(parent_state_root: bytes, txs: Iterable[TxEnvelope]) -> bytes:
    """The fake state root after applying ``txs`` on top of ``parent_state_root``."""
    return sha256(parent_state_root + b"".join(env.tx_id() for env in txs))


def make_sim_block(
    parent: BlockHeader,
    txs: tuple[TxEnvelope, ...],
    *,
    proposer: str,
    timestamp_ms: int,
    view: int,
    state_root: bytes | None = None,
) -> Block:
    """The (uncertified) block of ``txs`` on ``parent`` proposed by ``proposer`` in
    ``view``, executed by the fake application (epoch 0: no reconfiguration).

    ``state_root`` overrides the correct root (only a Byzantine leader passes it).
    """
    results = compute_sim_results(txs)
    header = BlockHeader(
        chain_id=parent.chain_id,
        height=Height(parent.height + 1),
        prev_hash=parent.block_hash(),
        txs_root=compute_txs_root(txs),
        results_root=compute_results_root(results),
        state_root=(
            state_root if state_root is not None else compute_sim_state_root(parent.state_root, txs)
        ),
        timestamp_ms=timestamp_ms,
        proposer=proposer,
        epoch=0,
        config_hash=ZERO_HASH,
        view=view,
    )
    return Block(header=header, txs=txs, results=results, certificate=(), config=None)


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
