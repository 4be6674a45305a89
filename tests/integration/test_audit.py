"""The tamper-evident audit log on real nodes: every call recorded (reads, refusals, REST),
queried and exported under audit.read (itself recorded), verified offline, anchored on
the ledger."""

from __future__ import annotations

import copy
import json

import pytest

from kyodo.client import AccessDenied, rest_call, rest_login
from tests.integration.test_network import kyodo


def query(network, *args: str) -> dict:
    out = kyodo("audit", "query", "--json", *args, folder=network.folder)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_call_is_recorded_with_who_what_and_the_decision(network):
    with network.gateway("org1") as gw:
        done = gw.contract("asset_transfer").submit_transaction("create_account", "audited-1")
        gw.contract("asset_transfer").evaluate("balance", "audited-1")
        gw.block(done.height)
    pem = (network.folder / "orgs/org1/users/user1/signing.pem").read_bytes()
    base = f"https://{network.nodes[0].rest}"
    bundle = (network.folder / "ca-bundle.pem").read_bytes()
    token = rest_login(
        base, certificate_pem=pem, signer=network.user("org1").signer, ca_bundle=bundle
    ).token
    rest_call(base, "GET", "/v1/whoami", ca_bundle=bundle, token=token)
    refused = kyodo("audit", "query", "--as", "user1", folder=network.folder)
    assert refused.returncode == 1 and "audit.read" in refused.stderr
    mine = query(network, "--user", "org1/client/user1", "--limit", "100")["records"]
    by_op = {r["operation"]: r for r in mine}
    assert by_op["Submit"]["subject"].startswith("submit asset_transfer.create_account")
    assert done.tx_id in by_op["Submit"]["subject"]
    assert by_op["Evaluate"]["decision"] == "allowed"
    assert by_op["GetBlock"]["subject"] == f"block {done.height}"
    assert by_op["GET /v1/whoami"]["transport"] == "rest"
    denied = by_op["AuditQuery"]  # reading the log is recorded, refusals included
    assert denied["decision"] == "refused" and "audit.read" in denied["rule"]
    assert all(len(r["response_sha256"]) == 64 for r in mine if r["decision"] == "allowed")
    by_key = query(network, "--key", done.tx_id)["records"]
    assert {r["operation"] for r in by_key} >= {"Submit"}
    admin_reads = query(network, "--user", "org1/admin/admin", "--op", "AuditQuery")
    assert admin_reads["records"], "the admin's own queries are in the log"


def test_an_export_verifies_and_any_change_names_the_record(network, tmp_path):
    export = tmp_path / "export.json"
    made = kyodo("audit", "export", "--out", str(export), folder=network.folder)
    assert made.returncode == 0, made.stderr
    ok = kyodo("audit", "verify", str(export), "--json", folder=network.folder)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signed_by_configured_key"] is True
    original = json.loads(export.read_text())
    assert len(original["export"]["records"]) >= 4
    cases = {
        "changed": lambda d: d["records"][2].__setitem__("identity", "org9/admin/someone"),
        "removed": lambda d: d["records"].pop(2),
        "reordered": lambda d: d["records"].insert(1, d["records"].pop(2)),
    }
    for name, change in cases.items():
        doc = copy.deepcopy(original)
        change(doc["export"])
        forged = tmp_path / f"{name}.json"
        forged.write_text(json.dumps(doc))
        failed = kyodo("audit", "verify", str(forged), "--json", folder=network.folder)
        assert failed.returncode == 1, name
        result = json.loads(failed.stdout)
        assert result["seq"] in (1, 2), (name, result)
        assert f"record {result['seq']}" in result["error"] or "records" in result["error"]


def test_the_root_is_anchored_on_the_ledger_and_only_nodes_can_anchor(network):
    first = kyodo("audit", "anchor", folder=network.folder)
    assert first.returncode == 0, first.stderr
    with network.gateway("org1") as gw:
        gw.contract("asset_transfer").evaluate("balance", "audited-1")  # the log grows
    second = kyodo("audit", "anchor", folder=network.folder)
    assert second.returncode == 0, second.stderr  # extends the first (consistency proof)
    node = network.nodes[0].node_id
    with network.gateway("org2") as gw:  # any organization reads the commitment
        latest = gw.contract("_audit").evaluate("latest", network.nodes[0].org_id, node)
        assert latest["node"] == node and latest["size"] >= 2
        with pytest.raises(AccessDenied):
            gw.contract("_audit").submit("anchor", 1, b"\0" * 32, 1, b"\0" * 64, [])


def test_an_edited_audit_record_on_disk_raises_the_alarm(network):
    from dataclasses import replace

    from rocksdict import Options, Rdict

    from kyodo.audit import AuditRecord
    from kyodo.codec import decode_record, encode
    from tests.integration.conftest import wait_until
    from tests.test_audit_log import _seq_key

    node = network.nodes[0]
    assert network.stop(node)
    path = node.home / "audit"
    families = {name: Options(raw_mode=True) for name in Rdict.list_cf(str(path))}
    db = Rdict(str(path), Options(raw_mode=True), column_families=families)
    try:
        records = db.get_column_family("records")
        record = decode_record(AuditRecord, records[_seq_key(1)])
        records.put(_seq_key(1), encode(replace(record, identity="org1/admin/nobody")))
        del records
    finally:
        db.close()
    network.start(node)

    def alarm() -> list[dict]:
        lines = (node.home / "node.log").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("event") == "audit_log_tampered"]

    raised = wait_until(alarm, timeout_s=30, what="the node to notice its edited audit log")
    assert "1" in raised[0]["detail"]
