"""A network whose validators sign with keys that live in a PKCS#11 token (SoftHSM2)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kyodo.cli._network import HsmSettings, LocalNetwork
from tests.hsm import MODULE, PIN_VAR, TOKEN, init_token, softhsm_available
from tests.integration.conftest import start_network, stop_network, wait_converged
from tests.integration.test_network import kyodo

pytestmark = pytest.mark.skipif(not softhsm_available(), reason="SoftHSM2 is not installed")


@pytest.fixture(scope="module")
def hsm_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    base = tmp_path_factory.mktemp("hsmnet")
    init_token(base / "hsm")
    net = start_network(
        base / "kyodo-network",
        hsm=HsmSettings(module=MODULE, token=TOKEN, pin_source=f"env:{PIN_VAR}"),
    )
    yield net
    stop_network(net)


def test_validators_sign_blocks_with_keys_that_never_left_the_token(hsm_network):
    for node in hsm_network.nodes:
        config = json.loads((node.home / "node.json").read_text())
        assert config["signing_key"].startswith("pkcs11:token=")
        assert "pin-source=env:" in config["signing_key"]  # the PIN is never in the file
        assert not (node.home / "signing.key").exists()
    with hsm_network.gateway("org1") as gw:
        for i in range(5):
            gw.contract("asset_transfer").submit("create_account", f"hsm-{i}")
    status = wait_converged(hsm_network)
    assert status.height >= 5
    verified = kyodo("verify", hsm_network.nodes[2].node_id, folder=hsm_network.folder)
    assert verified.returncode == 0, verified.stderr  # every certificate checks out offline


def test_the_token_refuses_a_node_whose_pin_source_is_missing(hsm_network, monkeypatch):
    from kyodo.crypto import KeyFileError, Pkcs11Signer

    node = hsm_network.nodes[0]
    uri = json.loads((node.home / "node.json").read_text())["signing_key"]
    monkeypatch.delenv(PIN_VAR)
    with pytest.raises(KeyFileError, match="not set"):
        Pkcs11Signer.open(uri)


def test_an_application_signs_transactions_with_a_key_in_the_token(hsm_network):
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from kyodo.cli._network import _load_org
    from kyodo.client import UserCredentials
    from kyodo.client._gateway import Identity
    from kyodo.crypto import Pkcs11KeyRef, Pkcs11Signer, generate_pkcs11_key
    from kyodo.identity import Role

    ref = Pkcs11KeyRef(module=MODULE, token=TOKEN, label="app-user", pin_source=f"env:{PIN_VAR}")
    public = generate_pkcs11_key(ref)
    ca = _load_org(hsm_network.folder, "org1").ca
    pem = ca.issue_signing_cert(
        name="app-user",
        role=Role.CLIENT,
        public_key=ed25519.Ed25519PublicKey.from_public_bytes(public),
        now=datetime.now(UTC),
    )
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    tls = hsm_network.user("org1").tls  # the TLS key can stay a file; signing is in the HSM
    creds = UserCredentials(
        Identity(certificate=der, chain_id=hsm_network.chain_id), Pkcs11Signer(ref), tls
    )
    with creds.connect(hsm_network.node("org1").gateway) as gw:
        created = gw.contract("asset_transfer").submit("create_account", "hsm-app")
    assert created["owner"] == "org1/app-user"


def test_a_validator_key_in_the_token_is_rotated_while_the_network_runs(hsm_network):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from kyodo.codec import decode_record
    from kyodo.crypto import ED25519, verify_signature
    from kyodo.ledger import Block, commit_message
    from tests.integration.conftest import node_status, wait_until

    node = hsm_network.node("org2-node0")
    old_uri = json.loads((node.home / "node.json").read_text())["signing_key"]
    rotated = kyodo("network", "rotate-key", node.node_id, folder=hsm_network.folder)
    assert rotated.returncode == 0, rotated.stderr
    config = json.loads((node.home / "node.json").read_text())
    assert config["signing_key"].startswith("pkcs11:") and config["signing_key"] != old_uri
    assert config["previous_signing_key"] == old_uri and config["next_signing_key"] == ""
    assert not (node.home / "signing.key").exists()  # still no key file anywhere
    new_key = (
        x509.load_pem_x509_certificate((node.home / "signing.pem").read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )

    def signed_by_new_key() -> bool:
        with hsm_network.gateway("org1") as gw:
            outcome = gw.contract("asset_transfer").submit_transaction(
                "create_account", f"rotated-{outcome_counter.pop()}"
            )
            block = decode_record(Block, gw.block(outcome.height))
        signatures = {c.signer: c.signature for c in block.certificate}
        if node.node_id not in signatures:
            return False
        verify_signature(
            ED25519,
            new_key,
            commit_message(block.header.chain_id, block.block_hash()),
            signatures[node.node_id],
        )
        return True

    outcome_counter = list(range(40))
    wait_until(signed_by_new_key, timeout_s=30, what="a block signed with the new HSM key")
    assert hsm_network.stop(node)  # the new key is the node's key across a restart too
    hsm_network.start(node)
    wait_until(
        lambda: (s := node_status(hsm_network, node)) is not None and s.healthy,
        timeout_s=30,
        what="the rotated node back",
    )
    wait_until(signed_by_new_key, timeout_s=30, what="the restarted node signing again")
    wait_converged(hsm_network)
    verified = kyodo("verify", node.node_id, folder=hsm_network.folder)
    assert verified.returncode == 0, verified.stderr
