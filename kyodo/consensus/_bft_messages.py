"""Messages and actions of the BFT protocol (ADR 0009).

Messages travel between validators over authenticated p2p streams, so the
receiver knows which validator sent each one. A message that is relayed,
:class:`ViewData` inside a :class:`NewView`, is signed by its author. A
:class:`Commit` carries the author's signature over
:func:`kyodo.ledger.commit_message` of the block hash: q of them form the
block's certificate, which does not depend on the view, so commits made in a
view that was then abandoned still count towards the same block.
"""

from __future__ import annotations

from dataclasses import dataclass

from kyodo.codec import encode, encode_value, record
from kyodo.ledger import Block, CommitSignature

__all__ = [
    "AppendCertified",
    "BftMessage",
    "BuildProposal",
    "Commit",
    "Heartbeat",
    "NewView",
    "PersistWal",
    "PrePrepare",
    "Prepare",
    "SignedViewData",
    "VerifyProposal",
    "ViewChange",
    "ViewData",
    "WalState",
    "new_view_message",
    "prepare_message",
]


@record(60)
@dataclass(frozen=True, slots=True, kw_only=True)
class PrePrepare:
    """The leader of ``view`` proposes ``block`` for ``height``."""

    view: int
    height: int
    block: Block


@record(61)
@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """The sender verified (re-executed) the proposal with this hash."""

    view: int
    height: int
    block_hash: bytes
    signature: bytes
    """Over :func:`prepare_message`; q of them form a prepared certificate."""


def prepare_message(chain_id: str, view: int, height: int, block_hash: bytes) -> bytes:
    """The bytes a validator signs to vote Prepare (domain separated)."""
    return (
        b"kyodo/prepare/v1\x00"
        + chain_id.encode()
        + b"\x00"
        + view.to_bytes(8, "big")
        + height.to_bytes(8, "big")
        + block_hash
    )


@record(62)
@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """The sender is prepared on ``block_hash``; ``signature`` certifies the block."""

    view: int
    height: int
    block_hash: bytes
    signature: bytes


@record(63)
@dataclass(frozen=True, slots=True, kw_only=True)
class ViewChange:
    """The sender wants to leave its view for ``next_view``."""

    next_view: int


@record(64)
@dataclass(frozen=True, slots=True, kw_only=True)
class ViewData:
    """What the next leader must know from one validator to start ``next_view``."""

    next_view: int
    last_block: Block
    """The author's last appended block, with its certificate (genesis: none)."""
    in_flight: Block | None
    """The proposal the author accepted (voted Prepare for) above ``last_block``."""
    prepared_view: int
    """The view in which the author became prepared on ``in_flight``; -1 if it did not."""
    prepared_certificate: tuple[CommitSignature, ...]
    """q signed Prepares for ``in_flight`` in ``prepared_view`` (empty if not prepared)."""


@record(65)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignedViewData:
    """A :class:`ViewData` as its author encoded and signed it."""

    signer: str
    view_data: bytes
    """Canonical bytes of the ViewData."""
    signature: bytes


@record(66, version=2)  # 2: signature
@dataclass(frozen=True, slots=True, kw_only=True)
class NewView:
    """The leader of ``view`` starts it, with a quorum of signed view data.

    Signed by the leader so that any validator that entered the view can relay it to one
    that missed it: only the leader's NewView decides a view, but anyone may carry it."""

    view: int
    view_data: tuple[SignedViewData, ...]
    signature: bytes
    """The leader's signature over :func:`new_view_message`."""


def new_view_message(chain_id: str, view: int, view_data: tuple[SignedViewData, ...]) -> bytes:
    """The bytes the leader of ``view`` signs to start it."""
    body = encode_value([view, [encode(v) for v in view_data]])
    return b"kyodo/new-view/v1\x00" + chain_id.encode() + b"\x00" + body


@record(67)
@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """The sender is active in ``view`` with tip ``height`` (every active validator
    sends it: followers watch the leader's; a lone complainer sees where others are)."""

    view: int
    height: int


@record(68)
@dataclass(frozen=True, slots=True, kw_only=True)
class WalState:
    """What a validator must remember across a crash so it never votes twice.

    Written (and synced) before the message it justifies is sent.
    """

    view: int
    """The view the validator is in (or changing to)."""
    in_view_change: bool
    height: int
    """The height ``accepted`` is for (tip + 1 when it was written)."""
    accepted: Block | None
    """The proposal the validator sent Prepare for at ``height`` in ``view``."""
    prepared_view: int
    """The view it became prepared on ``accepted`` in (and sent Commit); -1 if not."""
    prepared_certificate: tuple[CommitSignature, ...]
    """The q signed Prepares that made it prepared."""


BftMessage = PrePrepare | Prepare | Commit | ViewChange | SignedViewData | NewView | Heartbeat


@dataclass(frozen=True, slots=True)
class BuildProposal:
    """Build block ``height`` from ``txs`` on the tip (leader); answer with
    ``on_proposal_built``."""

    height: int
    txs: tuple[object, ...]
    view: int = 0
    """The view the proposal is made in (recorded in the block header)."""


@dataclass(frozen=True, slots=True)
class VerifyProposal:
    """Verify a proposed block completely, re-executing it on the tip, *without*
    appending it; answer with ``on_proposal_verified``."""

    view: int
    height: int
    block: Block


@dataclass(frozen=True, slots=True)
class AppendCertified:
    """Append ``block``, whose certificate holds a quorum of commit signatures;
    answer with ``on_block_appended``."""

    block: Block


@dataclass(frozen=True, slots=True)
class PersistWal:
    """Durably record ``state`` before carrying out the actions that follow."""

    state: WalState
