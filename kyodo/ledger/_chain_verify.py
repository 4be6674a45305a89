"""Offline verification of a node's whole store (what ``kyodo verify`` runs).

Walks every block from genesis to the tip and checks, for each: it decodes
at its height, links to its parent by hash, its transactions and results
match the header's roots, its certificate holds commit signatures of a
quorum (q of n) of the validators in force at its height (followed from
genesis through every configuration block), every transaction's
signature and creator verify, and the
transaction index points back at it. Then it checks that the stored tip and
state root match the tip block, that every state-tree node reachable from
the root hashes to its key, and that the flat state is exactly the set of
leaves of that tree. The first failure raises with the height concerned.
"""

from __future__ import annotations

from collections.abc import Callable

from kyodo.crypto import sha256
from kyodo.ledger._config_update import verify_configuration_block
from kyodo.ledger._epochs import ConfigView, Epochs
from kyodo.ledger._state_tree import iter_nodes
from kyodo.ledger._store import LedgerStore
from kyodo.ledger._types import Block
from kyodo.ledger._verify import (
    check_envelope,
    verify_block_contents,
    verify_link,
)
from kyodo.ledger.errors import (
    BlockVerificationError,
    LedgerError,
    StateCorruptionError,
    StoredDataError,
    TransactionRejectedError,
)

__all__ = ["verify_store"]

Progress = Callable[[int, int], None]


def verify_store(store: LedgerStore, genesis: Block, *, progress: Progress | None = None) -> int:
    """Verify ``store`` against ``genesis``; return the verified tip height.

    The validator set of each height is followed from genesis through every
    configuration block. Raises StoredDataError or BlockVerificationError naming the
    first bad height.
    """
    assert genesis.config is not None
    tip = store.height()
    if tip is None:
        raise StoredDataError("the store is empty", height=0)
    stored_genesis = store.get_block(0)
    if stored_genesis is None or stored_genesis.block_hash() != genesis.block_hash():
        raise StoredDataError("genesis block differs from the network's", height=0)
    try:
        view = ConfigView.of(genesis.config)
    except LedgerError as exc:
        raise StoredDataError(str(exc), height=0) from exc
    epochs = Epochs([(0, genesis.config)])
    parent = stored_genesis
    for height in range(1, tip + 1):
        block = store.get_block(height)
        if block is None:
            raise StoredDataError("block is missing", height=height)
        _verify_block(store, block, parent, view=view)
        if block.config is not None:
            view = _next_epoch(block, view)
            epochs.add(height + 1, block.config)
        parent = block
        if progress is not None:
            progress(height, tip)
    if parent.block_hash() != store.tip_hash():
        raise StoredDataError("recorded tip hash differs from the last block's hash", height=tip)
    if parent.header.state_root != store.state_root():
        raise StoredDataError(
            "recorded state root differs from the tip's certified root", height=tip
        )
    stored = [config for _, config in store.get_configs()]
    if stored != epochs.all():
        raise StoredDataError("recorded configurations differ from the chain's", height=tip)
    _verify_state(store, tip)
    return tip


def _next_epoch(block: Block, view: ConfigView) -> ConfigView:
    config = block.config
    assert config is not None
    if config.epoch != view.config.epoch + 1 or config.chain_id != view.config.chain_id:
        raise BlockVerificationError(
            f"configuration epoch {config.epoch} does not follow {view.config.epoch}",
            height=block.header.height,
            reason="config",
        )
    try:
        return ConfigView.of(config)
    except LedgerError as exc:
        raise BlockVerificationError(str(exc), height=block.header.height, reason="config") from exc


def _verify_block(store: LedgerStore, block: Block, parent: Block, *, view: ConfigView) -> None:
    config = view.config
    header = block.header
    verify_link(header, parent.header)
    verify_block_contents(block)
    if header.epoch != config.epoch:
        raise BlockVerificationError(
            f"block says epoch {header.epoch}, but epoch {config.epoch} is in force",
            height=header.height,
            reason="epoch",
        )
    view.check_certificate(block)
    checked = []
    for index, envelope in enumerate(block.txs):
        try:
            checked.append(
                check_envelope(
                    envelope,
                    membership=view.membership,
                    chain_id=config.chain_id,
                    now_ms=header.timestamp_ms,
                    max_age_ms=config.consensus.tx_max_age_ms,
                )
            )
        except TransactionRejectedError as exc:
            raise BlockVerificationError(
                f"transaction {index}: {exc}", height=header.height, reason="tx_signature"
            ) from exc
        if store.get_tx_location(envelope.tx_id()) != (header.height, index):
            raise StoredDataError(
                f"transaction index does not point at transaction {index}", height=header.height
            )
    verify_configuration_block(block, checked, view)


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
