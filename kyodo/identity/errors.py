"""Errors raised by :mod:`kyodo.identity` for bad input from outside.

Every error here means a *certificate or name given to us* was wrong: it does
not parse, was not issued by a CA of the network, names the wrong
organization or role, is outside its validity period, or carries a key type
Kyodo does not accept. Each message says, in words an operator understands,
what was wrong and with which certificate; the attributes carry the same
facts for programs. A broken internal invariant raises AssertionError.
"""

from __future__ import annotations

from datetime import datetime


class IdentityError(Exception):
    """Base class of every error raised by kyodo.identity."""


class MalformedCertificateError(IdentityError):
    """The bytes are not a well-formed X.509 certificate Kyodo can read.

    Covers garbage, truncated or oversized input, PEM without a certificate,
    and certificates whose fields cannot be decoded (for example a subject
    without a common name).
    """


class InvalidNameError(IdentityError):
    """An organization id, member name or TLS host name is not acceptable.

    Attributes:
        value: the rejected name, as given.
    """

    def __init__(self, message: str, *, value: str) -> None:
        super().__init__(message)
        self.value = value


class InvalidCACertificateError(IdentityError):
    """A CA certificate in the network configuration cannot serve as an org's root CA.

    Raised when the configuration is loaded (not per member certificate): the
    certificate is not a CA, is not self-signed, or two organizations share
    one CA subject name.

    Attributes:
        org: the organization whose CA certificate was rejected.
    """

    def __init__(self, message: str, *, org: str) -> None:
        super().__init__(message)
        self.org = org


class UnknownCAError(IdentityError):
    """The certificate was not issued by the CA of any organization of the network.

    Either its issuer names no configured CA, or it names one but its
    signature does not verify under that CA's key (a forged or foreign CA
    using the same name).

    Attributes:
        issuer: the issuer name written in the certificate (RFC 4514 string).
    """

    def __init__(self, message: str, *, issuer: str) -> None:
        super().__init__(message)
        self.issuer = issuer


class CertificateRevokedError(IdentityError):
    """The certificate's serial number is on its organization's revocation list.

    Attributes:
        org: the organization whose CA revoked it.
        serial: the certificate's serial number.
    """

    def __init__(self, message: str, *, org: str, serial: int) -> None:
        super().__init__(message)
        self.org = org
        self.serial = serial


class CertificateExpiredError(IdentityError):
    """The certificate (or its issuing CA's certificate) is not valid at the given time.

    Raised both for an expired certificate and for one not yet valid.

    Attributes:
        not_before: start of the rejected certificate's validity period (UTC).
        not_after: end of the rejected certificate's validity period (UTC).
    """

    def __init__(self, message: str, *, not_before: datetime, not_after: datetime) -> None:
        super().__init__(message)
        self.not_before = not_before
        self.not_after = not_after


class OrganizationMismatchError(IdentityError):
    """The organization (O) in the certificate's subject is not the org of its issuing CA.

    Attributes:
        expected: the organization whose CA issued the certificate.
        actual: the organization named in the subject (None when there is none).
    """

    def __init__(self, message: str, *, expected: str, actual: str | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class UnknownRoleError(IdentityError):
    """The role (OU) in the certificate's subject is missing or not a known role.

    Attributes:
        role: the organizational unit found (None when there is none).
    """

    def __init__(self, message: str, *, role: str | None) -> None:
        super().__init__(message)
        self.role = role


class UnsupportedKeyTypeError(IdentityError):
    """The certificate (or a key to certify) has a key type not accepted for its use.

    Signing certificates must carry an Ed25519 key, TLS certificates an
    ECDSA P-256 key.

    Attributes:
        key_type: a short description of the key type found, e.g. "ECDSA secp256r1".
    """

    def __init__(self, message: str, *, key_type: str) -> None:
        super().__init__(message)
        self.key_type = key_type
