"""Signing keys in a PKCS#11 token (SoftHSM2): generated inside, never extractable."""

from __future__ import annotations

import threading
from pathlib import Path

import nacl.signing
import pytest

from kyodo.crypto import KeyFileError, Pkcs11KeyRef, Pkcs11Signer, generate_pkcs11_key
from tests.hsm import MODULE, PIN_VAR, TOKEN, init_token, softhsm_available

pytestmark = pytest.mark.skipif(not softhsm_available(), reason="SoftHSM2 is not installed")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hsm")
    init_token(base)
    return base


def ref(label: str, pin_source: str = f"env:{PIN_VAR}") -> Pkcs11KeyRef:
    return Pkcs11KeyRef(module=MODULE, token=TOKEN, label=label, pin_source=pin_source)


def test_a_key_generated_in_the_token_signs_and_verifies_as_ed25519(token: Path) -> None:
    public = generate_pkcs11_key(ref("alice"))
    signer = Pkcs11Signer.open(ref("alice").uri())
    assert signer.public_key == public and len(public) == 32
    signature = signer.sign(b"transfer 30 to bob")
    nacl.signing.VerifyKey(public).verify(b"transfer 30 to bob", signature)


def test_the_private_key_cannot_be_read_out_of_the_token(token: Path) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    generate_pkcs11_key(ref("secret"))
    signer = Pkcs11Signer(ref("secret"))
    private = signer._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="secret")
    assert private[Attribute.EXTRACTABLE] is False and private[Attribute.SENSITIVE] is True
    with pytest.raises(pkcs11.AttributeSensitive):
        private[Attribute.VALUE]


def test_signing_from_many_threads_at_once_is_safe(token: Path) -> None:
    generate_pkcs11_key(ref("busy"))
    signer = Pkcs11Signer(ref("busy"))
    verify = nacl.signing.VerifyKey(signer.public_key)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                message = f"{i}-{j}".encode()
                verify.verify(message, signer.sign(message))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_bad_references_are_typed_errors(token: Path) -> None:
    with pytest.raises(KeyFileError, match="no usable key"):
        Pkcs11Signer(ref("nobody"))
    with pytest.raises(KeyFileError, match="lacks pin-source"):
        Pkcs11KeyRef.parse(f"pkcs11:token={TOKEN};object=x?module-path={MODULE}")
    with pytest.raises(KeyFileError, match="not set"):
        Pkcs11Signer(ref("alice", pin_source="env:KYODO_NO_SUCH_PIN"))
    assert Pkcs11KeyRef.parse(ref("x").uri()) == ref("x")
