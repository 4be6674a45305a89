"""Offline verification of a node's whole store (what ``kyodo verify`` runs).

Walks every block from genesis to the tip and checks, for each: it decodes
at its height, links to its parent by hash, its transactions and results
match the header's roots, its certificate holds commit signatures of a
quorum (q of n) of the validators configured at genesis, every transaction's
signature and creator verify, and the
transaction index points back at it. Then it checks that the stored tip and
state root match the tip block, that every state-tree node reachable from
the root hashes to its key, and that the flat state is exactly the set of
leaves of that tree. The first failure raises with the height concerned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from kyodo.crypto import sha256
from kyodo.identity import IdentityError, Membership
from kyodo.ledger._state_tree import iter_nodes
from kyodo.ledger._store import LedgerStore
from kyodo.ledger._types import Block
from kyodo.ledger._verify import (
    check_envelope,
    quorum_size,
    verify_block_contents,
    verify_certificate,
    verify_link,
)
from kyodo.ledger.errors import (
    BlockVerificationError,
    StateCorruptionError,
    StoredDataError,
    TransactionRejectedError,
)

__all__ = ["verify_store"]

Progress = Callable[[int, int], None]


def verify_store(store: LedgerStore, genesis: Block, *, progress: Progress | None = None) -> int:
    """Verify ``store`` against ``genesis``; return the verified tip height.

    Raises StoredDataError or BlockVerificationError naming the first bad height.
    """
    config = genesis.config
    assert config is not None
    tip = store.height()
    if tip is None:
        raise StoredDataError("the store is empty", height=0)
    stored_genesis = store.get_block(0)
    if stored_genesis is None or stored_genesis.block_hash() != genesis.block_hash():
        raise StoredDataError("genesis block differs from the network's", height=0)
    membership = Membership({o.org_id: o.ca_cert_pem for o in config.orgs})
    created = datetime.fromtimestamp(config.created_ms / 1000, UTC)
    try:
        keys = {
            n.node_id: membership.validate(n.signing_cert, now=created).public_key
            for n in config.nodes
        }
    except IdentityError as exc:
        raise StoredDataError(
            f"node certificate in genesis does not verify: {exc}", height=0
        ) from exc
    parent = stored_genesis
    for height in range(1, tip + 1):
        block = store.get_block(height)
        if block is None:
            raise StoredDataError("block is missing", height=height)
        _verify_block(store, block, parent, config=config, keys=keys, membership=membership)
        parent = block
        if progress is not None:
            progress(height, tip)
    if parent.block_hash() != store.tip_hash():
        raise StoredDataError("recorded tip hash differs from the last block's hash", height=tip)
    if parent.header.state_root != store.state_root():
        raise StoredDataError(
            "recorded state root differs from the tip's certified root", height=tip
        )
    _verify_state(store, tip)
    return tip


def _verify_block(
    store: LedgerStore,
    block: Block,
    parent: Block,
    *,
    config: object,
    keys: dict[str, bytes],
    membership: Membership,
) -> None:
    from kyodo.ledger._types import NetworkConfig

    assert isinstance(config, NetworkConfig)
    header = block.header
    verify_link(header, parent.header)
    verify_block_contents(block)
    quorum = quorum_size(len(config.validators()))
    verify_certificate(header, block.certificate, config=config, signer_keys=keys, quorum=quorum)
    for index, envelope in enumerate(block.txs):
        try:
            check_envelope(
                envelope,
                membership=membership,
                chain_id=config.chain_id,
                now_ms=header.timestamp_ms,
                max_age_ms=config.consensus.tx_max_age_ms,
            )
        except TransactionRejectedError as exc:
            raise BlockVerificationError(
                f"transaction {index}: {exc}", height=header.height, reason="tx_signature"
            ) from exc
        if store.get_tx_location(envelope.tx_id()) != (header.height, index):
            raise StoredDataError(
                f"transaction index does not point at transaction {index}", height=header.height
            )


def _verify_state(store: LedgerStore, tip: int) -> None:
    leaves: dict[bytes, bytes] = {}
    try:
        for _, node in iter_nodes(store, store.state_root()):
            if node[0] == 0:
                leaves[node[1:33]] = node[33:65]
    except StateCorruptionError as exc:
        raise StoredDataError(f"state tree node {exc.node_hash} is corrupt", height=tip) from exc
    count = 0
    for state_key, record in store.iter_state_records():
        count += 1
        if leaves.get(sha256(state_key)) != sha256(record):
            raise StoredDataError(
                f"state value of {state_key!r} does not match the certified state tree", height=tip
            )
    if count != len(leaves):
        raise StoredDataError(
            f"flat state has {count} keys but the certified state tree has {len(leaves)}",
            height=tip,
        )
