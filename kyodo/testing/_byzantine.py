"""Byzantine validators: what a faulty node may do, and the shell hooks that do it.

A :class:`Byzantine` names one validator and the ways it misbehaves (any
combination). The node runs the honest core and the honest shell; an
:class:`Adversary` sits between them and the network and rewrites what goes
out, or corrupts what the node builds or admits. It signs only with its own
(simulated) key, as a real faulty validator could; it cannot forge anybody
else's signature. The behaviours:

* ``equivocate`` (the Twins method): when it proposes, the node sends two
  different *valid* blocks for the same view and height to two halves of the
  other validators, drawn at random, and then votes (Prepare, Commit) for each
  block towards the half that received it, so both halves see a leader
  that stands behind its block.
* ``wrong_state_root``: the blocks it builds carry a state root that
  re-execution does not give (honest validators must refuse to vote).
* ``withhold_votes``: it never sends a Prepare or a Commit.
* ``forge_signatures``: its Prepares and Commits carry signatures that do not
  verify (they must never count towards a certificate).
* ``stale_votes``: with every vote it also sends the same vote for the three
  views below (Prepares signed for those views), and it replays an old vote
  of its own, drawn at random.
* ``outsider``: it also sends copies of its messages, and forged view changes,
  claiming to come from :data:`OUTSIDER`, which is not a validator (the
  receiving shell must drop them before the core sees them).
* ``censor_client``: it ignores every request of that client: it neither
  admits it from a client nor from a peer, so as a leader it never orders it.

At most f validators of a run may be Byzantine; the invariants must hold
whatever they do. On the wire, the checker exempts only them from the
"one vote per view and height" property.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from kyodo.consensus import Commit, Heartbeat, Prepare, PrePrepare, ViewChange
from kyodo.consensus._bft_messages import prepare_message  # not re-exported by the package
from kyodo.crypto import sha256
from kyodo.ledger import Block, TxEnvelope, commit_message
from kyodo.testing._fake import compute_sim_signature, make_sim_block, read_sim_tx

__all__ = ["OUTSIDER", "Adversary", "Byzantine", "Emission", "draw_byzantine"]

OUTSIDER = "outsider"
"""The identity an ``outsider`` Byzantine node claims for its forged messages."""

_STALE_HISTORY = 64
"""Own votes a ``stale_votes`` node keeps for replaying."""
_STALE_VIEWS = 3
"""How many lower views a ``stale_votes`` node repeats each vote in."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Byzantine:
    """How validator ``node`` misbehaves (see module docstring)."""

    node: str
    equivocate: bool = False
    wrong_state_root: bool = False
    withhold_votes: bool = False
    forge_signatures: bool = False
    stale_votes: bool = False
    outsider: bool = False
    censor_client: str | None = None

    def describe(self) -> str:
        """The behaviours, for traces and failure reports."""
        names = [
            name
            for name, on in (
                ("equivocate", self.equivocate),
                ("wrong_state_root", self.wrong_state_root),
                ("withhold_votes", self.withhold_votes),
                ("forge_signatures", self.forge_signatures),
                ("stale_votes", self.stale_votes),
                ("outsider", self.outsider),
            )
            if on
        ]
        if self.censor_client is not None:
            names.append(f"censor {self.censor_client}")
        return f"{self.node}: {', '.join(names) or 'honest'}"


@dataclass(frozen=True, slots=True)
class Emission:
    """One message the node puts on the wire."""

    to: str | None
    """The receiver; None: every other node (a broadcast)."""
    message: object
    as_sender: str | None = None
    """The identity claimed (None: the node's own)."""


@dataclass(slots=True)
class _Twin:
    block: Block
    receivers: frozenset[str]
    """The validators that were sent this twin (the others got the original)."""


class Adversary:
    """The misbehaviour of one Byzantine node (see module docstring)."""

    def __init__(
        self,
        spec: Byzantine,
        *,
        validators: tuple[str, ...],
        chain_id: str,
        rng: random.Random,
        tip: Callable[[], Block],
    ) -> None:
        assert spec.node in validators
        self.spec = spec
        self._me = spec.node
        self._others = tuple(v for v in validators if v != spec.node)
        self._chain_id = chain_id
        self._rng = rng
        self._tip = tip
        self._twins: dict[bytes, _Twin] = {}
        """Original block hash to its twin (equivocation)."""
        self._history: list[Prepare | Commit] = []
        """Own votes sent, for stale replays (bounded)."""
        self.equivocations = 0
        """Proposals sent as two different blocks."""
        self.stale_sent = 0
        """Votes sent for a lower view than the vote they copy, or replayed."""

    # -- what the node admits and builds ---------------------------------------------

    def ignores(self, envelope: TxEnvelope) -> bool:
        """Whether the node drops this request unseen (censorship)."""
        if self.spec.censor_client is None:
            return False
        tx = read_sim_tx(envelope)
        return tx is not None and tx.client == self.spec.censor_client

    def corrupt(self, block: Block) -> Block:
        """The block the node proposes instead of the honest ``block`` it built."""
        if not self.spec.wrong_state_root:
            return block
        header = replace(block.header, state_root=_wrong_root(block.header.state_root))
        return replace(block, header=header)

    # -- what the node says ----------------------------------------------------------

    def outgoing(self, to: str | None, message: object) -> list[Emission]:
        """What goes on the wire when the core asks to send ``message`` to ``to``
        (None: broadcast)."""
        spec = self.spec
        out: list[Emission] = []
        if spec.equivocate and to is None and isinstance(message, PrePrepare):
            out += self._equivocate(message)
        elif isinstance(message, Prepare | Commit):
            if not spec.withhold_votes:
                out += self._vote(to, message)
            if spec.stale_votes:
                out += self._stale(message)
        else:
            out.append(Emission(to, message))
        if spec.forge_signatures:
            out = [replace(e, message=_forged(e.message)) for e in out]
        if spec.outsider:
            out += self._outsider(to, message)
        return out

    def _equivocate(self, proposal: PrePrepare) -> list[Emission]:
        twin_block = self._twin_of(proposal.block)
        if twin_block is None:
            return [Emission(None, proposal)]
        order = list(self._others)
        self._rng.shuffle(order)
        cut = self._rng.randint(1, len(order) - 1) if len(order) > 1 else 1
        receivers = frozenset(order[:cut])
        self._twins[proposal.block.block_hash()] = _Twin(block=twin_block, receivers=receivers)
        twin = replace(proposal, block=twin_block)
        self.equivocations += 1
        return [Emission(v, twin if v in receivers else proposal) for v in self._others]

    def _twin_of(self, block: Block) -> Block | None:
        """Another valid block for the same height and parent: the transactions in
        reverse order, or (one transaction) a later timestamp."""
        parent = self._tip().header
        if block.header.prev_hash != parent.block_hash():
            return None
        txs = tuple(reversed(block.txs))
        later = block.header.timestamp_ms + (0 if len(txs) > 1 else 1)
        view = block.header.view
        twin = make_sim_block(parent, txs, proposer=self._me, timestamp_ms=later, view=view)
        return self.corrupt(twin)

    def _vote(self, to: str | None, vote: Prepare | Commit) -> list[Emission]:
        twin = self._twins.get(vote.block_hash)
        if twin is None:
            return [Emission(to, vote)]
        other = self._signed(vote, twin.block.block_hash(), vote.view)
        receivers = self._others if to is None else (to,)
        return [Emission(v, other if v in twin.receivers else vote) for v in receivers]

    def _stale(self, vote: Prepare | Commit) -> list[Emission]:
        lower = range(max(0, vote.view - _STALE_VIEWS), vote.view)
        out = [Emission(None, self._signed(vote, vote.block_hash, v)) for v in lower]
        if self._history:
            out.append(Emission(None, self._rng.choice(self._history)))
        self._history.append(vote)
        del self._history[:-_STALE_HISTORY]
        self.stale_sent += len(out)
        return out

    def _outsider(self, to: str | None, message: object) -> list[Emission]:
        receivers = self._others if to is None else (to,)
        out = [Emission(v, message, as_sender=OUTSIDER) for v in receivers]
        if isinstance(message, Heartbeat):
            forged = ViewChange(next_view=message.view + 1)
            out += [Emission(v, forged, as_sender=OUTSIDER) for v in receivers]
        return out

    def _signed(self, vote: Prepare | Commit, block_hash: bytes, view: int) -> Prepare | Commit:
        """``vote`` for ``block_hash`` in ``view``, signed with the node's own key."""
        if isinstance(vote, Prepare):
            message = prepare_message(self._chain_id, view, vote.height, block_hash)
        else:
            message = commit_message(self._chain_id, block_hash)
        signature = compute_sim_signature(self._me, message)
        return replace(vote, view=view, block_hash=block_hash, signature=signature)


def _wrong_root(root: bytes) -> bytes:
    return sha256(b"not the state root/" + root)


def _forged(message: object) -> object:
    """A vote whose signature does not verify; anything else unchanged."""
    if isinstance(message, Prepare | Commit):
        return replace(message, signature=sha256(b"forged/" + message.signature))
    return message


def draw_byzantine(
    rng: random.Random, node_ids: tuple[str, ...], clients: tuple[str, ...], *, chance: float
) -> tuple[Byzantine, ...]:
    """With probability ``chance``, one random validator with a random non-empty mix of
    behaviours; else nobody (needs f >= 1, i.e. at least 4 validators).

    ``forge_signatures`` is never drawn: it came later, and drawing it would change the
    run of every seed that drew a Byzantine validator before (pinned seeds among them).
    """
    if (len(node_ids) - 1) // 3 < 1 or rng.random() >= chance:
        return ()
    node = rng.choice(node_ids)
    flags = [rng.random() < 0.4 for _ in range(5)]
    censor = rng.choice(clients) if clients and rng.random() < 0.3 else None
    if not any(flags) and censor is None:
        flags[rng.randrange(len(flags))] = True
    return (
        Byzantine(
            node=node,
            equivocate=flags[0],
            wrong_state_root=flags[1],
            withhold_votes=flags[2],
            stale_votes=flags[3],
            outsider=flags[4],
            censor_client=censor,
        ),
    )
