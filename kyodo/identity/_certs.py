"""Reading certificates, and the checks shared by issuing and validating them.

Everything that touches untrusted certificate bytes goes through
:func:`certificate_der` (size limit, PEM decoding) and :func:`parse_der`
(serial pre-check, then ``cryptography``), which turn every failure into
:class:`MalformedCertificateError`; :func:`load_certificate` is the two in one.
``cryptography`` parses some parts of a certificate lazily (names, extensions,
the public key), so callers that read those parts wrap the reads in
``except CRYPTOGRAPHY_ERRORS``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import (
    InternalError,
    InvalidKey,
    InvalidSignature,
    UnsupportedAlgorithm,
)
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from kyodo.identity.errors import InvalidNameError, MalformedCertificateError

MAX_CERTIFICATE_BYTES = 16 * 1024
"""Largest certificate input accepted, DER or PEM (16 KiB); a member certificate is under 1 KiB."""

MAX_NAME_CHARS = 64
"""Longest organization id or member name (RFC 5280 upper bound for O and CN)."""

MAX_HOST_CHARS = 253
"""Longest DNS host name."""

CRYPTOGRAPHY_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    InvalidSignature,
    InvalidKey,
    InternalError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.ExtensionNotFound,
    x509.AttributeNotFound,
)
"""What ``cryptography`` raises on malformed certificate contents.

Most are ValueError, but several are plain Exception subclasses (an unknown
X.509 version raises ``x509.InvalidVersion``), so the list is explicit.
"""

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----(.*?)-----END \1-----", re.DOTALL)
_PEM_CERTIFICATE_LABELS = frozenset({"CERTIFICATE", "X509 CERTIFICATE"})
_DER_SEQUENCE = 0x30
_DER_INTEGER = 0x02
_DER_VERSION_TAG = 0xA0  # [0] EXPLICIT, constructed

_ORG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one X.509 certificate from DER or PEM bytes.

    PEM is recognized by its ``-----BEGIN`` line (leading whitespace
    allowed); the first block is read and must be labelled ``CERTIFICATE``.
    Anything else is parsed as DER, which must be exactly one certificate
    with no trailing bytes.

    Raises:
        MalformedCertificateError: the input is larger than
            :data:`MAX_CERTIFICATE_BYTES`, or is not a certificate.
        TypeError: ``data`` is not bytes-like (a programming error).
    """
    return parse_der(certificate_der(data))


def certificate_der(data: bytes) -> bytes:
    """Return the DER bytes of a DER or PEM certificate input, without parsing the certificate.

    Checks the size limit and decodes PEM (see :func:`load_certificate`);
    DER input is returned as is.

    Raises:
        MalformedCertificateError: the input is too large, empty, or bad PEM.
        TypeError: ``data`` is not bytes-like (a programming error).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"certificate must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise MalformedCertificateError(
            f"certificate is {len(data)} bytes, more than the {MAX_CERTIFICATE_BYTES} allowed"
        )
    if not data:
        raise MalformedCertificateError("certificate is empty")
    if data.lstrip().startswith(b"-----BEGIN"):
        return _decode_pem(data)
    return data


def parse_der(der: bytes) -> x509.Certificate:
    """Parse a DER certificate; every failure becomes MalformedCertificateError."""
    _check_serial_is_positive(der)
    try:
        cert = x509.load_der_x509_certificate(der)
        signature = cert.signature
    except CRYPTOGRAPHY_ERRORS as exc:
        raise MalformedCertificateError(
            f"cannot read the certificate ({len(der)} bytes of DER): {exc}"
        ) from exc
    # The signature is a BIT STRING whose first content byte counts unused bits; DER
    # requires 0 here, but the parser accepts others, which would let the same signed
    # certificate be re-encoded into other bytes (another fingerprint). Refuse them.
    if not der.endswith(signature) or der[-len(signature) - 1] != 0:
        raise MalformedCertificateError(
            "the certificate's signature BIT STRING is not minimally encoded (unused bits)"
        )
    return cert


def _decode_pem(data: bytes) -> bytes:
    """Return the DER of the first PEM block of ``data``, which must be a CERTIFICATE.

    Decoded here rather than by ``cryptography`` so that the DER can be
    pre-checked (see :func:`_check_serial_is_positive`) and hashed before parsing.
    """
    match = _PEM_RE.search(data)
    if match is None:
        raise MalformedCertificateError(
            "the input starts like PEM but has no complete '-----BEGIN ...-----' / "
            "'-----END ...-----' block"
        )
    label = match.group(1).decode("ascii")
    if label not in _PEM_CERTIFICATE_LABELS:
        raise MalformedCertificateError(
            f"the PEM block is a {label!r}, not a CERTIFICATE (was a key file given instead?)"
        )
    body = re.sub(rb"\s+", b"", match.group(2))
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise MalformedCertificateError(
            f"the PEM certificate's base64 body is corrupt: {exc}"
        ) from exc


def _check_serial_is_positive(der: bytes) -> None:
    """Reject a certificate whose serial number is not positive, before ``cryptography`` sees it.

    RFC 5280 requires a positive serial. ``cryptography`` parses such a
    certificate but emits a CryptographyDeprecationWarning (an exception
    under ``-W error``, and announced to become one); checking first keeps
    both out of callers' way. Only the path Certificate -> tbsCertificate ->
    [version] -> serialNumber is read; if it cannot be followed, the input is
    left for ``cryptography`` to reject.
    """
    serial = _find_serial(der)
    if serial is not None and (not serial or serial[0] & 0x80 or not any(serial)):
        raise MalformedCertificateError(
            "the certificate's serial number is zero or negative; RFC 5280 requires a "
            "positive serial number"
        )


def _find_serial(der: bytes) -> bytes | None:
    """Return the content octets of the serialNumber INTEGER, or None if the path is not there."""
    outer = _read_tlv_header(der, 0)
    if outer is None or outer[0] != _DER_SEQUENCE:
        return None
    tbs = _read_tlv_header(der, outer[1])
    if tbs is None or tbs[0] != _DER_SEQUENCE:
        return None
    item = _read_tlv_header(der, tbs[1])
    if item is not None and item[0] == _DER_VERSION_TAG:
        item = _read_tlv_header(der, item[2])
    if item is None or item[0] != _DER_INTEGER:
        return None
    return der[item[1] : item[2]]


def _read_tlv_header(der: bytes, at: int) -> tuple[int, int, int] | None:
    """Return (tag, content start, content end) of the DER element at ``at``, or None."""
    if at + 2 > len(der):
        return None
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 0 < count <= 4 or at + count > len(der):
            return None
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        return None
    return tag, at, at + length


def fingerprint(cert_der: bytes) -> bytes:
    """Return the SHA-256 digest (32 bytes) of a certificate's DER encoding.

    The fingerprint identifies a certificate: it is what
    :attr:`Member.fingerprint` holds and what revocation lists name. The
    input must be DER (convert PEM with :func:`load_certificate` and
    ``public_bytes(Encoding.DER)``); it is hashed as given, not parsed.

    Raises:
        MalformedCertificateError: the input is empty or PEM rather than DER.
    """
    if not cert_der.startswith(b"\x30"):
        raise MalformedCertificateError(
            "a certificate fingerprint is computed over DER, and this input is not DER "
            "(a DER certificate starts with byte 0x30)"
        )
    return hashlib.sha256(cert_der).digest()


def require_aware(now: datetime) -> datetime:
    """Return ``now`` in UTC; a naive datetime is a programming error (ValueError)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def check_org_id(org: str) -> str:
    """Return ``org`` if it is a valid organization id, else raise InvalidNameError.

    An org id is 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``,
    starting with a letter or digit (e.g. ``org1``).
    """
    if not (
        isinstance(org, str)
        and 0 < len(org) <= MAX_NAME_CHARS
        and org.isascii()
        and _ORG_RE.fullmatch(org)
    ):
        raise InvalidNameError(
            f"organization id {org!r} is not valid: use 1 to {MAX_NAME_CHARS} ASCII letters, "
            "digits, '.', '_' or '-', starting with a letter or digit",
            value=str(org),
        )
    return org


def check_member_name(name: str) -> str:
    """Return ``name`` if it is a valid member name (the CN), else raise InvalidNameError.

    A member name is 1 to 64 printable characters without leading or
    trailing whitespace.
    """
    if not (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_CHARS
        and name.isprintable()
        and name == name.strip()
    ):
        raise InvalidNameError(
            f"member name {name!r} is not valid: use 1 to {MAX_NAME_CHARS} printable "
            "characters without leading or trailing spaces",
            value=str(name),
        )
    return name


def parse_host(host: str) -> x509.GeneralName:
    """Return the SubjectAltName entry for a TLS host: an IP address or a DNS name.

    Raises:
        InvalidNameError: ``host`` is neither an IP address nor an ASCII DNS
            name (optionally with a leading ``*.`` wildcard label).
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if isinstance(host, str) and len(host) <= MAX_HOST_CHARS and _DNS_RE.fullmatch(host):
        return x509.DNSName(host.lower())
    raise InvalidNameError(
        f"TLS host {host!r} is neither an IP address nor a DNS name "
        "(use ASCII letters, digits and '-' in dot-separated labels; IDNs in punycode)",
        value=str(host),
    )


def describe_key(key: object) -> str:
    """Return a short operator-facing name of a public key's type, e.g. ``ECDSA secp256r1``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__.removesuffix("PublicKey")


def subject_name(*, org: str, role: str, name: str) -> x509.Name:
    """Return the member subject ``O=<org>, OU=<role>, CN=<name>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def single_attribute(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str | None:
    """Return the one string value of ``oid`` in ``name``; None when absent.

    ``label`` names the attribute in error messages, e.g. ``"common name (CN)"``.

    Raises:
        MalformedCertificateError: the attribute appears more than once or is
            not a string.
    """
    attributes = name.get_attributes_for_oid(oid)
    if not attributes:
        return None
    if len(attributes) > 1:
        raise MalformedCertificateError(
            f"certificate subject has {len(attributes)} {label} attributes; exactly one is allowed"
        )
    value = attributes[0].value
    if not isinstance(value, str):
        raise MalformedCertificateError(f"certificate subject {label} is not a text string")
    return value
