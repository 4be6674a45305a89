"""Tests of kyodo.audit: appends, queries, roots and proofs, durability, exports, tampering."""

from __future__ import annotations

import copy
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from kyodo.audit import (
    CHECKPOINT_DOMAIN,
    EXPORT_FORMAT,
    TEXT_LIMITS,
    AuditCheckpoint,
    AuditLog,
    AuditRecord,
    AuditStoreError,
    AuditVerificationError,
    ExportReport,
    checkpoint_message,
    compute_record_hash,
    verify_checkpoint,
    verify_export,
)
from kyodo.codec import (
    DecodeError,
    decode,
    decode_record,
    encode,
    encode_value,
    record_class,
    to_plain,
)
from kyodo.crypto import (
    ZERO_HASH,
    EcdsaP256Signer,
    Ed25519Signer,
    InvalidSignatureError,
    MerkleProofError,
    compute_consistency_proof,
    compute_inclusion_proof,
    merkle_root,
    sha256,
    verify_consistency,
    verify_inclusion,
)

ROOT_DIR = Path(__file__).resolve().parent.parent
BASE_MS = 1_700_000_000_000
IDENTITIES = ("org1/client/alice", "org1/client/bob", "org1/admin/carol")
OPERATIONS = ("submit", "evaluate", "get_block", "get_tx")
SIGNER = Ed25519Signer.generate()


def fill(log: AuditLog, count: int) -> list[AuditRecord]:
    """Append ``count`` varied records, 10 ms apart."""
    out = []
    for _ in range(count):
        i = log.size()
        out.append(
            log.append(
                identity=IDENTITIES[i % 3],
                tls_identity=IDENTITIES[i % 3],
                peer=f"ipv4:10.0.0.{i % 7}:5000",
                transport=("grpc", "rest", "admin")[i % 3],
                operation=OPERATIONS[i % 4],
                subject=f"tx:{i:064x}" if i % 2 else f"height:{i}",
                decision="refused" if i % 5 == 4 else "allowed",
                rule="acl.blocks.read" if i % 5 != 4 else "access_denied",
                detail="" if i % 5 != 4 else f"refused call {i}",
                response_sha256=sha256(str(i).encode()) if i % 5 != 4 else b"",
                time_ms=BASE_MS + 10 * i,
            )
        )
    return out


def hashes_of(log: AuditLog) -> list[bytes]:
    return [compute_record_hash(r) for r in log.iter()]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(tmp_path / "audit", node_id="org1-node0") as audit_log:
        yield audit_log


# --------------------------------------------------------------------------
# Appending and reading
# --------------------------------------------------------------------------


def test_append_assigns_seq_chain_and_time(tmp_path: Path) -> None:
    clock = iter(range(BASE_MS, BASE_MS + 100))
    with AuditLog(tmp_path / "a", clock_ms=lambda: next(clock)) as log:
        assert log.size() == 0
        assert log.head_hash() == ZERO_HASH
        first = log.append(
            identity="anonymous", transport="grpc", operation="status", decision="refused"
        )
        second = log.append(
            identity="org1/client/alice",
            transport="rest",
            operation="get_block",
            decision="allowed",
            subject="height:5",
            response_sha256=sha256(b"body"),
        )
        assert (first.seq, first.prev_hash, first.time_ms) == (0, ZERO_HASH, BASE_MS)
        assert (second.seq, second.time_ms) == (1, BASE_MS + 1)
        assert second.prev_hash == compute_record_hash(first) == sha256(encode(first))
        assert log.head_hash() == compute_record_hash(second)
        assert log.size() == 2
        assert log.get(0) == first and log.get(1) == second
        assert log.get(2) is None and log.get(-1) is None
        assert list(log.iter()) == [first, second]
        assert list(log.iter(1)) == [second]
        assert list(log.iter(1, 1)) == []


def test_records_are_canonical_codec_records() -> None:
    assert record_class(80) is AuditRecord
    assert record_class(81) is AuditCheckpoint
    rec = AuditRecord(
        seq=3,
        time_ms=BASE_MS,
        identity="org1/client/alice",
        tls_identity="org1/client/alice",
        peer="ipv4:127.0.0.1:1",
        transport="grpc",
        operation="submit",
        subject="tx:00",
        decision="allowed",
        rule="",
        detail="",
        response_sha256=b"",
        prev_hash=bytes(range(32)),
    )
    assert decode(encode(rec)) == rec
    plain = to_plain(rec)
    plain[2] = 0  # record 0 must start the chain: its prev_hash is 32 zero bytes
    with pytest.raises(DecodeError, match="record 0"):
        decode_record(AuditRecord, encode_value(plain))
    plain[2], plain[10] = 3, "maybe"
    with pytest.raises(DecodeError, match="decision"):
        decode_record(AuditRecord, encode_value(plain))


def test_append_rejects_bad_values_and_writes_nothing(log: AuditLog) -> None:
    fill(log, 2)
    base = {"identity": "org1/client/alice", "transport": "grpc", "operation": "x"}
    with pytest.raises(ValueError, match="decision"):
        log.append(**base, decision="maybe")
    with pytest.raises(ValueError, match="transport"):
        log.append(identity="a", transport="smtp", operation="x", decision="allowed")
    with pytest.raises(ValueError, match="response_sha256"):
        log.append(**base, decision="allowed", response_sha256=b"short")
    with pytest.raises(ValueError, match="time_ms"):
        log.append(**base, decision="allowed", time_ms=-1)
    with pytest.raises(TypeError):
        log.append(identity=b"bytes", transport="grpc", operation="x", decision="allowed")  # type: ignore[arg-type]
    assert log.size() == 2
    assert log.append(**base, decision="allowed").seq == 2
    assert log.verify_chain() == 3


def test_append_cuts_and_escapes_caller_chosen_text(log: AuditLog) -> None:
    rec = log.append(
        identity="presented:CN=" + "x" * 5000,
        transport="grpc",
        operation="submit",
        decision="refused",
        detail="bad \udcff byte " + "y" * 5000,
    )
    assert len(rec.identity) == TEXT_LIMITS["identity"] and rec.identity.endswith("…")
    assert len(rec.detail) == TEXT_LIMITS["detail"] and rec.detail.startswith("bad \\udcff byte")
    assert log.get(0) == rec
    assert log.verify_chain() == 1


# --------------------------------------------------------------------------
# Roots and proofs
# --------------------------------------------------------------------------


def test_roots_and_proofs_match_kyodo_crypto(log: AuditLog) -> None:
    fill(log, 37)
    leaves = hashes_of(log)
    for size in range(38):
        root = log.root(size)
        assert root == merkle_root(leaves[:size])
        for seq in range(size):
            proof = log.inclusion_proof(seq, size)
            assert proof == compute_inclusion_proof(leaves[:size], seq)
            verify_inclusion(leaves[seq], seq, size, proof, root)
        for old in range(size + 1):
            proof = log.consistency_proof(old, size)
            assert proof == compute_consistency_proof(leaves[:size], old)
            verify_consistency(old, size, log.root(old), root, proof)
    assert log.root() == log.root(37) == merkle_root(leaves)
    assert log.consistency_proof(5) == log.consistency_proof(5, 37)
    for bad in (-1, 38):
        with pytest.raises(ValueError):
            log.root(bad)
    with pytest.raises(ValueError):
        log.consistency_proof(10, 5)
    with pytest.raises(ValueError):
        log.inclusion_proof(37)


def test_consistency_between_two_checkpoints(log: AuditLog) -> None:
    fill(log, 10)
    old = log.checkpoint(SIGNER)
    fill(log, 23)
    new = log.checkpoint(SIGNER)
    for cp in (old, new):
        verify_checkpoint(cp, SIGNER.public_key)
    proof = log.consistency_proof(old.size, new.size)
    verify_consistency(old.size, new.size, old.root, new.root, proof)
    with pytest.raises(MerkleProofError):
        verify_consistency(old.size, new.size, sha256(b"forged"), new.root, proof)


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------


def test_query_filters(log: AuditLog) -> None:
    records = fill(log, 60)
    alice = [r for r in records if r.identity == "org1/client/alice"]
    assert log.query(identity="org1/client/alice") == alice
    assert log.query(identity="org1/client/al") == []
    assert log.query(identity="nobody") == []
    assert log.query() == records
    window = log.query(since_ms=BASE_MS + 100, until_ms=BASE_MS + 200)
    assert [r.seq for r in window] == list(range(10, 20))
    both = log.query(identity="org1/client/bob", since_ms=BASE_MS + 100, until_ms=BASE_MS + 300)
    assert [r.seq for r in both] == [s for s in range(10, 30) if s % 3 == 1]
    assert [r.seq for r in log.query(subject_contains="height:1")] == [
        s for s in range(60) if s % 2 == 0 and str(s).startswith("1")
    ]
    assert log.query(operation="get_tx") == [r for r in records if r.operation == "get_tx"]
    assert log.query(operation="get_tx", identity="org1/admin/carol") == [
        r for r in records if r.operation == "get_tx" and r.identity == "org1/admin/carol"
    ]
    assert [r.seq for r in log.query(limit=3)] == [0, 1, 2]
    assert [r.seq for r in log.query(limit=3, newest_first=True)] == [59, 58, 57]
    newest_alice = log.query(identity="org1/client/alice", limit=2, newest_first=True)
    assert newest_alice == [alice[-1], alice[-2]]
    newest_window = log.query(since_ms=BASE_MS, until_ms=BASE_MS + 50, newest_first=True)
    assert [r.seq for r in newest_window] == [4, 3, 2, 1, 0]
    for limit in (0, 10_001):
        with pytest.raises(ValueError):
            log.query(limit=limit)
    with pytest.raises(ValueError):
        log.query(since_ms=-5)


# --------------------------------------------------------------------------
# Durability and threads
# --------------------------------------------------------------------------


def test_reopen_keeps_records_root_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    with AuditLog(path) as log:
        fill(log, 21)
        root, head, records = log.root(), log.head_hash(), list(log.iter())
    with AuditLog(path) as log:
        assert (log.size(), log.root(), log.head_hash()) == (21, root, head)
        assert list(log.iter()) == records
        fill(log, 12)
        assert log.root() == merkle_root(hashes_of(log))
        assert log.verify_chain() == 33
    with AuditLog(path) as log, pytest.raises(AuditStoreError):
        AuditLog(path)  # RocksDB's lock: one process (and one handle) at a time


def test_records_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from kyodo.audit import AuditLog
        log = AuditLog(Path({str(path)!r}))
        for i in range(300):
            log.append(identity="org1/client/alice", transport="grpc", operation="submit",
                       decision="allowed", subject=f"tx:{{i}}")
        print(log.root().hex(), flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT_DIR, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            root_hex = proc.stdout.readline().strip()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with AuditLog(path) as log:
        assert log.size() == 300
        assert log.root().hex() == root_hex
        assert log.verify_chain() == 300


def test_concurrent_appends_keep_a_valid_chain(log: AuditLog) -> None:
    threads, per_thread = 8, 150
    barrier = threading.Barrier(threads)
    seen: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        barrier.wait()
        seqs = seen.setdefault(n, [])
        for i in range(per_thread):
            rec = log.append(
                identity=f"org1/client/t{n}",
                transport="grpc",
                operation="submit",
                decision="allowed",
                subject=f"tx:{n}-{i}",
            )
            seqs.append(rec.seq)

    verified: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def verifier() -> None:  # the background verifier runs while appends go on
        try:
            while not stop.is_set():
                verified.append(log.verify_chain())
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    checker = threading.Thread(target=verifier)
    checker.start()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stop.set()
    checker.join()
    assert not errors, errors
    assert verified and verified == sorted(verified)
    total = threads * per_thread
    assert log.size() == total
    assert sorted(s for seqs in seen.values() for s in seqs) == list(range(total))
    assert all(seqs == sorted(seqs) for seqs in seen.values())
    assert log.verify_chain() == total
    assert log.root() == merkle_root(hashes_of(log))
    for n in range(threads):
        assert len(log.query(identity=f"org1/client/t{n}")) == per_thread


# --------------------------------------------------------------------------
# The stored log tampered with
# --------------------------------------------------------------------------


def _seq_key(seq: int) -> bytes:
    return struct.pack(">Q", seq)


def _raw_db(path: Path) -> Rdict:
    families = {name: Options(raw_mode=True) for name in Rdict.list_cf(str(path))}
    return Rdict(str(path), Options(raw_mode=True), column_families=families)


def _tamper_store(path: Path, change: Any) -> None:
    db = _raw_db(path)
    try:
        change(db)
    finally:
        db.close()


def _rewrite_detail(db: Rdict) -> None:
    records = db.get_column_family("records")
    rec = decode_record(AuditRecord, records[_seq_key(7)])
    records.put(_seq_key(7), encode(replace(rec, detail="nothing happened")))


def _garble(db: Rdict) -> None:
    db.get_column_family("records").put(_seq_key(9), b"\x00garbage")


def _delete_7(db: Rdict) -> None:
    db.get_column_family("records").delete(_seq_key(7))


def _delete_last(db: Rdict) -> None:
    db.get_column_family("records").delete(_seq_key(19))


def _zero_node(db: Rdict) -> None:
    db.get_column_family("nodes").put(struct.pack(">BQ", 1, 3), bytes(32))


def _drop_index_entry(db: Rdict) -> None:
    db.get_column_family("by_time").delete(struct.pack(">QQ", BASE_MS + 50, 5))


def _append_stray(db: Rdict) -> None:
    records = db.get_column_family("records")
    records.put(_seq_key(20), records[_seq_key(19)])


@pytest.mark.parametrize(
    ("change", "seq", "reason"),
    [
        (_rewrite_detail, 7, "changed"),
        (_garble, 9, "changed"),
        (_delete_7, 7, "missing"),
        (_delete_last, 19, "missing"),
        (_zero_node, 7, "tree_node"),
        (_drop_index_entry, 5, "index"),
        (_append_stray, 20, "stray"),
    ],
)
def test_verify_chain_names_the_tampered_record(
    tmp_path: Path, change: Any, seq: int, reason: str
) -> None:
    path = tmp_path / "audit"
    with AuditLog(path) as log:
        fill(log, 20)
        assert log.verify_chain() == 20
    _tamper_store(path, change)
    with AuditLog(path) as log, pytest.raises(AuditVerificationError) as info:
        log.verify_chain()
    assert (info.value.seq, info.value.reason) == (seq, reason), str(info.value)


def test_verify_chain_catches_a_rewritten_record_and_leaf(tmp_path: Path) -> None:
    """A record rewritten with its leaf still breaks the chain, which names it."""
    path = tmp_path / "audit"
    with AuditLog(path) as log:
        fill(log, 16)

    def rewrite(db: Rdict) -> None:
        records, nodes = db.get_column_family("records"), db.get_column_family("nodes")
        forged = replace(decode_record(AuditRecord, records[_seq_key(6)]), detail="x")
        records.put(_seq_key(6), encode(forged))
        nodes.put(struct.pack(">BQ", 0, 6), sha256(b"\x00" + compute_record_hash(forged)))

    _tamper_store(path, rewrite)
    with AuditLog(path) as log:
        assert log.verify_chain(0, 6) == 6  # the records before it are fine
        with pytest.raises(AuditVerificationError) as info:
            log.verify_chain(6)
    assert (info.value.seq, info.value.reason) == (6, "chain"), str(info.value)


def test_verify_chain_in_pieces(log: AuditLog) -> None:
    fill(log, 50)
    done = 0
    while done < 50:
        done = log.verify_chain(done, min(done + 7, 50))
    assert done == 50
    with pytest.raises(ValueError):
        log.verify_chain(10, 60)


# --------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCase:
    records: list[AuditRecord]
    checkpoint: AuditCheckpoint
    doc: dict[str, Any]
    report: ExportReport


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportCase]:
    """30 records, a checkpoint at 30, and an export of [10, 25) with proofs."""
    with AuditLog(tmp_path_factory.mktemp("audit") / "audit", node_id="org1-node0") as log:
        records = fill(log, 30)
        cp = log.checkpoint(SIGNER)
        doc = json.loads(json.dumps(log.export(10, 25, with_proofs=True, checkpoint=cp)))
        report = verify_export(doc, public_key=SIGNER.public_key)
        yield ExportCase(records=records, checkpoint=cp, doc=doc, report=report)


def _entry(rec: AuditRecord, proof: list[str] | None) -> dict[str, Any]:
    """An export entry for ``rec``, as a forger would build it."""
    raw = encode(rec)
    entry: dict[str, Any] = {
        name: (value.hex() if isinstance(value, bytes) else value)
        for name, value in ((f, getattr(rec, f)) for f in AuditRecord.__dataclass_fields__)
    }
    entry["hash"] = sha256(raw).hex()
    entry["encoding"] = raw.hex()
    if proof is not None:
        entry["proof"] = proof
    return entry


def _fails(doc: Any, **kwargs: Any) -> AuditVerificationError:
    with pytest.raises(AuditVerificationError) as info:
        verify_export(doc, **kwargs)
    return info.value


def test_export_round_trip(case: ExportCase, tmp_path: Path) -> None:
    doc = case.doc
    assert doc["format"] == EXPORT_FORMAT
    assert (doc["from"], doc["to"], doc["tree_size"]) == (10, 25, 30)
    assert [r["seq"] for r in doc["records"]] == list(range(10, 25))
    assert doc["prev"]["seq"] == 9
    assert bytes.fromhex(doc["records"][0]["prev_hash"]) == bytes.fromhex(doc["prev"]["hash"])
    assert case.report == ExportReport(
        from_seq=10,
        to_seq=25,
        tree_size=30,
        root=case.checkpoint.root,
        records=15,
        proofs_checked=True,
        root_bound=True,
        chain_anchored=True,
        checkpoint=case.checkpoint,
        signature_checked=True,
    )
    # Without a public key the checkpoint is only compared, not trusted.
    assert verify_export(doc).signature_checked is False
    # A checkpoint given separately (from the ledger) is used too.
    bare = {k: v for k, v in doc.items() if k != "checkpoint"}
    report = verify_export(bare, checkpoint=case.checkpoint, public_key=SIGNER.public_key)
    assert report.signature_checked and report.checkpoint == case.checkpoint


def test_export_without_proofs(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit") as log:
        fill(log, 12)
        whole = log.export(0, 12, with_proofs=False)
        part = log.export(4, 9, with_proofs=False)
        empty = log.export(5, 5, with_proofs=True)
    report = verify_export(whole)
    assert report.root_bound and report.chain_anchored and not report.proofs_checked
    report = verify_export(part)
    assert not report.root_bound and not report.chain_anchored and report.records == 5
    assert verify_export(empty).records == 0
    whole["root"] = sha256(b"other").hex()
    assert _fails(whole).reason == "root"
    changed = copy.deepcopy(part)
    rec = decode_record(AuditRecord, bytes.fromhex(changed["records"][2]["encoding"]))
    changed["records"][2] = _entry(replace(rec, detail="rewritten"), None)
    err = _fails(changed)
    assert (err.seq, err.reason) == (6, "chain"), str(err)


def test_export_refuses_bad_ranges_and_foreign_checkpoints(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 10)
    for first, end in ((5, 3), (-1, 2), (0, 11)):
        with pytest.raises(ValueError):
            log.export(first, end, with_proofs=True)
    with AuditLog(tmp_path / "other") as other:
        fill(other, 10)
        other.append(identity="x", transport="admin", operation="y", decision="allowed")
        foreign = other.checkpoint(SIGNER, size=10)
    foreign = replace(foreign, root=sha256(b"not this log"))
    with pytest.raises(ValueError):
        log.export(0, 5, with_proofs=True, checkpoint=foreign)


def test_changed_field_in_the_json(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    doc["records"][7]["detail"] = "nothing to see"
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (17, "fields"), str(err)
    assert "record 17 was changed" in str(err)


def test_changed_record_reencoded(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    forged = replace(case.records[17], decision="allowed", rule="acl.admin")
    doc["records"][7] = _entry(forged, doc["records"][7]["proof"])
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (17, "proof"), str(err)


def test_removed_record(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    del doc["records"][8]
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (18, "missing"), str(err)
    assert "record 18 is missing: seq jumps from 17 to 19" in str(err)
    doc = copy.deepcopy(case.doc)
    doc["records"].pop()
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (24, "missing"), str(err)


def test_swapped_records(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    records = doc["records"]
    records[2], records[3] = records[3], records[2]
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (12, "order"), str(err)
    assert "records out of order at 12" in str(err)


def test_inserted_forged_record(case: ExportCase) -> None:
    # A forged record 13, properly chained, with the rest renumbered and re-chained.
    doc = copy.deepcopy(case.doc)
    forged = replace(
        case.records[13],
        identity="org1/admin/mallory",
        prev_hash=compute_record_hash(case.records[12]),
    )
    entries = [_entry(forged, doc["records"][3]["proof"])]
    prev = compute_record_hash(forged)
    for rec in case.records[13:25]:
        moved = replace(rec, seq=rec.seq + 1, prev_hash=prev)
        prev = compute_record_hash(moved)
        entries.append(_entry(moved, doc["records"][3]["proof"]))
    doc["records"][3:] = entries
    doc["to"] = 26
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (13, "proof"), str(err)

    # The same record slipped in after the real 13, without renumbering.
    doc = copy.deepcopy(case.doc)
    doc["records"].insert(4, _entry(forged, doc["records"][3]["proof"]))
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (13, "inserted"), str(err)


def test_truncated_proof(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    doc["records"][5]["proof"].pop()
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (15, "proof"), str(err)
    doc = copy.deepcopy(case.doc)
    doc["prev"]["proof"] = doc["prev"]["proof"][:-1]
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (9, "proof"), str(err)


def test_forged_checkpoint(case: ExportCase) -> None:
    doc = copy.deepcopy(case.doc)
    signature = bytearray.fromhex(doc["checkpoint"]["signature"])
    signature[0] ^= 1
    doc["checkpoint"]["signature"] = signature.hex()
    err = _fails(doc, public_key=SIGNER.public_key)
    assert (err.seq, err.reason) == (None, "checkpoint_signature"), str(err)
    # A checkpoint signed by another key.
    err = _fails(case.doc, public_key=Ed25519Signer.generate().public_key)
    assert err.reason == "checkpoint_signature"
    # A signed checkpoint of another size than the export's tree.
    doc = copy.deepcopy(case.doc)
    doc["tree_size"] = 29
    assert _fails(doc, public_key=SIGNER.public_key).reason == "checkpoint"
    # A public key but no checkpoint at all.
    bare = {k: v for k, v in case.doc.items() if k != "checkpoint"}
    assert _fails(bare, public_key=SIGNER.public_key).reason == "checkpoint"
    # A checkpoint given that differs from the embedded one.
    other = replace(case.checkpoint, time_ms=case.checkpoint.time_ms + 1)
    assert _fails(case.doc, checkpoint=other).reason == "checkpoint"


def test_checkpoint_signature(log: AuditLog) -> None:
    fill(log, 5)
    cp = log.checkpoint(SIGNER)
    assert (cp.node_id, cp.size, cp.root) == ("org1-node0", 5, log.root())
    message = checkpoint_message(node_id=cp.node_id, size=5, root=cp.root, time_ms=cp.time_ms)
    assert message.startswith(CHECKPOINT_DOMAIN)
    verify_checkpoint(cp, SIGNER.public_key)
    assert decode(encode(cp)) == cp
    for forged in (replace(cp, size=4), replace(cp, root=sha256(b"x")), replace(cp, node_id="n")):
        with pytest.raises(AuditVerificationError) as info:
            verify_checkpoint(forged, SIGNER.public_key)
        assert info.value.reason == "checkpoint_signature"
    with pytest.raises(AuditVerificationError) as info:
        verify_checkpoint(cp, b"short")
    assert info.value.reason == "public_key"
    with pytest.raises(ValueError):
        log.checkpoint(EcdsaP256Signer(ec.generate_private_key(ec.SECP256R1())))
    assert log.checkpoint(SIGNER, size=2).root == log.root(2)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "kyodo-audit-export/v1",
        {},
        {"format": EXPORT_FORMAT},
        {"format": EXPORT_FORMAT, "with_proofs": "yes"},
    ],
)
def test_malformed_documents(doc: Any) -> None:
    assert _fails(doc).reason == "malformed"


def test_malformed_fields(case: ExportCase) -> None:
    def mutated(change: Any) -> dict[str, Any]:
        doc = copy.deepcopy(case.doc)
        change(doc)
        return doc

    bad = [
        lambda d: d.update(tree_size=10**30),
        lambda d: d.update(tree_size=True),
        lambda d: d.update(to=5),
        lambda d: d.update(root=d["root"].upper()),
        lambda d: d.update(root="zz" * 32),
        lambda d: d.update(records=[None] * 100_001),
        lambda d: d.update(records={"0": 1}),
        lambda d: d.update(extra=1),
        lambda d: d.update(format="kyodo-audit-export/v2"),
        lambda d: d["records"][0].update(seq=10.0),
        lambda d: d["records"][0].update(encoding="00" * 20_000),
        lambda d: d["records"][0].update(encoding="a"),
        lambda d: d["records"][0].update(proof=["00" * 32] * 100_000),
        lambda d: d["records"][0].update(proof="00"),
        lambda d: d["records"][0].update(time_ms=str(d["records"][0]["time_ms"])),
        lambda d: d["records"][0].pop("hash"),
        lambda d: d["checkpoint"].update(size=-1),
        lambda d: d["checkpoint"].update(node_id=["x"]),
        lambda d: d["checkpoint"].update(node_id="n" * 1000),
        lambda d: d.update(prev=None),
        lambda d: d["prev"].update(seq=8),
    ]
    for change in bad:
        err = _fails(mutated(change), public_key=SIGNER.public_key)
        assert not str(err).startswith("the export is malformed ("), str(err)
    assert _fails(case.doc, checkpoint="cp").reason == "checkpoint"  # type: ignore[arg-type]
    assert _fails(case.doc, public_key="key").reason == "public_key"  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Property: any change to a valid export fails, and only as AuditVerificationError
# --------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "00", "ab" * 32, "AB" * 32, EXPORT_FORMAT]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    paths = list(_paths(doc))[1:]
    path = data.draw(st.sampled_from(paths), label="path")
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    value = parent[key]
    kinds = ["replace", "remove"]
    if isinstance(value, int) and not isinstance(value, bool):
        kinds.append("nudge")
    if isinstance(value, str) and value:
        kinds.append("flip")
    if isinstance(value, list) and value:
        kinds += ["drop", "duplicate", "swap"]
    if isinstance(value, dict):
        kinds.append("add_key")
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "replace":
        parent[key] = data.draw(JSON_VALUES, label="value")
    elif kind == "remove":
        del parent[key]
    elif kind == "nudge":
        parent[key] = value + data.draw(st.sampled_from([-2, -1, 1, 2, 2**63]), label="delta")
    elif kind == "flip":
        i = data.draw(st.integers(0, len(value) - 1), label="index")
        new = data.draw(st.sampled_from("0123456789abcdefA"), label="char")
        parent[key] = value[:i] + new + value[i + 1 :]
    elif kind == "drop":
        del value[data.draw(st.integers(0, len(value) - 1), label="index")]
    elif kind == "duplicate":
        i = data.draw(st.integers(0, len(value) - 1), label="index")
        value.insert(data.draw(st.integers(0, len(value)), label="at"), copy.deepcopy(value[i]))
    elif kind == "swap":
        i = data.draw(st.integers(0, len(value) - 1), label="i")
        j = data.draw(st.integers(0, len(value) - 1), label="j")
        value[i], value[j] = value[j], value[i]
    else:
        value[data.draw(st.text(max_size=8), label="new key")] = data.draw(JSON_VALUES)
    return doc


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


@settings(max_examples=1500, deadline=None, database=None)
@given(data=st.data())
def test_any_mutation_of_an_export_is_caught(case: ExportCase, data: st.DataObject) -> None:
    doc = _mutate(case.doc, data)
    try:
        report = verify_export(doc, public_key=SIGNER.public_key)
    except AuditVerificationError as exc:
        assert not str(exc).startswith("the export is malformed ("), str(exc)
        assert exc.seq is None or type(exc.seq) is int
        cause = exc.__cause__
        assert cause is None or isinstance(
            cause, MerkleProofError | DecodeError | InvalidSignatureError | ValueError
        ), repr(cause)
    else:
        assert _canonical(doc) == _canonical(case.doc), "a changed export verified"
        assert report == case.report


@settings(max_examples=200, deadline=None, database=None)
@given(doc=JSON_VALUES)
def test_random_documents_fail_cleanly(doc: Any) -> None:
    with pytest.raises(AuditVerificationError):
        verify_export(doc)
