"""Signing keys held in a PKCS#11 token (an HSM; SoftHSM2 in tests).

A key is named by a URI in the spirit of RFC 7512::

    pkcs11:token=kyodo;object=org1-node0?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:KYODO_HSM_PIN

``token`` is the token label, ``object`` the key's label; the module path is the
PKCS#11 library, and the user PIN is read from ``pin-source`` (``file:PATH``,
``env:VAR`` or ``prompt``), never from the URI or a configuration file. Keys are
generated inside the token as sensitive and non-extractable Ed25519 keys
(``CKM_EC_EDWARDS_KEY_PAIR_GEN``) and sign with ``CKM_EDDSA``; the private key
never leaves the token.

SoftHSM2, driven through python-pkcs11, is not safe to call from several threads
at once, and a node signs from more than one thread: every call into a module is
serialized by one lock per process.

The library used is python-pkcs11 (a maintained binding of the PKCS#11 C API);
this module only names keys, opens sessions and adapts signatures to
:class:`kyodo.crypto.Signer`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from kyodo.crypto._keys import ED25519, read_passphrase
from kyodo.crypto.errors import KeyFileError

__all__ = ["Pkcs11KeyRef", "Pkcs11Signer", "generate_pkcs11_key", "is_pkcs11_uri"]

_LOCK = threading.RLock()
"""One lock for every PKCS#11 call of this process (SoftHSM2 is not thread safe)."""
_ED25519_OID_DER = bytes.fromhex("06032b6570")  # id-Ed25519, 1.3.101.112
_libraries: dict[str, Any] = {}
OPEN_ATTEMPTS = 6
"""Tries to open a key before a start-up fails (about 3 s of backoff in all)."""


def is_pkcs11_uri(text: str) -> bool:
    """Whether ``text`` names a key in a token rather than a key file."""
    return text.startswith("pkcs11:")


@dataclass(frozen=True, slots=True)
class Pkcs11KeyRef:
    """Where a key lives: module, token, key label, and where its PIN comes from."""

    module: str
    token: str
    label: str
    pin_source: str

    @classmethod
    def parse(cls, uri: str) -> Pkcs11KeyRef:
        """Parse a ``pkcs11:`` URI; raise KeyFileError naming what is missing."""
        if not is_pkcs11_uri(uri):
            raise KeyFileError(f"{uri!r} is not a pkcs11: URI")
        path, _, query = uri.removeprefix("pkcs11:").partition("?")
        attrs = dict(part.partition("=")[::2] for part in path.split(";") if part)
        params = {k: v[0] for k, v in parse_qs(query).items()}
        missing = [
            name
            for name, value in (
                ("token", attrs.get("token")),
                ("object", attrs.get("object")),
                ("module-path", params.get("module-path")),
                ("pin-source", params.get("pin-source")),
            )
            if not value
        ]
        if missing:
            raise KeyFileError(f"pkcs11 URI {uri!r} lacks {', '.join(missing)}")
        return cls(
            module=params["module-path"],
            token=attrs["token"],
            label=attrs["object"],
            pin_source=params["pin-source"],
        )

    def uri(self) -> str:
        """The URI naming this key."""
        return (
            f"pkcs11:token={self.token};object={self.label}"
            f"?module-path={self.module}&pin-source={self.pin_source}"
        )


def _token(ref: Pkcs11KeyRef) -> Any:
    import pkcs11  # imported on use: only nodes and users with HSM keys need it

    try:
        lib = _libraries.get(ref.module)
        if lib is None:
            lib = pkcs11.lib(ref.module)
            _libraries[ref.module] = lib
        return lib.get_token(token_label=ref.token)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
        raise KeyFileError(f"PKCS#11 token {ref.token!r} in {ref.module}: {exc!r}") from exc


def _open(token: Any, pin: str, *, rw: bool = False) -> Any:
    """A session on ``token``, logged in. PKCS#11 login is per application and token:
    once one session of this process is logged in, further sessions share it."""
    import pkcs11

    try:
        return token.open(user_pin=pin, rw=rw)
    except pkcs11.UserAlreadyLoggedIn:
        return token.open(rw=rw)


def _reload(module: str) -> None:
    """Re-read the module's tokens: SoftHSM2 lists tokens when it is initialised, so a
    token that another process was writing at that moment stays invisible until then.
    Only done before retrying a failed open (it ends this process's other sessions)."""
    with _LOCK:
        lib = _libraries.get(module)
        if lib is not None:
            lib.reinitialize()


def generate_pkcs11_key(ref: Pkcs11KeyRef) -> bytes:
    """Generate an Ed25519 key pair inside the token, private key non-extractable;
    return its raw public key (what the certificate is issued for)."""
    import pkcs11
    from pkcs11 import Attribute, KeyType

    pin = read_passphrase(ref.pin_source).decode()
    with _LOCK:
        token = _token(ref)
        try:
            with _open(token, pin, rw=True) as session:
                params = session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: _ED25519_OID_DER}, local=True
                )
                public, _private = params.generate_keypair(
                    store=True,
                    label=ref.label,
                    private_template={
                        Attribute.EXTRACTABLE: False,
                        Attribute.SENSITIVE: True,
                        Attribute.SIGN: True,
                    },
                )
                return _raw_public_key(public[Attribute.EC_POINT])
        except pkcs11.PKCS11Error as exc:
            raise KeyFileError(f"cannot generate {ref.label!r} in {ref.token!r}: {exc!r}") from exc


def _raw_public_key(ec_point: bytes) -> bytes:
    # CKA_EC_POINT holds the 32-byte point, DER-wrapped in an OCTET STRING (04 20 ...)
    raw = ec_point[-32:]
    if len(ec_point) not in (32, 34) or len(raw) != 32:
        raise KeyFileError(f"unexpected Ed25519 public key encoding ({len(ec_point)} bytes)")
    return raw


class Pkcs11Signer:
    """Signs with an Ed25519 key that stays inside a PKCS#11 token."""

    key_type = ED25519

    def __init__(self, ref: Pkcs11KeyRef) -> None:
        import pkcs11

        self.ref = ref
        pin = read_passphrase(ref.pin_source).decode()
        for attempt in range(OPEN_ATTEMPTS):
            try:
                self._open_key(ref, pin)
                return
            except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
                raise KeyFileError(
                    f"no usable key {ref.label!r} in token {ref.token!r}: {exc!r}"
                ) from exc
            except (pkcs11.PKCS11Error, KeyFileError) as exc:
                # A token shared by several processes (SoftHSM2's file store, a busy HSM)
                # can fail an open transiently (GeneralError): retry, then give up.
                if attempt == OPEN_ATTEMPTS - 1:
                    raise KeyFileError(
                        f"no usable key {ref.label!r} in token {ref.token!r} after "
                        f"{OPEN_ATTEMPTS} attempts: {exc!r}"
                    ) from exc
                time.sleep(0.1 * 2**attempt)  # backoff between attempts, not a sync wait
                _reload(ref.module)

    def _open_key(self, ref: Pkcs11KeyRef, pin: str) -> None:
        from pkcs11 import Attribute, ObjectClass

        with _LOCK:
            token = _token(ref)
            session = _open(token, pin)
            try:
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=ref.label)
                public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=ref.label)
                raw = _raw_public_key(public[Attribute.EC_POINT])
            except BaseException:
                session.close()
                raise
            self._session, self._private, self.public_key = session, private, raw

    @classmethod
    def open(cls, uri: str) -> Pkcs11Signer:
        """The signer for the key a ``pkcs11:`` URI names."""
        return cls(Pkcs11KeyRef.parse(uri))

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``, made inside the token."""
        from pkcs11 import Mechanism

        with _LOCK:
            signature: bytes = self._private.sign(message, mechanism=Mechanism.EDDSA)
        return signature
