"""A node's local configuration (``node.json`` in the node's home folder).

Paths are relative to the home folder. Secrets are not in this file: the
key passphrase is named by a source (``file:PATH``, ``env:VAR`` or
``prompt``), read at start.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["NodeConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Where a node listens and finds its keys, store and genesis block."""

    node_id: str
    org_id: str
    listen_host: str
    p2p_port: int
    gateway_port: int
    metrics_port: int
    data_dir: str = "data"
    genesis: str = "genesis.block"
    signing_cert: str = "signing.pem"
    signing_key: str = "signing.key"
    tls_cert: str = "tls.pem"
    tls_key: str = "tls.key"
    passphrase: str = "file:passphrase"  # noqa: S105 - a source, not a secret
    next_signing_key: str = ""
    """A key prepared for rotation: used from the configuration epoch whose signing
    certificate for this node matches it (``kyodo network rotate-key``)."""
    previous_signing_key: str = ""
    """The key before the last rotation (a file or a ``pkcs11:`` URI), for a restart
    before this node appended the rotation's configuration block; empty: the file
    ``signing-previous.key``."""
    org_ca: str = ""
    """CA certificate of this node's organization, for a node whose organization joins
    by a configuration change (before that change it is not in the genesis)."""
    rest_port: int = 0
    """Port of the REST gateway (HTTPS, token login for browsers and tools); 0: none."""
    token_ttl_s: int = 900
    """Lifetime of an access token issued by the REST gateway's login."""
    verify_cpu_share: float = 0.1
    """Share of one core the background verifier may use (0: no background verifier)."""
    verify_interval_s: float = 60.0
    """Pause between two whole passes of the background verifier."""
    audit_anchor_interval_s: float = 60.0
    """How often the audit log's signed root is anchored on the ledger (if it grew)."""
    alert_webhook: str = ""
    """URL that receives a JSON POST when the node finds falsified data or repairs it."""
    cert_expiry_warning_days: int = 30
    """A certificate of this node expiring sooner shows as a warning in its status."""
    webhook_allowed_hosts: tuple[str, ...] = ()
    """Hosts event-stream webhooks may be sent to; empty: any (http/https)."""
    rate_limit_per_s: float = 200.0
    """Gateway calls per second each identity may make (sustained), gRPC and REST."""
    rate_limit_burst: int = 400
    """Calls an identity may make at once above the sustained rate."""
    max_frame_bytes: int = 32 * 1024 * 1024
    tick_ms: int = 10
    submit_wait_max_ms: int = 60_000

    @classmethod
    def load(cls, home: Path) -> NodeConfig:
        """Read ``home/node.json``."""
        return cls(**json.loads((home / "node.json").read_text()))

    def save(self, home: Path) -> None:
        """Write ``home/node.json`` atomically: a running node may read it at any moment
        (a key rotation), and must never see half a file."""
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".node.json.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(asdict(self), indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, home / "node.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def resolve(self, home: Path, relative: str) -> Path:
        """A configured path, relative to ``home``."""
        return (home / relative).resolve()
