"""The REST gateway on real nodes: login by signed challenge, bearer tokens, ACLs,
problem+json refusals (tools and browsers without a client certificate)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from kyodo.client import KyodoError, Unauthenticated, rest_call, rest_login
from tests.integration.conftest import wait_until
from tests.integration.test_network import kyodo


def base(network, org: str = "org1") -> str:
    return f"https://{next(n for n in network.nodes if n.org_id == org).rest}"


def bundle(network) -> bytes:
    return (network.folder / "ca-bundle.pem").read_bytes()


def login(network, org: str = "org1", user: str = "user1") -> str:
    creds = network.user(org, user)
    pem = (network.folder / "orgs" / org / "users" / user / "signing.pem").read_bytes()
    return rest_login(
        base(network, org), certificate_pem=pem, signer=creds.signer, ca_bundle=bundle(network)
    ).token


def call(network, method: str, path: str, token: str | None = None, body=None, org="org1"):
    return rest_call(
        base(network, org), method, path, ca_bundle=bundle(network), token=token, body=body
    )


def _valid_header_value(value: object) -> bool:
    """Whether ``value`` may appear in an HTTP/1.1 header (RFC 9110 field-value)."""
    text = str(value)
    return text == text.strip() and all(c == "\t" or " " <= c <= "~" for c in text)


def raw(network, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, str, dict]:
    """A request with an arbitrary body; (status, content type, JSON body)."""
    context = ssl.create_default_context(cadata=bundle(network).decode())
    request = urllib.request.Request(
        base(network) + path, data=data, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_the_login_command_gives_a_token_that_reads_and_queries_as_the_user(network):
    out = kyodo("login", "--org", "org2", "--json", folder=network.folder)
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["identity"] == "org2/client/user1"
    token = issued["access_token"]
    who = call(network, "GET", "/v1/whoami", token, org="org2")
    assert who["identity"] == "org2/client/user1"
    with network.gateway("org2") as gw:
        gw.contract("asset_transfer").submit("create_account", "rest-acct")
    status = call(network, "GET", "/v1/status", token, org="org2")
    assert status["org_id"] == "org2" and status["height"] >= 1
    tip = call(network, "GET", f"/v1/blocks/{status['height']}", token, org="org2")
    assert tip["height"] == status["height"] and len(tip["signers"]) >= 3
    tx_id = tip["transactions"][0]["tx_id"]
    tx = call(network, "GET", f"/v1/transactions/{tx_id}", token, org="org2")
    assert tx["contract"] == "asset_transfer" and tx["function"] == "create_account"
    balance = call(
        network,
        "POST",
        "/v1/contracts/asset_transfer/balance/evaluate",
        token,
        {"args": ["rest-acct"]},
        org="org2",
    )
    assert balance["result"] == 0
    with pytest.raises(KyodoError) as failed:
        call(
            network,
            "POST",
            "/v1/contracts/asset_transfer/balance/evaluate",
            token,
            {"args": ["nobody"]},
            org="org2",
        )
    assert failed.value.code == "contract_error" and "nobody" in str(failed.value)


def test_tokens_are_refused_without_login_elsewhere_after_logout_and_when_forged(network):
    token = login(network)
    with pytest.raises(Unauthenticated) as missing:
        call(network, "GET", "/v1/whoami")
    assert missing.value.code == "auth.token_missing"
    with pytest.raises(Unauthenticated) as foreign:  # org1's token at org2's gateway
        call(network, "GET", "/v1/whoami", token, org="org2")
    assert foreign.value.code == "auth.token_issuer"
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(Unauthenticated) as forged:
        call(network, "GET", "/v1/whoami", tampered)
    assert forged.value.code in ("auth.token_invalid", "auth.token_malformed")
    call(network, "POST", "/v1/auth/logout", token)
    with pytest.raises(Unauthenticated) as out:
        call(network, "GET", "/v1/whoami", token)
    assert out.value.code == "auth.token_revoked"


def test_a_login_needs_the_key_of_a_member_of_the_gateways_own_organization(network):
    pem = (network.folder / "orgs/org1/users/user1/signing.pem").read_bytes()
    challenge = call(network, "POST", "/v1/auth/challenge", body={"certificate": pem.decode()})
    with pytest.raises(Unauthenticated) as wrong:  # signed by someone else's key
        call(
            network,
            "POST",
            "/v1/auth/token",
            body={"challenge": challenge["challenge"], "signature": "AAAA" * 22 + "AA=="},
        )
    assert wrong.value.code == "auth.bad_signature"
    with pytest.raises(Unauthenticated) as reused:
        call(
            network,
            "POST",
            "/v1/auth/token",
            body={"challenge": challenge["challenge"], "signature": "AAAA" * 22 + "AA=="},
        )
    assert reused.value.code == "auth.challenge_unknown"
    org2 = (network.folder / "orgs/org2/users/user1/signing.pem").read_bytes()
    with pytest.raises(KyodoError) as mismatch:
        call(network, "POST", "/v1/auth/challenge", body={"certificate": org2.decode()})
    assert mismatch.value.code == "auth.identity_mismatch"
    node_cert = (network.nodes[0].home / "signing.pem").read_bytes()
    with pytest.raises(KyodoError) as node:
        call(network, "POST", "/v1/auth/challenge", body={"certificate": node_cert.decode()})
    assert node.value.code == "auth.wrong_role"


def test_bad_requests_are_problem_json_never_a_crash(network):
    cases = [
        (b"{not json", 400, "malformed"),
        (json.dumps({"certificate": "x" * 20_000}).encode(), 400, "malformed"),
        (json.dumps({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA"}).encode(), 400, None),
        (json.dumps({"certificate": "a", "extra": 1}).encode(), 400, "malformed"),
        (b"{}", 413, "too_large"),  # announced as 2 MiB: refused before it is read
    ]
    for data, status, code in cases:
        headers = {"Content-Type": "application/json"}
        if status == 413:
            headers["Content-Length"] = str(2 * 1024 * 1024)
        got, content_type, body = raw(network, "/v1/auth/challenge", data, headers)
        assert got == status, (data[:40], got, body)
        assert content_type == "application/problem+json"
        assert body["status"] == status and body["detail"]
        if code:
            assert body["code"] == code
    token = login(network)
    got, _, body = raw(
        network,
        "/v1/contracts/asset_transfer/balance/evaluate",
        json.dumps({"args": [1.5]}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert got == 400 and "float" in body["detail"]


def test_the_acl_and_revocation_apply_to_token_holders(network):
    folder = network.folder
    assert kyodo("ca", "issue", "tess", "--org", "org1", folder=folder).returncode == 0
    token = login(network, "org1", "tess")
    assert call(network, "GET", "/v1/blocks/0", token)["height"] == 0
    assert kyodo("acl", "set", "blocks.read", "'*.auditor'", folder=folder).returncode == 0

    def denied() -> bool:
        try:
            call(network, "GET", "/v1/blocks/0", token)
        except KyodoError as exc:
            assert exc.code == "access_denied" and "ACL rule 'blocks.read'" in str(exc)
            return True
        return False

    wait_until(denied, timeout_s=30, what="blocks.read for auditors only at org1's gateway")
    assert kyodo("acl", "reset", "blocks.read", folder=folder).returncode == 0
    revoked = kyodo("ca", "revoke", "tess", "--org", "org1", folder=folder)
    assert revoked.returncode == 0, revoked.stderr

    def refused() -> bool:
        try:
            call(network, "GET", "/v1/whoami", token)
        except Unauthenticated as exc:
            assert exc.code == "auth.revoked", exc
            return True
        return False

    wait_until(refused, timeout_s=30, what="the revoked member's token refused")


def test_the_openapi_description_lists_the_operations(network):
    description = call(network, "GET", "/openapi.json")
    assert description["openapi"].startswith("3.1")
    assert {"/v1/auth/challenge", "/v1/auth/token", "/v1/whoami", "/v1/status"} <= set(
        description["paths"]
    )


CHROMIUM = "/usr/bin/chromium"


def test_a_browser_logs_in_with_webcrypto_and_reads_as_the_user(network):
    """Real Chromium: the page signs the challenge with a non-extractable WebCrypto
    Ed25519 key, gets a token and calls the gateway with it."""
    import base64
    import os

    from cryptography.hazmat.primitives import serialization

    from kyodo.crypto import load_private_key

    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    user_dir = network.folder / "orgs/org3/users/user1"
    key = load_private_key(
        user_dir / "signing.key", (network.folder / "orgs/org3/passphrase").read_bytes().strip()
    )
    pkcs8 = key.private_bytes(  # handed to the page as a user would import their key
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    script = """async ({certPem, pkcs8}) => {
      const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
      const key = await crypto.subtle.importKey(
        'pkcs8', bytes(pkcs8), {name: 'Ed25519'}, false, ['sign']);
      const post = (path, body) => fetch(path, {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
      const challenge = await (await post('/v1/auth/challenge', {certificate: certPem})).json();
      const text = new TextEncoder();
      const message = new Uint8Array([...text.encode('kyodo/login/v1'), 0,
        ...text.encode(challenge.chain_id), 0, ...bytes(challenge.challenge)]);
      const signature = new Uint8Array(await crypto.subtle.sign({name: 'Ed25519'}, key, message));
      const issued = await (await post('/v1/auth/token', {challenge: challenge.challenge,
        signature: btoa(String.fromCharCode(...signature))})).json();
      const auth = {headers: {Authorization: 'Bearer ' + issued.access_token}};
      const who = await fetch('/v1/whoami', auth);
      const anonymous = await fetch('/v1/whoami');
      return {status: who.status, who: await who.json(), extractable: key.extractable,
              anonymous: anonymous.status, problem: anonymous.headers.get('content-type')};
    }"""
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(base(network, "org3") + "/openapi.json")  # the gateway's origin
            outcome = page.evaluate(
                script,
                {
                    "certPem": (user_dir / "signing.pem").read_text(),
                    "pkcs8": base64.b64encode(pkcs8).decode(),
                },
            )
        finally:
            browser.close()
    assert outcome["status"] == 200, outcome
    assert outcome["who"]["identity"] == "org3/client/user1"
    assert outcome["extractable"] is False
    assert outcome["anonymous"] == 401 and outcome["problem"] == "application/problem+json"


def _envelope_body(network, org: str, user: str, function: str, *args) -> dict[str, str]:
    import base64

    with network.gateway(org, user) as gw:
        envelope = gw.sign("asset_transfer", function, args)
    return {
        "payload": base64.b64encode(envelope.payload).decode(),
        "signature": base64.b64encode(envelope.signature).decode(),
    }


def test_transactions_are_submitted_over_rest_sync_and_async(network):
    token = login(network)
    body = _envelope_body(network, "org1", "user1", "create_account", "rest-sync")
    done = call(network, "POST", "/v1/transactions", token, body)
    assert done["state"] == "final" and done["status"] == 0
    assert done["result"]["owner"] == "org1/user1"
    with pytest.raises(KyodoError) as again:  # the same signed transaction twice
        call(network, "POST", "/v1/transactions", token, body)
    assert again.value.code == "rejected.duplicate"
    queued = _envelope_body(network, "org1", "user1", "create_account", "rest-async")
    accepted = call(network, "POST", "/v1/transactions?mode=async", token, queued)
    assert accepted["state"] in ("pending", "final")
    final = wait_until(
        lambda: (
            (s := call(network, "GET", f"/v1/transactions/{accepted['tx_id']}/status", token))[
                "state"
            ]
            == "final"
            and s
        ),
        timeout_s=30,
        what="the async transaction final",
    )
    assert final["status"] == 0 and final["height"] >= 1
    failing = _envelope_body(network, "org1", "user1", "transfer", "rest-sync", "nobody", 5)
    with pytest.raises(KyodoError) as failed:  # recorded in a block, refused by the contract
        call(network, "POST", "/v1/transactions", token, failing)
    assert failed.value.code == "contract_error" and "nobody" in str(failed.value)
    someone_else = _envelope_body(network, "org1", "admin", "create_account", "not-mine")
    with pytest.raises(KyodoError) as mismatch:
        call(network, "POST", "/v1/transactions", token, someone_else)
    assert mismatch.value.code == "auth.identity_mismatch"


def test_contracts_network_members_and_health_are_described(network):
    token = login(network)
    listed = call(network, "GET", "/v1/contracts", token)["contracts"]
    names = {c["name"] for c in listed}
    assert {"asset_transfer", "_lifecycle"} <= names
    transfer = call(network, "GET", "/v1/contracts/asset_transfer", token)
    functions = {f["name"]: f for f in transfer["functions"]}
    assert functions["balance"]["read_only"] and not functions["transfer"]["read_only"]
    assert [(p["name"], p["type"]) for p in functions["transfer"]["params"]] == [
        ("source", "str"),
        ("target", "str"),
        ("amount", "int"),
    ]
    members = call(network, "GET", "/v1/network", token)
    assert members["organizations"] == ["org1", "org2", "org3", "org4"]
    assert sum(n["validator"] for n in members["nodes"]) == 4
    assert call(network, "GET", "/healthz") == {"ok": True}


def test_schemathesis_finds_no_5xx_and_every_refusal_is_problem_json(network):
    """Every operation of the OpenAPI description, with generated and malformed inputs
    (schemathesis, positive and negative modes), as an authenticated user."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    raw = call(network, "GET", "/openapi.json")
    schema = schemathesis.openapi.from_dict(raw)
    token = login(network)
    bundle_file = network.folder / "ca-bundle.pem"
    bad: list[tuple[Any, ...]] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=15,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                if case.operation.path.endswith("events") and "wait_s" not in (case.query or {}):
                    case.query = {**(case.query or {}), "wait_s": 0}  # streams end after backlog
                response = case.call(
                    base_url=base(network),
                    headers={"Authorization": f"Bearer {token}"},
                    verify=str(bundle_file),
                    timeout=30,
                )
                kind = response.headers.get("content-type", "")
                kind = kind[0] if isinstance(kind, list) else kind
                if response.status_code == 400 and not all(
                    _valid_header_value(v) for v in (case.headers or {}).values()
                ):  # not HTTP at all: the server's HTTP parser refuses it, before the app
                    return
                if response.status_code >= 500 or (
                    response.status_code >= 400 and not kind.startswith("application/problem+json")
                ):
                    bad.append((case.operation.label, response.status_code, response.text))

            try:
                check()
            except Unsatisfiable:  # no malformed input exists (an operation without inputs)
                continue
    assert operations >= 10
    assert bad == [], bad[:5]
