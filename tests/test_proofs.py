"""Self-contained proofs (kyodo.ledger._proofs): built from a store, checked from genesis.

The chain: org1's one validator orders blocks 1-2; block 3 is a configuration
block (approved by org1's admin, certified by epoch 0) that adds org2 with three
validators (epoch 1: 4 validators, q = 3), and blocks 4-5 are certified by three
of them. Valid proofs must verify, and every tampered proof must be refused with
a ProofError whose reason says why; the fuzz tests check that no mutation of a
valid document, and no random JSON, raises anything else or proves anything false.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kyodo.cli import app as kyodo_app
from kyodo.cli._proof_cli import verify_proof_file
from kyodo.codec import decode_record, encode
from kyodo.crypto import Ed25519Signer, sha256
from kyodo.identity import CertificateAuthority, Role
from kyodo.ledger import (
    Block,
    BlockHeader,
    CommitSignature,
    LedgerStore,
    NetworkConfig,
    NodeInfo,
    OrgInfo,
    TxResult,
    approval_message,
    commit_message,
    encode_state_record,
    save_genesis,
    verify_store,
)
from kyodo.ledger._proofs import (
    PROOF_FORMAT,
    ProofError,
    VerifiedProof,
    build_block_proof,
    build_key_proof,
    build_tx_proof,
    verify_proof_document,
)
from tests._factories import (
    NODE_ID,
    NOW,
    NOW_MS,
    Identity,
    Writes,
    append,
    append_genesis,
    append_writes,
    build_block,
    make_envelope,
    make_network,
)

Doc = dict[str, Any]


# -- the chain ---------------------------------------------------------------------------


class Chain:
    """The store, the network, and the identities of both epochs."""

    def __init__(self, folder: Path) -> None:
        self.net = make_network()
        self.genesis = self.net.genesis
        self.store = LedgerStore(folder / "store")
        self.org2_nodes: list[Identity] = []
        self.outsider = Ed25519Signer.generate()
        append_genesis(self.store, self.net)
        # 1: two transactions; alpha, beta, gamma written
        self.block1 = append_writes(
            self.store,
            self.net,
            {("kv", "alpha"): 1, ("kv", "beta"): "b1"},
            {("kv", "gamma"): [1, 2]},
        )
        # 2: alpha overwritten, beta deleted
        self.block2 = append_writes(
            self.store, self.net, {("kv", "alpha"): 2}, {("kv", "beta"): None}
        )
        self.config1 = self._epoch1_config()
        self.block3 = self._append_config_block(self.config1)
        # 4, 5: under epoch 1, certified by 3 of its 4 validators
        self.signers1 = [self.net.node, *self.org2_nodes[:2]]
        self.block4 = self.append_epoch1(
            {("kv", "alpha"): 3, ("kv", "delta"): b"\x01"},
            {("kv", "eps"): {"m": 1}},
            {("kv", "alpha"): 4},
        )
        self.block5 = self.append_epoch1(*({("kv", f"z{i}"): i} for i in range(5)))

    def _epoch1_config(self) -> NetworkConfig:
        ca = CertificateAuthority.create("org2", now=NOW - timedelta(days=1))
        nodes = []
        for i in range(3):
            name = f"org2-node{i}"
            signer = Ed25519Signer.generate()
            pem = ca.issue_signing_cert(
                name=name, role=Role.NODE, public_key=signer.private_key.public_key(), now=NOW
            )
            ident = Identity(
                org="org2", role=Role.NODE, name=name, signer=signer, cert_der=_der(pem)
            )
            self.org2_nodes.append(ident)
            tls = ca.issue_tls_cert(
                name=name,
                role=Role.NODE,
                public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                now=NOW,
            )
            nodes.append(
                NodeInfo(
                    node_id=name,
                    org_id="org2",
                    signing_cert=ident.cert_der,
                    tls_cert_pem=tls,
                    host="127.0.0.1",
                    p2p_port=7061 + 2 * i,
                    gateway_port=7062 + 2 * i,
                    validator=True,
                )
            )
        old = self.net.config
        return replace(
            old,
            orgs=(*old.orgs, OrgInfo(org_id="org2", ca_cert_pem=ca.cert_pem)),
            nodes=(*old.nodes, *nodes),
            epoch=1,
            created_ms=NOW_MS + 2500,
            allow_fragile_topology=True,
        )

    def config_change(self, config: NetworkConfig, approver: str = "admin") -> Any:
        raw = encode(config)
        admin = self.net.users[approver]
        approval = [admin.cert_der, admin.signer.sign(approval_message(config.chain_id, raw))]
        return make_envelope(
            self.net.users["admin"],
            "_config",
            "update",
            [raw, [approval]],
            created_ms=NOW_MS + 3000,
        )

    def config_block(self, config: NetworkConfig, approver: str = "admin") -> tuple[Block, Any]:
        record = {"epoch": config.epoch, "sha256": sha256(encode(config)).hex()}
        envelope = self.config_change(config, approver)
        writes: Writes = {("_config", f"epoch/{config.epoch:010d}"): record}
        block, prepared = build_block(self.store, self.net, [(envelope, writes)])
        header = replace(block.header, config_hash=sha256(encode(config)))
        block = replace(
            block, header=header, config=config, certificate=certify(header, [self.net.node])
        )
        return block, prepared

    def _append_config_block(self, config: NetworkConfig) -> Block:
        block, prepared = self.config_block(config)
        append(self.store, block, prepared)
        return block

    def append_epoch1(self, *tx_writes: Writes) -> Block:
        height = self.tip + 1
        txs = [
            (
                make_envelope(
                    self.net.users["user1"],
                    "kv",
                    "put",
                    [height, i],
                    created_ms=NOW_MS + height * 1000,
                ),
                writes,
            )
            for i, writes in enumerate(tx_writes)
        ]
        block, prepared = build_block(self.store, self.net, txs)
        header = replace(block.header, epoch=1)
        block = replace(block, header=header, certificate=certify(header, self.signers1))
        append(self.store, block, prepared)
        return block

    @property
    def tip(self) -> int:
        height = self.store.height()
        assert height is not None
        return height

    def verify(self, doc: Doc) -> VerifiedProof:
        """Verify through a JSON round trip, as an auditor receives it."""
        return verify_proof_document(json.loads(json.dumps(doc)), self.genesis)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def certify(header: BlockHeader, signers: Sequence[Identity]) -> tuple[CommitSignature, ...]:
    message = commit_message(header.chain_id, header.block_hash())
    return tuple(CommitSignature(signer=s.name, signature=s.signer.sign(message)) for s in signers)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    made = Chain(tmp_path_factory.mktemp("proofs"))
    yield made
    made.store.close()


def refused(chain: Chain, doc: Doc, reason: str) -> ProofError:
    with pytest.raises(ProofError) as caught:
        chain.verify(doc)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


def tx_id_of(block: Block, index: int) -> bytes:
    return block.txs[index].tx_id()


def flip_hex(text: str, position: int = 0) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[position % len(raw)] ^= 0x01
    return raw.hex()


# -- the chain is real -------------------------------------------------------------------


def test_the_chain_with_its_configuration_change_passes_the_full_store_check(chain):
    assert verify_store(chain.store, chain.genesis) == 5
    assert [c.epoch for _, c in chain.store.get_configs()] == [0, 1]


# -- valid proofs ------------------------------------------------------------------------


@pytest.mark.parametrize("height", [0, 1, 2, 3, 4, 5])
def test_a_block_proof_verifies_at_every_height(chain, height):
    doc = build_block_proof(chain.store, height)
    proven = chain.verify(doc)
    header = chain.store.get_header(height)
    assert proven.kind == "block" and proven.height == height and proven.header == header
    assert proven.block_hash == header.block_hash()
    assert len(doc["trust_path"]) == (1 if height > 3 else 0)  # block 3 is in force from 4
    assert doc["format"] == PROOF_FORMAT and doc["genesis_hash"] == chain.genesis.block_hash().hex()


@pytest.mark.parametrize(("block_name", "index"), [("block1", 1), ("block3", 0), ("block5", 3)])
def test_a_transaction_proof_verifies_with_its_result(chain, block_name, index):
    block = getattr(chain, block_name)
    tx_id = tx_id_of(block, index)
    proven = chain.verify(build_tx_proof(chain.store, tx_id))
    assert proven.kind == "tx" and proven.tx_id == tx_id
    assert proven.height == block.header.height and proven.block_hash == block.block_hash()
    assert proven.tx_result == block.results[index]
    assert proven.status == 0 and proven.result is None
    assert proven.transaction == block.txs[index].transaction()


@pytest.mark.parametrize(
    ("key", "height", "value", "version"),
    [
        ("alpha", 1, 1, (1, 0)),
        ("alpha", 2, 2, (2, 0)),
        ("alpha", 3, 2, (2, 0)),  # historic, from the history: overwritten at 4
        ("alpha", 5, 4, (4, 2)),  # written twice in block 4: the later write holds
        ("alpha", None, 4, (4, 2)),
        ("beta", 1, "b1", (1, 0)),
        ("beta", 2, None, None),  # deleted at 2
        ("beta", 5, None, None),
        ("gamma", 5, [1, 2], (1, 1)),
        ("delta", 4, b"\x01", (4, 0)),
        ("delta", 3, None, None),  # not yet written
        ("never", 5, None, None),
        ("alpha", 0, None, None),  # genesis: the empty state
    ],
)
def test_a_key_proof_verifies_presence_absence_and_history(chain, key, height, value, version):
    doc = build_key_proof(chain.store, "kv", key, height)
    proven = chain.verify(doc)
    assert proven.kind == "key" and (proven.namespace, proven.key) == ("kv", key)
    assert proven.height == (chain.tip if height is None else height)
    assert proven.value == value and proven.version == version
    assert (doc["key"]["record"] is None) == (version is None)


def test_builders_refuse_what_the_store_does_not_hold(chain):
    for build in (
        lambda: build_block_proof(chain.store, 6),
        lambda: build_block_proof(chain.store, -1),
        lambda: build_tx_proof(chain.store, bytes(32)),
        lambda: build_key_proof(chain.store, "kv", "alpha", 6),
    ):
        with pytest.raises(ProofError) as caught:
            build()
        assert caught.value.reason == "not_found"
    with pytest.raises(ProofError) as caught:
        build_key_proof(chain.store, "kv\x00x", "alpha")
    assert caught.value.reason == "wrong_key"


def test_what_was_proven_is_json_ready(chain):
    tx = chain.verify(build_tx_proof(chain.store, tx_id_of(chain.block4, 2))).to_dict()
    assert tx["kind"] == "tx" and tx["function"] == "put" and tx["args"] == [4, 2]
    key = chain.verify(build_key_proof(chain.store, "kv", "delta")).to_dict()
    assert key["value"] == {"hex": "01"} and key["version"] == [4, 0] and key["present"]
    json.dumps([tx, key])


# -- tampered transaction proofs ---------------------------------------------------------


@pytest.fixture
def tx_doc(chain: Chain) -> Doc:
    return build_tx_proof(chain.store, tx_id_of(chain.block5, 1))  # index 1 of 5: 3 hashes


def test_a_swapped_sibling_order_is_refused(chain, tx_doc):
    path = tx_doc["tx"]["txs_path"]
    assert len(path) == 3
    path[0], path[1] = path[1], path[0]
    refused(chain, tx_doc, "inclusion")


@pytest.mark.parametrize("field", ["txs_path", "results_path"])
def test_truncated_and_extended_merkle_paths_are_refused(chain, tx_doc, field):
    short = copy.deepcopy(tx_doc)
    short["tx"][field].pop()
    refused(chain, short, "inclusion")
    long = copy.deepcopy(tx_doc)
    long["tx"][field].append(sha256(b"extra").hex())
    refused(chain, long, "inclusion")
    empty = copy.deepcopy(tx_doc)
    empty["tx"][field] = []
    refused(chain, empty, "inclusion")


def test_a_swapped_transaction_index_is_refused(chain, tx_doc):
    for index in (0, 2, 3, 4):
        tx_doc["tx"]["index"] = index
        refused(chain, tx_doc, "inclusion")
    tx_doc["tx"]["index"] = 5
    refused(chain, tx_doc, "malformed")  # not below tx_count


def test_another_transaction_of_the_block_cannot_borrow_the_path(chain, tx_doc):
    other = chain.block5.txs[2]
    tx_doc["tx"]["envelope"] = encode(other).hex()
    refused(chain, tx_doc, "inclusion")  # names tx_id of another
    tx_doc["tx"]["tx_id"] = other.tx_id().hex()
    refused(chain, tx_doc, "inclusion")  # result of another
    tx_doc["tx"]["result"] = encode(chain.block5.results[2]).hex()
    refused(chain, tx_doc, "inclusion")  # wrong position on the path


def test_an_altered_result_is_refused(chain, tx_doc):
    result = decode_record(TxResult, bytes.fromhex(tx_doc["tx"]["result"]))
    for altered in (
        replace(result, status=1, message="insufficient funds"),
        replace(result, result=1000),
    ):
        tx_doc["tx"]["result"] = encode(altered).hex()
        refused(chain, tx_doc, "inclusion")
    tx_doc["tx"]["result"] = flip_hex(encode(result).hex(), 0)
    refused(chain, tx_doc, "malformed")


def test_a_transaction_proof_against_the_header_of_another_height_is_refused(chain, tx_doc):
    other = build_block_proof(chain.store, 4)
    moved = {**tx_doc, **{k: other[k] for k in ("header", "certificate", "block_hash")}}
    refused(chain, moved, "stale")  # says height 5
    moved["height"] = 4
    refused(chain, moved, "inclusion")


# -- tampered key proofs -----------------------------------------------------------------


@pytest.fixture
def key_doc(chain: Chain) -> Doc:
    return build_key_proof(chain.store, "kv", "alpha", 2)


def test_state_proof_sibling_order_truncation_and_extension_are_refused(chain, key_doc):
    siblings = key_doc["key"]["proof"]["siblings"]
    assert len(siblings) >= 2
    swapped = copy.deepcopy(key_doc)
    s = swapped["key"]["proof"]["siblings"]
    s[0], s[1] = s[1], s[0]
    refused(chain, swapped, "state")
    short = copy.deepcopy(key_doc)
    short["key"]["proof"]["siblings"].pop()
    refused(chain, short, "state")
    long = copy.deepcopy(key_doc)
    long["key"]["proof"]["siblings"].append(sha256(b"extra").hex())
    refused(chain, long, "state")


def test_a_proof_of_another_key_is_refused(chain, key_doc):
    for namespace, key in (("kv", "gamma"), ("kv2", "alpha"), ("kv", "alpha2")):
        other = copy.deepcopy(key_doc)
        other["key"]["namespace"], other["key"]["key"] = namespace, key
        refused(chain, other, "wrong_key")
    # the NUL separator cannot be moved between namespace and key
    other = copy.deepcopy(key_doc)
    other["key"]["namespace"], other["key"]["key"] = "kv\x00alpha", ""
    refused(chain, other, "malformed")


def test_a_changed_value_or_version_is_refused(chain, key_doc):
    for record in (
        encode_state_record(999, 2, 0),
        encode_state_record(2, 1, 0),
        encode_state_record(2, 2, 1),
    ):
        key_doc["key"]["record"] = record.hex()
        refused(chain, key_doc, "state")
    key_doc["key"]["record"] = encode_state_record(2, 4, 0).hex()
    refused(chain, key_doc, "stale")  # written after the proof's height


def test_presence_cannot_be_turned_into_absence_or_back(chain, key_doc):
    absent = copy.deepcopy(key_doc)
    absent["key"]["record"] = None
    refused(chain, absent, "state")
    gone = build_key_proof(chain.store, "kv", "beta", 2)
    gone["key"]["record"] = encode_state_record("b1", 1, 0).hex()
    refused(chain, gone, "state")


def test_a_stale_root_presented_as_newer_is_refused(chain, key_doc):
    newer = build_block_proof(chain.store, 4)
    stale = {
        **key_doc,
        **{k: newer[k] for k in ("header", "certificate", "block_hash", "trust_path")},
    }
    refused(chain, stale, "stale")  # the document still says height 2
    stale["height"] = 4
    refused(chain, stale, "state")  # alpha=2 is not in block 4's state
    relabelled = copy.deepcopy(key_doc)
    relabelled["height"] = 4
    refused(chain, relabelled, "stale")


def test_an_absence_proof_also_proves_the_absence_of_keys_on_the_same_path(chain):
    """Not a forgery: an absence proof ending in an empty subtree (or another key's
    leaf) shows every key on that path absent, which the store confirms."""
    doc = build_key_proof(chain.store, "kv", "never", 5)
    for i in range(200):
        other = copy.deepcopy(doc)
        other["key"]["key"] = f"other{i}"
        try:
            proven = chain.verify(other)
        except ProofError as exc:
            assert exc.reason == "state"
            continue
        assert proven.value is None and chain.store.get_history("kv", f"other{i}") == []


# -- forged certificates and trust paths -------------------------------------------------


@pytest.fixture
def block4_doc(chain: Chain) -> Doc:
    return build_block_proof(chain.store, 4)


def test_forged_target_certificates_are_refused(chain, block4_doc):
    header = chain.block4.header
    certificate = block4_doc["certificate"]
    assert len(certificate) == 3
    cases: list[list[dict[str, str]]] = [
        [
            {**certificate[0], "signature": flip_hex(certificate[0]["signature"], 7)},
            *certificate[1:],
        ],
        [*certificate[:2], {**certificate[2], "signer": "mallory"}],
        certificate[:2],  # 2 of 4, q = 3
        [certificate[0], certificate[1], certificate[1]],  # a duplicate signer
        [],
        [  # a key that is not org2-node2's, in its name
            *certificate[:2],
            {
                "signer": "org2-node2",
                "signature": chain.outsider.sign(
                    commit_message(header.chain_id, header.block_hash())
                ).hex(),
            },
        ],
        [  # the old epoch's validator alone
            {"signer": s.signer, "signature": s.signature.hex()}
            for s in certify(header, [chain.net.node])
        ],
    ]
    for forged in cases:
        refused(chain, {**block4_doc, "certificate": forged}, "certificate")


def test_a_header_signed_for_another_network_or_block_is_refused(chain, block4_doc):
    header = chain.block4.header
    other_chain = [
        {
            "signer": s.name,
            "signature": s.signer.sign(commit_message("other", header.block_hash())).hex(),
        }
        for s in chain.signers1
    ]
    refused(chain, {**block4_doc, "certificate": other_chain}, "certificate")
    block5 = build_block_proof(chain.store, 5)
    refused(chain, {**block4_doc, "certificate": block5["certificate"]}, "certificate")


def test_a_forged_proposer_is_refused(chain, block4_doc):
    header = replace(chain.block4.header, proposer="mallory")
    forged = {
        **block4_doc,
        "header": encode(header).hex(),
        "block_hash": header.block_hash().hex(),
        "certificate": [
            {"signer": c.signer, "signature": c.signature.hex()}
            for c in certify(header, chain.signers1)
        ],
    }
    refused(chain, forged, "certificate")


def test_a_configuration_block_with_a_forged_certificate_is_refused(chain, block4_doc):
    block = chain.block3
    bad_signature = replace(
        block.certificate[0],
        signature=bytes.fromhex(flip_hex(block.certificate[0].signature.hex())),
    )
    outsider = CommitSignature(signer="mallory", signature=bad_signature.signature)
    for certificate in ((bad_signature,), (), (outsider,)):
        forged = encode(replace(block, certificate=certificate)).hex()
        refused(chain, {**block4_doc, "trust_path": [forged]}, "certificate")


def test_a_configuration_block_with_another_configuration_is_refused(chain, block4_doc):
    """The certified header commits to the configuration by its hash: another body does
    not match it, a header naming another configuration is not what the validators
    signed, and re-signing it needs the old validators' keys and still the admins'
    approval of exactly that configuration."""
    block = chain.block3
    assert block.config is not None
    mine = replace(block.config, nodes=(*block.config.nodes[:1], *block.config.nodes[2:]))
    swapped = replace(block, config=mine)
    refused(chain, {**block4_doc, "trust_path": [encode(swapped).hex()]}, "config")
    header = replace(block.header, config_hash=sha256(encode(mine)))
    unsigned = replace(swapped, header=header)
    refused(chain, {**block4_doc, "trust_path": [encode(unsigned).hex()]}, "certificate")
    resigned = replace(swapped, header=header, certificate=certify(header, [chain.net.node]))
    refused(chain, {**block4_doc, "trust_path": [encode(resigned).hex()]}, "config")


def test_a_certified_configuration_block_without_admin_approval_is_refused(chain):
    """Even the validators cannot add a configuration the admin policy did not approve:
    here a client (user1), not an admin, signed the approval."""
    forged, _prepared = chain.config_block(chain.config1, approver="user1")
    header = replace(
        forged.header,
        height=3,
        prev_hash=chain.block2.block_hash(),
        timestamp_ms=chain.block3.header.timestamp_ms,
    )
    forged = replace(forged, header=header, certificate=certify(header, [chain.net.node]))
    doc = build_block_proof(chain.store, 4)
    doc["trust_path"] = [encode(forged).hex()]
    error = refused(chain, doc, "config")
    assert "not an admin" in str(error)


def test_trust_path_gaps_reorderings_and_extras_are_refused(chain, block4_doc):
    refused(chain, {**block4_doc, "trust_path": []}, "epoch")  # epoch 1 never reached
    path = block4_doc["trust_path"]
    refused(chain, {**block4_doc, "trust_path": path * 2}, "config")
    early = build_block_proof(chain.store, 3)
    refused(chain, {**early, "trust_path": path}, "config")  # not before the target
    ordinary = encode(chain.block2).hex()
    refused(chain, {**block4_doc, "trust_path": [ordinary, *path]}, "config")
    refused(chain, {**block4_doc, "trust_path": [flip_hex(path[0], 3)]}, "malformed")


def test_a_proof_for_another_network_or_genesis_is_refused(chain, block4_doc):
    other = make_network()  # the same chain id, another genesis
    with pytest.raises(ProofError) as caught:
        verify_proof_document(block4_doc, other.genesis)
    assert caught.value.reason == "genesis"
    refused(chain, {**block4_doc, "genesis_hash": other.genesis.block_hash().hex()}, "genesis")
    refused(chain, {**block4_doc, "chain_id": "kyodo-other"}, "chain_id")
    foreign = make_network(chain_id="kyodo-other")
    with pytest.raises(ProofError) as caught:
        verify_proof_document(block4_doc, foreign.genesis)
    assert caught.value.reason == "chain_id"


def test_the_genesis_header_cannot_be_replaced(chain):
    doc = build_block_proof(chain.store, 0)
    header = replace(chain.genesis.header, timestamp_ms=1)
    forged = {**doc, "header": encode(header).hex(), "block_hash": header.block_hash().hex()}
    refused(chain, forged, "genesis")
    refused(chain, {**doc, "certificate": [{"signer": NODE_ID, "signature": "00" * 64}]}, "genesis")


def test_an_unusable_trusted_genesis_is_refused(chain, block4_doc):
    for genesis in (chain.block4, "genesis", replace(chain.genesis, config=chain.config1)):
        with pytest.raises(ProofError) as caught:
            verify_proof_document(block4_doc, genesis)  # type: ignore[arg-type]
        assert caught.value.reason == "genesis"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format": "kyodo-proof/v2"}, "format"),
        ({"kind": "receipt"}, "format"),
        ({"kind": "tx"}, "malformed"),  # no tx section
        ({"extra": 1}, "malformed"),
        ({"height": True}, "malformed"),
        ({"height": -1}, "malformed"),
        ({"height": 2**70}, "malformed"),
        ({"header": "ABCD"}, "malformed"),
        ({"header": "0 1"}, "malformed"),
        ({"block_hash": "00" * 31}, "malformed"),
        ({"trust_path": "x"}, "malformed"),
        ({"certificate": [{"signer": "a"}]}, "malformed"),
        ({"certificate": [{"signer": "a", "signature": "a" * 2000}]}, "malformed"),
    ],
)
def test_malformed_documents_are_refused(chain, block4_doc, change, reason):
    refused(chain, {**block4_doc, **change}, reason)


def test_oversized_fields_are_refused_before_decoding(chain, tx_doc):
    tx_doc["tx"]["envelope"] = "00" * (3 * 1024 * 1024)
    refused(chain, tx_doc, "malformed")
    tx_doc["tx"]["txs_path"] = [sha256(b"x").hex()] * 65
    refused(chain, tx_doc, "malformed")


# -- fuzzing -----------------------------------------------------------------------------


def _is_true(chain: Chain, proven: VerifiedProof) -> bool:
    """Whether a statement holds in the real chain (the store, which built the proofs)."""
    if proven.header != chain.store.get_header(proven.height):
        return False
    if proven.kind == "tx":
        assert proven.tx_id is not None
        location = chain.store.get_tx_location(proven.tx_id)
        if location is None or location[0] != proven.height:
            return False
        block = chain.store.get_block(proven.height)
        return block is not None and block.results[location[1]] == proven.tx_result
    if proven.kind == "key":
        assert proven.namespace is not None and proven.key is not None
        truth = chain.verify(
            build_key_proof(chain.store, proven.namespace, proven.key, proven.height)
        )
        return (truth.value, truth.version) == (proven.value, proven.version)
    return True


_DOMAIN_STRINGS = st.sampled_from(
    ["block", "tx", "key", PROOF_FORMAT, "kv", "alpha", "never", NODE_ID, "org2-node0", "00" * 32]
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | _DOMAIN_STRINGS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _mutate(doc: Any, data: st.DataObject) -> Any:
    paths = list(_paths(doc))[1:]
    paths.reverse()  # deepest fields first: drawing favours them, and shrinks towards them
    path = data.draw(st.sampled_from(paths), label="path")
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    old = parent[last]
    ops = ["replace", "delete"]
    if isinstance(old, str) and old and len(old) % 2 == 0:
        ops += ["flip_byte", "flip_byte", "truncate", "extend"]
    if isinstance(old, int) and not isinstance(old, bool):
        ops.append("nudge")
    if isinstance(old, list):
        ops += ["duplicate", "swap", "drop"] if old else ["duplicate"]
    if isinstance(old, dict):
        ops.append("add_field")
    op = data.draw(st.sampled_from(ops), label="op")
    if op == "replace":
        parent[last] = data.draw(_JSON, label="value")
    elif op == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif op == "flip_byte":
        try:
            raw = bytearray(bytes.fromhex(old))
        except ValueError:
            raw = bytearray(old.encode())
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        parent[last] = raw.hex()
    elif op == "truncate":
        parent[last] = old[: data.draw(st.integers(0, len(old) - 1), label="cut")]
    elif op == "extend":
        parent[last] = old + data.draw(st.sampled_from(["00", "ff", "0", "zz", old]), label="tail")
    elif op == "nudge":
        parent[last] = old + data.draw(st.sampled_from([-1, 1, 2**32, -(2**64)]), label="delta")
    elif op == "duplicate":
        item = data.draw(st.sampled_from(old), label="item") if old else data.draw(_JSON)
        old.insert(data.draw(st.integers(0, len(old)), label="at"), copy.deepcopy(item))
    elif op == "swap":
        i = data.draw(st.integers(0, len(old) - 1), label="i")
        j = data.draw(st.integers(0, len(old) - 1), label="j")
        old[i], old[j] = old[j], old[i]
    elif op == "drop":
        old.pop(data.draw(st.integers(0, len(old) - 1), label="at"))
    elif op == "add_field":
        old[data.draw(st.text(max_size=8) | _DOMAIN_STRINGS, label="name")] = data.draw(_JSON)
    return doc


@pytest.fixture(scope="module")
def valid_docs(chain: Chain) -> list[tuple[Doc, VerifiedProof]]:
    docs = [
        build_block_proof(chain.store, 4),
        build_block_proof(chain.store, 0),
        build_tx_proof(chain.store, tx_id_of(chain.block5, 1)),
        build_tx_proof(chain.store, tx_id_of(chain.block3, 0)),
        build_key_proof(chain.store, "kv", "alpha", 3),
        build_key_proof(chain.store, "kv", "beta", 5),
        build_key_proof(chain.store, "kv", "never", 4),
    ]
    return [(doc, chain.verify(doc)) for doc in docs]


@settings(
    max_examples=1000,
    deadline=None,
    database=None,  # examples saved by an older _mutate would replay as other draws
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_documents_raise_only_proof_errors_and_prove_nothing_false(chain, valid_docs, data):
    doc, original = data.draw(st.sampled_from(valid_docs), label="document")
    mutated = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutated = _mutate(mutated, data)
    try:
        proven = verify_proof_document(mutated, chain.genesis)
    except ProofError as exc:
        assert exc.reason != "unexpected", str(exc)  # every refusal is classified
        return
    # A mutation that still verifies proves the same statement or, for an absence
    # proof read as another key's, a statement the chain confirms.
    assert proven == original or _is_true(chain, proven), (original, proven)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    doc=_JSON
    | st.fixed_dictionaries(
        {"format": st.just(PROOF_FORMAT), "kind": _DOMAIN_STRINGS},
        optional={"chain_id": _JSON, "height": _JSON, "key": _JSON, "tx": _JSON},
    )
)
def test_random_json_raises_only_proof_errors(chain, doc):
    with pytest.raises(ProofError) as caught:
        verify_proof_document(doc, chain.genesis)
    assert caught.value.reason != "unexpected", str(caught.value)


# -- the command -------------------------------------------------------------------------


@pytest.fixture
def files(chain: Chain, tmp_path: Path) -> tuple[Path, Path]:
    genesis = tmp_path / "genesis.block"
    save_genesis(genesis, chain.genesis)
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(build_key_proof(chain.store, "kv", "alpha", 3)))
    return proof, genesis


def test_verify_proof_file_reads_and_verifies(chain, files):
    proof, genesis = files
    proven = verify_proof_file(proof, genesis)
    assert (proven.value, proven.version, proven.height) == (2, (2, 0), 3)


def test_verify_proof_file_refuses_unreadable_input(chain, files, tmp_path):
    proof, genesis = files
    cases = [
        (tmp_path / "missing.json", genesis, "io"),
        (proof, tmp_path / "missing.block", "genesis"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json \xff")
    cases.append((bad, genesis, "malformed"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cases.append((deep, genesis, "malformed"))
    for path, genesis_path, reason in cases:
        with pytest.raises(ProofError) as caught:
            verify_proof_file(path, genesis_path)
        assert caught.value.reason == reason


def test_the_command_prints_what_was_proven(chain, files, tmp_path):
    proof, genesis = files
    runner = CliRunner()
    shown = runner.invoke(kyodo_app, ["verify-proof", str(proof), "--genesis", str(genesis)])
    assert shown.exit_code == 0, shown.output
    assert "verified" in shown.stdout and "kv/alpha = 2" in shown.stdout
    as_json = runner.invoke(
        kyodo_app, ["verify-proof", str(proof), "--genesis", str(genesis), "--json"]
    )
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["value"] == 2
    tx = tmp_path / "tx.json"
    tx.write_text(json.dumps(build_tx_proof(chain.store, tx_id_of(chain.block4, 0))))
    shown = runner.invoke(kyodo_app, ["verify-proof", str(tx), "--genesis", str(genesis)])
    assert shown.exit_code == 0 and "status: OK" in shown.stdout


def test_the_command_fails_with_the_reason(chain, files):
    proof, genesis = files
    doc = json.loads(proof.read_text())
    doc["key"]["record"] = encode_state_record(3, 2, 0).hex()
    proof.write_text(json.dumps(doc))
    runner = CliRunner()
    failed = runner.invoke(kyodo_app, ["verify-proof", str(proof), "--genesis", str(genesis)])
    assert failed.exit_code == 1
    assert "error:" in failed.stderr and "[state]" in failed.stderr
    failed = runner.invoke(
        kyodo_app, ["verify-proof", str(proof), "--genesis", str(genesis), "--json"]
    )
    assert failed.exit_code == 1 and json.loads(failed.stdout)["reason"] == "state"
