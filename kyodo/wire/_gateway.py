"""Requests and responses of the gateway service (gRPC, canonical CBOR bodies).

Each gateway method takes one record and returns one record; both are
encoded with :mod:`kyodo.codec`. A refused call returns a gRPC status whose
details are an :class:`ErrorBody`, so the SDK can raise a typed error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kyodo.codec import record
from kyodo.wire._tx import TxEnvelope

__all__ = [
    "GATEWAY_SERVICE",
    "MAX_REQUEST_BYTES",
    "AuditExportRequest",
    "AuditExportResponse",
    "AuditQueryRequest",
    "AuditRecords",
    "BlockRequest",
    "BlockResponse",
    "ConfigResponse",
    "ErrorBody",
    "EvaluateResponse",
    "NodeStatus",
    "ProofRequest",
    "ProofResponse",
    "RequestPayload",
    "SignedRequest",
    "StatusRequest",
    "SubmitRequest",
    "TxRequest",
    "TxResponse",
    "TxStatusResponse",
    "login_message",
]

GATEWAY_SERVICE = "kyodo.v1.Gateway"
MAX_REQUEST_BYTES = 1024 * 1024
"""Largest request body a gateway accepts."""


@record(50)
@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitRequest:
    """Order a signed transaction; optionally wait until it is final."""

    envelope: TxEnvelope
    wait_ms: int
    """How long to wait for finality (0: return once accepted for ordering)."""


@record(51)
@dataclass(frozen=True, slots=True, kw_only=True)
class TxStatusResponse:
    """Where a transaction stands."""

    tx_id: bytes
    state: str
    """``final`` (in a block), ``pending`` (accepted, not yet final) or ``unknown``."""
    height: int
    """Block height when final, else -1."""
    tx_index: int
    status: int
    """A TxStatus when final (0 = OK), else -1."""
    result: Any
    message: str


@record(52)
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """Ask where a transaction stands, optionally waiting for finality."""

    tx_id: bytes
    wait_ms: int


@record(53)
@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateResponse:
    """The result of a query (nothing was written)."""

    result: Any
    height: int
    """The committed height the query read."""


@record(54)
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRequest:
    """Fetch a block; height -1 means the tip."""

    height: int


@record(55)
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockResponse:
    """A block's canonical bytes (decode with kyodo.ledger.Block)."""

    block: bytes


@record(56)
@dataclass(frozen=True, slots=True, kw_only=True)
class TxRequest:
    """Fetch a committed transaction by id."""

    tx_id: bytes


@record(57)
@dataclass(frozen=True, slots=True, kw_only=True)
class TxResponse:
    """A committed transaction with its result and position."""

    envelope: TxEnvelope
    height: int
    tx_index: int
    status: int
    result: Any
    message: str


@record(58, version=2)  # 2: view
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """A node's view of itself."""

    node_id: str
    org_id: str
    role: str
    """``leader``, ``follower``, or ``view-change`` while the validators change leader."""
    view: int
    """The consensus view (it increases with every leader change)."""
    height: int
    tip_hash: bytes
    state_root: bytes
    peers_connected: tuple[str, ...]
    healthy: bool
    detail: str
    version: str
    chain_id: str


@record(69)
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResponse:
    """The newest network configuration (canonical NetworkConfig bytes)."""

    config: bytes
    epoch: int
    in_force_from: int
    """The height it is (or will be) in force from."""


@record(59, version=2)  # 2: retry_after_ms
@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    """Why a gateway call was refused (carried in the gRPC status details)."""

    code: str
    """Stable, documented code (docs/errors.md): ``unauthenticated``, ``rejected.<reason>``,
    ``not_found``, ``contract_error``, ``unknown_function``, ``malformed``."""
    message: str
    retry_after_ms: int = 0
    """``rate_limited``: when one call will pass again; else 0."""


@record(71)
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPayload:
    """A gateway call other than submit and evaluate (which carry a signed transaction),
    as its caller signs it."""

    chain_id: str
    """The network the call is for; a gateway of another network refuses it."""
    method: str
    """The gateway method (``GetBlock``...); a signature for one method is no good for
    another."""
    body: bytes
    """The method's request record, canonically encoded."""
    nonce: bytes
    """16 random bytes: the gateway refuses a nonce it saw within the freshness window."""
    created_ms: int
    """The caller's clock at signing (ms since the epoch); outside the window: refused."""
    creator: bytes
    """DER signing certificate of the caller, issued by a member organization's CA."""


@record(72)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRequest:
    """A :class:`RequestPayload` and the caller's Ed25519 signature over its bytes."""

    payload: bytes
    signature: bytes


def login_message(chain_id: str, challenge: bytes) -> bytes:
    """What a user signs to answer a REST gateway's login challenge."""
    return b"kyodo/login/v1\x00" + chain_id.encode() + b"\x00" + challenge


@record(76)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProofRequest:
    """Ask for a self-contained proof (``kyodo-proof/v1``) of a block, a transaction or a
    key's value at a height."""

    kind: str
    """``block``, ``tx`` or ``key``."""
    height: int = -1
    """``block``: its height; ``key``: the height to prove the value at (-1: the tip)."""
    tx_id: bytes = b""
    namespace: str = ""
    key: str = ""


@record(77)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProofResponse:
    """The proof document, as UTF-8 JSON (verify it with ``kyodo verify-proof``)."""

    document: bytes


@record(82)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQueryRequest:
    """Search a node's audit log (every filter optional: empty or -1)."""

    identity: str = ""
    """Exactly this caller (``org/role/name``)."""
    since_ms: int = -1
    until_ms: int = -1
    subject_contains: str = ""
    """A transaction id, a height, a contract, a key: any part of the subject."""
    operation: str = ""
    limit: int = 100
    newest_first: bool = True


@record(83)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecords:
    """Audit records, each the canonical bytes of a ``kyodo.audit.AuditRecord``."""

    records: tuple[bytes, ...]
    size: int
    """How many records the log holds."""


@record(84)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditExportRequest:
    """Export records ``[from_seq, to_seq)`` (-1: to the end), with inclusion proofs."""

    from_seq: int = 0
    to_seq: int = -1
    with_proofs: bool = True


@record(85)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditExportResponse:
    """The export (``kyodo-audit-export/v1``, UTF-8 JSON), with a checkpoint the node
    signed now, and the node's signing certificate (DER) to check it with."""

    document: bytes
    node_id: str
    signing_cert: bytes


@record(102)
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokedToken:
    """A REST access token logged out, until it expires anyway."""

    token_id: bytes
    expires_ms: int


@record(101)
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRevocations:
    """Tokens logged out at one gateway, sent over p2p to the other nodes of its
    organization, whose gateways accept the same tokens: a logout holds everywhere."""

    tokens: tuple[RevokedToken, ...]
