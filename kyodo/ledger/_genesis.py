"""The genesis block: height 0, no transactions, carrying the network configuration.

Every node of a network is given the same genesis block file; its hash is
the network's root of trust (a node refuses a store whose genesis differs).
"""

from __future__ import annotations

from pathlib import Path

from kyodo.codec import DecodeError, decode_record, encode
from kyodo.crypto import ZERO_HASH, sha256
from kyodo.ledger._state_tree import EMPTY
from kyodo.ledger._types import Block, BlockHeader, Height, NetworkConfig
from kyodo.ledger._verify import compute_results_root, compute_txs_root
from kyodo.ledger.errors import LedgerError

__all__ = ["load_genesis", "make_genesis_block", "save_genesis"]


def make_genesis_block(config: NetworkConfig) -> Block:
    """The genesis block of a network with ``config``."""
    header = BlockHeader(
        chain_id=config.chain_id,
        height=Height(0),
        prev_hash=ZERO_HASH,
        txs_root=compute_txs_root(()),
        results_root=compute_results_root(()),
        state_root=EMPTY,
        timestamp_ms=config.created_ms,
        proposer="genesis",
        epoch=0,
        config_hash=sha256(encode(config)),
    )
    return Block(header=header, txs=(), results=(), certificate=(), config=config)


def save_genesis(path: Path, block: Block) -> None:
    """Write the genesis block file."""
    path.write_bytes(encode(block))


def load_genesis(path: Path) -> Block:
    """Read and check a genesis block file."""
    try:
        block = decode_record(Block, path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise LedgerError(f"cannot read genesis block {path}: {exc}") from exc
    if block.header.height != 0 or block.config is None:
        raise LedgerError(f"{path} is not a genesis block")
    if sha256(encode(block.config)) != block.header.config_hash:
        raise LedgerError(f"{path}: configuration does not match the header")
    return block
