"""The consensus interface: messages between nodes, and actions for the node shell.

A consensus implementation is a **sans-IO state machine** (DESIGN.md section 3):
the node shell feeds it events (``on_*`` methods: a client request, a peer
message, a tick of the clock, a block appended) and carries out the actions
it returns (send a message, build a block, verify and append a peer's block,
fetch missing blocks). Time comes in as ``now_ms``; the machine does no I/O,
reads no clock and draws no randomness, so the simulator can drive the same
code deterministically.

:class:`Consensus` is the shape of the single-leader core
(``_single_leader.py``, kept for reference and unused by the node). The BFT
core (``_bft.py``), which the node runs, follows the same event-in/actions-out
pattern with additional events and actions (``BftAction``: building and
verifying proposals without appending, certified appends, the write-ahead log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kyodo.codec import record
from kyodo.consensus._bft_messages import BftMessage
from kyodo.ledger import Block, TxEnvelope

__all__ = [
    "Action",
    "AppendPeerBlock",
    "BlockMessage",
    "Broadcast",
    "Consensus",
    "ForwardTx",
    "Message",
    "ProposeBlock",
    "RequestSync",
    "Send",
    "StatusMessage",
    "SyncRequest",
    "SyncResponse",
]


@record(40)
@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardTx:
    """A transaction a non-leader passes on to the leader for ordering."""

    envelope: TxEnvelope


@record(41)
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockMessage:
    """A new certified block, pushed by the node that appended it first."""

    block: Block


@record(42)
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusMessage:
    """A node's tip, sent on connect and periodically, so laggards notice."""

    height: int
    tip_hash: bytes


@record(43)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRequest:
    """Ask a peer for certified blocks from ``from_height`` on (at most ``max_blocks``)."""

    from_height: int
    max_blocks: int


@record(44)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResponse:
    """Certified blocks, consecutive, starting at the requested height."""

    blocks: tuple[Block, ...]


Message = ForwardTx | BlockMessage | StatusMessage | SyncRequest | SyncResponse | BftMessage


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to node ``to``."""

    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` to every other node."""

    message: Message


@dataclass(frozen=True, slots=True)
class ProposeBlock:
    """Build, certify and append a block of ``txs`` on top of the tip (leader only).

    The shell reports back with ``on_block_appended`` (or ``on_proposal_failed``).
    """

    txs: tuple[TxEnvelope, ...]


@dataclass(frozen=True, slots=True)
class AppendPeerBlock:
    """Verify ``block`` completely (certificate, links, re-execution) and append it.

    The shell reports back with ``on_block_appended`` or ``on_block_rejected``.
    """

    block: Block
    sender: str


@dataclass(frozen=True, slots=True)
class RequestSync:
    """Ask ``peer`` for the blocks from ``from_height`` on."""

    peer: str
    from_height: int


Action = Send | Broadcast | ProposeBlock | AppendPeerBlock | RequestSync


class Consensus(Protocol):
    """What the node shell drives; every method returns the actions to carry out."""

    def leader(self) -> str:
        """Node id of the node currently ordering transactions."""
        ...

    def on_request(self, envelope: TxEnvelope, tx_id: bytes, now_ms: int) -> list[Action]:
        """A checked, non-duplicate transaction arrived from a client or was forwarded."""
        ...

    def on_message(self, sender: str, message: Message, now_ms: int) -> list[Action]:
        """A consensus message arrived from an authenticated peer."""
        ...

    def on_tick(self, now_ms: int) -> list[Action]:
        """Time passed."""
        ...

    def on_block_appended(self, block: Block, now_ms: int) -> list[Action]:
        """A block was appended to the local store (own proposal or a peer's)."""
        ...

    def on_block_rejected(self, block: Block, sender: str, now_ms: int) -> list[Action]:
        """A peer's block failed verification and was not stored."""
        ...

    def on_proposal_failed(self, now_ms: int) -> list[Action]:
        """Building the proposed block failed (no valid transactions, or an error)."""
        ...

    def on_peer_connected(self, peer: str, now_ms: int) -> list[Action]:
        """A peer connection (re)opened."""
        ...

    def pending_count(self) -> int:
        """Transactions waiting to be ordered here."""
        ...
