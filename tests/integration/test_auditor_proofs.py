"""Proofs for auditors on a real network: exported by a node through its gateway (signed,
audited, under the ACL), checked offline knowing only the genesis block, and by the SDK."""

from __future__ import annotations

import json
import subprocess

import pytest

from kyodo.client import AccessDenied
from kyodo.ledger import load_genesis
from kyodo.wire import ProofRequest
from tests.integration.test_network import KYODO, kyodo


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    """``kyodo verify-proof``: needs no network folder, only the files."""
    return subprocess.run(
        [*KYODO, "verify-proof", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_proofs_of_a_transaction_a_key_and_a_block_verify_offline(network, tmp_path):
    folder = network.folder
    with network.gateway("org1") as gw, network.gateway("org1", "admin") as admin:
        created = gw.contract("asset_transfer").submit_transaction("create_account", "audited")
        admin.contract("asset_transfer").submit("issue", "audited", 42)
    tx_file, key_file, block_file = tmp_path / "tx.json", tmp_path / "key.json", tmp_path / "b.json"
    made = kyodo("proof", "tx", created.tx_id, "--out", str(tx_file), folder=folder)
    assert made.returncode == 0, made.stderr
    made = kyodo(
        "proof",
        "key",
        "asset_transfer",
        "account/audited",
        "--org",
        "org1",
        "--user",
        "admin",
        "--out",
        str(key_file),
        folder=folder,
    )
    assert made.returncode == 0, made.stderr
    made = kyodo("proof", "block", str(created.height), "--out", str(block_file), folder=folder)
    assert made.returncode == 0, made.stderr
    genesis = str(folder / "genesis.block")
    for path, expect in ((tx_file, "tx"), (key_file, "key"), (block_file, "block")):
        checked = verify(str(path), "--genesis", genesis, "--json")
        assert checked.returncode == 0, checked.stderr
        proven = json.loads(checked.stdout)
        assert proven["ok"] and proven["kind"] == expect
    proven = json.loads(verify(str(key_file), "--genesis", genesis, "--json").stdout)
    assert proven["value"]["balance"] == 42 and proven["value"]["owner"] == "org1/user1"
    # one changed byte of the proven value: refused, naming why
    doc = json.loads(key_file.read_text())
    record = doc["key"]["record"]
    doc["key"]["record"] = record[:-2] + ("00" if record[-2:] != "00" else "01")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    refused = verify(str(forged), "--genesis", genesis)
    assert refused.returncode == 1 and "error:" in refused.stderr


def test_raw_state_proofs_need_state_read_and_the_sdk_checks_them_itself(network):
    genesis = load_genesis(network.folder / "genesis.block")
    with network.gateway("org2") as gw:
        gw.contract("asset_transfer").submit("create_account", "sdk-proven")
        with pytest.raises(AccessDenied, match=r"state\.read"):  # a client: not by default
            gw.proof(ProofRequest(kind="key", namespace="asset_transfer", key="account/x"))
    with network.gateway("org2", "admin") as admin:
        value, proven = admin.verified_read("asset_transfer", "account/sdk-proven", genesis=genesis)
        assert value["owner"] == "org2/user1" and proven.height >= 1
        absent, _ = admin.verified_read("asset_transfer", "account/never", genesis=genesis)
        assert absent is None
