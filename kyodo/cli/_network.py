"""Local networks: generate organizations, keys, genesis; start and stop node processes.

Layout of a network folder::

    network.json                  what is where (ports, nodes, orgs); no secrets
    genesis.block                 the genesis block every node starts from
    ca-bundle.pem                 every organization's CA certificate
    orgs/<org>/passphrase         the org's key passphrase (mode 0600; dev networks only)
    orgs/<org>/ca/ca.pem|ca.key   the org's trust bundle (root CA, then its intermediate if
                                  any) and the issuing CA's key (encrypted)
    orgs/<org>/ca/root.key        with an intermediate: the root CA's key (encrypted; move
                                  it offline: only a new intermediate needs it)
    orgs/<org>/users/<name>/      admin and user1: signing.pem|key, tls.pem|key
    nodes/<node>/                 node.json, keys, data/ (RocksDB), node.pid,
                                  node.log (JSON lines), node.stderr.log (gRPC core, crashes)

Each node is a detached OS process (``python -m kyodo.node HOME``) in its
own session, so it outlives the command that started it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from kyodo.client import Gateway, KyodoError, SubmitResult, UserCredentials, load_user
from kyodo.codec import decode_record, encode
from kyodo.crypto import (
    Pkcs11KeyRef,
    generate_pkcs11_key,
    is_pkcs11_uri,
    load_private_key,
    save_private_key,
    sha256,
)
from kyodo.identity import CertificateAuthority, Role, load_certificate
from kyodo.ledger import (
    AclEntry,
    ConsensusParams,
    FragileTopologyError,
    NetworkConfig,
    NodeInfo,
    OrgInfo,
    approval_message,
    check_topology,
    make_genesis_block,
    required_approvals,
    save_genesis,
)
from kyodo.node import NodeConfig
from kyodo.policy import PolicyError, PolicySyntaxError, check_resource_name, parse_policy
from kyodo.wire import NodeStatus

__all__ = ["LocalNetwork", "NodeEntry", "create_network"]

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEntry:
    """A node of a local network."""

    node_id: str
    org_id: str
    home: Path
    gateway: str
    p2p_port: int
    metrics_port: int
    rest: str = ""
    """host:port of the node's REST gateway (HTTPS; token login), if it serves one."""


def _allocate_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1, below Linux's ephemeral range.

    Ports the OS hands out for outbound connections (32768-60999) could be taken by a
    node's own outgoing connection before a later node binds them, so listen ports are
    chosen from 20000-32000, starting at a random offset so several networks coexist.
    Every candidate is bound (and held) until all are chosen.
    """
    held: list[socket.socket] = []
    start = 20000 + secrets.randbelow(10000)
    try:
        port = start
        while len(held) < count and port < 32000:
            candidate = socket.socket()
            try:
                candidate.bind(("127.0.0.1", port))
                held.append(candidate)
            except OSError:
                candidate.close()
            port += 1
        if len(held) < count:
            raise KyodoError(f"could not find {count} free ports on 127.0.0.1", code="ports")
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _der(pem: bytes) -> bytes:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _issue_member(
    ca: CertificateAuthority,
    folder: Path,
    *,
    name: str,
    role: Role,
    passphrase: bytes,
    salt: bytes,
    now: datetime,
    hosts: tuple[str, ...] = (),
    hsm_key: Pkcs11KeyRef | None = None,
) -> tuple[bytes, bytes]:
    """Keys and certificates of one member in ``folder``; returns (signing PEM, TLS PEM).
    The TLS certificate names localhost, 127.0.0.1 and ``hosts``. With ``hsm_key`` the
    signing key is generated inside that PKCS#11 token (non-extractable) instead of in
    a key file."""
    signing = None if hsm_key is not None else ed25519.Ed25519PrivateKey.generate()
    tls = ec.generate_private_key(ec.SECP256R1())
    signing_public = (
        ed25519.Ed25519PublicKey.from_public_bytes(generate_pkcs11_key(hsm_key))
        if hsm_key is not None
        else signing.public_key()  # type: ignore[union-attr]
    )
    signing_pem = ca.issue_signing_cert(name=name, role=role, public_key=signing_public, now=now)
    tls_pem = ca.issue_tls_cert(
        name=name, role=role, public_key=tls.public_key(), now=now, hosts=hosts
    )
    folder.mkdir(parents=True, exist_ok=True)
    if signing is not None:
        save_private_key(folder / "signing.key", signing, passphrase, salt=salt)
    save_private_key(folder / "tls.key", tls, passphrase, salt=salt)
    (folder / "signing.pem").write_bytes(signing_pem)
    (folder / "tls.pem").write_bytes(tls_pem)
    return signing_pem, tls_pem


def create_network(
    folder: Path,
    *,
    orgs: int,
    progress: Progress,
    batch_timeout_ms: int = 20,
    max_batch_txs: int = 500,
    validators_per_org: int = 1,
    allow_fragile_topology: bool = False,
    distinct_hosts: bool = False,
    admin_policy: str = "",
    hsm: HsmSettings | None = None,
    intermediate_ca: bool = False,
) -> LocalNetwork:
    """Generate a network of ``orgs`` organizations with ``validators_per_org`` validator
    nodes each. A topology in which one organization holds more than f votes is refused
    (before anything is written) unless ``allow_fragile_topology``. With
    ``intermediate_ca`` each organization's root CA certifies an intermediate CA that
    issues every certificate."""
    if (folder / "network.json").exists():
        raise KyodoError(
            f"{folder} already holds a network; `kyodo network down --purge` first", code="exists"
        )
    if not 1 <= orgs <= 32:
        raise KyodoError("--orgs must be between 1 and 32", code="usage")
    if not 1 <= validators_per_org <= 8:
        raise KyodoError("--validators-per-org must be between 1 and 8", code="usage")
    _check_planned_topology(orgs, validators_per_org, allow_fragile_topology)
    if admin_policy:
        try:
            parse_policy(admin_policy)
        except PolicySyntaxError as exc:
            raise KyodoError(f"--admin-policy: {exc}", code="usage") from None
    ports = iter(_allocate_ports(4 * orgs * validators_per_org))
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    chain_id = f"kyodo-local-{secrets.token_hex(4)}"
    org_infos: list[OrgInfo] = []
    nodes: list[NodeInfo] = []
    entries: list[dict[str, object]] = []
    for i in range(1, orgs + 1):
        org_id = f"org{i}"
        progress(f"organization {org_id}: CA, node and user certificates")
        org = _create_org(folder, org_id, now, intermediate=intermediate_ca)
        ca, passphrase, salt = org.ca, org.passphrase, org.salt
        org_infos.append(OrgInfo(org_id=org_id, ca_cert_pem=ca.trust_pem))
        for j in range(validators_per_org):
            node_id = f"{org_id}-node{j}"
            host = f"127.0.0.{10 + len(nodes) + 1}" if distinct_hosts else "127.0.0.1"
            home = folder / "nodes" / node_id
            hsm_key = None if hsm is None else hsm.key(node_id)
            signing_pem, tls_pem = _issue_member(
                ca,
                home,
                name=node_id,
                role=Role.NODE,
                passphrase=passphrase,
                salt=salt,
                now=now,
                hosts=(host,) if distinct_hosts else (),
                hsm_key=hsm_key,
            )
            p2p, gateway, metrics, rest = next(ports), next(ports), next(ports), next(ports)
            NodeConfig(
                node_id=node_id,
                org_id=org_id,
                listen_host=host,
                p2p_port=p2p,
                gateway_port=gateway,
                metrics_port=metrics,
                rest_port=rest,
                genesis="../../genesis.block",
                passphrase=f"file:../../orgs/{org_id}/passphrase",
                signing_key="signing.key" if hsm_key is None else hsm_key.uri(),
            ).save(home)
            nodes.append(
                NodeInfo(
                    node_id=node_id,
                    org_id=org_id,
                    signing_cert=_der(signing_pem),
                    tls_cert_pem=tls_pem,
                    host=host,
                    p2p_port=p2p,
                    gateway_port=gateway,
                    validator=True,
                )
            )
            entries.append(
                {
                    "node_id": node_id,
                    "org_id": org_id,
                    "home": f"nodes/{node_id}",
                    "gateway": f"{host}:{gateway}",
                    "p2p_port": p2p,
                    "metrics_port": metrics,
                    "rest": f"{host}:{rest}",
                }
            )
    config = NetworkConfig(
        chain_id=chain_id,
        orgs=tuple(org_infos),
        nodes=tuple(nodes),
        consensus=ConsensusParams(
            max_batch_txs=max_batch_txs,
            max_batch_bytes=4 * 1024 * 1024,
            batch_timeout_ms=batch_timeout_ms,
            tx_max_age_ms=300_000,
        ),
        created_ms=int(now.timestamp() * 1000),
        allow_fragile_topology=allow_fragile_topology,
        admin_policy=admin_policy,
    )
    check_topology(config, allow_fragile=allow_fragile_topology)
    progress("genesis block")
    save_genesis(folder / "genesis.block", make_genesis_block(config))
    (folder / "ca-bundle.pem").write_bytes(b"".join(o.ca_cert_pem for o in org_infos))
    (folder / "network.json").write_text(
        json.dumps(
            {"chain_id": chain_id, "orgs": [o.org_id for o in org_infos], "nodes": entries},
            indent=2,
        )
        + "\n"
    )
    return LocalNetwork(folder)


@dataclass(frozen=True, slots=True)
class _Org:
    ca: CertificateAuthority
    passphrase: bytes
    salt: bytes


def _create_org(folder: Path, org_id: str, now: datetime, *, intermediate: bool = False) -> _Org:
    """An organization's CA (a root, or a root and its intermediate), passphrase, admin
    and user1, in ``folder/orgs/org_id``."""
    org_dir = folder / "orgs" / org_id
    org_dir.mkdir(parents=True, exist_ok=True)
    passphrase = secrets.token_hex(24).encode()
    pass_file = org_dir / "passphrase"
    pass_file.touch(mode=0o600)
    pass_file.write_bytes(passphrase)
    salt = os.urandom(16)
    (org_dir / "ca").mkdir(exist_ok=True)
    if intermediate:
        root = CertificateAuthority.create(org_id, now=now, path_length=1)
        save_private_key(org_dir / "ca" / "root.key", root.key, passphrase, salt=salt)
        ca = root.create_intermediate(now=now)
    else:
        ca = CertificateAuthority.create(org_id, now=now)
    (org_dir / "ca" / "ca.pem").write_bytes(ca.trust_pem)
    save_private_key(org_dir / "ca" / "ca.key", ca.key, passphrase, salt=salt)
    for user, role in (("admin", Role.ADMIN), ("user1", Role.CLIENT)):
        _issue_member(
            ca,
            org_dir / "users" / user,
            name=user,
            role=role,
            passphrase=passphrase,
            salt=salt,
            now=now,
        )
    return _Org(ca, passphrase, salt)


def _load_org(folder: Path, org_id: str) -> _Org:
    """An existing organization's CA (key decrypted in memory) and passphrase."""
    org_dir = folder / "orgs" / org_id
    passphrase = (org_dir / "passphrase").read_bytes().strip()
    key_doc = json.loads((org_dir / "ca" / "ca.key").read_text())
    key = load_private_key(org_dir / "ca" / "ca.key", passphrase)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle = x509.load_pem_x509_certificates((org_dir / "ca" / "ca.pem").read_bytes())
    blocks = [c.public_bytes(serialization.Encoding.PEM) for c in bundle]
    ca = CertificateAuthority(  # the last certificate of the bundle issues
        org=org_id, cert_pem=blocks[-1], key=key, chain_pem=b"".join(blocks[:-1])
    )
    return _Org(ca, passphrase, bytes.fromhex(key_doc["salt"]))


def replace_config(config: NodeConfig, home: Path, **changes: object) -> None:
    """Rewrite a node's node.json with ``changes``."""
    replace(config, **changes).save(home)  # type: ignore[arg-type]


def _check_planned_topology(orgs: int, per_org: int, allow_fragile: bool) -> None:
    """Refuse a fragile validator set before generating anything for it."""
    placeholders = tuple(
        NodeInfo(
            node_id=f"org{i}-node{j}",
            org_id=f"org{i}",
            signing_cert=b"",
            tls_cert_pem=b"",
            host="",
            p2p_port=0,
            gateway_port=0,
            validator=True,
        )
        for i in range(1, orgs + 1)
        for j in range(per_org)
    )
    planned = NetworkConfig(
        chain_id="planned",
        orgs=(),
        nodes=placeholders,
        consensus=ConsensusParams(
            max_batch_txs=1, max_batch_bytes=1, batch_timeout_ms=1, tx_max_age_ms=1
        ),
        created_ms=0,
        allow_fragile_topology=allow_fragile,
    )
    try:
        check_topology(planned, allow_fragile=allow_fragile)
    except FragileTopologyError as exc:
        raise KyodoError(str(exc), code="fragile_topology") from exc


class LocalNetwork:
    """A generated local network folder and its node processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        path = self.folder / "network.json"
        if not path.exists():
            raise KyodoError(
                f"no network in {self.folder} (run `kyodo network up`)", code="no_network"
            )
        doc = json.loads(path.read_text())
        self.chain_id: str = doc["chain_id"]
        self.orgs: list[str] = doc["orgs"]
        self.nodes = [
            NodeEntry(
                node_id=n["node_id"],
                org_id=n["org_id"],
                home=self.folder / n["home"],
                gateway=n["gateway"],
                p2p_port=n["p2p_port"],
                metrics_port=n["metrics_port"],
                rest=n.get("rest", ""),
            )
            for n in doc["nodes"]
        ]
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def node(self, node_id: str) -> NodeEntry:
        """A node by id (or by org id: that org's first node)."""
        for entry in self.nodes:
            if node_id in (entry.node_id, entry.org_id):
                return entry
        raise KyodoError(
            f"no node {node_id!r}; nodes: {', '.join(n.node_id for n in self.nodes)}",
            code="not_found",
        )

    # -- processes -------------------------------------------------------------------

    def pid(self, node: NodeEntry) -> int | None:
        """The pid of a running node process, or None."""
        try:
            pid = int((node.home / "node.pid").read_text())
        except (OSError, ValueError):
            return None
        child = self._children.get(pid)
        if child is not None:  # ours: /proc may still show the parent's command line
            return pid if child.poll() is None else None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"kyodo.node" not in cmdline or str(node.home).encode() not in cmdline:
            return None
        return pid

    def start(self, node: NodeEntry) -> int:
        """Start a node process detached; returns its pid."""
        running = self.pid(node)
        if running is not None:
            return running
        log = open(node.home / "node.log", "ab")  # noqa: SIM115 - handed to the child
        errors = open(node.home / "node.stderr.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            [sys.executable, "-m", "kyodo.node", str(node.home)],
            stdout=log,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=node.home,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed_of(node.node_id))},
        )
        log.close()
        errors.close()
        self._children[process.pid] = process  # reaped in stop()
        (node.home / "node.pid").write_text(str(process.pid))
        return process.pid

    def stop(self, node: NodeEntry, *, kill: bool = False, timeout_s: float = 10.0) -> bool:
        """Stop a node (SIGTERM, then SIGKILL after ``timeout_s``; SIGKILL at once if ``kill``)."""
        pid = self.pid(node)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        child = self._children.pop(pid, None)
        if child is not None:
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.02)
        return True

    # -- configuration changes -----------------------------------------------------

    def current_config(self, via_org: str | None = None) -> NetworkConfig:
        """The newest configuration, as a running node of ``via_org`` reports it."""
        org = via_org or self.orgs[0]
        with self.gateway(org, "admin") as gw:
            return decode_record(NetworkConfig, gw.config().config)

    def propose_config(
        self, new: NetworkConfig, *, current: NetworkConfig, via_org: str
    ) -> SubmitResult:
        """Submit ``new`` with approvals by organizations' admins (their keys are in this
        folder: a local network): a majority under the default policy, every
        organization under a policy of the configuration; wait until it is ordered."""
        raw = encode(new)
        message = approval_message(current.chain_id, raw)
        approvers = sorted(o.org_id for o in current.orgs)
        if not current.admin_policy:
            approvers = approvers[: required_approvals(current)]
        approvals = []
        for org in approvers:
            admin = self.user(org, "admin")
            approvals.append([admin.identity.certificate, admin.signer.sign(message)])
        with self.gateway(via_org, "admin") as gw:
            return gw.contract("_config").submit_transaction("update", raw, approvals)

    def add_validator(
        self, org: str, progress: Progress, *, allow_fragile_topology: bool = False
    ) -> NodeEntry:
        """A new validator node of ``org`` (a new organization if it does not exist yet),
        admitted by a configuration change; its process is started."""
        via = self.orgs[0]
        current = self.current_config(via)
        now = datetime.now(UTC)
        joining = org not in {o.org_id for o in current.orgs}
        if joining and not (self.folder / "orgs" / org / "ca" / "ca.pem").exists():
            progress(f"organization {org}: CA, admin and user certificates")
            org_material = _create_org(self.folder, org, now)
        else:  # a member, or an organization prepared with `kyodo ca init`
            org_material = _load_org(self.folder, org)
        index = sum(1 for n in current.nodes if n.org_id == org)
        node_id = f"{org}-node{index}"
        progress(f"node {node_id}: keys and certificates")
        home = self.folder / "nodes" / node_id
        signing_pem, tls_pem = _issue_member(
            org_material.ca,
            home,
            name=node_id,
            role=Role.NODE,
            passphrase=org_material.passphrase,
            salt=org_material.salt,
            now=now,
        )
        p2p, gateway, metrics, rest = _allocate_ports(4)
        NodeConfig(
            node_id=node_id,
            org_id=org,
            listen_host="127.0.0.1",
            p2p_port=p2p,
            gateway_port=gateway,
            metrics_port=metrics,
            rest_port=rest,
            genesis="../../genesis.block",
            passphrase=f"file:../../orgs/{org}/passphrase",
            org_ca=f"../../orgs/{org}/ca/ca.pem",
        ).save(home)
        info = NodeInfo(
            node_id=node_id,
            org_id=org,
            signing_cert=_der(signing_pem),
            tls_cert_pem=tls_pem,
            host="127.0.0.1",
            p2p_port=p2p,
            gateway_port=gateway,
            validator=True,
        )
        orgs = current.orgs + (
            (OrgInfo(org_id=org, ca_cert_pem=org_material.ca.trust_pem),) if joining else ()
        )
        new = replace(
            current,
            orgs=orgs,
            nodes=(*current.nodes, info),
            epoch=current.epoch + 1,
            created_ms=int(now.timestamp() * 1000),
            allow_fragile_topology=current.allow_fragile_topology or allow_fragile_topology,
        )
        progress(f"configuration epoch {new.epoch}: approvals and ordering")
        try:
            self.propose_config(new, current=current, via_org=via)
        except KyodoError:  # refused: leave nothing behind that the network does not know
            shutil.rmtree(home, ignore_errors=True)
            if joining:
                shutil.rmtree(self.folder / "orgs" / org, ignore_errors=True)
            raise
        entry = NodeEntry(
            node_id=node_id,
            org_id=org,
            home=home,
            gateway=f"127.0.0.1:{gateway}",
            p2p_port=p2p,
            metrics_port=metrics,
            rest=f"127.0.0.1:{rest}",
        )
        self._record(entry, joining)
        progress(f"starting {node_id}")
        self.start(entry)
        return entry

    def rotate_key(self, node_id: str, progress: Progress) -> NetworkConfig:
        """Give ``node_id`` a new signing key by a configuration change; the node switches
        to it at the epoch the change takes effect."""
        entry = self.node(node_id)
        via = next(o for o in self.orgs if o != entry.org_id)
        current = self.current_config(via)
        info = current.node(node_id)
        if info is None:
            raise KyodoError(f"{node_id} is not in the configuration", code="not_found")
        now = datetime.now(UTC)
        org = _load_org(self.folder, entry.org_id)
        config = NodeConfig.load(entry.home)
        in_token = is_pkcs11_uri(config.signing_key)
        if in_token:  # the new key is generated inside the same token, non-extractable
            progress(f"{node_id}: new signing key in the HSM")
            ref = Pkcs11KeyRef.parse(config.signing_key)
            next_ref = replace(ref, label=f"{node_id}-e{current.epoch + 1}-{secrets.token_hex(3)}")
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(generate_pkcs11_key(next_ref))
            next_key = next_ref.uri()
        else:
            progress(f"{node_id}: new signing key")
            key = ed25519.Ed25519PrivateKey.generate()
            save_private_key(entry.home / "signing-next.key", key, org.passphrase, salt=org.salt)
            public_key, next_key = key.public_key(), "signing-next.key"
        cert_pem = org.ca.issue_signing_cert(
            name=node_id, role=Role.NODE, public_key=public_key, now=now
        )
        (entry.home / "signing-next.pem").write_bytes(cert_pem)
        replace_config(config, entry.home, next_signing_key=next_key)
        new = replace(
            current,
            epoch=current.epoch + 1,
            created_ms=int(now.timestamp() * 1000),
            nodes=tuple(
                replace(n, signing_cert=_der(cert_pem)) if n.node_id == node_id else n
                for n in current.nodes
            ),
        )
        progress(f"configuration epoch {new.epoch}: approvals and ordering")
        self.propose_config(new, current=current, via_org=via)
        # from now on the new key is the node's key, also across restarts (the old one is
        # kept for a restart before the node appended the rotation's configuration block)
        (entry.home / "signing-next.pem").replace(entry.home / "signing.pem")
        if in_token:  # the old key stays in the token until the operator deletes it
            replace_config(
                NodeConfig.load(entry.home),
                entry.home,
                signing_key=next_key,
                previous_signing_key=config.signing_key,
                next_signing_key="",
            )
            return new
        (entry.home / "signing.key").replace(entry.home / "signing-previous.key")
        (entry.home / "signing-next.key").replace(entry.home / "signing.key")
        replace_config(NodeConfig.load(entry.home), entry.home, next_signing_key="")
        return new

    def remove_validator(self, node_id: str, progress: Progress) -> NetworkConfig:
        """Stop ``node_id`` voting by a configuration change (it keeps following)."""
        via = next(o for o in self.orgs if o != self.node(node_id).org_id)
        current = self.current_config(via)
        target = current.node(node_id)
        if target is None or not target.validator:
            raise KyodoError(f"{node_id} is not a validator", code="not_a_validator")
        new = replace(
            current,
            epoch=current.epoch + 1,
            created_ms=int(datetime.now(UTC).timestamp() * 1000),
            nodes=tuple(
                replace(n, validator=False) if n.node_id == node_id else n for n in current.nodes
            ),
        )
        progress(f"configuration epoch {new.epoch}: approvals and ordering")
        self.propose_config(new, current=current, via_org=via)
        return new

    def remove_org(self, org: str, progress: Progress) -> NetworkConfig:
        """Remove ``org`` and its nodes by a configuration change under the admin policy;
        once it is ordered, the organization's nodes are stopped. From the next height
        every node refuses its members (``unknown_ca``) and its nodes' connections; what
        it wrote stays in the ledger and the state."""
        if org not in self.orgs:
            raise KyodoError(
                f"no organization {org!r}; orgs: {', '.join(self.orgs)}", code="not_found"
            )
        via = next((o for o in self.orgs if o != org), None)
        if via is None:
            raise KyodoError("the last organization cannot be removed", code="usage")
        current = self.current_config(via)
        if org not in {o.org_id for o in current.orgs}:
            raise KyodoError(f"{org} is not in the configuration", code="not_found")
        new = replace(
            current,
            epoch=current.epoch + 1,
            created_ms=int(datetime.now(UTC).timestamp() * 1000),
            orgs=tuple(o for o in current.orgs if o.org_id != org),
            nodes=tuple(n for n in current.nodes if n.org_id != org),
        )
        progress(f"configuration epoch {new.epoch}: {org} leaves, approvals and ordering")
        self.propose_config(new, current=current, via_org=via)
        leaving = [n for n in self.nodes if n.org_id == org]
        for entry in leaving:
            progress(f"stopping {entry.node_id}")
            self.stop(entry)
        path = self.folder / "network.json"
        doc = json.loads(path.read_text())
        doc["orgs"] = [o for o in doc["orgs"] if o != org]
        doc["nodes"] = [n for n in doc["nodes"] if n["org_id"] != org]
        path.write_text(json.dumps(doc, indent=2) + "\n")
        self.orgs.remove(org)
        self.nodes = [n for n in self.nodes if n.org_id != org]
        (self.folder / "ca-bundle.pem").write_bytes(
            b"".join((self.folder / "orgs" / o / "ca" / "ca.pem").read_bytes() for o in self.orgs)
        )
        return new

    def set_acl(self, resource: str, policy: str | None, progress: Progress) -> NetworkConfig:
        """Set the rule guarding ``resource`` (None: back to the default) by a
        configuration change approved under the admin policy."""
        try:
            check_resource_name(resource)
            if policy is not None:
                parse_policy(policy)
        except PolicyError as exc:
            raise KyodoError(str(exc), code="invalid_acl") from exc
        via = self.orgs[0]
        current = self.current_config(via)
        rules = {e.resource: e.policy for e in current.acls}
        if policy is None:
            if resource not in rules:
                raise KyodoError(f"{resource} already has its default rule", code="exists")
            del rules[resource]
        else:
            rules[resource] = policy
        new = replace(
            current,
            epoch=current.epoch + 1,
            created_ms=int(datetime.now(UTC).timestamp() * 1000),
            acls=tuple(AclEntry(resource=r, policy=p) for r, p in sorted(rules.items())),
        )
        progress(f"configuration epoch {new.epoch}: ACL {resource}, approvals and ordering")
        self.propose_config(new, current=current, via_org=via)
        return new

    # -- identities (an organization's CA) -------------------------------------------

    def init_org(self, org: str, *, intermediate: bool) -> Path:
        """Create the CA (root, and an intermediate if asked), admin and user1 of ``org``,
        an organization that is not a member yet; ``network add-validator --org`` then
        brings it in with this CA. Its folder."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", org):
            raise KyodoError(
                f"organization id {org!r}: lowercase letters, digits and '-', starting with "
                "a letter, at most 32",
                code="usage",
            )
        folder = self.folder / "orgs" / org
        if org in self.orgs or folder.exists():
            raise KyodoError(f"{org} already has a CA in {folder}", code="exists")
        try:
            _create_org(self.folder, org, datetime.now(UTC), intermediate=intermediate)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def issue_member(self, org: str, name: str, role: Role) -> Path:
        """Issue ``name`` of ``org`` signing and TLS certificates with ``role`` (the CA key
        is in this folder: a local network); their folder."""
        _check_folder_name(name)
        folder = self.folder / "orgs" / org / "users" / name
        if folder.exists():
            raise KyodoError(f"{org} already has a member {name!r}", code="exists")
        loaded = _load_org(self.folder, org)
        _issue_member(
            loaded.ca,
            folder,
            name=name,
            role=role,
            passphrase=loaded.passphrase,
            salt=loaded.salt,
            now=datetime.now(UTC),
        )
        return folder

    def member_serials(self, org: str, name: str) -> list[int]:
        """Serial numbers of ``name``'s certificates (signing and TLS)."""
        folder = self.folder / "orgs" / org / "users" / name
        if not folder.exists():
            raise KyodoError(f"{org} has no member {name!r}", code="not_found")
        return [
            load_certificate((folder / f"{kind}.pem").read_bytes()).serial_number
            for kind in ("signing", "tls")
        ]

    def revoke_member(
        self, org: str, name: str, progress: Progress, serials: list[int] | None = None
    ) -> NetworkConfig:
        """Revoke ``name``'s certificates (or just ``serials``): a new CRL of ``org`` in a
        configuration change (approved under the admin policy); every node refuses them
        from then on."""
        serials = self.member_serials(org, name) if serials is None else serials
        via = next((o for o in self.orgs if o != org), org)
        current = self.current_config(via)
        info = next((o for o in current.orgs if o.org_id == org), None)
        if info is None:
            raise KyodoError(f"{org} is not in the configuration", code="not_found")
        revoked = set(revoked_serials(info))
        if set(serials) <= revoked:
            raise KyodoError(f"{org}/{name} is already revoked", code="exists")
        loaded = _load_org(self.folder, org)
        crl = loaded.ca.revocation_list(revoked | set(serials), now=datetime.now(UTC))
        new = replace(
            current,
            epoch=current.epoch + 1,
            created_ms=int(datetime.now(UTC).timestamp() * 1000),
            orgs=tuple(replace(o, crl_der=crl) if o.org_id == org else o for o in current.orgs),
        )
        progress(f"configuration epoch {new.epoch}: {org}'s revocation list, approvals")
        self.propose_config(new, current=current, via_org=via)
        return new

    # -- key-loss recovery ------------------------------------------------------------

    def recovery_request(self, org: str, name: str, *, by: str, reason: str) -> dict[str, Any]:
        """File a recovery request for ``name`` of ``org`` as officer ``by``. The member's
        new keys are generated now (in ``users/<name>/recovery/``, encrypted); the
        request binds the new signing key's public half."""
        user_dir = self.folder / "orgs" / org / "users" / name
        if not (user_dir / "signing.pem").exists():
            raise KyodoError(f"{org} has no member {name!r}", code="not_found")
        loaded = _load_org(self.folder, org)
        pending = user_dir / "recovery"
        pending.mkdir(exist_ok=True)
        signing = ed25519.Ed25519PrivateKey.generate()
        save_private_key(pending / "signing.key", signing, loaded.passphrase, salt=loaded.salt)
        save_private_key(
            pending / "tls.key",
            ec.generate_private_key(ec.SECP256R1()),
            loaded.passphrase,
            salt=loaded.salt,
        )
        public = signing.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        with self.gateway(org, by) as gw:
            done = gw.contract("_recovery").submit_transaction("request", name, public, reason)
        (pending / "request").write_text(done.tx_id)
        return dict(done.result)

    def recovery_complete(
        self, org: str, request_id: str, *, by: str, progress: Progress
    ) -> dict[str, Any]:
        """Complete an approved-enough request: the ledger checks the officers and the
        waiting period; then the CA issues certificates for the new keys under the same
        name, the old ones are revoked by a configuration change, and the member's
        folder holds the new credentials (the old ones move to ``lost-<time>/``).

        Re-runnable: a request the ledger already approved is not completed again, and
        the files move only after the old certificates are revoked, so an interrupted
        run is finished by running it again."""
        with self.gateway(org, by) as gw:
            recovery = gw.contract("_recovery")
            record = dict(recovery.evaluate("status", request_id))
            if record["status"] == "pending":
                record = dict(recovery.submit("complete", request_id))
        if record["status"] != "approved":
            raise KyodoError(f"recovery {request_id} is {record['status']}", code="state")
        name = record["name"]
        user_dir = self.folder / "orgs" / org / "users" / name
        pending = user_dir / "recovery"
        if not pending.exists():  # its files moved last: nothing is left to do
            raise KyodoError(f"recovery {request_id} is already completed", code="state")
        loaded = _load_org(self.folder, org)
        signing = load_private_key(pending / "signing.key", loaded.passphrase)
        tls = load_private_key(pending / "tls.key", loaded.passphrase)
        assert isinstance(signing, ed25519.Ed25519PrivateKey)
        assert isinstance(tls, ec.EllipticCurvePrivateKey)
        new_public = signing.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if new_public.hex() != record["new_key"]:
            raise KyodoError("the prepared key is not the one the request names", code="state")
        old_cert = load_certificate((user_dir / "signing.pem").read_bytes())
        role = Role(
            str(old_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)
        )
        old_serials = self.member_serials(org, name)
        if not set(old_serials) <= self._revoked(org):
            self.revoke_member(org, name, progress, serials=old_serials)
        now = datetime.now(UTC)
        progress(f"{org}: certificates for {name}'s new keys")
        signing_pem = loaded.ca.issue_signing_cert(
            name=name, role=role, public_key=signing.public_key(), now=now
        )
        tls_pem = loaded.ca.issue_tls_cert(
            name=name, role=role, public_key=tls.public_key(), now=now
        )
        lost = user_dir / f"lost-{int(now.timestamp())}"
        lost.mkdir()
        for kind in ("signing", "tls"):
            for suffix in ("pem", "key"):
                old = user_dir / f"{kind}.{suffix}"
                if old.exists():
                    old.rename(lost / old.name)
            (pending / f"{kind}.key").rename(user_dir / f"{kind}.key")
        (user_dir / "signing.pem").write_bytes(signing_pem)
        (user_dir / "tls.pem").write_bytes(tls_pem)
        shutil.rmtree(pending)
        return record

    def _revoked(self, org: str) -> frozenset[int]:
        """Serials ``org``'s revocation list in force names."""
        info = next((o for o in self.current_config().orgs if o.org_id == org), None)
        return frozenset() if info is None else revoked_serials(info)

    def _record(self, entry: NodeEntry, joining: bool) -> None:
        path = self.folder / "network.json"
        doc = json.loads(path.read_text())
        if joining:
            doc["orgs"].append(entry.org_id)
            self.orgs.append(entry.org_id)
            ca_pem = (self.folder / "orgs" / entry.org_id / "ca" / "ca.pem").read_bytes()
            with (self.folder / "ca-bundle.pem").open("ab") as bundle:
                bundle.write(ca_pem)
        doc["nodes"].append(
            {
                "node_id": entry.node_id,
                "org_id": entry.org_id,
                "home": f"nodes/{entry.node_id}",
                "gateway": entry.gateway,
                "p2p_port": entry.p2p_port,
                "metrics_port": entry.metrics_port,
                "rest": entry.rest,
            }
        )
        path.write_text(json.dumps(doc, indent=2) + "\n")
        self.nodes.append(entry)

    # -- clients ---------------------------------------------------------------------

    def user(self, org: str, name: str = "user1") -> UserCredentials:
        """Credentials of a user of ``org``."""
        org_dir = self.folder / "orgs" / org
        if not org_dir.exists():
            raise KyodoError(
                f"no organization {org!r}; orgs: {', '.join(self.orgs)}", code="not_found"
            )
        return load_user(
            org_dir / "users" / name,
            passphrase=(org_dir / "passphrase").read_bytes().strip(),
            chain_id=self.chain_id,
            ca_bundle=self.folder / "ca-bundle.pem",
        )

    def gateway(
        self,
        org: str,
        user: str = "user1",
        *,
        node: NodeEntry | None = None,
        retries: int = 3,
        timeout_s: float = 30.0,
    ) -> Gateway:
        """A gateway connection to a node of ``org`` as ``user``."""
        target = node or self.node(org)
        return self.user(org, user).connect(target.gateway, retries=retries, timeout_s=timeout_s)

    def status(self, node: NodeEntry, *, timeout_s: float = 3.0) -> NodeStatus:
        """``node``'s own status, asked of that node alone (its org's admin, no retries:
        a node that does not answer raises ``KyodoError`` at once)."""
        with self.gateway(node.org_id, "admin", node=node, retries=0, timeout_s=timeout_s) as gw:
            return gw.status()


@dataclass(frozen=True, slots=True)
class HsmSettings:
    """Where nodes' signing keys are generated: a PKCS#11 module and token, and the
    source of its user PIN (``env:VAR``, ``file:PATH``; never the PIN itself)."""

    module: str
    token: str
    pin_source: str

    def key(self, label: str) -> Pkcs11KeyRef:
        """The reference of the key labelled ``label`` in this token."""
        return Pkcs11KeyRef(
            module=self.module, token=self.token, label=label, pin_source=self.pin_source
        )


def revoked_serials(info: OrgInfo) -> frozenset[int]:
    """The serials an organization's configured CRL revokes (empty without one)."""
    if not info.crl_der:
        return frozenset()
    return frozenset(e.serial_number for e in x509.load_der_x509_crl(info.crl_der))


def _check_folder_name(name: str) -> None:
    """Refuse member names that are not safe as a folder name (the CA checks the CN)."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise KyodoError(f"member name {name!r}: 1-64 of letters, digits, - _ .", code="usage")
    if name.startswith("."):
        raise KyodoError(f"member name {name!r} may not start with '.'", code="usage")


def hash_seed_of(node_id: str) -> int:
    """The PYTHONHASHSEED a local node runs with: a different one per node, so that
    anything whose result depends on hash order (it must not: contracts are checked
    for it) shows up as nodes disagreeing, at once and reproducibly."""
    return 1 + int.from_bytes(sha256(node_id.encode())[:4], "big") % 4_000_000_000


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
