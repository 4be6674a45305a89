"""The ``_audit`` contract: a node's audit-log root may only ever extend the last one."""

from __future__ import annotations

import pytest

from kyodo.contract.testing import LocalLedger, TxFailed
from kyodo.contracts import AuditAnchorContract
from kyodo.crypto import compute_consistency_proof, merkle_root
from kyodo.ledger import TxStatus

LEAVES = [f"record {i}".encode() for i in range(20)]
SIG = b"\x01" * 64


def ledger() -> LocalLedger:
    return LocalLedger(builtins={"_audit": AuditAnchorContract})


def anchor(ledger: LocalLedger, node, size: int, root: bytes, proof: list[bytes]) -> None:
    ledger.submit(node, "_audit", "anchor", size, root, 1, SIG, proof)


def test_roots_that_extend_the_last_one_are_anchored_and_others_refused():
    chain = ledger()
    node = chain.member("org1", "org1-node0", role="node")
    anchor(chain, node, 5, merkle_root(LEAVES[:5]), [])
    anchor(chain, node, 12, merkle_root(LEAVES[:12]), compute_consistency_proof(LEAVES[:12], 5))
    latest = chain.query(node, "_audit", "latest", "org1", "org1-node0")
    assert latest["size"] == 12 and latest["root"] == merkle_root(LEAVES[:12])
    rewritten = [*LEAVES[:3], b"forged", *LEAVES[4:15]]
    for size, root, proof, says in (
        (10, merkle_root(LEAVES[:10]), [], "shrank"),
        (12, merkle_root(rewritten[:12]), [], "rewritten"),
        (15, merkle_root(rewritten), compute_consistency_proof(rewritten, 12), "does not extend"),
    ):
        with pytest.raises(TxFailed, match=says):
            anchor(chain, node, size, root, proof)
    assert chain.query(node, "_audit", "latest", "org1", "org1-node0")["size"] == 12


def test_only_nodes_anchor_and_only_their_own_log():
    chain = ledger()
    member = chain.member("org1", "mallory")
    with pytest.raises(TxFailed) as refused:
        anchor(chain, member, 5, merkle_root(LEAVES[:5]), [])
    assert refused.value.status is TxStatus.ACCESS_DENIED
    other = chain.member("org2", "org2-node0", role="node")
    anchor(chain, other, 3, merkle_root(LEAVES[:3]), [])
    assert chain.query(other, "_audit", "latest", "org1", "org1-node0") is None


def test_another_organization_cannot_take_over_a_nodes_anchor():
    """org2's CA can certify a node named like org1's: its anchors land under org2."""
    chain = ledger()
    real = chain.member("org1", "org1-node0", role="node")
    impostor = chain.member("org2", "org1-node0", role="node")
    anchor(chain, impostor, 2**40, merkle_root(LEAVES[:3]), [])
    anchor(chain, real, 5, merkle_root(LEAVES[:5]), [])  # not refused as "shrank"
    assert chain.query(real, "_audit", "latest", "org1", "org1-node0")["size"] == 5
