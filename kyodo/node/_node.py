"""The node process: the one place that wires the components together.

Theory of operation
-------------------
One asyncio loop owns the network (p2p streams, the gRPC gateway, timers)
and the consensus state machine. One *ledger thread* owns the store: block
building, verification with re-execution, and appends run there, one at a
time, never on the loop (DESIGN.md section 4). Reads for clients and peers
(RocksDB reads are thread-safe) run on a small reader pool.

The consensus core returns actions; :meth:`Node._apply` carries them out
and feeds the outcome back as events. Clients waiting for finality are
woken when the block holding their transaction is appended locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import time
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import kyodo
from kyodo.audit import AuditError, AuditLog
from kyodo.codec import DecodeError, decode, decode_record, encode, encode_value
from kyodo.consensus import (
    BLACKLIST_HEIGHTS,
    AppendCertified,
    AppendPeerBlock,
    Bft,
    BftAction,
    BftParams,
    Broadcast,
    BuildProposal,
    Commit,
    ForwardTx,
    Heartbeat,
    NewView,
    PersistWal,
    Prepare,
    PrePrepare,
    RequestSync,
    Send,
    SignedViewData,
    StatusMessage,
    SyncRequest,
    SyncResponse,
    VerifyProposal,
    ViewChange,
    WalState,
)
from kyodo.contracts import AUDIT_CONTRACT, BUILTIN_CONTRACTS, AccessDeniedError, Executor
from kyodo.crypto import (
    ED25519,
    ZERO_HASH,
    CryptoError,
    Ed25519Signer,
    KeyFileError,
    Pkcs11Signer,
    Signer,
    is_pkcs11_uri,
    load_private_key,
    read_passphrase,
    sha256,
    verify_signature,
)
from kyodo.events import EventHub
from kyodo.gateway import (
    AuthContext,
    GatewayServer,
    RateLimiter,
    RestGateway,
    TokenService,
    create_app,
)
from kyodo.identity import Membership, fingerprint, load_certificate
from kyodo.ledger import (
    CONFIG_CONTRACT,
    CONFIG_FUNCTION,
    Block,
    BlockHeader,
    BlockVerificationError,
    CheckedTx,
    ConfigView,
    Epochs,
    Height,
    LedgerError,
    LedgerStore,
    NetworkConfig,
    PreparedState,
    StateCorruptionError,
    StoredDataError,
    Transaction,
    TransactionRejectedError,
    TxEnvelope,
    UnreadableStoreError,
    check_config_update,
    check_envelope,
    check_topology,
    compute_results_root,
    compute_txs_root,
    consequence,
    load_genesis,
    prepare_state,
    recheck_envelope,
    verify_block_contents,
    verify_configuration_block,
    verify_link,
)
from kyodo.ledger._integrity import (
    Fault,
    IntegrityFault,
    check_block,
    check_history_key,
    check_state_key,
    check_tree_node,
    check_writes_index,
    iter_history_keys,
)
from kyodo.ledger._proofs import (
    ProofError,
    build_block_proof,
    build_key_proof,
    build_tx_proof,
    verify_proof_document,
)
from kyodo.node._config import NodeConfig
from kyodo.node._integrity import (
    VERIFIED_HEIGHT,
    HighWaterMark,
    PassReport,
    RepairRequest,
    RepairResponse,
    VerifiedState,
    Verifier,
    apply_repair,
    local_state_repair,
    read_verified_height,
    repair_tx_index,
    serve_repair,
)
from kyodo.node._metrics import NodeMetrics
from kyodo.p2p import PeerAddress, PeerNetwork, client_context, server_context
from kyodo.policy import AccessRefused, Identity
from kyodo.wire import (
    AuditExportRequest,
    AuditExportResponse,
    AuditQueryRequest,
    AuditRecords,
    ConfigResponse,
    EvaluateResponse,
    NodeStatus,
    ProofRequest,
    RevokedToken,
    SubscriptionReplica,
    TokenRevocations,
    TxResponse,
    TxStatusResponse,
)

__all__ = ["Node", "run_node"]

log = structlog.get_logger("kyodo.node")
T = TypeVar("T")
_SYNC_MAX_BYTES = 16 * 1024 * 1024
_MAX_REPAIR_ROUNDS = 30
_MAX_REPEATED_REPAIRS = 5
_REPEAT_WINDOW_S = 300.0
"""Five repairs within five minutes, then damage again: the node rebuilds its store."""
"""Rounds of targeted repair before the node rebuilds its store from the peers."""
REBUILD_MARKER = "rebuild-store"
"""A file in the node's home: at the next start the store is set aside and rebuilt."""
EXIT_REBUILD = 75
"""Exit status of a node that found its store's files damaged (start it again: it
rebuilds from its peers)."""
_RECENT_TXS = 100_000
_TURN_GRACE_S = 3.0
"""A node delivers its organization's webhooks once no live node of the organization
comes before it (by node id): live means heard from within this (peers send their status
every second), and a node just started first waits this long to hear from them."""
PREVIOUS_SIGNING_KEY = "signing-previous.key"
"""Where a key rotation keeps the old key: a node restarted before it appended the
rotation's configuration block still signs with it until then."""
BFT_MESSAGES = (PrePrepare, Prepare, Commit, ViewChange, SignedViewData, NewView, Heartbeat)
_STALL_S = 5.0
"""A node behind its peers that appended nothing for this long reports itself unhealthy."""


def now_ms() -> int:
    """Wall clock in ms (the shell's only clock; the core gets it as an argument)."""
    return time.time_ns() // 1_000_000


class Node:
    """One Kyodo node: ledger, consensus, p2p and gateway in one process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.cfg = NodeConfig.load(home)
        passphrase = read_passphrase(_relative_source(self.cfg.passphrase, home))
        tls_key = load_private_key(self.cfg.resolve(home, self.cfg.tls_key), passphrase)
        assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
        self._signer: Signer
        if is_pkcs11_uri(self.cfg.signing_key):  # the key stays in the HSM
            self._signer = Pkcs11Signer.open(self.cfg.signing_key)
        else:
            signing_key = load_private_key(self.cfg.resolve(home, self.cfg.signing_key), passphrase)
            assert isinstance(signing_key, ed25519.Ed25519PrivateKey)
            self._signer = Ed25519Signer(signing_key)
        self._tls_key = tls_key
        self._tls_cert_pem = self.cfg.resolve(home, self.cfg.tls_cert).read_bytes()
        self.genesis = load_genesis(self.cfg.resolve(home, self.cfg.genesis))
        assert self.genesis.config is not None
        self.chain_id = self.genesis.config.chain_id
        self._epochs = Epochs([(0, self.genesis.config)])
        self._views: dict[int, ConfigView] = {}
        self._current = self._view_of(self.genesis.config)
        """The newest configuration (replaced when a configuration block is appended)."""
        self._adopt_config(self.genesis.config, check_key=False)  # the store may know newer
        self.executor = Executor(BUILTIN_CONTRACTS)
        self.metrics = NodeMetrics()
        self._cert_expiry = {
            "tls": load_certificate(self._tls_cert_pem).not_valid_after_utc,
            "signing": load_certificate(
                self.cfg.resolve(home, self.cfg.signing_cert).read_bytes()
            ).not_valid_after_utc,
        }
        """When this node's certificates expire (shown in status and metrics)."""
        for kind, expires in self._cert_expiry.items():
            self.metrics.certificate_expiry.labels(cert=kind).set(expires.timestamp())
        self._ledger_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="reader")
        self._event_reader = ThreadPoolExecutor(1, thread_name_prefix="events")
        self._tip_header: BlockHeader
        """Header of the last appended block; owned by the ledger thread."""
        self.store: LedgerStore
        self.consensus: Bft
        self._wal_thread = ThreadPoolExecutor(1, thread_name_prefix="wal")
        self._prepared: dict[bytes, PreparedState] = {}
        self._startup_recent: list[BlockHeader] = []
        """Headers before the tip at start, for the core's leader blacklist."""
        self._view_seen: tuple[int, bool] = (0, False)
        """State changes of proposals verified on the current tip, by block hash (ledger
        thread); the certified one is appended without executing it again."""
        self.p2p: PeerNetwork
        self.gateway: GatewayServer
        self.rest: RestGateway | None = None
        self._waiters: dict[bytes, list[asyncio.Future[TxStatusResponse]]] = {}
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._admitted: dict[bytes, CheckedTx] = {}
        """Leader only: admission checks of pooled transactions, reused at block build.
        Bounded by the pool: entries leave when their batch is built or dropped."""
        self._stopping = asyncio.Event()
        self._ready = False
        self.exit_code = 0
        """Process exit status: 0 after a requested stop, 70 after a broken invariant."""
        self._last_append_s = time.monotonic()
        self._tip: tuple[int, bytes, bytes] = (-1, b"", b"")
        """(height, hash, state root) of the last appended block, kept by the loop."""
        self._last_error = ""
        self._faults: dict[Fault, IntegrityFault] = {}
        """What this node found falsified in its own store and has not repaired yet:
        while it is not empty the node is quarantined (module kyodo.node._integrity)."""
        self._quarantined_at = 0.0
        self._repairing = False
        self._repaired_at: deque[float] = deque(maxlen=_MAX_REPEATED_REPAIRS)
        """When the last repairs ended (monotonic s): damage that keeps coming back is
        rebuilt from the peers instead."""
        self.tokens: TokenService | None = None
        """The REST gateway's tokens (None without REST)."""
        self._heard: dict[str, float] = {}
        """When each peer was last heard from (monotonic s): who is live, for the turn to
        deliver webhooks."""
        self._started_s = time.monotonic()
        self._after_repair: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        """Consensus work our own store's fault interrupted, by kind: the newest proposal
        to verify (the core waits for a verdict on that one only) and the certified block
        to append (the core appends one at a time). Done again once the store is
        repaired, so the core never waits forever for what would not come."""
        self._repair_waiters: dict[bytes, asyncio.Queue[RepairResponse]] = {}
        self._mark = HighWaterMark(home / "tip.mark")
        self._mark_height = -1
        """Owned by the ledger thread (start-up check, appends)."""
        self.verifier: Verifier | None = None
        self._network_up = False
        self.audit: AuditLog
        self._anchored_size = 0
        self.events: EventHub
        self.limiter = RateLimiter(self.cfg.rate_limit_per_s, self.cfg.rate_limit_burst)
        """Calls per identity, shared by the gRPC and REST gateways."""

    # -- configuration epochs --------------------------------------------------------

    @property
    def config(self) -> NetworkConfig:
        """The newest configuration."""
        return self._current.config

    @property
    def membership(self) -> Membership:
        """Members of the newest configuration's organizations."""
        return self._current.membership

    @property
    def _signer_keys(self) -> dict[str, bytes]:
        return self._current.signer_keys

    @property
    def _validators(self) -> tuple[str, ...]:
        return self._current.validators

    def _view_of(self, config: NetworkConfig) -> ConfigView:
        view = self._views.get(config.epoch)
        if view is None:
            view = self._views[config.epoch] = ConfigView.of(config)
        return view

    def _members_at(self, height: int) -> tuple[str, ...]:
        """The member organizations' ids in force at ``height``, sorted."""
        return tuple(sorted(org.org_id for org in self._epochs.at(height).orgs))

    def _view_at(self, height: int) -> ConfigView:
        """The configuration in force at ``height``, with its keys and quorum."""
        return self._view_of(self._epochs.at(height))

    def _adopt_config(self, config: NetworkConfig, *, check_key: bool = True) -> None:
        """Make ``config`` the current one: topology, this node's place in it."""
        self._current = self._view_of(config)
        self.topology = check_topology(config, allow_fragile=config.allow_fragile_topology)
        votes = {
            o: sum(1 for v in config.validators() if v.org_id == o)
            for o in self.topology.fragile_orgs
        }
        self._topology_warning = "; ".join(
            consequence(o, count, self.topology.validators) for o, count in votes.items()
        )
        me = config.node(self.cfg.node_id)
        if me is None:  # not configured (yet): follow the chain as an observer
            self.org_id = self.cfg.org_id
            log.info("not_in_configuration", node=self.cfg.node_id, epoch=config.epoch)
            return
        self.org_id = me.org_id
        if check_key and self._signer_keys[self.cfg.node_id] != self._signer.public_key:
            self._rotate_signing_key(config.epoch)

    def _rotate_signing_key(self, epoch: int) -> None:
        """The configuration names a new signing certificate for this node: switch to the
        key prepared for it. node.json is read now, not at start: ``next_signing_key``,
        or ``signing_key`` once the rotation tool has moved the new key into place."""
        current = NodeConfig.load(self.home)
        expected = self._signer_keys[self.cfg.node_id]
        passphrase = read_passphrase(_relative_source(current.passphrase, self.home))
        previous = current.previous_signing_key or PREVIOUS_SIGNING_KEY
        for name in (current.next_signing_key, current.signing_key, previous):
            signer = self._open_signer(current, name, passphrase) if name else None
            if signer is not None and signer.public_key == expected:
                self._signer = signer
                log.info("signing_key_rotated", node=self.cfg.node_id, epoch=epoch)
                return
        raise LedgerError(
            "the signing key does not match this node's certificate, and no "
            "prepared key (next_signing_key) does"
        )

    def _open_signer(self, cfg: NodeConfig, name: str, passphrase: bytes) -> Signer | None:
        """The signer of a key file or a ``pkcs11:`` URI (None if there is no such key)."""
        if is_pkcs11_uri(name):
            try:
                return Pkcs11Signer.open(name)
            except KeyFileError as exc:
                log.warning("signing_key_unavailable", detail=str(exc))
                return None
        path = cfg.resolve(self.home, name)
        if not path.exists():
            return None
        key = load_private_key(path, passphrase)
        return Ed25519Signer(key) if isinstance(key, ed25519.Ed25519PrivateKey) else None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Open the store, start serving, run until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        if (self.home / REBUILD_MARKER).exists():
            await self._in_ledger(self._set_store_aside, "it was found unreadable")
        try:
            startup_faults = await self._open_and_check()
        except UnreadableStoreError as exc:  # damaged files: start over from the peers
            await self._in_ledger(self._set_store_aside, str(exc))
            startup_faults = await self._open_and_check()
        height = self.store.height()
        assert height is not None
        for fault in startup_faults:  # quarantined before the gateways open
            self._on_fault(fault)
        self.audit = await self._in_ledger(
            lambda: AuditLog(self.home / "audit", node_id=self.cfg.node_id)
        )
        self._anchored_size = await self._in_ledger(self._read_anchored_size)
        if not await self._in_ledger(self.store.writes_complete):  # a store from before it
            log.info("writes_index_rebuilding", node=self.cfg.node_id, height=height)
            blocks = await self._in_ledger(self.store.rebuild_writes)
            log.info("writes_index_rebuilt", node=self.cfg.node_id, blocks=blocks)
        self.events = await self._in_ledger(
            lambda: EventHub(
                self.home / "events",
                _HubLedger(self),
                webhook_allowed_hosts=self.cfg.webhook_allowed_hosts,
                org=self.cfg.org_id,
                replicate=lambda replica: self._send_to_org(encode(replica)),
                turn_rank=self._webhook_rank,
            )
        )
        self.events.start()
        await self._start_network()
        self._network_up = True
        if self._faults and not self._repairing:
            self._repairing = True
            self._spawn(self._repair_loop())
        self._start_verifier()
        self._ready = True
        log.info(
            "node_ready",
            node=self.cfg.node_id,
            height=height,
            leader=self.consensus.leader(),
            view=self.consensus.view,
            gateway=self.cfg.gateway_port,
        )
        ticker = asyncio.create_task(self._tick_loop())
        anchoring = asyncio.create_task(self._anchor_loop())
        await self._stopping.wait()
        log.info("node_stopping", node=self.cfg.node_id)
        ticker.cancel()
        anchoring.cancel()
        if self.verifier is not None:
            self.verifier.stop()
        await self.gateway.stop(0.5)
        if self.rest is not None:
            await self.rest.stop()
        await self.events.close()  # its last checkpoints still reach the organization:
        await self.p2p.drain(1.0)  # sent before the links close
        await self.p2p.stop()
        await self._in_ledger(self.audit.close)
        await self._in_ledger(self.store.close)
        self._ledger_thread.shutdown()
        self._wal_thread.shutdown()
        self._readers.shutdown()
        self._event_reader.shutdown()

    async def _open_and_check(self) -> list[IntegrityFault]:
        """Open the store, take its configurations, build the consensus core and check
        the store since the last verified height (UnreadableStoreError: files damaged)."""
        self.store = await self._in_ledger(self._open_store)
        configs = await self._in_ledger(self.store.get_configs)
        if configs:  # a restart after configuration changes: the newest is in force
            self._epochs = Epochs(configs)
        self._adopt_config(self._epochs.latest())
        self.metrics.fragile_topology.set(1 if self.topology.fragile else 0)
        height = self.store.height()
        assert height is not None
        self._tip = (height, self.store.tip_hash(), self.store.state_root())
        faults: list[IntegrityFault] = await self._in_ledger(self._startup_check)
        for fault in faults:
            if fault.fault.kind == "unreadable":
                raise UnreadableStoreError(str(fault))
        self.consensus = await self._in_ledger(self._make_consensus)
        self.metrics.height.set(height)
        return faults

    def _set_store_aside(self, why: str) -> None:
        """Move a damaged store aside (kept for investigation) so the node starts from
        genesis and fetches every block again from its peers, verifying each one."""
        data = self.cfg.resolve(self.home, self.cfg.data_dir)
        with contextlib.suppress(AttributeError, LedgerError):
            self.store.close()
        aside = data.with_name(f"{data.name}.damaged-{int(time.time())}")
        if data.exists():
            data.rename(aside)
        (self.home / REBUILD_MARKER).unlink(missing_ok=True)
        self._epochs = Epochs([(0, self.genesis.config)])  # type: ignore[list-item]
        log.critical(
            "store_set_aside",
            node=self.cfg.node_id,
            why=why,
            moved_to=str(aside),
            action="rebuilding from the peers: every block is fetched and verified again",
        )

    def _open_store(self) -> LedgerStore:
        store = LedgerStore(self.cfg.resolve(self.home, self.cfg.data_dir))
        if store.height() is None:
            empty = prepare_state(store, store.state_root(), 0, {}, [])
            store.append_block(
                self.genesis, state_records={}, history=[], tree_update=empty.tree_update
            )
        if store.genesis_hash() != self.genesis.block_hash():
            raise LedgerError("the store belongs to another network (genesis hash differs)")
        self._check_tip(store)
        return store

    def _check_tip(self, store: LedgerStore) -> None:
        """Start-up check: the tip decodes, links, and certifies the stored state root."""
        height = store.height()
        assert height is not None
        tip = store.get_block(height)
        if tip is None or tip.block_hash() != store.tip_hash():
            raise LedgerError(f"stored tip at height {height} does not match its recorded hash")
        if tip.header.state_root != store.state_root():
            raise LedgerError(f"state root differs from the certified root of block {height}")
        if height > 0:
            parent = store.get_block(height - 1)
            assert parent is not None
            verify_link(tip.header, parent.header)
        self._tip_header = tip.header

    def _startup_check(self) -> list[IntegrityFault]:
        """Every block since the last fully verified height, and the store's height
        against this node's high-water mark (ledger thread, before serving)."""
        store = self.store
        tip = store.height()
        assert tip is not None
        faults: list[IntegrityFault] = []
        start = min(read_verified_height(store), tip)
        parent = None
        started = time.monotonic()
        for height in range(start, tip + 1):
            try:
                block = check_block(
                    store,
                    height,
                    self._view_at,
                    genesis_hash=self.genesis.block_hash(),
                    parent_hash=parent,
                )
            except IntegrityFault as fault:
                faults.append(fault)
                parent = None
                continue
            parent = block.block_hash()
        mark = self._mark.read()
        self._mark_height = tip if mark is None else max(mark[0], tip)
        if mark is not None and mark[0] > tip:
            faults.append(
                IntegrityFault(
                    f"the store's tip is {tip} but this node had appended up to {mark[0]}: the "
                    "store was rolled back or replaced by an older copy",
                    Fault("rollback", height=mark[0]),
                )
            )
        log.info(
            "startup_verified",
            node=self.cfg.node_id,
            heights=f"{start}..{tip}",
            faults=len(faults),
            seconds=round(time.monotonic() - started, 3),
        )
        return faults

    def _start_verifier(self) -> None:
        if self.cfg.verify_cpu_share <= 0:
            return
        loop = asyncio.get_running_loop()
        self.verifier = Verifier(
            self.store,
            view_at=self._view_at,
            genesis_hash=self.genesis.block_hash(),
            configs_of_chain=lambda: list(self._epochs.all()),
            on_fault=lambda f: _discard(loop.call_soon_threadsafe(self._on_fault, f)),
            on_pass=lambda r, tip: _discard(loop.call_soon_threadsafe(self._on_verified, r, tip)),
            cpu_share=self.cfg.verify_cpu_share,
            interval_s=self.cfg.verify_interval_s,
            extra_checks=(lambda: self._check_audit_log(loop),),
        )
        self.verifier.start()

    def _check_audit_log(self, loop: asyncio.AbstractEventLoop) -> None:
        """The audit log's own hash chain (verifier thread). Its records are this node's
        alone, so nothing can be fetched from peers: a break is an alarm, not a repair."""
        try:
            self.audit.verify_chain()
        except AuditError as exc:
            loop.call_soon_threadsafe(self._on_audit_fault, exc)

    def _on_audit_fault(self, exc: AuditError) -> None:
        self.metrics.integrity_faults.labels("audit").inc()
        log.critical("audit_log_tampered", node=self.cfg.node_id, detail=str(exc))
        self._alert("audit_log_tampered", detail=str(exc))

    def _on_verified(self, report: PassReport, tip: int) -> None:
        """A whole pass found nothing wrong up to ``tip``."""
        self.metrics.verified_height.set(tip)
        self.metrics.verify_pass_seconds.set(report.seconds)
        self.metrics.verify_pass_bytes.set(report.bytes_read)
        log.info(
            "store_verified",
            tip=tip,
            blocks=report.blocks,
            tree_nodes=report.nodes,
            state_keys=report.state_keys,
            history_keys=report.history_keys,
            mb=round(report.bytes_read / 1e6, 2),
            seconds=round(report.seconds, 2),
        )
        if not self._faults:
            self._spawn(
                self._in_ledger(self.store.put_raw, "meta", VERIFIED_HEIGHT, encode_value(tip))
            )

    # -- quarantine and repair -------------------------------------------------------

    def serving_refusal(self) -> str | None:
        """Why this node does not serve data now (quarantined), or None."""
        if not self._faults:
            return None
        kinds = ", ".join(sorted({f.kind for f in self._faults}))
        return (
            f"{self.cfg.node_id} found falsified or corrupted data in its own store ({kinds}) "
            "and quarantined itself while it repairs from its peers; use another node"
        )

    def _on_fault(self, exc: IntegrityFault) -> None:
        """Quarantine: stop voting and serving, raise the alarm, start repairing."""
        fault = exc.fault
        if fault.kind == "unreadable":  # no in-place repair: restart and rebuild
            log.critical(
                "integrity_fault_detected",
                node=self.cfg.node_id,
                kind="unreadable",
                detail=str(exc),
                action="the store's files are damaged; the node stops and, started again, "
                "sets the store aside and rebuilds it from its peers",
            )
            self.metrics.integrity_faults.labels("unreadable").inc()
            self._alert("integrity_fault_detected", kind="unreadable", detail=str(exc))
            (self.home / REBUILD_MARKER).write_text(str(exc))
            self.exit_code = EXIT_REBUILD
            self._stopping.set()
            return
        if fault in self._faults:
            return
        now = time.monotonic()
        recent = [t for t in self._repaired_at if now - t < _REPEAT_WINDOW_S]
        if not self._faults and len(recent) >= _MAX_REPEATED_REPAIRS:  # it keeps coming
            self._repaired_at.clear()  # back: repairs in place do not hold; start over
            self._on_fault(
                IntegrityFault(
                    f"{len(recent)} repairs in {_REPEAT_WINDOW_S:.0f} s and damage again: {exc}",
                    Fault("unreadable"),
                )
            )
            return
        first = not self._faults
        self._faults[fault] = exc
        if first:
            self._quarantined_at = time.monotonic()
        self.metrics.quarantined.set(1)
        self.metrics.integrity_faults.labels(fault.kind).inc()
        log.error(
            "integrity_fault_detected",
            node=self.cfg.node_id,
            kind=fault.kind,
            height=fault.height,
            key=None if fault.key is None else fault.key.hex(),
            detail=str(exc),
        )
        self._alert("integrity_fault_detected", kind=fault.kind, detail=str(exc))
        if not self._repairing and self._network_up:
            self._repairing = True
            self._spawn(self._repair_loop())

    def _alert(self, event: str, **fields: Any) -> None:
        """POST an alert to the operator's webhook, if configured (never blocks the loop)."""
        if not self.cfg.alert_webhook:
            return
        body = json.dumps({"event": event, "node": self.cfg.node_id, **fields}).encode()

        def post() -> None:
            request = urllib.request.Request(  # noqa: S310 - the operator's own URL
                self.cfg.alert_webhook,
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                    pass
            except OSError as exc:
                log.warning("alert_webhook_failed", detail=str(exc))

        self._readers.submit(post)

    async def _repair_loop(self) -> None:
        """Repair every fault from the peers, check again, leave quarantine when clean."""
        attempt = 0
        try:
            while self._faults and not self._stopping.is_set():
                attempt += 1
                for fault in list(self._faults):
                    try:
                        await self._repair_one(fault)
                    except (StoredDataError, StateCorruptionError, IntegrityFault) as exc:
                        self._on_fault(_as_fault(exc))  # more damage met while repairing
                    except Exception:  # a bug: said; the round counts as failed
                        log.exception("repair_failed", kind=fault.kind, height=fault.height)
                if self._faults and all(f.kind == "rollback" for f in self._faults):
                    self._resume_parked()  # the append they wait for may be parked
                if (
                    self._faults
                    and attempt >= _MAX_REPAIR_ROUNDS
                    and not any(f.kind == "rollback" for f in self._faults)
                ):  # nothing repairs it in place: start over from the peers
                    self._on_fault(
                        IntegrityFault(
                            f"{len(self._faults)} fault(s) not repaired after {attempt} rounds",
                            Fault("unreadable"),
                        )
                    )
                    return
                if self._faults:
                    await asyncio.sleep(min(2.0, 0.2 * attempt))  # back off between rounds
        finally:
            self._repairing = False
        if not self._faults:
            took = time.monotonic() - self._quarantined_at
            self.metrics.quarantined.set(0)
            self.metrics.integrity_repairs.inc()
            log.warning("integrity_repaired", node=self.cfg.node_id, seconds=round(took, 3))
            self._alert("integrity_repaired", seconds=round(took, 3))
            self._repaired_at.append(time.monotonic())
            self._resume_parked()
            if self.verifier is not None:
                self.verifier.run_now()

    def _resume_parked(self) -> None:
        """Run again the consensus steps our own store's fault interrupted."""
        resume, self._after_repair = self._after_repair, {}
        for work in resume.values():
            self._spawn(work())

    async def _repair_one(self, fault: Fault) -> None:
        if fault.kind == "rollback":
            if self._tip[0] >= (fault.height or 0):
                self._faults.pop(fault, None)
            return
        request = RepairRequest(request_id=os.urandom(8))
        if fault.kind == "txindex" and fault.key is not None and len(fault.key) == 32:
            done = await self._in_ledger(repair_tx_index, self.store, fault.key)
            for item in done:
                log.warning("repaired_locally", item=item)
        if fault.kind in ("block", "txindex") and fault.height is not None:
            request = replace(request, heights=(fault.height,))
        elif fault.kind == "tree" and fault.key is not None:
            request = replace(request, node_hashes=(fault.key,))
        elif fault.kind in ("state", "state_missing"):
            done = await self._in_ledger(local_state_repair, self.store, fault)
            if not done and fault.key is not None and fault.kind == "state":
                request = replace(request, state_keys=(fault.key,))
        elif fault.kind == "history" and fault.key is not None:
            request = replace(request, history_keys=(fault.key,))
        elif fault.kind == "config":
            await self._in_ledger(self._rewrite_configs)
        elif fault.kind == "writes":  # an index of the verified history: rebuilt from it
            await self._in_ledger(self.store.rebuild_writes)
            log.warning("repaired_locally", item="writes index")
        if request.heights or request.node_hashes or request.state_keys or request.history_keys:
            await self._ask_peers(request)
        if await self._in_ledger(self._recheck, fault):
            self._faults.pop(fault, None)
            log.info("fault_repaired", kind=fault.kind, height=fault.height)

    async def _ask_peers(self, request: RepairRequest) -> None:
        """Send ``request`` to every connected peer and collect the answers until all have
        answered or 3 s passed (one quick peer cannot crowd the others out); apply what
        verifies. History, which no certified root covers entry by entry, is taken only
        when f + 1 peers send the same."""
        peers = self.p2p.connected()
        if not peers:
            log.warning("repair_no_peer", request=request.request_id.hex())
            return
        inbox: asyncio.Queue[RepairResponse] = asyncio.Queue()
        self._repair_waiters[request.request_id] = inbox
        payload = encode(request)
        for peer in peers:
            self.p2p.send(peer, payload)
        answers: list[RepairResponse] = []
        deadline = asyncio.get_running_loop().time() + 3.0
        try:
            while len(answers) < len(peers):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    answers.append(await asyncio.wait_for(inbox.get(), left))
                except TimeoutError:
                    break
        finally:
            self._repair_waiters.pop(request.request_id, None)
        if not answers:
            log.warning("repair_no_answer", request=request.request_id.hex())
            return
        agreeing = len(self._current.validators) - self._current.quorum + 1  # f + 1
        done = await self._in_ledger(
            lambda: apply_repair(
                self.store,
                request,
                answers,
                view_at=self._view_at,
                genesis_hash=self.genesis.block_hash(),
                history_agreement=max(1, agreeing),
            )
        )
        for item in done:
            log.warning("repaired_from_peer", item=item)

    def _rewrite_configs(self) -> None:
        """The configurations column again, from the certified configuration blocks."""
        puts = []
        tip = self.store.height() or 0
        for height in range(tip + 1):
            block = check_block(
                self.store,
                height,
                self._view_at,
                genesis_hash=self.genesis.block_hash(),
                with_index=False,
            )
            if block.config is not None:
                first = 0 if height == 0 else height + 1
                record = encode_value([first, encode(block.config)])
                puts.append(("configs", struct.pack(">Q", block.config.epoch), record))
        self.store.write_repair(puts=puts)

    def _recheck(self, fault: Fault) -> bool:
        """Whether the fault is gone (ledger thread)."""
        store = self.store
        genesis_hash = self.genesis.block_hash()
        try:
            if fault.kind == "txindex" and fault.key is not None:
                location = store.get_tx_location(fault.key)
                if location is not None:
                    block = check_block(
                        store, location[0], self._view_at, genesis_hash=genesis_hash
                    )
                    at = location[1]
                    if at >= len(block.txs) or block.txs[at].tx_id() != fault.key:
                        return False
            if fault.kind == "block" and fault.height is None:  # where, unknown: the tip
                check_block(store, store.height() or 0, self._view_at, genesis_hash=genesis_hash)
            elif fault.kind in ("block", "txindex") and fault.height is not None:
                check_block(store, fault.height, self._view_at, genesis_hash=genesis_hash)
            elif fault.kind == "tree" and fault.key is not None:
                node = store.get_node(fault.key)
                if node is None:
                    return False
                check_tree_node(fault.key, node)
            elif fault.kind == "state" and fault.key is not None:
                check_state_key(store, fault.key, store.state_root())
            elif fault.kind == "state_missing" and fault.key is not None:
                found = next((k for k in iter_history_keys(store) if sha256(k) == fault.key), None)
                if found is None:
                    return False
                check_state_key(store, found, store.state_root())
            elif fault.kind == "history" and fault.key is not None:
                tip = store.height() or 0
                blocks: dict[int, Block] = {}

                def block_at(h: int) -> Block:
                    if h not in blocks:
                        blocks[h] = check_block(store, h, self._view_at, genesis_hash=genesis_hash)
                    return blocks[h]

                check_history_key(
                    store,
                    fault.key,
                    state_root_at=lambda h: block_at(h).header.state_root,
                    tx_id_at=lambda h, i: (
                        block_at(h).txs[i].tx_id() if i < len(block_at(h).txs) else None
                    ),
                    tip=tip,
                )
            elif fault.kind == "writes":  # the whole index again: a rebuild rewrites it all
                check_writes_index(store, store.height() or 0)
            elif fault.kind == "config":
                stored = [c for _, c in store.get_configs()]
                if stored[: len(self._epochs.all())] != list(self._epochs.all()):
                    return False
        except (IntegrityFault, LedgerError) as exc:
            log.info("fault_still_present", kind=fault.kind, detail=str(exc))
            return False
        return True

    async def _serve_repair(self, peer: str, request: RepairRequest) -> None:
        """Answer a peer's repair request with what this node can vouch for."""
        response, faults = await self._in_reader(
            lambda: serve_repair(
                self.store,
                request,
                view_at=self._view_at,
                genesis_hash=self.genesis.block_hash(),
            )
        )
        for fault in faults:  # our own copy is bad too: it is never sent
            self._on_fault(fault)
        self.p2p.send(peer, encode(response))

    def _peer_addresses(self) -> list[PeerAddress]:
        return [
            PeerAddress(
                node_id=n.node_id,
                host=n.host,
                port=n.p2p_port,
                tls_fingerprint=fingerprint(
                    load_certificate(n.tls_cert_pem).public_bytes(serialization.Encoding.DER)
                ),
            )
            for n in self.config.nodes
        ]

    def _own_org_ca(self) -> bytes:
        """This node's organization CA: from the configuration, or (a node of an
        organization that has not joined yet) from the file node.json names."""
        for org in self.config.orgs:
            if org.org_id == self.org_id:
                return org.ca_cert_pem
        if not self.cfg.org_ca:
            raise LedgerError(f"organization {self.org_id} is not in the configuration")
        return self.cfg.resolve(self.home, self.cfg.org_ca).read_bytes()

    async def _start_network(self) -> None:
        own_ca = self._own_org_ca()
        ca_pems = [o.ca_cert_pem for o in self.config.orgs]
        if own_ca not in ca_pems:
            ca_pems.append(own_ca)
        peers = self._peer_addresses()
        if self.cfg.rest_port:  # before p2p: a peer that connects at once exchanges
            self.tokens = TokenService(  # deny lists with it
                chain_id=self.chain_id,
                node_id=self.cfg.node_id,
                org_id=self.org_id,
                signer=lambda: self._signer,  # the key in force (rotation swaps it)
                node_key=self._node_key_of_org,
                ttl_ms=self.cfg.token_ttl_s * 1000,
                denied_file=self.home / "tokens-denied",
                on_revoke=lambda token_id, expires_ms: self._send_to_org(
                    encode(
                        TokenRevocations(
                            tokens=(RevokedToken(token_id=token_id, expires_ms=expires_ms),)
                        )
                    )
                ),
            )
        self.p2p = PeerNetwork(
            node_id=self.cfg.node_id,
            listen_host=self.cfg.listen_host,
            listen_port=self.cfg.p2p_port,
            peers=peers,
            server_ssl=server_context(ca_pems, self._tls_cert_pem, self._tls_key),
            client_ssl=client_context(ca_pems, self._tls_cert_pem, self._tls_key),
            on_frame=self._on_frame,
            on_connected=self._on_connected,
            max_frame_bytes=self.cfg.max_frame_bytes,
        )
        await self.p2p.start()
        self._started_s = time.monotonic()  # the grace before a webhook turn starts now
        key_pem = self._tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # held in memory only, handed to gRPC's TLS stack
        self.gateway = GatewayServer(
            backend=self,
            org_ca_pem=own_ca,
            all_ca_pems=ca_pems,
            cert_pem=self._tls_cert_pem,
            key_pem=key_pem,
            host=self.cfg.listen_host,
            port=self.cfg.gateway_port,
            audit=self.audit,
            limiter=self.limiter,
        )
        await self.gateway.start()
        if self.tokens is not None:
            self.rest = RestGateway(
                create_app(self, self.tokens, audit=self.audit, limiter=self.limiter),
                host=self.cfg.listen_host,
                port=self.cfg.rest_port,
                cert_pem=self._tls_cert_pem,
                key=self._tls_key,
            )
            await self.rest.start()
        self.metrics.start_server(self.cfg.listen_host, self.cfg.metrics_port)

    def _node_key_of_org(self, node_id: str, org: str) -> bytes | None:
        """The signing key of ``node_id`` if the configuration in force makes it a node
        of ``org`` (who may issue the tokens this organization's gateways accept)."""
        info = self._current.config.node(node_id)
        if info is None or info.org_id != org:
            return None
        return self._current.signer_keys.get(node_id)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_ms / 1000)
            self._apply(self.consensus.on_tick(now_ms()))
            self.metrics.peers.set(len(self.p2p.connected()))
            self.metrics.pool.set(self.consensus.pending_count())

    async def _in_ledger(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._ledger_thread, fn, *args)

    async def _in_reader(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- consensus -------------------------------------------------------------------

    def _make_consensus(self) -> Bft:
        """The BFT core, resumed from this node's write-ahead log (ledger thread)."""
        tip = self.store.get_block(self._tip_header.height)
        assert tip is not None
        self._startup_recent = [
            header
            for h in range(max(0, tip.header.height - BLACKLIST_HEIGHTS), tip.header.height)
            if (header := self.store.get_header(h)) is not None
        ]
        raw = self.store.load_consensus_wal()
        wal = None
        if raw is not None:
            try:
                wal = decode_record(WalState, raw)
            except DecodeError as exc:
                raise LedgerError(f"the consensus write-ahead log is corrupt: {exc}") from exc
        return self._new_core(tip, wal)

    def _new_core(self, tip: Block, wal: WalState | None) -> Bft:
        """A BFT core for the configuration in force after ``tip``."""
        params = self.config.consensus
        return Bft(
            node_id=self.cfg.node_id,
            validators=self._validators,
            chain_id=self.chain_id,
            tip=tip,
            params=BftParams(
                max_batch_txs=params.max_batch_txs,
                max_batch_bytes=params.max_batch_bytes,
                batch_timeout_ms=params.batch_timeout_ms,
            ),
            sign=self._signer.sign,
            verify_signature=self._verify_node_signature,
            verify_certified=self._is_certified,
            wal=wal,
            now_ms=now_ms(),
            recent=self._startup_recent,
        )

    def _switch_epoch(self, block: Block) -> None:
        """A configuration block was appended: from the next height on, the new validator
        set orders. The core is rebuilt for it, keeping the view, pooled requests and
        early votes; peers and trusted CAs follow the new configuration."""
        config = block.config
        assert config is not None
        old = self.consensus
        self._epochs.add(block.header.height + 1, config)
        self._adopt_config(config)
        for org in config.orgs:
            self.p2p.trust(org.ca_cert_pem)
        self.p2p.set_peers(self._peer_addresses())
        wal = WalState(
            view=old.view,
            in_view_change=False,
            height=block.header.height + 1,
            accepted=None,
            prepared_view=-1,
            prepared_certificate=(),
        )
        self.consensus = self._new_core(block, wal)
        self.consensus.adopt_transient(old)
        actions: list[BftAction] = []
        ordered = {envelope.tx_id() for envelope in block.txs}  # the change itself is done
        for envelope, tx_id, expires in old.pending_requests():
            if tx_id in ordered:
                continue
            if not self.consensus.contains(tx_id) and not self.consensus.is_pool_full():
                actions += self.consensus.on_request(envelope, tx_id, now_ms(), expires_ms=expires)
        self.metrics.fragile_topology.set(1 if self.topology.fragile else 0)
        log.info(
            "configuration_changed",
            epoch=config.epoch,
            in_force_from=block.header.height + 1,
            validators=list(self._validators),
            observer=self.consensus.observer,
        )
        self._apply(actions + self.consensus.on_tick(now_ms()))

    def _verify_node_signature(self, node_id: str, message: bytes, signature: bytes) -> bool:
        key = self._signer_keys.get(node_id)
        if key is None:
            return False
        try:
            verify_signature(ED25519, key, message, signature)
        except CryptoError:
            return False
        return True

    def _is_certified(self, block: Block) -> bool:
        try:
            self._check_certificate(block)
        except BlockVerificationError:
            return False
        return True

    def _check_certificate(self, block: Block) -> None:
        """q validators of the configuration in force at the block's height signed it."""
        self._view_at(block.header.height).check_certificate(block)

    def _apply(self, actions: list[BftAction]) -> None:
        """Carry out the core's actions in order. ``PersistWal`` holds back the actions
        after it until the record is durable: no vote leaves before its log entry."""
        self._observe_view()
        for index, action in enumerate(actions):
            if isinstance(action, PersistWal):
                self._spawn(self._persist_then(action.state, actions[index + 1 :]))
                return
            if (
                isinstance(action, Send | Broadcast)
                and self._faults
                and (isinstance(action.message, BFT_MESSAGES))
            ):
                continue  # quarantined: no votes, proposals or view changes leave
            if isinstance(action, Send):
                self.p2p.send(action.to, encode(action.message))
            elif isinstance(action, Broadcast):
                self.p2p.broadcast(encode(action.message))
            elif isinstance(action, BuildProposal) and self._faults:  # quarantined: no
                self._apply(self.consensus.on_proposal_built(None, now_ms()))  # proposal
            elif isinstance(action, BuildProposal):
                self._spawn(self._build(action))
            elif isinstance(action, VerifyProposal):
                self._spawn(self._verify_proposal(action))
            elif isinstance(action, AppendCertified):
                self._spawn(self._append(action.block, sender=None))
            elif isinstance(action, AppendPeerBlock):
                self._spawn(self._append(action.block, sender=action.sender))
            elif isinstance(action, RequestSync):
                request = SyncRequest(from_height=action.from_height, max_blocks=64)
                self.p2p.send(action.peer, encode(request))
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _observe_view(self) -> None:
        """Log and count view changes as the core makes them (operators see them)."""
        now = (self.consensus.view, self.consensus.in_view_change)
        if now == self._view_seen:
            return
        view, changing = now
        if changing:
            log.warning(
                "view_change_started",
                node=self.cfg.node_id,
                to_view=view,
                height=self.consensus.height,
            )
            self.metrics.view_changes.inc()
        else:
            log.info(
                "view_entered",
                node=self.cfg.node_id,
                view=view,
                leader=self.consensus.leader(),
                height=self.consensus.height,
            )
        self.metrics.view.set(view)
        self._view_seen = now

    async def _persist_then(self, state: WalState, rest: list[BftAction]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._wal_thread, self.store.save_consensus_wal, encode(state)
            )
        except Exception as exc:  # a vote must not leave without its log entry
            self._halt("wal_write_failed", exc)
            return
        self._apply(rest)

    async def _build(self, action: BuildProposal) -> None:
        try:
            txs = tuple(t for t in action.txs if isinstance(t, TxEnvelope))
            block, dropped = await self._in_ledger(self._build_block, txs, now_ms(), action.view)
        except (StoredDataError, StateCorruptionError) as exc:  # our store: no proposal;
            self._on_fault(_as_fault(exc))  # quarantined, the others move on without us
            self._apply(self.consensus.on_proposal_built(None, now_ms()))
            return
        except Exception as exc:  # building from checked requests cannot fail: a bug
            self._halt("block_build_failed", exc)
            return
        self.consensus.drop_requests(dropped)
        self._apply(self.consensus.on_proposal_built(block, now_ms()))

    async def _verify_proposal(self, action: VerifyProposal) -> None:
        ok = True
        try:
            await self._in_ledger(self._verify_block, action.block)
        except (StoredDataError, StateCorruptionError, IntegrityFault) as exc:  # our store,
            self._on_fault(_as_fault(exc))  # not the proposal: no verdict on the leader;
            self._after_repair["verify"] = lambda: self._verify_again(action)  # once repaired
            return
        except (BlockVerificationError, TransactionRejectedError, LedgerError) as exc:
            self._note_rejected(action.block, action.block.header.proposer, exc)
            ok = False
        except Exception as exc:  # anything but a verification verdict is a bug
            self._halt("block_verify_failed", exc)
            return
        self._apply(self.consensus.on_proposal_verified(action.view, action.block, ok, now_ms()))

    async def _verify_again(self, action: VerifyProposal) -> None:
        """A proposal whose verification our own store interrupted, if the core still
        waits for that verdict (a view change or the block's append may have passed it)."""
        block = action.block
        if (
            self.consensus.round.verifying == block.block_hash()
            and block.header.height == self._tip[0] + 1
        ):
            await self._verify_proposal(action)

    async def _append(self, block: Block, *, sender: str | None) -> None:
        """Append a block certified by a quorum: ours (``sender`` None) or a peer's."""
        try:
            await self._in_ledger(self._append_block, block)
        except (StoredDataError, StateCorruptionError, IntegrityFault) as exc:  # our store,
            self._on_fault(_as_fault(exc))  # appended once the store is repaired (the core
            self._after_repair["append"] = lambda: self._append(block, sender=sender)  # waits)
            return
        except (BlockVerificationError, TransactionRejectedError, LedgerError) as exc:
            if sender is None:  # we verified it before voting: failing now is a bug
                self._halt("certified_block_failed", exc)
                return
            self._note_rejected(block, sender, exc)
            self._apply(self.consensus.on_block_rejected(block, sender, now_ms()))
            return
        except Exception as exc:  # anything but a verification verdict is a bug
            self._halt("block_append_failed", exc)
            return
        try:
            self._on_appended(block)
        except Exception as exc:  # e.g. no key matches a rotated certificate: stop cleanly
            self._halt("after_append_failed", exc)

    def _note_rejected(self, block: Block, sender: str, exc: Exception) -> None:
        reason = getattr(exc, "reason", "invalid")
        self.metrics.blocks_rejected.labels(reason).inc()
        self._last_error = f"rejected block {block.header.height} from {sender}: {exc}"
        log.warning(
            "block_rejected",
            height=block.header.height,
            sender=sender,
            error=type(exc).__name__,
            reason=reason,
            detail=str(exc),
        )

    def _halt(self, event: str, exc: BaseException) -> None:
        """Stop the node after a broken invariant rather than go on in a state
        nobody checked (STYLE 6); the process exits with status 70."""
        log.critical(event, node=self.cfg.node_id, error=type(exc).__name__, exc_info=exc)
        self.exit_code = 70
        self._stopping.set()

    def _on_appended(self, block: Block) -> None:
        height = block.header.height
        self._tip = (height, block.block_hash(), block.header.state_root)
        self._last_append_s = time.monotonic()
        self.metrics.height.set(height)
        self.metrics.txs_committed.inc(len(block.txs))
        for index, (envelope, result) in enumerate(zip(block.txs, block.results, strict=True)):
            tx_id = envelope.tx_id()
            self._recent.pop(tx_id, None)
            for waiter in self._waiters.pop(tx_id, []):
                if not waiter.done():
                    waiter.set_result(
                        _final(tx_id, height, index, result.status, result.result, result.message)
                    )
        if block.config is not None:
            self._switch_epoch(block)
        else:
            self._apply(self.consensus.on_block_appended(block, now_ms()))
        with contextlib.suppress(AttributeError):  # before the hub opens: nobody waits
            self.events.notify(height)

    # -- ledger thread: build, verify, append ----------------------------------------

    def _check_batch(
        self,
        txs: tuple[TxEnvelope, ...],
        block_time: int,
        *,
        admitted: dict[bytes, CheckedTx] | None = None,
    ) -> tuple[list[CheckedTx], list[bytes]]:
        """Check a batch at block time; ``admitted`` holds this node's own admission checks
        (signature already verified), which then need only the time-dependent re-check."""
        checked: list[CheckedTx] = []
        dropped: list[bytes] = []
        seen: set[bytes] = set()
        max_age_ms = self.config.consensus.tx_max_age_ms
        for envelope in txs:
            earlier = admitted.pop(envelope.tx_id(), None) if admitted is not None else None
            try:
                if earlier is not None:
                    tx = recheck_envelope(
                        earlier,
                        membership=self.membership,
                        now_ms=block_time,
                        max_age_ms=max_age_ms,
                    )
                else:
                    tx = self._check(envelope, block_time)
            except TransactionRejectedError as exc:
                log.info("tx_dropped_at_ordering", tx=envelope.tx_id().hex(), reason=exc.reason)
                dropped.append(envelope.tx_id())
                continue
            if tx.tx_id in seen or self.store.get_tx_location(tx.tx_id) is not None:
                dropped.append(tx.tx_id)
                continue
            seen.add(tx.tx_id)
            checked.append(tx)
        return checked, dropped

    def _build_block(
        self,
        txs: tuple[TxEnvelope, ...],
        now: int,
        view: int,
    ) -> tuple[Block | None, list[bytes]]:
        """Execute a batch on the tip and build the proposal (not appended; its state
        change is kept until the block is certified)."""
        store = self.store
        parent = self._tip_header
        assert parent.height == store.height(), "the ledger thread's tip is the store's"
        height = parent.height
        block_time = max(now, parent.timestamp_ms)
        checked, dropped = self._check_batch(txs, block_time, admitted=self._admitted)
        new_config = None
        changes = [c for c in checked if _is_config_change(c)]
        if changes:  # a configuration change travels alone, in a configuration block
            try:
                new_config = check_config_update(
                    self._view_at(height + 1), tuple(changes[0].tx.args), now_ms=block_time
                )
                checked = [changes[0]]
            except TransactionRejectedError as exc:
                log.info("config_change_dropped", tx=changes[0].tx_id.hex(), detail=str(exc))
                dropped.append(changes[0].tx_id)
                checked = [c for c in checked if not _is_config_change(c)]
        if not checked:
            return None, dropped
        execution = self.executor.execute_block(
            store,
            checked,
            height=height + 1,
            block_time_ms=block_time,
            members=self._members_at(height + 1),
            cut_at_block_budget=True,
            acl=self._view_at(height + 1).acl,
        )
        checked = checked[: len(execution.results)]  # the rest stay in the pool
        prepared = prepare_state(
            store, store.state_root(), height + 1, execution.writes, execution.history
        )
        envelopes = tuple(c.envelope for c in checked)
        header = BlockHeader(
            chain_id=self.chain_id,
            height=Height(height + 1),
            prev_hash=parent.block_hash(),
            txs_root=compute_txs_root(envelopes),
            results_root=compute_results_root(execution.results),
            state_root=prepared.tree_update.root,
            timestamp_ms=block_time,
            proposer=self.cfg.node_id,
            epoch=self._view_at(height + 1).config.epoch,
            config_hash=ZERO_HASH if new_config is None else sha256(encode(new_config)),
            view=view,
        )
        block = Block(
            header=header,
            txs=envelopes,
            results=execution.results,
            certificate=(),
            config=new_config,
        )
        self._prepared[header.block_hash()] = prepared
        return block, dropped

    def _verify_block(self, block: Block) -> PreparedState:
        """Verify a block completely against the tip, re-executing it; raise if it does
        not verify. The state change is kept for the append."""
        store = self.store
        header = block.header
        parent = self._tip_header
        assert parent.height == store.height()
        if header.height != parent.height + 1:
            raise BlockVerificationError(
                f"does not follow the tip {parent.height}", height=header.height, reason="height"
            )
        verify_link(header, parent)
        view = self._view_at(header.height)
        if header.epoch != view.config.epoch:
            raise BlockVerificationError(
                f"block says epoch {header.epoch}, epoch {view.config.epoch} is in force",
                height=header.height,
                reason="epoch",
            )
        if header.proposer not in view.validators:
            raise BlockVerificationError(
                f"proposer {header.proposer!r} is not a validator of this network",
                height=header.height,
                reason="proposer",
            )
        verify_block_contents(block)
        checked, dropped = self._check_batch(block.txs, header.timestamp_ms)
        if dropped:
            raise BlockVerificationError(
                f"block carries {len(dropped)} invalid or duplicate transactions "
                f"(first {dropped[0].hex()})",
                height=header.height,
                reason="invalid_tx",
            )
        verify_configuration_block(block, checked, view)
        execution = self.executor.execute_block(
            store,
            checked,
            height=header.height,
            block_time_ms=header.timestamp_ms,
            members=self._members_at(header.height),
            acl=self._view_at(header.height).acl,
        )
        if compute_results_root(execution.results) != header.results_root:
            raise BlockVerificationError(
                "re-execution gives different results", height=header.height, reason="results"
            )
        prepared = prepare_state(
            store, store.state_root(), header.height, execution.writes, execution.history
        )
        if prepared.tree_update.root != header.state_root:
            raise BlockVerificationError(
                f"re-execution gives state root {prepared.tree_update.root.hex()}, "
                f"block says {header.state_root.hex()}",
                height=header.height,
                reason="state_root",
            )
        self._prepared[header.block_hash()] = prepared
        return prepared

    def _append_block(self, block: Block) -> None:
        """Append a block whose certificate holds a quorum; verify it first unless this
        node already did (its state change is then kept from that verification)."""
        self._check_certificate(block)
        prepared = self._prepared.pop(block.block_hash(), None)
        if prepared is None:
            prepared = self._verify_block(block)
        self.store.append_block(
            block,
            state_records=prepared.state_records,
            history=prepared.history,
            tree_update=prepared.tree_update,
        )
        self._tip_header = block.header
        self._prepared.clear()  # state changes computed on the old tip are stale
        height = block.header.height
        if height > self._mark_height:  # never lowered: a rollback must stay visible
            self._mark_height = height
            self._mark.write(height, block.block_hash())

    # -- p2p -------------------------------------------------------------------------

    def _on_connected(self, peer: str) -> None:
        self._heard[peer] = time.monotonic()
        self._apply(self.consensus.on_peer_connected(peer, now_ms()))
        if peer in self._org_peers():  # what changed while it was away reaches it
            for replica in self.events.snapshot():
                self.p2p.send(peer, encode(replica))
            denied = [] if self.tokens is None else self.tokens.denied(now_ms())
            for i in range(0, len(denied), 1000):
                chunk = tuple(
                    RevokedToken(token_id=t, expires_ms=e) for t, e in denied[i : i + 1000]
                )
                self.p2p.send(peer, encode(TokenRevocations(tokens=chunk)))

    def _org_peers(self) -> set[str]:
        """The other nodes of this node's organization in the newest configuration."""
        me, org = self.cfg.node_id, self.cfg.org_id
        return {n.node_id for n in self.config.nodes if n.org_id == org and n.node_id != me}

    def _send_to_org(self, payload: bytes) -> None:
        """A frame to the organization's other connected nodes (subscriptions changed
        here, tokens logged out here); one that is not connected gets everything when it
        connects (``_on_connected``)."""
        connected = set(self.p2p.connected())
        for peer in sorted(self._org_peers() & connected):
            self.p2p.send(peer, payload)

    def _live(self, peer: str, now: float) -> bool:
        """Heard from within ``_TURN_GRACE_S`` (every node sends its status each second)."""
        return now - self._heard.get(peer, now - 2 * _TURN_GRACE_S) < _TURN_GRACE_S

    def _webhook_rank(self) -> int | None:
        """This node's place in line to deliver its organization's webhooks: how many
        live nodes of the organization come before it by node id (0: its turn). None
        while it has just started (it has not heard from the others yet) or once it is
        removed from the network: it never delivers then. Two nodes that cannot hear
        each other both deliver (at least once, with the same idempotency keys); none
        is left without a deliverer."""
        now = time.monotonic()
        me = self.cfg.node_id
        if now - self._started_s < _TURN_GRACE_S or self.config.node(me) is None:
            return None
        return sum(1 for peer in self._org_peers() if peer < me and self._live(peer, now))

    def _has_the_turn(self, peer: str) -> bool:
        """Whether ``peer`` is the node whose turn it is to deliver webhooks, as this node
        sees it (the first live node of the organization, before this one)."""
        now = time.monotonic()
        return peer < self.cfg.node_id and not any(
            other < peer and self._live(other, now) for other in self._org_peers()
        )

    def _on_frame(self, peer: str, payload: bytes) -> None:
        self._heard[peer] = time.monotonic()
        try:
            message = decode(payload, max_size=self.cfg.max_frame_bytes)
        except DecodeError as exc:
            self.metrics.messages_rejected.labels("malformed").inc()
            log.warning(
                "peer_message_rejected", peer=peer, error=type(exc).__name__, detail=str(exc)[:200]
            )
            return
        if isinstance(message, ForwardTx):
            self._spawn(self._on_forwarded(message.envelope, peer))
        elif isinstance(message, SyncRequest):
            self._spawn(self._serve_sync(peer, message))
        elif isinstance(message, RepairRequest):
            self._spawn(self._serve_repair(peer, message))
        elif isinstance(message, RepairResponse):
            inbox = self._repair_waiters.get(message.request_id)
            if inbox is not None and inbox.qsize() < 64:
                inbox.put_nowait(message)
        elif isinstance(message, (*BFT_MESSAGES, SyncResponse, StatusMessage)):
            self._apply(self.consensus.on_message(peer, message, now_ms()))
        elif isinstance(message, SubscriptionReplica) and peer in self._org_peers():
            news = self._has_the_turn(peer)  # another organization's node gets nothing
            self._spawn(self.events.merge(message, news=news))
        elif isinstance(message, TokenRevocations) and peer in self._org_peers():
            if self.tokens is not None:  # tokens logged out at another of our gateways
                self.tokens.deny_many(
                    [(t.token_id, t.expires_ms) for t in message.tokens], now_ms()
                )
        else:
            self.metrics.messages_rejected.labels("unexpected").inc()
            log.warning(
                "peer_message_rejected",
                peer=peer,
                error="UnexpectedMessage",
                detail=type(message).__name__,
            )

    async def _on_forwarded(self, envelope: TxEnvelope, peer: str) -> None:
        try:
            checked = await self._admit(envelope)
        except TransactionRejectedError as exc:
            log.info("forwarded_tx_rejected", peer=peer, reason=exc.reason)
            return
        except AccessDeniedError as exc:
            log.info("forwarded_tx_rejected", peer=peer, reason="access_denied", rule=exc.rule)
            return
        except IntegrityFault:  # our own index is damaged: quarantined, and repairing
            log.info("forwarded_tx_rejected", peer=peer, reason="quarantined")
            return
        self._request(checked)

    def _request(self, checked: CheckedTx) -> None:
        """Hand an admitted transaction to consensus, with the time it becomes too old."""
        expires = checked.tx.created_ms + self.config.consensus.tx_max_age_ms
        self._apply(
            self.consensus.on_request(checked.envelope, checked.tx_id, now_ms(), expires_ms=expires)
        )

    async def _serve_sync(self, peer: str, request: SyncRequest) -> None:
        def read() -> list[Block]:
            blocks: list[Block] = []
            size = 0
            for height in range(
                request.from_height, request.from_height + min(request.max_blocks, 256)
            ):
                raw = self.store.get_block_bytes(height)
                if raw is None or size + len(raw) > _SYNC_MAX_BYTES:
                    break
                try:  # a falsified block never leaves this node
                    block = self._checked_block(height)
                except IntegrityFault:
                    break
                blocks.append(block)
                size += len(raw)
            return blocks

        try:
            blocks = await self._in_reader(read)
        except LedgerError as exc:
            log.error("sync_read_failed", peer=peer, detail=str(exc))
            return
        if blocks:
            self.p2p.send(peer, encode(SyncResponse(blocks=tuple(blocks))))

    # -- gateway backend -------------------------------------------------------------

    def _check(self, envelope: TxEnvelope, at_ms: int) -> CheckedTx:
        """The network's transaction rules (signature, creator, chain, age) at ``at_ms``."""
        return check_envelope(
            envelope,
            membership=self.membership,
            chain_id=self.chain_id,
            now_ms=at_ms,
            max_age_ms=self.config.consensus.tx_max_age_ms,
        )

    async def _admit(self, envelope: TxEnvelope) -> CheckedTx:
        """Check a transaction for ordering (signature, creator, freshness, replay, and for
        a configuration change the admin policy, so the admin hears at once)."""
        checked = self._check(envelope, now_ms())
        creator, tx = checked.creator, checked.tx
        try:  # the executor decides at execution; refusing now spares a block its failure
            self._current.acl.check(
                f"submit/{tx.contract}/{tx.function}",
                Identity(org=creator.org, role=str(creator.role), name=creator.name),
            )
        except AccessRefused as exc:
            raise AccessDeniedError(str(exc), rule=exc.rule) from exc
        if _is_config_change(checked):
            check_config_update(self._current, tuple(checked.tx.args), now_ms=now_ms())
        tx_id = checked.tx_id
        if tx_id in self._recent or self.consensus.contains(tx_id):
            raise TransactionRejectedError(
                f"transaction {tx_id.hex()} was already submitted", reason="duplicate"
            )
        location = await self._in_reader(self._tx_location, tx_id)
        if location is not None:
            raise TransactionRejectedError(
                f"transaction {tx_id.hex()} is already in block {location[0]}", reason="duplicate"
            )
        if self.consensus.is_pool_full():
            raise TransactionRejectedError("the request pool is full; retry later", reason="busy")
        self._recent[tx_id] = now_ms()
        if self.consensus.is_leader():  # the block builder reuses this check
            self._admitted[tx_id] = checked
        while len(self._recent) > _RECENT_TXS:
            self._recent.popitem(last=False)
        return checked

    async def submit(self, envelope: TxEnvelope, wait_ms: int) -> TxStatusResponse:
        """Admit a transaction for ordering; wait up to ``wait_ms`` for finality."""
        try:
            checked = await self._admit(envelope)
        except TransactionRejectedError as exc:
            self.metrics.txs_rejected.labels(exc.reason).inc()
            raise
        tx_id = checked.tx_id
        waiter: asyncio.Future[TxStatusResponse] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, []).append(waiter)
        self._request(checked)
        return await self._wait(tx_id, waiter, wait_ms)

    async def _wait(
        self, tx_id: bytes, waiter: asyncio.Future[TxStatusResponse], wait_ms: int
    ) -> TxStatusResponse:
        try:
            timeout = min(max(wait_ms, 0), self.cfg.submit_wait_max_ms) / 1000
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return TxStatusResponse(
                tx_id=tx_id,
                state="pending",
                height=-1,
                tx_index=-1,
                status=-1,
                result=None,
                message="not final yet",
            )
        finally:
            waiters = self._waiters.get(tx_id)
            if waiters is not None and waiter.done() is False:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(tx_id, None)

    async def evaluate(self, checked: CheckedTx) -> EvaluateResponse:
        """Run a query (authenticated by the gateway) against committed state; nothing
        is written. The executor applies the ACL and the function's access rules."""

        def run() -> EvaluateResponse:
            height = self.store.height()
            assert height is not None
            result = self.executor.evaluate(
                VerifiedState(self.store, self.store.state_root()),
                checked,
                height=height,
                block_time_ms=now_ms(),
                members=self._members_at(height + 1),
                acl=self._view_at(height + 1).acl,
            )
            return EvaluateResponse(result=result, height=height)

        return await self._in_reader(run)  # type: ignore[no-any-return]

    async def tx_status(self, tx_id: bytes, wait_ms: int) -> TxStatusResponse:
        """Where a transaction stands; waits for finality if pending."""
        found = await self.get_tx(tx_id)
        if found is not None:
            return _final(
                tx_id, found.height, found.tx_index, found.status, found.result, found.message
            )
        if tx_id not in self._recent and not self.consensus.contains(tx_id):
            return TxStatusResponse(
                tx_id=tx_id,
                state="unknown",
                height=-1,
                tx_index=-1,
                status=-1,
                result=None,
                message="not known to this node",
            )
        waiter: asyncio.Future[TxStatusResponse] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, []).append(waiter)
        return await self._wait(tx_id, waiter, wait_ms)

    async def get_block(self, height: int) -> bytes | None:
        """Canonical bytes of a block (-1: the tip), checked against its certificate
        before it leaves (a falsified block quarantines the node instead)."""

        def read() -> bytes | None:
            tip = self.store.height()
            assert tip is not None
            at = tip if height < 0 else height
            if at > tip:
                return None
            self._checked_block(at)
            return self.store.get_block_bytes(at)

        return await self._in_reader(read)  # type: ignore[no-any-return]

    def _checked_block(self, height: int, *, with_index: bool = False) -> Block:
        """The stored block at ``height`` if it verifies (any thread); on a fault the
        node quarantines itself and the fault is raised to the caller."""
        try:
            return check_block(
                self.store,
                height,
                self._view_at,
                genesis_hash=self.genesis.block_hash(),
                with_index=with_index,
            )
        except IntegrityFault as fault:
            self._loop.call_soon_threadsafe(self._on_fault, fault)
            raise

    def _tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        """The store's index entry of ``tx_id`` (reader thread); a damaged one quarantines
        the node (IntegrityFault), like any data it would serve."""
        try:
            return self.store.get_tx_location(tx_id)
        except StoredDataError as exc:
            fault = _as_fault(exc)
            self._loop.call_soon_threadsafe(self._on_fault, fault)
            raise fault from exc

    async def get_tx(self, tx_id: bytes) -> TxResponse | None:
        """A committed transaction with its result."""

        def read() -> TxResponse | None:
            location = self._tx_location(tx_id)
            if location is None:
                return None
            block = self._checked_block(location[0], with_index=True)
            if not (
                location[1] < len(block.txs) and block.txs[location[1]].tx_id() == tx_id
            ):  # an index entry that names a transaction its block does not hold
                fault = IntegrityFault(
                    f"the index entry of {tx_id.hex()} points at {location}, which holds "
                    "another transaction",
                    Fault("txindex", height=location[0], key=tx_id),
                )
                self._loop.call_soon_threadsafe(self._on_fault, fault)
                raise fault
            envelope, result = block.txs[location[1]], block.results[location[1]]
            return TxResponse(
                envelope=envelope,
                height=location[0],
                tx_index=location[1],
                status=result.status,
                result=result.result,
                message=result.message,
            )

        return await self._in_reader(read)  # type: ignore[no-any-return]

    # -- the audit log -------------------------------------------------------------------

    def _read_anchored_size(self) -> int:
        """How many of this node's audit records the ledger holds a root for."""
        entry = self.store.get_state(AUDIT_CONTRACT, f"anchor/{self.org_id}/{self.cfg.node_id}")
        anchored = 0 if entry is None else int(entry.value["size"])
        if anchored > self.audit.size():
            log.critical(
                "audit_log_shorter_than_anchored",
                anchored=anchored,
                size=self.audit.size(),
                detail="the audit log lost records the ledger holds a commitment to",
            )
            self._alert("audit_log_shorter_than_anchored", anchored=anchored)
        return anchored

    async def _anchor_loop(self) -> None:
        """Anchor the audit log's signed root on the ledger every interval it grew."""
        interval = self.cfg.audit_anchor_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if self._faults or self.audit.size() <= self._anchored_size:
                continue
            try:
                await self.audit_anchor()
            except (LedgerError, TransactionRejectedError) as exc:
                log.warning("audit_anchor_failed", detail=str(exc))

    async def audit_anchor(self) -> TxStatusResponse:
        """Order a transaction, signed with this node's key, anchoring the audit log's
        root (with a consistency proof from the last anchored root); wait for it."""
        anchored = self._anchored_size
        checkpoint = await self._in_ledger(self.audit.checkpoint, self._signer)
        proof = (
            await self._in_ledger(self.audit.consistency_proof, anchored, checkpoint.size)
            if 0 < anchored < checkpoint.size
            else []
        )
        me = self._current.config.node(self.cfg.node_id)
        if me is None:
            raise LedgerError("this node is not in the configuration: it cannot anchor")
        tx = Transaction(
            chain_id=self.chain_id,
            contract=AUDIT_CONTRACT,
            function="anchor",
            args=(
                checkpoint.size,
                checkpoint.root,
                checkpoint.time_ms,
                checkpoint.signature,
                proof,
            ),
            nonce=os.urandom(16),
            created_ms=now_ms(),
            creator=me.signing_cert,
        )
        payload = encode(tx)
        envelope = TxEnvelope(payload=payload, signature=self._signer.sign(payload))
        status = await self.submit(envelope, 15_000)
        if status.state == "final" and status.status == 0:
            self._anchored_size = max(self._anchored_size, checkpoint.size)
            log.info(
                "audit_anchored",
                size=checkpoint.size,
                root=checkpoint.root.hex(),
                height=status.height,
            )
        else:
            log.warning("audit_anchor_not_final", state=status.state, message=status.message)
        return status

    async def audit_query(self, request: AuditQueryRequest) -> AuditRecords:
        """Records of this node's audit log matching ``request``."""

        def run() -> AuditRecords:
            found = self.audit.query(
                identity=request.identity or None,
                since_ms=None if request.since_ms < 0 else request.since_ms,
                until_ms=None if request.until_ms < 0 else request.until_ms,
                subject_contains=request.subject_contains or None,
                operation=request.operation or None,
                limit=max(1, min(request.limit, 1000)),
                newest_first=request.newest_first,
            )
            return AuditRecords(records=tuple(encode(r) for r in found), size=self.audit.size())

        return await self._in_reader(run)  # type: ignore[no-any-return]

    async def audit_export(self, request: AuditExportRequest) -> AuditExportResponse:
        """An export of ``[from, to)`` with proofs, under a checkpoint signed now."""

        def run() -> AuditExportResponse:
            checkpoint = self.audit.checkpoint(self._signer)
            end = checkpoint.size if request.to_seq < 0 else min(request.to_seq, checkpoint.size)
            document = self.audit.export(
                max(0, request.from_seq),
                end,
                with_proofs=request.with_proofs,
                checkpoint=checkpoint,
            )
            me = self._current.config.node(self.cfg.node_id)
            return AuditExportResponse(
                document=json.dumps(document, separators=(",", ":")).encode(),
                node_id=self.cfg.node_id,
                signing_cert=b"" if me is None else me.signing_cert,
            )

        return await self._in_reader(run)  # type: ignore[no-any-return]

    async def contracts(self) -> list[dict[str, Any]]:
        """Every contract callers can use (built in, or deployed and not withdrawn)."""

        def read() -> list[dict[str, Any]]:
            names = sorted(self.executor.builtin_names)
            for _, entry in self.store.iter_state("_lifecycle", "definition/", "definition0"):
                value = entry.value
                if isinstance(value, dict) and value.get("status") in ("active", "terminated"):
                    names.append(str(value["name"]))
            out = []
            for name in names:
                described = self.executor.describe(self.store, name)
                if name in self.executor.builtin_names:
                    described["version"] = kyodo.__version__
                else:
                    definition = self.store.get_state("_lifecycle", f"definition/{name}")
                    assert definition is not None
                    described["version"] = definition.value.get("version", "")
                    described["sequence"] = definition.value.get("sequence", 0)
                out.append(described)
            return out

        return await self._in_reader(read)  # type: ignore[no-any-return]

    async def get_proof(self, request: ProofRequest) -> bytes:
        """A ``kyodo-proof/v1`` document, verified here against the genesis block before
        it leaves (LookupError: no such block, transaction or height)."""

        def build() -> bytes:
            store = self.store
            try:
                if request.kind == "block":
                    doc = build_block_proof(store, request.height)
                elif request.kind == "tx":
                    doc = build_tx_proof(store, request.tx_id)
                else:
                    at = None if request.height < 0 else request.height
                    doc = build_key_proof(store, request.namespace, request.key, at)
            except ProofError as exc:
                if exc.reason == "not_found":
                    raise LookupError(str(exc)) from exc
                raise
            try:
                verify_proof_document(doc, self.genesis)
            except ProofError as exc:  # our own data does not prove out: quarantine
                fault = IntegrityFault(
                    f"a proof built from this store does not verify: {exc}",
                    Fault("block", height=doc.get("height") if isinstance(doc, dict) else None),
                )
                self._loop.call_soon_threadsafe(self._on_fault, fault)
                raise fault from exc
            return json.dumps(doc, separators=(",", ":")).encode()

        return await self._in_reader(build)  # type: ignore[no-any-return]

    def current_config(self) -> ConfigResponse:
        """The newest configuration and the height it is in force from."""
        config = self._epochs.latest()
        return ConfigResponse(
            config=encode(config),
            epoch=config.epoch,
            in_force_from=self._epochs.latest_first_height(),
        )

    def auth_context(self) -> AuthContext:
        """The configuration in force, as the gateway checks calls against it."""
        return AuthContext(
            chain_id=self.chain_id,
            membership=self._current.membership,
            max_age_ms=self._current.config.consensus.tx_max_age_ms,
            acl=self._current.acl,
        )

    def is_revoked(self, org: str, serial: int) -> bool:
        """Whether the configuration in force revokes this certificate of ``org``."""
        return self._current.membership.is_revoked(org, serial)

    def status(self) -> NodeStatus:
        """This node's view of itself (from memory: no storage access on the loop)."""
        height, tip_hash, state_root = self._tip
        connected = tuple(self.p2p.connected())
        expected = len(self.config.nodes) - 1
        problems = []
        if len(connected) != expected:
            problems.append(f"{len(connected)}/{expected} peers connected")
        lag = self.consensus.lag()
        stalled_s = time.monotonic() - self._last_append_s
        if lag > 0 and stalled_s > _STALL_S:
            problems.append(f"{lag} blocks behind peers, nothing appended for {stalled_s:.0f} s")
        if problems and self._last_error:
            problems.append(f"last error: {self._last_error}")
        healthy = self._ready and not problems
        if self.topology.fragile:  # accepted at genesis, but never silently
            problems.append(f"WARNING fragile topology: {self._topology_warning}")
        now = datetime.now(UTC)
        for kind, expires in sorted(self._cert_expiry.items()):
            days = (expires - now).days
            if days < self.cfg.cert_expiry_warning_days:
                problems.append(
                    f"WARNING {kind} certificate expires in {days} days ({expires.date()})"
                )
        if self._faults:
            healthy = False
            problems.insert(
                0, f"QUARANTINED: {'; '.join(str(e) for e in self._faults.values())[:600]}"
            )
        detail = "; ".join(problems) if problems else "ok"
        return NodeStatus(
            node_id=self.cfg.node_id,
            org_id=self.org_id,
            role=_role(self.consensus),
            view=self.consensus.view,
            height=height,
            tip_hash=tip_hash,
            state_root=state_root,
            peers_connected=connected,
            healthy=healthy,
            detail=detail,
            version=kyodo.__version__,
            chain_id=self.chain_id,
        )


def _discard(_: object) -> None:
    """Drop a value (a loop handle the caller has no use for)."""


class _HubLedger:
    """The node as the event hub sees it: verified blocks and their state changes."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def tip(self) -> int:
        return self._node._tip[0]

    def block(self, height: int) -> Block:
        return self._node._checked_block(height)

    def writes(self, height: int) -> list[tuple[bytes, int, Any]] | None:
        try:
            return self._node.store.get_writes(height)
        except UnreadableStoreError as exc:  # damaged files: set aside and rebuilt
            fault = IntegrityFault(str(exc), Fault("unreadable", height=height))
            self._node._loop.call_soon_threadsafe(self._node._on_fault, fault)
            raise fault from exc
        except StoredDataError as exc:  # a forged index entry: quarantine, then repair
            fault = IntegrityFault(str(exc), Fault("writes", height=height))
            self._node._loop.call_soon_threadsafe(self._node._on_fault, fault)
            raise fault from exc

    def in_reader(self, fn: Any) -> Any:
        # streams read on a thread of their own: a consumer replaying a long backlog
        # never delays the node's own readers (submit checks, sync, repair)
        return asyncio.get_running_loop().run_in_executor(self._node._event_reader, fn)


def _as_fault(exc: Exception) -> IntegrityFault:
    """A storage error met while appending, as a fault to repair."""
    if isinstance(exc, IntegrityFault):
        return exc
    if isinstance(exc, StateCorruptionError):
        return IntegrityFault(str(exc), Fault("tree", key=bytes.fromhex(exc.node_hash)))
    if isinstance(exc, UnreadableStoreError):  # damaged files: no value to replace
        return IntegrityFault(str(exc), Fault("unreadable"))
    if isinstance(exc, StoredDataError) and exc.state_key is not None:
        return IntegrityFault(str(exc), Fault("state", key=exc.state_key))
    if isinstance(exc, StoredDataError) and exc.tx_id is not None:
        return IntegrityFault(str(exc), Fault("txindex", key=exc.tx_id))
    height = getattr(exc, "height", None)
    return IntegrityFault(str(exc), Fault("block", height=height))


def _final(
    tx_id: bytes, height: int, index: int, status: int, result: Any, message: str
) -> TxStatusResponse:
    return TxStatusResponse(
        tx_id=tx_id,
        state="final",
        height=height,
        tx_index=index,
        status=status,
        result=result,
        message=message,
    )


def _is_config_change(checked: CheckedTx) -> bool:
    return checked.tx.contract == CONFIG_CONTRACT and checked.tx.function == CONFIG_FUNCTION


def _role(core: Bft) -> str:
    if core.observer:
        return "observer"
    if core.in_view_change:
        return "view-change"
    return "leader" if core.is_leader() else "follower"


def _utc(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC)


def _relative_source(source: str, home: Path) -> str:
    kind, _, where = source.partition(":")
    if kind == "file" and not os.path.isabs(where):
        return f"file:{home / where}"
    return source


def run_node(home: Path) -> None:
    """Run the node whose home folder is ``home`` until it is told to stop."""
    _configure_logging()
    try:
        node = Node(home)
        asyncio.run(node.run())
    except OSError as exc:  # a port in use, a missing file: say it plainly and stop
        log.critical("node_failed_to_start", error=type(exc).__name__, detail=str(exc))
        raise SystemExit(2) from None
    except LedgerError as exc:
        log.critical("node_failed_to_start", error=type(exc).__name__, detail=str(exc))
        raise SystemExit(2) from None
    if node.exit_code:
        raise SystemExit(node.exit_code)


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
