"""Tests of kyodo.crypto signatures and encrypted key files (kyodo/crypto/_keys.py)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kyodo.crypto import (
    ECDSA_P256,
    ED25519,
    KEY_FILE_FORMAT,
    CryptoError,
    EcdsaP256Signer,
    Ed25519Signer,
    InvalidSignatureError,
    KeyFileError,
    UnsupportedKeyError,
    load_private_key,
    read_passphrase,
    save_private_key,
    verify_signature,
)

PASSPHRASE = b"correct horse battery"
SALT = b"\x11" * 16  # shared salt: one scrypt derivation serves every save/load below

MESSAGE = b"kyodo test message"


def _ed25519() -> Ed25519Signer:
    return Ed25519Signer.generate()


def _ecdsa() -> EcdsaP256Signer:
    return EcdsaP256Signer(ec.generate_private_key(ec.SECP256R1()))


SIGNERS = {"ed25519": _ed25519, "ecdsa-p256": _ecdsa}


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- signatures --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SIGNERS)
def test_sign_then_verify(kind: str) -> None:
    signer = SIGNERS[kind]()
    assert signer.key_type == kind
    for message in (b"", MESSAGE, bytes(range(256)) * 40):
        verify_signature(signer.key_type, signer.public_key, message, signer.sign(message))


def test_key_and_signature_sizes() -> None:
    ed = _ed25519()
    assert len(ed.public_key) == 32
    assert len(ed.sign(MESSAGE)) == 64
    assert ed.sign(MESSAGE) == ed.sign(MESSAGE)  # Ed25519 is deterministic
    p256 = _ecdsa()
    assert len(p256.public_key) == 33  # compressed point
    assert p256.public_key[0] in (2, 3)


def test_ed25519_signature_matches_cryptography() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signer = Ed25519Signer(key)
    assert signer.sign(MESSAGE) == key.sign(MESSAGE)
    assert signer.public_key == key.public_key().public_bytes_raw()


@pytest.mark.parametrize("kind", SIGNERS)
@pytest.mark.parametrize("part", ["message", "signature", "key"])
def test_any_flipped_bit_fails(kind: str, part: str) -> None:
    signer = SIGNERS[kind]()
    signature = signer.sign(MESSAGE)
    parts = {"message": MESSAGE, "signature": signature, "key": signer.public_key}
    size = len(parts[part]) * 8
    for bit in sorted({0, 1, 7, 8, size // 2, size - 9, size - 1} | set(range(3, size, 37))):
        changed = dict(parts)
        changed[part] = _flip(parts[part], bit)
        with pytest.raises(InvalidSignatureError):
            verify_signature(kind, changed["key"], changed["message"], changed["signature"])


@pytest.mark.parametrize("kind", SIGNERS)
def test_signature_by_another_key_fails(kind: str) -> None:
    one, other = SIGNERS[kind](), SIGNERS[kind]()
    with pytest.raises(InvalidSignatureError):
        verify_signature(kind, other.public_key, MESSAGE, one.sign(MESSAGE))


@pytest.mark.parametrize("kind", SIGNERS)
def test_wrong_lengths_fail(kind: str) -> None:
    signer = SIGNERS[kind]()
    key, signature = signer.public_key, signer.sign(MESSAGE)
    bad_keys = [b"", key[:-1], key + b"\x00", bytes(len(key))]
    bad_signatures = [b"", signature[:-1], signature + b"\x00", bytes(len(signature))]
    for bad_key in bad_keys:
        with pytest.raises(InvalidSignatureError):
            verify_signature(kind, bad_key, MESSAGE, signature)
    for bad_signature in bad_signatures:
        with pytest.raises(InvalidSignatureError):
            verify_signature(kind, key, MESSAGE, bad_signature)


def test_key_types_are_not_interchangeable() -> None:
    ed, p256 = _ed25519(), _ecdsa()
    with pytest.raises(InvalidSignatureError):
        verify_signature(ECDSA_P256, ed.public_key, MESSAGE, ed.sign(MESSAGE))
    with pytest.raises(InvalidSignatureError):
        verify_signature(ED25519, p256.public_key, MESSAGE, p256.sign(MESSAGE))


@pytest.mark.parametrize("key_type", ["rsa", "ED25519", "", "ed448", "ecdsa-p384"])
def test_unknown_key_type(key_type: str) -> None:
    signer = _ed25519()
    with pytest.raises(UnsupportedKeyError):
        verify_signature(key_type, signer.public_key, MESSAGE, signer.sign(MESSAGE))


def test_ecdsa_signer_refuses_other_curves() -> None:
    with pytest.raises(UnsupportedKeyError):
        EcdsaP256Signer(ec.generate_private_key(ec.SECP384R1()))


def test_errors_are_crypto_errors() -> None:
    for error in (InvalidSignatureError, UnsupportedKeyError, KeyFileError):
        assert issubclass(error, CryptoError)


# -- key files ---------------------------------------------------------------------------


def _private_key(kind: str) -> Any:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _der(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _raw_secret(key: Any) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    return int(key.private_numbers().private_value).to_bytes(32, "big")


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_key_file_round_trip(tmp_path: Path, kind: str) -> None:
    key = _private_key(kind)
    path = tmp_path / "keys" / "signing.key"  # parent folder is created
    save_private_key(path, key, PASSPHRASE, salt=SALT)
    loaded = load_private_key(path, PASSPHRASE)
    assert _der(loaded) == _der(key)
    # what was loaded signs verifiably under the original public key
    if kind == "ed25519":
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
        signer_ed = Ed25519Signer(loaded)
        verify_signature(ED25519, Ed25519Signer(key).public_key, MESSAGE, signer_ed.sign(MESSAGE))
    else:
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer_ec = EcdsaP256Signer(loaded)
        verify_signature(
            ECDSA_P256, EcdsaP256Signer(key).public_key, MESSAGE, signer_ec.sign(MESSAGE)
        )


def test_key_file_with_a_fresh_salt(tmp_path: Path) -> None:
    key = _private_key("ed25519")
    path = tmp_path / "k.key"
    save_private_key(path, key, PASSPHRASE)
    assert _der(load_private_key(path, PASSPHRASE)) == _der(key)
    assert json.loads(path.read_text())["salt"] != SALT.hex()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_key_file_is_private_and_holds_no_plaintext(tmp_path: Path, kind: str) -> None:
    key = _private_key(kind)
    path = tmp_path / "k.key"
    path.write_bytes(b"old contents")
    path.chmod(0o644)
    save_private_key(path, key, PASSPHRASE, salt=SALT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    for secret in (_raw_secret(key), _der(key)):
        for form in (
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b64encode(secret),
        ):
            assert form not in data
    doc = json.loads(data)
    assert doc["format"] == KEY_FILE_FORMAT
    assert doc["kdf"] == "scrypt"
    assert doc["cipher"] == "aes-256-gcm"
    assert doc["n"] >= 2**14
    assert len(bytes.fromhex(doc["nonce"])) == 12
    # no temporary file is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_two_saves_of_one_key_differ(tmp_path: Path) -> None:
    key = _private_key("ed25519")
    save_private_key(tmp_path / "a.key", key, PASSPHRASE, salt=SALT)
    save_private_key(tmp_path / "b.key", key, PASSPHRASE, salt=SALT)
    a = json.loads((tmp_path / "a.key").read_text())
    b = json.loads((tmp_path / "b.key").read_text())
    assert a["nonce"] != b["nonce"]
    assert a["ciphertext"] != b["ciphertext"]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.key"
    save_private_key(path, _private_key("ed25519"), PASSPHRASE, salt=SALT)
    return path


def test_wrong_passphrase(key_file: Path) -> None:
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(key_file, b"wrong horse battery")
    with pytest.raises(KeyFileError):
        load_private_key(key_file, PASSPHRASE + b" ")


def _edit(path: Path, **changes: Any) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _flip_hex(text: str, index: int) -> str:
    data = bytearray(bytes.fromhex(text))
    data[index] ^= 0x01
    return data.hex()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: {"ciphertext": _flip_hex(d["ciphertext"], 0)},
        lambda d: {"ciphertext": _flip_hex(d["ciphertext"], -1)},  # in the GCM tag
        lambda d: {"ciphertext": d["ciphertext"][:-2]},
        lambda d: {"nonce": _flip_hex(d["nonce"], 5)},
        lambda d: {"n": 2**14},  # a cheaper KDF: the header is authenticated
        lambda d: {"salt": _flip_hex(d["salt"], 0)},
        lambda d: {"cipher": "aes-128-gcm"},
        lambda d: {"n": 2**21},
        lambda d: {"n": 3},
        lambda d: {"n": 20_000},  # not a power of two
        lambda d: {"n": "many"},
        lambda d: {"r": 16},
        lambda d: {"p": 2},
        lambda d: {"format": "other-format"},
        lambda d: {"kdf": "pbkdf2"},
        lambda d: {"salt": "not hex"},
        lambda d: {"nonce": ""},
        lambda d: {"salt": 5},
    ],
    ids=[
        "ciphertext-first-byte",
        "ciphertext-tag",
        "ciphertext-truncated",
        "nonce",
        "n-lowered",
        "salt",
        "cipher-name",
        "n-too-high",
        "n-too-low",
        "n-not-power-of-two",
        "n-not-a-number",
        "r",
        "p",
        "format",
        "kdf",
        "salt-not-hex",
        "nonce-empty",
        "salt-not-text",
    ],
)
def test_altered_key_file(key_file: Path, change: Any) -> None:
    doc = json.loads(key_file.read_text())
    _edit(key_file, **change(doc))
    with pytest.raises(KeyFileError):
        load_private_key(key_file, PASSPHRASE)


@pytest.mark.parametrize("missing", ["ciphertext", "nonce", "salt", "n", "format"])
def test_key_file_missing_a_field(key_file: Path, missing: str) -> None:
    doc = json.loads(key_file.read_text())
    del doc[missing]
    key_file.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError):
        load_private_key(key_file, PASSPHRASE)


@pytest.mark.parametrize("encoding", ["pem", "der", "openssh-pem"])
def test_plaintext_key_file_is_refused(tmp_path: Path, encoding: str) -> None:
    key = _private_key("ed25519")
    path = tmp_path / "plain.key"
    if encoding == "pem":
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif encoding == "der":
        data = _der(key)
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match="plaintext keys are refused"):
        load_private_key(path, PASSPHRASE)


@pytest.mark.parametrize("content", [b"", b"{}", b"[]", b"42", b"null", b'"text"', b"\xff\xfe"])
def test_garbage_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_private_key(path, PASSPHRASE)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "absent.key", PASSPHRASE)


@pytest.mark.parametrize("passphrase", [b"", b"a", b"1234567"])
def test_short_passphrase_is_refused(tmp_path: Path, passphrase: bytes) -> None:
    path = tmp_path / "k.key"
    with pytest.raises(KeyFileError, match="at least 8"):
        save_private_key(path, _private_key("ed25519"), passphrase)
    assert not path.exists()


def test_eight_byte_passphrase_is_accepted(tmp_path: Path) -> None:
    key = _private_key("ecdsa-p256")
    save_private_key(tmp_path / "k.key", key, b"12345678", salt=SALT)
    assert _der(load_private_key(tmp_path / "k.key", b"12345678")) == _der(key)


def test_encrypted_rsa_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rsa.key"
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    save_private_key(path, key, PASSPHRASE, salt=SALT)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedKeyError):
        load_private_key(path, PASSPHRASE)


# -- passphrase sources ------------------------------------------------------------------


def test_passphrase_from_file(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"  secret-passphrase\n")
    assert read_passphrase(f"file:{path}") == b"secret-passphrase"


def test_passphrase_file_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read passphrase file"):
        read_passphrase(f"file:{tmp_path / 'absent'}")


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYODO_TEST_PASSPHRASE", "from-the-environment")
    assert read_passphrase("env:KYODO_TEST_PASSPHRASE") == b"from-the-environment"


@pytest.mark.parametrize("value", [None, ""])
def test_passphrase_env_unset_or_empty(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("KYODO_TEST_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("KYODO_TEST_PASSPHRASE", value)
    with pytest.raises(KeyFileError, match="not set"):
        read_passphrase("env:KYODO_TEST_PASSPHRASE")


def test_passphrase_from_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "typed-passphrase"

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert read_passphrase("prompt") == b"typed-passphrase"
    assert len(prompts) == 1


@pytest.mark.parametrize("source", ["", "secret", "passphrase:abc", "File:/x", "environ:X"])
def test_bad_passphrase_source(source: str) -> None:
    with pytest.raises(KeyFileError, match="passphrase source"):
        read_passphrase(source)


def test_passphrase_file_to_key_file(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text(PASSPHRASE.decode() + "\n")
    passphrase = read_passphrase(f"file:{tmp_path / 'pass'}")
    key = _private_key("ed25519")
    save_private_key(tmp_path / "k.key", key, passphrase, salt=SALT)
    assert _der(load_private_key(tmp_path / "k.key", PASSPHRASE)) == _der(key)
