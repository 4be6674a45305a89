"""Prometheus metrics of a node (served on its metrics port at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ["NodeMetrics"]


class NodeMetrics:
    """The node's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("kyodo_block_height", "Height of the last appended block", registry=r)
        self.peers = Gauge("kyodo_peers_connected", "Peers with an open stream", registry=r)
        self.view = Gauge("kyodo_consensus_view", "Current consensus view", registry=r)
        self.pool = Gauge("kyodo_request_pool", "Requests waiting to be ordered", registry=r)
        self.view_changes = Counter(
            "kyodo_view_changes", "View changes this node started or joined", registry=r
        )
        self.fragile_topology = Gauge(
            "kyodo_fragile_topology",
            "1 if one organization holds more than f validator votes (accepted at genesis)",
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "kyodo_certificate_expiry_timestamp_seconds",
            "When this node's certificate stops being valid (Unix time)",
            ["cert"],
            registry=r,
        )
        self.txs_committed = Counter("kyodo_txs_committed", "Transactions appended", registry=r)
        self.txs_rejected = Counter(
            "kyodo_txs_rejected", "Transactions refused at the gateway", ["reason"], registry=r
        )
        self.blocks_rejected = Counter(
            "kyodo_blocks_rejected", "Peer blocks that failed verification", ["reason"], registry=r
        )
        self.messages_rejected = Counter(
            "kyodo_peer_messages_rejected", "Peer messages refused", ["reason"], registry=r
        )

        self.quarantined = Gauge(
            "kyodo_quarantined",
            "1 while the node found falsified data in its store and repairs it",
            registry=r,
        )
        self.integrity_faults = Counter(
            "kyodo_integrity_faults", "Falsified or corrupted data found", ["kind"], registry=r
        )
        self.integrity_repairs = Counter(
            "kyodo_integrity_repairs", "Quarantines ended by a verified repair", registry=r
        )
        self.verified_height = Gauge(
            "kyodo_verified_height", "Tip height of the last whole verification pass", registry=r
        )
        self.verify_pass_seconds = Gauge(
            "kyodo_verify_pass_seconds", "Duration of the last whole verification pass", registry=r
        )
        self.verify_pass_bytes = Gauge(
            "kyodo_verify_pass_bytes", "Bytes read by the last whole verification pass", registry=r
        )

    def start_server(self, host: str, port: int) -> None:
        """Serve /metrics on ``host:port`` (a daemon thread)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
