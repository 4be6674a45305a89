"""Which configuration is in force at which height.

The genesis block carries epoch 0, in force from height 0. A configuration
block at height h carries epoch e+1, in force from h+1: the block itself is
still certified by the validator set of epoch e. Anyone who holds the genesis
block can therefore follow the validator set through every change. That
includes a syncing node, `kyodo verify`, and an auditor.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from kyodo.identity import IdentityError, Membership
from kyodo.ledger._types import Block, NetworkConfig
from kyodo.ledger._verify import quorum_size, verify_certificate
from kyodo.ledger.errors import LedgerError
from kyodo.policy import AclTable, PolicyError

__all__ = ["ConfigView", "Epochs"]


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A configuration with what checking blocks under it needs, computed once."""

    config: NetworkConfig
    membership: Membership
    signer_keys: dict[str, bytes]
    """Node id -> raw Ed25519 signing key, for every configured node."""
    validators: tuple[str, ...]
    quorum: int
    acl: AclTable
    """The access rules in force (defaults plus the configuration's ``acls``)."""

    @classmethod
    def of(cls, config: NetworkConfig) -> ConfigView:
        """Build the view; raise LedgerError if a node certificate does not verify."""
        membership = Membership(
            {o.org_id: o.ca_cert_pem for o in config.orgs},
            crls={o.org_id: o.crl_der for o in config.orgs if o.crl_der},
        )
        created = datetime.fromtimestamp(config.created_ms / 1000, UTC)
        try:
            keys = {
                n.node_id: membership.validate(n.signing_cert, now=created).public_key
                for n in config.nodes
            }
        except IdentityError as exc:
            raise LedgerError(
                f"a node certificate of configuration epoch {config.epoch} does not verify: {exc}"
            ) from exc
        validators = tuple(n.node_id for n in config.validators())
        try:
            acl = AclTable((e.resource, e.policy) for e in config.acls)
        except PolicyError as exc:
            raise LedgerError(
                f"the access rules of epoch {config.epoch} are invalid: {exc}"
            ) from exc
        return cls(config, membership, keys, validators, quorum_size(len(validators)), acl)

    def check_certificate(self, block: Block) -> None:
        """q distinct validators of this configuration signed the block's hash."""
        verify_certificate(
            block.header,
            block.certificate,
            config=self.config,
            signer_keys=self.signer_keys,
            quorum=self.quorum,
        )


class Epochs:
    """The configurations of a chain, by the height each is in force from."""

    def __init__(self, configs: Iterable[tuple[int, NetworkConfig]]) -> None:
        ordered = sorted(configs, key=lambda item: item[0])
        assert ordered and ordered[0][0] == 0, "the genesis configuration is in force at 0"
        for (_, a), (_, b) in itertools.pairwise(ordered):
            assert b.epoch == a.epoch + 1, "epochs follow each other"
        self._firsts = [first for first, _ in ordered]
        self._configs = [config for _, config in ordered]

    def at(self, height: int) -> NetworkConfig:
        """The configuration in force at ``height``."""
        index = bisect.bisect_right(self._firsts, height) - 1
        assert index >= 0
        return self._configs[index]

    def latest(self) -> NetworkConfig:
        """The newest configuration (in force at the tip, or from the next height on)."""
        return self._configs[-1]

    def latest_first_height(self) -> int:
        """The height the newest configuration is in force from."""
        return self._firsts[-1]

    def add(self, first_height: int, config: NetworkConfig) -> None:
        """Record a configuration in force from ``first_height``."""
        assert config.epoch == self._configs[-1].epoch + 1
        assert first_height > self._firsts[-1]
        self._firsts.append(first_height)
        self._configs.append(config)

    def all(self) -> list[NetworkConfig]:
        """Every configuration, oldest first."""
        return list(self._configs)
