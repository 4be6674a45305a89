"""Membership: which certificates belong to which organization, with which role.

The network configuration lists, for every organization (MSP) id, the
certificate of its root CA. :class:`Membership` holds that list and answers
one question about a certificate presented by a peer, client or signer: *is
this a member of the network, and if so who?*

Theory of operation. A certificate passes when, in this order:

1. it parses (DER or PEM, at most ``MAX_CERTIFICATE_BYTES``);
2. its issuer name is the subject of one configured CA **and** its signature
   verifies under that CA's public key (a name alone proves nothing: anyone
   can make a CA with the same name);
3. the organization (O) in its subject is that CA's organization;
4. the organizational unit (OU) in its subject is a known :class:`Role`, and
   it has a common name (CN);
5. its public key is Ed25519 (the key members sign with);
6. ``now`` lies within its validity period and within its CA's.

Checks 1 to 5 depend only on the certificate's bytes, so their result is
cached by fingerprint (SHA-256 of the DER) in a bounded LRU cache; an input
that hits the cache is not parsed again (PEM is only base64-decoded). Check 6 depends on time and is
redone on every call. Failures are not cached.

An organization's entry is its trust bundle: the self-signed root first, then
any intermediate CAs, each a CA certificate of the same organization issued
by that root (one level, as the root's ``pathlen`` allows). A member
certificate may be issued by the root or by one of its intermediates; check 6
then covers the intermediate's validity and the root's. Revocation: an
organization's CRL (signed by one of its CAs, carried in the network
configuration) lists revoked serial numbers; a revoked certificate, or one
issued by a revoked intermediate, is refused with CertificateRevokedError,
also when it hits the cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from kyodo.identity._certs import (
    CRYPTOGRAPHY_ERRORS,
    certificate_der,
    check_org_id,
    describe_key,
    load_certificate,
    parse_der,
    require_aware,
    single_attribute,
)
from kyodo.identity._model import Member, Role
from kyodo.identity.errors import (
    CertificateExpiredError,
    CertificateRevokedError,
    InvalidCACertificateError,
    MalformedCertificateError,
    OrganizationMismatchError,
    UnknownCAError,
    UnknownRoleError,
    UnsupportedKeyTypeError,
)

DEFAULT_CACHE_SIZE = 4096
"""Default number of validated certificates remembered by a :class:`Membership`."""


_ROLES = frozenset(role.value for role in Role)

_UNREADABLE: tuple[type[Exception], ...] = (*CRYPTOGRAPHY_ERRORS, MalformedCertificateError)


@dataclass(frozen=True, slots=True, kw_only=True)
class _OrgCA:
    """One organization's root CA, as configured."""

    org: str
    cert: x509.Certificate
    not_before: datetime
    not_after: datetime
    root: _OrgCA | None = None
    """For an intermediate: the organization's root CA that issued it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Validated:
    """The time-independent result of validating one certificate (what the cache holds)."""

    member: Member
    not_before: datetime
    ca: _OrgCA
    serial: int


def _describe_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty name)"
    except CRYPTOGRAPHY_ERRORS:
        return "(unreadable name)"


def _load_cas(org: str, bundle: bytes) -> list[_OrgCA]:
    """An organization's trust bundle: its root, then intermediates issued by it."""
    check_org_id(org)
    blocks = _pem_blocks(bundle)
    root = _load_ca(org, blocks[0])
    cas = [root]
    for pem in blocks[1:]:
        cas.append(_load_intermediate(root, pem))
    return cas


def _pem_blocks(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle (a DER input is one certificate)."""
    marker = b"-----BEGIN CERTIFICATE-----"
    if not bytes(bundle).lstrip().startswith(b"-----BEGIN"):
        return [bytes(bundle)]
    parts = [marker + part for part in bytes(bundle).split(marker)[1:]]
    return parts or [bytes(bundle)]


def _load_intermediate(root: _OrgCA, pem: bytes) -> _OrgCA:
    org = root.org
    try:
        cert = load_certificate(pem)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        root_constraints = root.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        subject_org = single_attribute(cert.subject, NameOID.ORGANIZATION_NAME, "organization")
        cert.verify_directly_issued_by(root.cert)
    except x509.ExtensionNotFound:
        raise InvalidCACertificateError(
            f"an intermediate CA certificate of {org} has no basicConstraints extension",
            org=org,
        ) from None
    except _UNREADABLE as exc:
        raise InvalidCACertificateError(
            f"an intermediate CA certificate of {org} is unusable: it cannot be read or is "
            f"not issued by {org}'s root CA ({exc or type(exc).__name__})",
            org=org,
        ) from exc
    if not constraints.ca or constraints.path_length != 0:
        raise InvalidCACertificateError(
            f"an intermediate CA certificate of {org} must be a CA with pathlen=0", org=org
        )
    if root_constraints.path_length == 0:
        raise InvalidCACertificateError(
            f"the root CA of {org} has pathlen=0 and may not certify intermediate CAs", org=org
        )
    if subject_org != org:
        raise InvalidCACertificateError(
            f"an intermediate CA certificate of {org} names organization {subject_org!r}",
            org=org,
        )
    return _OrgCA(
        org=org,
        cert=cert,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        root=root,
    )


def _load_ca(org: str, cert_pem: bytes) -> _OrgCA:
    """Parse and check one configured root CA certificate; InvalidCACertificateError if
    unusable."""
    check_org_id(org)
    try:
        cert = load_certificate(cert_pem)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except x509.ExtensionNotFound:
        raise InvalidCACertificateError(
            f"the CA certificate of {org} has no basicConstraints extension, "
            "so it is not a CA certificate",
            org=org,
        ) from None
    except _UNREADABLE as exc:
        raise InvalidCACertificateError(
            f"the CA certificate of {org} cannot be read: {exc}", org=org
        ) from exc
    if not constraints.ca:
        raise InvalidCACertificateError(
            f"the certificate configured as CA of {org} is not a CA certificate (CA=false)",
            org=org,
        )
    try:
        cert.verify_directly_issued_by(cert)
    except CRYPTOGRAPHY_ERRORS as exc:
        raise InvalidCACertificateError(
            f"the CA certificate of {org} is not self-signed; only root CAs are supported "
            f"({exc or type(exc).__name__})",
            org=org,
        ) from exc
    return _OrgCA(org=org, cert=cert, not_before=not_before, not_after=not_after)


def _load_crl(cas: list[_OrgCA], crl_der: bytes) -> frozenset[int]:
    """The serials an organization's CRL revokes; InvalidCACertificateError if the CRL is
    unreadable or not signed by one of that organization's CAs."""
    org = cas[0].org
    try:
        crl = x509.load_der_x509_crl(crl_der)
        signed = any(
            crl.issuer == ca.cert.subject and crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
            for ca in cas
        )
        serials = frozenset(entry.serial_number for entry in crl)
    except CRYPTOGRAPHY_ERRORS as exc:
        raise InvalidCACertificateError(
            f"the revocation list of {org} cannot be read: {exc}", org=org
        ) from exc
    if not signed:
        raise InvalidCACertificateError(
            f"the revocation list of {org} is not signed by its CA", org=org
        )
    return serials


def _check_period(what: str, *, not_before: datetime, not_after: datetime, now: datetime) -> None:
    if now < not_before:
        raise CertificateExpiredError(
            f"{what} is not valid yet: valid from {not_before.isoformat()} "
            f"to {not_after.isoformat()}, and it is now {now.isoformat()}",
            not_before=not_before,
            not_after=not_after,
        )
    if now > not_after:
        raise CertificateExpiredError(
            f"{what} has expired: valid from {not_before.isoformat()} "
            f"to {not_after.isoformat()}, and it is now {now.isoformat()}",
            not_before=not_before,
            not_after=not_after,
        )


class Membership:
    """Which certificates belong to which organization, checked against the configured CA certs.

    ``ca_certs_pem`` maps each organization (MSP) id to the certificate of its
    root CA (PEM or DER). Each must be a self-signed CA certificate, and no two
    organizations may share a CA subject name (the issuer name picks the CA).
    ``cache_size`` bounds how many validated certificates are remembered
    (0 disables the cache).

    Safe to share between threads.

    Raises (constructor):
        InvalidNameError: an organization id is not valid.
        InvalidCACertificateError: a CA certificate is unreadable, not a
            self-signed CA, or shares its subject with another org's CA.
        ValueError: ``cache_size`` is negative.
    """

    __slots__ = ("_by_issuer", "_cache", "_cache_size", "_lock", "_orgs", "_revoked")

    def __init__(
        self,
        ca_certs_pem: Mapping[str, bytes],
        *,
        crls: Mapping[str, bytes] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, not {cache_size}")
        by_issuer: dict[x509.Name, _OrgCA] = {}
        by_org: dict[str, list[_OrgCA]] = {}
        for org in sorted(ca_certs_pem):
            by_org[org] = _load_cas(org, ca_certs_pem[org])
            for ca in by_org[org]:
                other = by_issuer.get(ca.cert.subject)
                if other is not None:
                    raise InvalidCACertificateError(
                        f"the CA certificates of {other.org} and {org} have the same subject "
                        f"{_describe_name(ca.cert.subject)}; each CA needs its own name",
                        org=org,
                    )
                by_issuer[ca.cert.subject] = ca
        self._by_issuer = by_issuer
        self._orgs = tuple(sorted(by_org))
        self._revoked: dict[str, frozenset[int]] = {
            org: _load_crl(by_org[org], crl) for org, crl in (crls or {}).items() if crl
        }
        self._cache: OrderedDict[bytes, _Validated] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Membership(orgs={self._orgs!r})"

    def is_revoked(self, org: str, serial: int) -> bool:
        """Whether ``org``'s revocation list names ``serial`` (any certificate: signing
        or TLS)."""
        return serial in self._revoked.get(org, frozenset())

    def orgs(self) -> tuple[str, ...]:
        """Return the ids of the organizations whose CAs are configured, sorted."""
        return self._orgs

    def validate(self, cert: bytes, *, now: datetime) -> Member:
        """Check that ``cert`` (DER or PEM) is a member's signing certificate at ``now``.

        Returns the :class:`Member` it certifies.

        See the module documentation for the checks, in order. ``now`` must
        be timezone-aware. The validity period is checked on every call, also
        for cached certificates.

        Raises:
            MalformedCertificateError: the input is over 16 KiB, is not a
                certificate, or its subject cannot be read or has no CN.
            UnknownCAError: no configured CA has issued it (unknown issuer
                name, or a signature that does not verify under that CA's key).
            OrganizationMismatchError: its subject's O is not its CA's org.
            UnknownRoleError: its subject's OU is missing or not a :class:`Role`.
            UnsupportedKeyTypeError: its public key is not Ed25519.
            CertificateExpiredError: ``now`` is outside its validity period
                or outside its CA's.
            ValueError: ``now`` is naive (a programming error).
            TypeError: ``cert`` is not bytes-like (a programming error).
        """
        now_utc = require_aware(now)
        der = certificate_der(cert)
        fp = hashlib.sha256(der).digest()
        validated = self._cache_get(fp)
        if validated is None:
            validated = self._validate_uncached(parse_der(der), fp)
            self._cache_put(fp, validated)
        member = validated.member
        ca = validated.ca
        if validated.serial in self._revoked.get(ca.org, frozenset()):
            raise CertificateRevokedError(
                f"the certificate of {member.role} {member.name!r} of {member.org} "
                f"(serial {validated.serial:x}) is revoked by {ca.org}",
                org=ca.org,
                serial=validated.serial,
            )
        if ca.root is not None:
            if ca.cert.serial_number in self._revoked.get(ca.org, frozenset()):
                raise CertificateRevokedError(
                    f"the certificate of {member.role} {member.name!r} of {member.org} was "
                    f"issued by an intermediate CA that {ca.org} revoked "
                    f"(serial {ca.cert.serial_number:x})",
                    org=ca.org,
                    serial=ca.cert.serial_number,
                )
            _check_period(
                f"the root CA certificate of {ca.org}",
                not_before=ca.root.not_before,
                not_after=ca.root.not_after,
                now=now_utc,
            )
        _check_period(
            f"the {'intermediate ' if ca.root else ''}CA certificate of {ca.org}",
            not_before=ca.not_before,
            not_after=ca.not_after,
            now=now_utc,
        )
        _check_period(
            f"the certificate of {member.role} {member.name!r} of {member.org}",
            not_before=validated.not_before,
            not_after=member.not_after,
            now=now_utc,
        )
        return member

    def _validate_uncached(self, cert: x509.Certificate, fp: bytes) -> _Validated:
        """Run the time-independent checks (1 to 5) on a parsed certificate."""
        ca = self._find_issuer(cert)
        try:
            subject = cert.subject
            org = single_attribute(subject, NameOID.ORGANIZATION_NAME, "organization (O)")
            role = single_attribute(
                subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (OU)"
            )
            name = single_attribute(subject, NameOID.COMMON_NAME, "common name (CN)")
            not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        except CRYPTOGRAPHY_ERRORS as exc:
            raise MalformedCertificateError(
                f"the certificate's subject or validity cannot be read: {exc}"
            ) from exc
        if org != ca.org:
            raise OrganizationMismatchError(
                f"the certificate names organization {org!r} but was issued by the CA of "
                f"{ca.org}; a CA may only certify members of its own organization",
                expected=ca.org,
                actual=org,
            )
        if role is None or role not in _ROLES:
            known = ", ".join(r.value for r in Role)
            raise UnknownRoleError(
                f"the certificate's role (OU) is {role!r}, which is not a Kyodo role "
                f"(known roles: {known})",
                role=role,
            )
        if not name:
            raise MalformedCertificateError(
                "the certificate's subject has no common name (CN), so its member has no name"
            )
        public_key = self._signing_key(cert)
        member = Member(
            org=ca.org,
            role=Role(role),
            name=name,
            fingerprint=fp,
            public_key=public_key.public_bytes_raw(),
            not_after=not_after,
        )
        return _Validated(member=member, not_before=not_before, ca=ca, serial=cert.serial_number)

    def _find_issuer(self, cert: x509.Certificate) -> _OrgCA:
        """Return the configured CA that issued ``cert``: by issuer name, proven by signature."""
        try:
            issuer = cert.issuer
            ca = self._by_issuer.get(issuer)
        except CRYPTOGRAPHY_ERRORS as exc:
            raise MalformedCertificateError(
                f"the certificate's issuer name cannot be read: {exc}"
            ) from exc
        if ca is None:
            known = ", ".join(self._orgs) or "none configured"
            raise UnknownCAError(
                f"the certificate was issued by {_describe_name(issuer)}, which is not the CA "
                f"of any organization of this network (known organizations: {known})",
                issuer=_describe_name(issuer),
            )
        try:
            cert.verify_directly_issued_by(ca.cert)
        except CRYPTOGRAPHY_ERRORS as exc:
            raise UnknownCAError(
                f"the certificate names the CA of {ca.org} ({_describe_name(issuer)}) as its "
                "issuer, but its signature does not verify under that CA's key: it was not "
                f"issued by {ca.org}'s CA (it is forged, corrupted, or from another CA "
                "with the same name)",
                issuer=_describe_name(issuer),
            ) from exc
        return ca

    @staticmethod
    def _signing_key(cert: x509.Certificate) -> ed25519.Ed25519PublicKey:
        try:
            public_key = cert.public_key()
        except UnsupportedAlgorithm as exc:
            key_type = f"unsupported algorithm {cert.public_key_algorithm_oid.dotted_string}"
            raise UnsupportedKeyTypeError(
                f"the certificate's key is of an {key_type}; member signing keys must be Ed25519",
                key_type=key_type,
            ) from exc
        except CRYPTOGRAPHY_ERRORS as exc:
            raise MalformedCertificateError(
                f"the certificate's public key cannot be read: {exc}"
            ) from exc
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            key_type = describe_key(public_key)
            raise UnsupportedKeyTypeError(
                f"the certificate's key is {key_type}, but member signing keys must be Ed25519 "
                "(is this a TLS certificate?)",
                key_type=key_type,
            )
        return public_key

    def _cache_get(self, fp: bytes) -> _Validated | None:
        with self._lock:
            validated = self._cache.get(fp)
            if validated is not None:
                self._cache.move_to_end(fp)
            return validated

    def _cache_put(self, fp: bytes, validated: _Validated) -> None:
        assert validated.member.fingerprint == fp
        if self._cache_size == 0:
            return
        with self._lock:
            self._cache[fp] = validated
            self._cache.move_to_end(fp)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
