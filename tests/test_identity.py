"""Tests of kyodo.identity: organization CAs, member certificates, membership validation."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kyodo.identity as identity
from kyodo.identity import (
    CertificateAuthority,
    CertificateExpiredError,
    IdentityError,
    InvalidCACertificateError,
    InvalidNameError,
    MalformedCertificateError,
    Member,
    Membership,
    OrganizationMismatchError,
    Role,
    UnknownCAError,
    UnknownRoleError,
    UnsupportedKeyTypeError,
    fingerprint,
    load_certificate,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# --- fixtures (module-level caches: CA keys are costly enough to share) ---------------------


@cache
def _ca(org: str, variant: str = "") -> CertificateAuthority:
    """The CA of ``org``; a different ``variant`` gives another CA with the same name."""
    del variant
    return CertificateAuthority.create(org, now=NOW - timedelta(days=1))


@cache
def _membership() -> Membership:
    return Membership({"org1": _ca("org1").cert_pem, "org2": _ca("org2").cert_pem})


@cache
def _signing_key(label: str) -> ed25519.Ed25519PrivateKey:
    del label
    return ed25519.Ed25519PrivateKey.generate()


@cache
def _node_cert_der() -> bytes:
    """A valid DER signing certificate of org1's node "peer0"."""
    pem = _ca("org1").issue_signing_cert(
        name="peer0", role=Role.NODE, public_key=_signing_key("peer0").public_key(), now=NOW
    )
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _raw(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes_raw()


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _forge(
    ca: CertificateAuthority,
    attributes: list[tuple[x509.ObjectIdentifier, str]],
    *,
    public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | None = None,
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(days=30),
) -> bytes:
    """A DER certificate signed by ``ca``'s real key with any subject (a careless CA's work)."""
    key = public_key if public_key is not None else _signing_key("forged").public_key()
    issuer = x509.load_pem_x509_certificate(ca.cert_pem).subject
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


ORG, ROLE, NAME = NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME


# --- the public face --------------------------------------------------------------------------


def test_every_export_exists_exactly_once() -> None:
    assert len(identity.__all__) == len(set(identity.__all__))
    for name in identity.__all__:
        assert getattr(identity, name) is not None


def test_errors_derive_from_identity_error() -> None:
    for name in identity.__all__:
        value = getattr(identity, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, IdentityError)


# --- certificate authority --------------------------------------------------------------------


def test_ca_certificate_is_a_self_signed_root_with_pathlen_zero() -> None:
    ca = _ca("org1")
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(ORG)[0].value == "org1"
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)


def test_ca_repr_hides_the_private_key_and_the_record_is_frozen() -> None:
    ca = _ca("org1")
    assert "key" not in repr(ca).replace("cert_pem", "")
    with pytest.raises(FrozenInstanceError):
        ca.org = "org2"  # type: ignore[misc]


def test_ca_constructor_rejects_a_key_that_is_not_the_certificates() -> None:
    with pytest.raises(InvalidCACertificateError, match="does not belong"):
        CertificateAuthority(org="org1", cert_pem=_ca("org1").cert_pem, key=_ca("org2").key)
    with pytest.raises(InvalidCACertificateError, match="names organization"):
        CertificateAuthority(org="org2", cert_pem=_ca("org1").cert_pem, key=_ca("org1").key)
    same = CertificateAuthority(org="org1", cert_pem=_ca("org1").cert_pem, key=_ca("org1").key)
    assert same == _ca("org1")


def test_signing_certificate_contents() -> None:
    ca = _ca("org1")
    public_key = _signing_key("admin").public_key()
    pem = ca.issue_signing_cert(name="alice", role=Role.ADMIN, public_key=public_key, now=NOW)
    cert = x509.load_pem_x509_certificate(pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(ORG, "org1"),
            x509.NameAttribute(ROLE, "admin"),
            x509.NameAttribute(NAME, "alice"),
        ]
    )
    assert cert.public_key() == public_key
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    again = ca.issue_signing_cert(name="alice", role=Role.ADMIN, public_key=public_key, now=NOW)
    assert x509.load_pem_x509_certificate(again).serial_number != cert.serial_number


def test_member_validity_is_configurable_and_never_outlives_the_ca() -> None:
    ca = _ca("org1")
    public_key = _signing_key("short").public_key()
    pem = ca.issue_signing_cert(
        name="bob", role=Role.CLIENT, public_key=public_key, now=NOW, validity_days=7
    )
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc == NOW + timedelta(days=7)
    short_ca = CertificateAuthority.create("org9", now=NOW, validity_days=10)
    pem = short_ca.issue_signing_cert(name="bob", role=Role.CLIENT, public_key=public_key, now=NOW)
    ca_end = x509.load_pem_x509_certificate(short_ca.cert_pem).not_valid_after_utc
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc == ca_end
    with pytest.raises(CertificateExpiredError, match="cannot issue"):
        short_ca.issue_signing_cert(
            name="bob", role=Role.CLIENT, public_key=public_key, now=NOW + timedelta(days=11)
        )


def test_issuing_rejects_bad_arguments() -> None:
    ca = _ca("org1")
    ed_key = _signing_key("args").public_key()
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(UnsupportedKeyTypeError) as info:
        ca.issue_signing_cert(name="x", role=Role.NODE, public_key=ec_key, now=NOW)  # type: ignore[arg-type]
    assert info.value.key_type == "ECDSA secp256r1"
    with pytest.raises(UnsupportedKeyTypeError, match="P-256"):
        ca.issue_tls_cert(name="x", role=Role.NODE, public_key=ed_key, now=NOW)  # type: ignore[arg-type]
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(UnsupportedKeyTypeError, match="secp384r1"):
        ca.issue_tls_cert(name="x", role=Role.NODE, public_key=p384, now=NOW)
    with pytest.raises(UnknownRoleError):
        ca.issue_signing_cert(name="x", role="root", public_key=ed_key, now=NOW)  # type: ignore[arg-type]
    for bad_name in ["", " padded", "line\nbreak", "x" * 65]:
        with pytest.raises(InvalidNameError):
            ca.issue_signing_cert(name=bad_name, role=Role.NODE, public_key=ed_key, now=NOW)
    with pytest.raises(InvalidNameError):
        ca.issue_tls_cert(name="x", role=Role.NODE, public_key=ec_key, now=NOW, hosts=["a b"])
    for bad_org in ["", "org 1", "-org", "o" * 65, "组织"]:
        with pytest.raises(InvalidNameError):
            CertificateAuthority.create(bad_org, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        ca.issue_signing_cert(
            name="x", role=Role.NODE, public_key=ed_key, now=NOW.replace(tzinfo=None)
        )
    with pytest.raises(ValueError, match="validity_days"):
        ca.issue_signing_cert(name="x", role=Role.NODE, public_key=ed_key, now=NOW, validity_days=0)


# --- membership: accepted -----------------------------------------------------------------------


@pytest.mark.parametrize("org", ["org1", "org2"])
@pytest.mark.parametrize("role", list(Role))
def test_validate_returns_the_member(org: str, role: Role) -> None:
    public_key = _signing_key(f"{org}-{role}").public_key()
    pem = _ca(org).issue_signing_cert(name=f"{role}-1", role=role, public_key=public_key, now=NOW)
    der = _der(pem)
    for encoded in (der, pem):
        member = _membership().validate(encoded, now=NOW + timedelta(days=1))
        assert member == Member(
            org=org,
            role=role,
            name=f"{role}-1",
            fingerprint=hashlib.sha256(der).digest(),
            public_key=_raw(public_key),
            not_after=NOW + timedelta(days=365),
        )
        assert member.fingerprint == fingerprint(der)
        assert isinstance(member.role, Role)
        ed25519.Ed25519PublicKey.from_public_bytes(member.public_key).verify(
            _signing_key(f"{org}-{role}").sign(b"block"), b"block"
        )


def test_validity_bounds_are_inclusive() -> None:
    der = _node_cert_der()
    member = _membership().validate(der, now=NOW)
    assert _membership().validate(der, now=member.not_after) == member


def test_orgs_are_sorted_and_repr_names_them() -> None:
    membership = Membership({"org2": _ca("org2").cert_pem, "org1": _ca("org1").cert_pem})
    assert membership.orgs() == ("org1", "org2")
    assert "org1" in repr(membership)
    assert Membership({}).orgs() == ()


def test_small_cache_stays_bounded_and_correct() -> None:
    membership = Membership(
        {"org1": _ca("org1").cert_pem, "org2": _ca("org2").cert_pem}, cache_size=1
    )
    certs = [
        _der(
            _ca("org1").issue_signing_cert(
                name=f"c{i}",
                role=Role.CLIENT,
                public_key=_signing_key(f"c{i}").public_key(),
                now=NOW,
            )
        )
        for i in range(3)
    ]
    for _ in range(2):
        for i, der in enumerate(certs):
            assert membership.validate(der, now=NOW).name == f"c{i}"
    assert len(membership._cache) == 1
    uncached = Membership({"org1": _ca("org1").cert_pem}, cache_size=0)
    assert uncached.validate(certs[0], now=NOW).name == "c0"
    assert len(uncached._cache) == 0
    with pytest.raises(ValueError, match="cache_size"):
        Membership({}, cache_size=-1)


# --- membership: rejected -----------------------------------------------------------------------


def test_certificate_from_an_unknown_ca() -> None:
    pem = _ca("org3").issue_signing_cert(
        name="mallory", role=Role.NODE, public_key=_signing_key("m").public_key(), now=NOW
    )
    with pytest.raises(UnknownCAError, match="not the CA of any organization") as info:
        _membership().validate(pem, now=NOW)
    assert "O=org3" in info.value.issuer


def test_certificate_from_a_forged_ca_with_the_same_name() -> None:
    forged_ca = _ca("org1", "forged")
    assert forged_ca.cert_pem != _ca("org1").cert_pem
    real_subject = x509.load_pem_x509_certificate(_ca("org1").cert_pem).subject
    assert x509.load_pem_x509_certificate(forged_ca.cert_pem).subject == real_subject
    pem = forged_ca.issue_signing_cert(
        name="peer0", role=Role.NODE, public_key=_signing_key("peer0").public_key(), now=NOW
    )
    with pytest.raises(UnknownCAError, match="does not verify") as info:
        _membership().validate(pem, now=NOW)
    assert info.value.issuer == real_subject.rfc4514_string()


def test_certificate_naming_another_org_than_its_ca() -> None:
    der = _forge(_ca("org1"), [(ORG, "org2"), (ROLE, "node"), (NAME, "peer0")])
    with pytest.raises(OrganizationMismatchError, match="issued by the CA of org1") as info:
        _membership().validate(der, now=NOW)
    assert (info.value.expected, info.value.actual) == ("org1", "org2")
    der = _forge(_ca("org1"), [(ROLE, "node"), (NAME, "peer0")])
    with pytest.raises(OrganizationMismatchError) as info:
        _membership().validate(der, now=NOW)
    assert info.value.actual is None


def test_certificate_with_an_unknown_or_missing_role() -> None:
    der = _forge(_ca("org1"), [(ORG, "org1"), (ROLE, "superuser"), (NAME, "eve")])
    with pytest.raises(UnknownRoleError, match="superuser") as info:
        _membership().validate(der, now=NOW)
    assert info.value.role == "superuser"
    der = _forge(_ca("org1"), [(ORG, "org1"), (NAME, "eve")])
    with pytest.raises(UnknownRoleError) as info:
        _membership().validate(der, now=NOW)
    assert info.value.role is None


def test_certificate_with_missing_or_repeated_subject_fields() -> None:
    no_cn = _forge(_ca("org1"), [(ORG, "org1"), (ROLE, "node")])
    with pytest.raises(MalformedCertificateError, match="common name"):
        _membership().validate(no_cn, now=NOW)
    two_ous = _forge(_ca("org1"), [(ORG, "org1"), (ROLE, "node"), (ROLE, "admin"), (NAME, "eve")])
    with pytest.raises(MalformedCertificateError, match="exactly one"):
        _membership().validate(two_ous, now=NOW)


def test_expired_and_not_yet_valid_certificates() -> None:
    pem = _ca("org1").issue_signing_cert(
        name="temp",
        role=Role.CLIENT,
        public_key=_signing_key("temp").public_key(),
        now=NOW,
        validity_days=30,
    )
    membership = _membership()
    assert membership.validate(pem, now=NOW).name == "temp"  # now cached
    with pytest.raises(CertificateExpiredError, match="has expired") as info:
        membership.validate(pem, now=NOW + timedelta(days=30, seconds=1))
    assert info.value.not_before == NOW
    assert info.value.not_after == NOW + timedelta(days=30)
    with pytest.raises(CertificateExpiredError, match="not valid yet"):
        membership.validate(_der(pem), now=NOW - timedelta(seconds=1))
    fresh = Membership({"org1": _ca("org1").cert_pem})
    with pytest.raises(CertificateExpiredError, match="has expired"):
        fresh.validate(pem, now=NOW + timedelta(days=31))


def test_certificate_whose_ca_has_expired() -> None:
    short_ca = CertificateAuthority.create("org7", now=NOW, validity_days=10)
    membership = Membership({"org7": short_ca.cert_pem})
    der = _forge(
        short_ca, [(ORG, "org7"), (ROLE, "node"), (NAME, "n")], not_after=NOW + timedelta(days=100)
    )
    assert membership.validate(der, now=NOW + timedelta(days=1)).org == "org7"
    with pytest.raises(CertificateExpiredError, match="CA certificate of org7 has expired"):
        membership.validate(der, now=NOW + timedelta(days=11))


def test_ecdsa_key_where_ed25519_is_required() -> None:
    tls_pem = _ca("org1").issue_tls_cert(
        name="peer0",
        role=Role.NODE,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        now=NOW,
    )
    with pytest.raises(UnsupportedKeyTypeError, match="must be Ed25519") as info:
        _membership().validate(tls_pem, now=NOW)
    assert info.value.key_type == "ECDSA secp256r1"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a certificate", id="garbage"),
        pytest.param(b"\x30\x82\xff\xff" + b"\x00" * 64, id="bad-length"),
        pytest.param(_node_cert_der()[:-1], id="truncated-by-one"),
        pytest.param(_node_cert_der()[: len(_node_cert_der()) // 2], id="truncated-half"),
        pytest.param(_node_cert_der() + b"\x00", id="trailing-byte"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="bad-pem"
        ),
        pytest.param(b"\x30" * (1 << 20), id="one-MiB"),
    ],
)
def test_malformed_input(data: bytes) -> None:
    with pytest.raises(MalformedCertificateError):
        _membership().validate(data, now=NOW)
    with pytest.raises(MalformedCertificateError):
        load_certificate(data)


def test_unknown_x509_version_is_malformed() -> None:
    """Regression: cryptography raises x509.InvalidVersion (not a ValueError) for this."""
    der = _node_cert_der()
    version_v3 = bytes.fromhex("a003020102")
    assert der.count(version_v3) == 1
    with pytest.raises(MalformedCertificateError, match="version"):
        _membership().validate(der.replace(version_v3, bytes.fromhex("a003020107")), now=NOW)


def test_non_positive_serial_is_malformed_without_a_warning() -> None:
    """cryptography only warns on a negative serial (an error under -W error); we reject it."""
    der = bytearray(_node_cert_der())
    serial_tag = 4 + 4 + 5  # Certificate header, tbsCertificate header, version [0]
    assert der[serial_tag] == 0x02
    der[serial_tag + 2] |= 0x80
    negative = bytes(der)
    pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(negative)
        + b"-----END CERTIFICATE-----\n"
    )
    for data in (negative, pem):
        with pytest.raises(MalformedCertificateError, match="serial number"):
            _membership().validate(data, now=NOW)


def test_pem_that_is_not_a_certificate() -> None:
    key_pem = _signing_key("pem").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(MalformedCertificateError, match="'PRIVATE KEY', not a CERTIFICATE"):
        _membership().validate(key_pem, now=NOW)
    bad_base64 = b"-----BEGIN CERTIFICATE-----\nMII*\n-----END CERTIFICATE-----\n"
    with pytest.raises(MalformedCertificateError, match="base64"):
        _membership().validate(bad_base64, now=NOW)
    with pytest.raises(MalformedCertificateError, match="no complete"):
        _membership().validate(b"-----BEGIN CERTIFICATE-----\nMIIB", now=NOW)


def test_one_mib_input_is_rejected_for_its_size() -> None:
    with pytest.raises(MalformedCertificateError, match="16384 allowed"):
        _membership().validate(_node_cert_der() * 2000, now=NOW)


def test_naive_time_and_non_bytes_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="timezone"):
        _membership().validate(_node_cert_der(), now=NOW.replace(tzinfo=None))
    with pytest.raises(TypeError):
        _membership().validate(_node_cert_der().hex(), now=NOW)  # type: ignore[arg-type]


def test_load_certificate_and_fingerprint() -> None:
    der = _node_cert_der()
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    assert load_certificate(der) == load_certificate(pem) == load_certificate(b"\n " + pem)
    assert fingerprint(der) == hashlib.sha256(der).digest()
    with pytest.raises(MalformedCertificateError, match="not DER"):
        fingerprint(pem)


# --- membership: configuration ------------------------------------------------------------------


def test_membership_rejects_unusable_ca_certificates() -> None:
    with pytest.raises(InvalidCACertificateError, match="same subject") as info:
        Membership({"org1": _ca("org1").cert_pem, "orgX": _ca("org1", "forged").cert_pem})
    assert info.value.org == "orgX"
    with pytest.raises(InvalidCACertificateError, match="basicConstraints"):
        Membership({"org1": _forge(_ca("org1"), [(ORG, "org1"), (NAME, "not a ca")])})
    member_pem = _ca("org1").issue_signing_cert(
        name="n", role=Role.NODE, public_key=_signing_key("n").public_key(), now=NOW
    )
    with pytest.raises(InvalidCACertificateError, match="not a CA"):
        Membership({"org1": member_pem})
    with pytest.raises(InvalidCACertificateError, match="cannot be read"):
        Membership({"org1": b"garbage"})
    with pytest.raises(InvalidNameError):
        Membership({"org 1": _ca("org1").cert_pem})


# --- fuzzing --------------------------------------------------------------------------------


def _validate_or_identity_error(data: bytes) -> Member | None:
    try:
        return _membership().validate(data, now=NOW)
    except IdentityError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_identity_errors(data: bytes) -> None:
    assert _validate_or_identity_error(data) is None
    assert _validate_or_identity_error(b"-----BEGIN CERTIFICATE-----\n" + data) is None


_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.integers(min_value=0, max_value=255),
)


def _mutate(der: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(der)
    for op, position, value in mutations:
        at = position % max(len(data), 1)
        if op == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[at] = value
        elif op == "insert":
            data.insert(at, value)
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(_MUTATION, min_size=1, max_size=4))
def test_mutated_certificates_raise_only_identity_errors(
    mutations: list[tuple[str, int, int]],
) -> None:
    der = _node_cert_der()
    mutated = _mutate(der, mutations)
    member = _validate_or_identity_error(mutated)
    if mutated == der:
        assert member is not None
    else:
        assert member is None  # any change breaks the encoding or the CA's signature


_TEXT = st.text(st.characters(codec="utf-8"), min_size=0, max_size=65)


def _attribute_lists(
    oid: x509.ObjectIdentifier, likely: list[str]
) -> st.SearchStrategy[list[tuple[x509.ObjectIdentifier, str]]]:
    """Usually one plausible value of ``oid``; sometimes none, two, or arbitrary text."""
    values = st.one_of(st.sampled_from(likely), st.sampled_from(likely), _TEXT)
    single = values.map(lambda v: [(oid, v)])
    several = st.lists(values, max_size=2).map(lambda vs: [(oid, v) for v in vs])
    return st.one_of(single, single, several)


_SUBJECTS = st.tuples(
    _attribute_lists(ORG, ["org1", "org2", "Org1"]),
    _attribute_lists(ROLE, [*(role.value for role in Role), "Node", "root"]),
    _attribute_lists(NAME, ["peer0", "alice", "x" * 64]),
    st.lists(
        st.one_of(
            _TEXT.map(lambda v: (NameOID.LOCALITY_NAME, v)),
            st.from_regex("[A-Z0-9]{1,8}", fullmatch=True).map(
                lambda v: (NameOID.SERIAL_NUMBER, v)
            ),
        ),
        max_size=2,
    ),
).flatmap(lambda parts: st.permutations([entry for part in parts for entry in part]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attributes=_SUBJECTS,
    use_ed25519=st.booleans(),
)
def test_ca_signed_certificates_with_arbitrary_subjects(
    attributes: list[tuple[x509.ObjectIdentifier, str]], use_ed25519: bool
) -> None:
    """A certificate the CA really signed passes exactly when its subject is well-formed."""
    try:
        public_key = (
            _signing_key("fuzz").public_key()
            if use_ed25519
            else ec.derive_private_key(1, ec.SECP256R1()).public_key()
        )
        der = _forge(_ca("org1"), attributes, public_key=public_key)
    except ValueError:
        return  # cryptography refuses to build it (e.g. an empty CN): nothing to validate
    values = {oid: [v for o, v in attributes if o == oid] for oid in (ORG, ROLE, NAME)}
    well_formed = (
        values[ORG] == ["org1"]
        and len(values[ROLE]) == 1
        and values[ROLE][0] in {r.value for r in Role}
        and len(values[NAME]) == 1
        and values[NAME][0] != ""
        and use_ed25519
    )
    member = _validate_or_identity_error(der)
    if well_formed:
        assert member is not None
        assert (member.org, member.role, member.name) == ("org1", values[ROLE][0], values[NAME][0])
    else:
        assert member is None


# --- TLS certificates ---------------------------------------------------------------------------


@cache
def _tls_identity(org: str, name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, plaintext PKCS#8 key PEM) of a node's TLS identity; test use only.

    Issued a minute before the wall-clock time, since OpenSSL checks validity against
    it: a step of this machine's clock backwards must not make it "not yet valid".
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = _ca(org).issue_tls_cert(
        name=name,
        role=Role.NODE,
        public_key=key.public_key(),
        now=datetime.now(UTC) - timedelta(minutes=1),
        hosts=["peer0.org1.example", "10.0.0.7", "::1", "localhost", "PEER0.org1.example"],
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def test_tls_certificate_has_the_sans_and_ekus() -> None:
    cert_pem, _ = _tls_identity("org1", "peer0")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(_ca("org1").cert_pem))
    assert cert.subject.get_attributes_for_oid(ROLE)[0].value == "node"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "peer0.org1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)


def _write_identity(tmp_path: Path, org: str, name: str) -> tuple[str, str]:
    cert_pem, key_pem = _tls_identity(org, name)
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return str(cert_file), str(key_file)


def _context(purpose: int, cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(cert_file, key_file)
    cadata = (_ca("org1").cert_pem + _ca("org2").cert_pem).decode()
    context.load_verify_locations(cadata=cadata)
    return context


def test_tls_certificates_work_for_mutual_tls_in_python_ssl(tmp_path: Path) -> None:
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, *_write_identity(tmp_path, "org1", "peer0"))
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, *_write_identity(tmp_path, "org2", "peer1"))
    assert client_ctx.check_hostname
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(10):
        for label, side in (("client", client), ("server", server)):
            if not done[label]:
                try:
                    side.do_handshake()
                    done[label] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    peer = server.getpeercert()
    assert peer is not None
    client_subject = {key: value for ((key, value),) in peer["subject"]}  # type: ignore[misc,str-unpack]
    assert client_subject == {
        "organizationName": "org2",
        "organizationalUnitName": "node",
        "commonName": "peer1",
    }
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"


# -- revocation -------------------------------------------------------------------------


def test_a_certificate_on_its_orgs_revocation_list_is_refused_even_after_being_cached() -> None:
    ca = _ca("org1")
    pem = ca.issue_signing_cert(
        name="bob", role=Role.CLIENT, public_key=_signing_key("bob").public_key(), now=NOW
    )
    serial = load_certificate(pem).serial_number
    assert _membership().validate(pem, now=NOW).name == "bob"
    crl = ca.revocation_list([serial], now=NOW)
    revoking = Membership({"org1": ca.cert_pem, "org2": _ca("org2").cert_pem}, crls={"org1": crl})
    with pytest.raises(identity.CertificateRevokedError) as refused:
        revoking.validate(pem, now=NOW)
    assert refused.value.serial == serial and refused.value.org == "org1"
    with pytest.raises(identity.CertificateRevokedError):
        revoking.validate(pem, now=NOW)  # the second time it comes from the cache
    other = ca.issue_signing_cert(
        name="carol", role=Role.CLIENT, public_key=_signing_key("carol").public_key(), now=NOW
    )
    assert revoking.validate(other, now=NOW).name == "carol"


def test_a_revocation_list_not_signed_by_the_orgs_ca_is_refused() -> None:
    forged = _ca("org2").revocation_list([1, 2, 3], now=NOW)
    with pytest.raises(InvalidCACertificateError, match="revocation list of org1"):
        Membership(
            {"org1": _ca("org1").cert_pem, "org2": _ca("org2").cert_pem}, crls={"org1": forged}
        )
    with pytest.raises(InvalidCACertificateError, match="cannot be read"):
        Membership({"org1": _ca("org1").cert_pem}, crls={"org1": b"not a crl"})


# -- intermediate CAs ------------------------------------------------------------------


@cache
def _root_with_intermediate(org: str) -> tuple[CertificateAuthority, CertificateAuthority]:
    root = CertificateAuthority.create(org, now=NOW - timedelta(days=1), path_length=1)
    return root, root.create_intermediate(now=NOW - timedelta(days=1))


def test_a_member_issued_by_an_intermediate_is_a_member_of_the_roots_organization() -> None:
    root, issuing = _root_with_intermediate("org1")
    assert issuing.trust_pem == root.cert_pem + issuing.cert_pem
    constraints = load_certificate(issuing.cert_pem).extensions.get_extension_for_class(
        x509.BasicConstraints
    )
    assert constraints.value.ca and constraints.value.path_length == 0
    pem = issuing.issue_signing_cert(
        name="dave", role=Role.CLIENT, public_key=_signing_key("dave").public_key(), now=NOW
    )
    members = Membership({"org1": issuing.trust_pem, "org2": _ca("org2").cert_pem})
    member = members.validate(pem, now=NOW)
    assert (member.org, member.name) == ("org1", "dave")
    # the root alone does not vouch for what its intermediate issued
    with pytest.raises(identity.UnknownCAError):
        Membership({"org1": root.cert_pem}).validate(pem, now=NOW)
    # and the root still issues directly
    direct = root.issue_signing_cert(
        name="erin", role=Role.ADMIN, public_key=_signing_key("erin").public_key(), now=NOW
    )
    assert members.validate(direct, now=NOW).role is Role.ADMIN


def test_intermediates_must_come_from_the_root_and_be_allowed_by_it() -> None:
    _, issuing = _root_with_intermediate("org1")
    other_root, _ = _root_with_intermediate("org2")
    with pytest.raises(InvalidCACertificateError, match="not issued by org1's root"):
        Membership({"org1": _ca("org1").cert_pem + issuing.cert_pem})
    with pytest.raises(InvalidCACertificateError, match="may not certify"):
        _ca("org1").create_intermediate(now=NOW)  # a pathlen=0 root
    with pytest.raises(InvalidCACertificateError, match="may not certify"):
        issuing.create_intermediate(now=NOW)  # one level only
    with pytest.raises(InvalidCACertificateError):  # org2's root and intermediate as org1's
        Membership({"org1": other_root.cert_pem + other_root.create_intermediate(now=NOW).cert_pem})
    with pytest.raises(ValueError, match="path_length"):
        CertificateAuthority.create("org1", now=NOW, path_length=2)


def test_revoking_an_intermediate_refuses_everything_it_issued() -> None:
    root, issuing = _root_with_intermediate("org1")
    pem = issuing.issue_signing_cert(
        name="fay", role=Role.CLIENT, public_key=_signing_key("fay").public_key(), now=NOW
    )
    crl = root.revocation_list([load_certificate(issuing.cert_pem).serial_number], now=NOW)
    revoking = Membership({"org1": issuing.trust_pem}, crls={"org1": crl})
    with pytest.raises(identity.CertificateRevokedError, match="intermediate CA"):
        revoking.validate(pem, now=NOW)
    # a CRL signed by the intermediate is the organization's too
    own = issuing.revocation_list([load_certificate(pem).serial_number], now=NOW)
    with pytest.raises(identity.CertificateRevokedError):
        Membership({"org1": issuing.trust_pem}, crls={"org1": own}).validate(pem, now=NOW)


def test_a_signature_bit_string_with_unused_bits_is_malformed() -> None:
    """The same signed certificate re-encoded with a nonzero unused-bits count would be
    another byte string (another fingerprint) for the same member: refused."""
    for attempt in range(64):  # ECDSA signatures vary: find one ending in a 0 bit, which
        pem = _ca("org1").issue_signing_cert(  # the parser accepts with 1 unused bit
            name=f"peer{attempt}",
            role=Role.NODE,
            public_key=_signing_key("peer0").public_key(),
            now=NOW,
        )
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        signature = load_certificate(der).signature
        if signature[-1] % 2 == 0:
            break
    at = len(der) - len(signature) - 1
    assert der[at] == 0
    mutated = der[:at] + b"\x01" + der[at + 1 :]
    with pytest.raises(MalformedCertificateError, match="unused bits"):
        load_certificate(mutated)
