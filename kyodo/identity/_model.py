"""Records of the identity component: the roles a member can hold, and a validated member.

A member of the network is a holder of a certificate issued by its
organization's root CA. The certificate's subject says who it is:
``O=<org id>, OU=<role>, CN=<member name>``. :class:`Member` is what
:class:`~kyodo.identity.Membership` returns once a certificate has passed every
check; other components decide on it (policies name org and role, signatures
are verified with ``public_key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    """The role of a member within its organization, written as the subject's OU."""

    NODE = "node"
    """A node (validator) of the network: signs blocks and votes."""
    ADMIN = "admin"
    """An administrator of the organization: approves configuration and contract changes."""
    CLIENT = "client"
    """An application or user submitting transactions through a gateway."""
    AUDITOR = "auditor"
    """A designated auditor: reads, and decrypts audit records of anonymized transfers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """A certificate holder that passed membership validation."""

    org: str
    """Organization (MSP) id: the org whose CA issued the certificate, equal to the subject's O."""
    role: Role
    """Role within the organization, from the subject's OU."""
    name: str
    """Member name, from the subject's CN; unique within (org, role) by the CA's practice."""
    fingerprint: bytes
    """SHA-256 of the certificate's DER encoding (32 bytes); identifies the certificate."""
    public_key: bytes
    """Raw Ed25519 public key (32 bytes) that verifies this member's signatures."""
    not_after: datetime
    """End of the certificate's validity period (timezone-aware, UTC)."""

    def __post_init__(self) -> None:
        assert len(self.fingerprint) == 32, "fingerprint is a SHA-256 digest"
        assert len(self.public_key) == 32, "public_key is a raw Ed25519 key"
        assert self.not_after.tzinfo is not None, "not_after is timezone-aware"
