"""Identity: organizations' certificate authorities and network membership.

Every organization (MSP, e.g. ``org1``) has its own root CA
(:class:`CertificateAuthority`), which issues each member two X.509
certificates with subject ``O=<org>, OU=<role>, CN=<name>``: an Ed25519
*signing* certificate (transactions, blocks, votes) and an ECDSA P-256 *TLS*
certificate (mutual TLS). :class:`Membership`, built from the CA certificates
in the network configuration, decides whether a presented certificate
belongs to a member and returns the :class:`Member`.

Errors for bad input are in :mod:`kyodo.identity.errors`.
"""

from kyodo.identity._ca import CertificateAuthority
from kyodo.identity._certs import (
    MAX_CERTIFICATE_BYTES,
    certificate_der,
    fingerprint,
    load_certificate,
)
from kyodo.identity._membership import Membership
from kyodo.identity._model import Member, Role
from kyodo.identity.errors import (
    CertificateExpiredError,
    CertificateRevokedError,
    IdentityError,
    InvalidCACertificateError,
    InvalidNameError,
    MalformedCertificateError,
    OrganizationMismatchError,
    UnknownCAError,
    UnknownRoleError,
    UnsupportedKeyTypeError,
)

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "CertificateAuthority",
    "CertificateExpiredError",
    "CertificateRevokedError",
    "IdentityError",
    "InvalidCACertificateError",
    "InvalidNameError",
    "MalformedCertificateError",
    "Member",
    "Membership",
    "OrganizationMismatchError",
    "Role",
    "UnknownCAError",
    "UnknownRoleError",
    "UnsupportedKeyTypeError",
    "certificate_der",
    "fingerprint",
    "load_certificate",
]
