"""The topology check: no organization may hold more than f validator votes.

With n validators, f = (n-1)//3 may fail and the network still orders. If one
organization runs more than f validators, losing that organization (a data
centre fire, a network cut, an operator mistake) loses more than f votes and
halts the network. This is what happened in the Fabric proof of concept with
two organizations. Surviving the loss of a whole organization needs at least
four validator-operating organizations with at most f validators each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kyodo.ledger._types import NetworkConfig
from kyodo.ledger._verify import quorum_size
from kyodo.ledger.errors import LedgerError

__all__ = ["FragileTopologyError", "TopologyReport", "check_topology", "consequence"]


class FragileTopologyError(LedgerError):
    """An organization holds more than f validator votes.

    Attributes:
        org_id: the organization.
        votes: how many validators it runs.
        tolerated: f, the failures the validator set tolerates.
    """

    def __init__(self, message: str, *, org_id: str, votes: int, tolerated: int) -> None:
        super().__init__(message)
        self.org_id = org_id
        self.votes = votes
        self.tolerated = tolerated


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyReport:
    """What the validator set tolerates."""

    validators: int
    tolerated: int
    """f: validators that may fail (or lie) with the network still ordering."""
    fragile_orgs: tuple[str, ...]
    """Organizations whose loss alone would halt the network."""

    @property
    def fragile(self) -> bool:
        """Whether losing one organization could halt the network."""
        return bool(self.fragile_orgs)


def check_topology(config: NetworkConfig, *, allow_fragile: bool = False) -> TopologyReport:
    """Report on the validator set; raise FragileTopologyError unless ``allow_fragile``."""
    validators = config.validators()
    n = len(validators)
    if n == 0:
        raise LedgerError("the network configuration has no validators")
    tolerated = (n - 1) // 3
    votes = Counter(v.org_id for v in validators)
    fragile = tuple(sorted(org for org, count in votes.items() if count > tolerated))
    report = TopologyReport(validators=n, tolerated=tolerated, fragile_orgs=fragile)
    if fragile and not allow_fragile:
        org = fragile[0]
        raise FragileTopologyError(
            f"organization {org} runs {votes[org]} of {n} validators, but the network "
            f"tolerates only {tolerated} faulty validator(s): "
            f"{consequence(org, votes[org], n)}. Surviving the loss of any one "
            "organization needs at least 4 validator-operating organizations with at most "
            "f validators each (use --allow-fragile-topology to accept this risk knowingly)",
            org_id=org,
            votes=votes[org],
            tolerated=tolerated,
        )
    return report


def consequence(org: str, votes: int, validators: int) -> str:
    """What losing ``org`` (running ``votes`` of ``validators``) does to the network."""
    if validators - votes < quorum_size(validators):
        return f"losing {org} would halt the network"
    return (
        f"losing {org} would leave the network ordering without any tolerance for a "
        "further fault or a misbehaving validator"
    )
