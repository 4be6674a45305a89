"""An organization's certificate authority: issues its members' certificates.

Each organization (MSP) runs one root CA. Its key is ECDSA P-256 and its
certificate is self-signed with ``basicConstraints CA=true``. With
``pathlen=0`` (the default) the root signs member certificates itself. With
``pathlen=1`` it may certify one level of *intermediate* CAs
(:meth:`CertificateAuthority.create_intermediate`, ``pathlen=0``), which then
issue the members' certificates, so the root key can stay offline. The
network configuration lists an organization's trust bundle (root first, then
its intermediates: :attr:`CertificateAuthority.trust_pem`). Every member gets
two certificates, as in Hyperledger Fabric:

* a *signing* certificate for an **Ed25519** key, which signs transactions,
  blocks and votes (fast to verify);
* a *TLS* certificate for an **ECDSA P-256** key, for mutual TLS between nodes
  and for gateway clients.

Both carry the subject ``O=<org>, OU=<role>, CN=<name>``, a random serial, a
SHA-256 signature and subject/authority key identifiers. The CA private key
lives in memory only; saving it (encrypted) is the key store's job.

Time is passed in (``now``), never read from the clock, so issuing is
reproducible in tests except for key material and serial numbers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kyodo.identity._certs import (
    CRYPTOGRAPHY_ERRORS,
    check_member_name,
    check_org_id,
    describe_key,
    load_certificate,
    parse_host,
    require_aware,
    single_attribute,
    subject_name,
)
from kyodo.identity._model import Role
from kyodo.identity.errors import (
    CertificateExpiredError,
    InvalidCACertificateError,
    MalformedCertificateError,
    UnknownRoleError,
    UnsupportedKeyTypeError,
)

DEFAULT_CA_VALIDITY_DAYS = 3650
"""Default lifetime of a root CA certificate (about 10 years)."""

DEFAULT_MEMBER_VALIDITY_DAYS = 365
"""Default lifetime of a member certificate (1 year)."""

DEFAULT_TLS_HOSTS: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
)
"""SubjectAltName entries every TLS certificate carries, so local networks work out of the box."""


_UNREADABLE: tuple[type[Exception], ...] = (*CRYPTOGRAPHY_ERRORS, MalformedCertificateError)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_validity_days(validity_days: int) -> None:
    if isinstance(validity_days, bool) or not isinstance(validity_days, int) or validity_days < 1:
        raise ValueError(f"validity_days must be a positive integer, not {validity_days!r}")


def _to_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise UnknownRoleError(
            f"role {role!r} is not a Kyodo role (known roles: {known})", role=str(role)
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateAuthority:
    """The root CA of one organization: its certificate and its private key.

    Construct with :meth:`create` for a new CA, or directly from a stored
    certificate and its (decrypted) key. The constructor checks that the two
    belong together.

    Raises (constructor):
        InvalidNameError: ``org`` is not a valid organization id.
        MalformedCertificateError: ``cert_pem`` is not a certificate.
        InvalidCACertificateError: ``cert_pem`` is not a CA certificate of
            ``org``, or ``key`` is not its private key.
    """

    org: str
    """Organization (MSP) id, e.g. ``org1``; the O of the CA's subject."""
    cert_pem: bytes
    """The CA's self-signed certificate, PEM; what the network configuration lists for ``org``."""
    key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    """The CA's ECDSA P-256 private key; held in memory only, never written by this class."""
    chain_pem: bytes = b""
    """For an intermediate CA: the root certificate above it (PEM); empty for a root."""
    _cert: x509.Certificate = field(init=False, repr=False, compare=False)

    @property
    def trust_pem(self) -> bytes:
        """What the network configuration lists for the organization: the root
        certificate, then this intermediate's (PEM bundle)."""
        return self.chain_pem + self.cert_pem

    def __post_init__(self) -> None:
        check_org_id(self.org)
        cert = load_certificate(self.cert_pem)
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or not isinstance(
            self.key.curve, ec.SECP256R1
        ):
            raise InvalidCACertificateError(
                f"the CA key of {self.org} must be an ECDSA P-256 private key", org=self.org
            )
        try:
            cert_key = cert.public_key()
            subject_org = single_attribute(
                cert.subject, NameOID.ORGANIZATION_NAME, "organization (O)"
            )
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except _UNREADABLE as exc:
            raise InvalidCACertificateError(
                f"the CA certificate of {self.org} is not usable: {exc}", org=self.org
            ) from exc
        if cert_key != self.key.public_key():
            raise InvalidCACertificateError(
                f"the CA key given for {self.org} does not belong to its CA certificate",
                org=self.org,
            )
        if subject_org != self.org:
            raise InvalidCACertificateError(
                f"the CA certificate given for {self.org} names organization {subject_org!r}",
                org=self.org,
            )
        if not constraints.ca:
            raise InvalidCACertificateError(
                f"the certificate given as CA of {self.org} is not a CA certificate", org=self.org
            )
        object.__setattr__(self, "_cert", cert)

    @classmethod
    def create(
        cls,
        org: str,
        *,
        now: datetime,
        validity_days: int = DEFAULT_CA_VALIDITY_DAYS,
        path_length: int = 0,
    ) -> CertificateAuthority:
        """Create a new root CA for ``org`` with a fresh ECDSA P-256 key.

        The certificate is self-signed, subject ``O=<org>, CN=<org> root CA``,
        valid from ``now`` (to the second) for ``validity_days`` days, with
        ``basicConstraints CA=true, pathlen=<path_length>`` (0: it issues member
        certificates; 1: it may certify intermediate CAs) and ``keyUsage
        keyCertSign, cRLSign`` (both critical).

        Raises:
            InvalidNameError: ``org`` is not a valid organization id.
            ValueError: ``now`` is naive, ``validity_days`` is not positive or
                ``path_length`` is not 0 or 1.
        """
        check_org_id(org)
        _check_validity_days(validity_days)
        if path_length not in (0, 1):
            raise ValueError(f"path_length must be 0 or 1, not {path_length}")
        start = require_aware(now).replace(microsecond=0)
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{org} root CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(org=org, cert_pem=cert.public_bytes(Encoding.PEM), key=key)

    def create_intermediate(
        self,
        *,
        now: datetime,
        label: str = "issuing",
        validity_days: int = DEFAULT_CA_VALIDITY_DAYS,
    ) -> CertificateAuthority:
        """A new intermediate CA of this root, with a fresh ECDSA P-256 key.

        Subject ``O=<org>, CN=<org> <label> CA``; ``basicConstraints CA=true,
        pathlen=0``; ``keyUsage keyCertSign, cRLSign``; valid from ``now`` for
        ``validity_days`` days but never past the root's expiry.

        Raises:
            InvalidCACertificateError: this CA is itself an intermediate, or a root
                created with ``pathlen=0`` (it may not certify CAs).
            InvalidNameError: ``label`` is not a valid member name.
            CertificateExpiredError: the root is not valid at ``now``.
        """
        constraints = self._cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if self.chain_pem or constraints.path_length == 0:
            raise InvalidCACertificateError(
                f"the CA of {self.org} may not certify intermediate CAs (pathlen=0): create "
                "the root with path_length=1",
                org=self.org,
            )
        check_member_name(label)
        _check_validity_days(validity_days)
        start = require_aware(now).replace(microsecond=0)
        root_start, root_end = self._cert.not_valid_before_utc, self._cert.not_valid_after_utc
        if not root_start <= start <= root_end:
            raise CertificateExpiredError(
                f"the root CA of {self.org} is not valid at {start.isoformat()}",
                not_before=root_start,
                not_after=root_end,
            )
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        root_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.org),
                        x509.NameAttribute(NameOID.COMMON_NAME, f"{self.org} {label} CA"),
                    ]
                )
            )
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(min(start + timedelta(days=validity_days), root_end))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return CertificateAuthority(
            org=self.org,
            cert_pem=cert.public_bytes(Encoding.PEM),
            key=key,
            chain_pem=self.cert_pem,
        )

    def issue_signing_cert(
        self,
        *,
        name: str,
        role: Role,
        public_key: ed25519.Ed25519PublicKey,
        now: datetime,
        validity_days: int = DEFAULT_MEMBER_VALIDITY_DAYS,
    ) -> bytes:
        """Issue a member's signing certificate for an Ed25519 key; return it as PEM.

        Subject ``O=<org>, OU=<role>, CN=<name>``; ``keyUsage
        digitalSignature`` (critical); ``basicConstraints CA=false``. Valid
        from ``now`` for ``validity_days`` days, but never past the CA's own
        expiry (the end is cut to the CA's ``not_after``).

        Raises:
            InvalidNameError: ``name`` is not a valid member name.
            UnknownRoleError: ``role`` is not a :class:`Role`.
            UnsupportedKeyTypeError: ``public_key`` is not Ed25519.
            CertificateExpiredError: the CA is not valid at ``now``.
            ValueError: ``now`` is naive or ``validity_days`` is not positive.
        """
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            key_type = describe_key(public_key)
            raise UnsupportedKeyTypeError(
                f"a signing certificate needs an Ed25519 key, not {key_type}", key_type=key_type
            )
        builder = self._member_builder(
            name=name, role=role, public_key=public_key, now=now, validity_days=validity_days
        )
        builder = builder.add_extension(_key_usage(digital_signature=True), critical=True)
        return self._sign(builder)

    def issue_tls_cert(
        self,
        *,
        name: str,
        role: Role,
        public_key: ec.EllipticCurvePublicKey,
        now: datetime,
        hosts: Sequence[str] = (),
        validity_days: int = DEFAULT_MEMBER_VALIDITY_DAYS,
    ) -> bytes:
        """Issue a member's TLS certificate for an ECDSA P-256 key; return it as PEM.

        Subject as for the signing certificate. SubjectAltName: DNS
        ``localhost`` and IP ``127.0.0.1``, then each of ``hosts`` (an IP
        address literal becomes an IP entry, anything else a DNS entry;
        duplicates are dropped). ``extendedKeyUsage serverAuth, clientAuth``,
        ``keyUsage digitalSignature`` (critical), ``basicConstraints
        CA=false``. Validity as for :meth:`issue_signing_cert`.

        Raises:
            InvalidNameError: ``name`` or one of ``hosts`` is not valid.
            UnknownRoleError: ``role`` is not a :class:`Role`.
            UnsupportedKeyTypeError: ``public_key`` is not ECDSA P-256.
            CertificateExpiredError: the CA is not valid at ``now``.
            ValueError: ``now`` is naive or ``validity_days`` is not positive.
        """
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            key_type = describe_key(public_key)
            raise UnsupportedKeyTypeError(
                f"a TLS certificate needs an ECDSA P-256 key, not {key_type}", key_type=key_type
            )
        if isinstance(hosts, str):
            raise TypeError("hosts must be a sequence of host names, not a single string")
        alt_names = list(DEFAULT_TLS_HOSTS)
        for host in hosts:
            entry = parse_host(host)
            if entry not in alt_names:
                alt_names.append(entry)
        builder = self._member_builder(
            name=name, role=role, public_key=public_key, now=now, validity_days=validity_days
        )
        builder = (
            builder.add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        )
        return self._sign(builder)

    def _member_builder(
        self,
        *,
        name: str,
        role: Role,
        public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey,
        now: datetime,
        validity_days: int,
    ) -> x509.CertificateBuilder:
        """Return a builder with what both member certificates share; checks the arguments."""
        check_member_name(name)
        checked_role = _to_role(role)
        _check_validity_days(validity_days)
        start = require_aware(now).replace(microsecond=0)
        ca_start = self._cert.not_valid_before_utc
        ca_end = self._cert.not_valid_after_utc
        if not ca_start <= start <= ca_end:
            raise CertificateExpiredError(
                f"the CA of {self.org} is valid from {ca_start.isoformat()} to "
                f"{ca_end.isoformat()} and cannot issue certificates at {start.isoformat()}",
                not_before=ca_start,
                not_after=ca_end,
            )
        end = min(start + timedelta(days=validity_days), ca_end)
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject_name(org=self.org, role=checked_role.value, name=name))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
        )

    def revocation_list(
        self, serials: Iterable[int], *, now: datetime, validity_days: int = 365
    ) -> bytes:
        """A CRL (DER) of this CA revoking ``serials``, valid from ``now``.

        The network configuration carries it (``OrgInfo.crl_der``), so every node
        refuses the revoked certificates from the height the change is in force.
        """
        _check_validity_days(validity_days)
        start = require_aware(now).replace(microsecond=0)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(start)
            .next_update(start + timedelta(days=validity_days))
        )
        for serial in sorted(set(serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(start)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(Encoding.DER)

    def _sign(self, builder: x509.CertificateBuilder) -> bytes:
        cert = builder.sign(self.key, hashes.SHA256())
        assert cert.issuer == self._cert.subject
        return cert.public_bytes(Encoding.PEM)
