"""The Python SDK: connect to a gateway of your organization and call contracts.

The shape follows Fabric's Gateway client::

    gateway = connect(identity, signer, "127.0.0.1:7051", tls=tls)
    contract = gateway.network().contract("asset_transfer")
    result = contract.submit("transfer", "acct-a", "acct-b", 10)   # waits for finality
    balance = contract.evaluate("balance", "acct-a")               # query, writes nothing

An application never names peers, organizations or the leader: the gateway
it connects to orders and waits on its behalf, so nothing changes in the
application when organizations join or leave the network.

Transient failures (gateway unreachable) are retried with the *same* signed
envelope: the transaction id is fixed at signing, so a retry can never apply
a transfer twice (the ledger refuses duplicate ids).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kyodo.client.errors import (
    AccessDenied,
    ContractFailed,
    KyodoError,
    NotFinal,
    NotFound,
    TransactionRejected,
    Unauthenticated,
    Unavailable,
)
from kyodo.codec import decode_record, encode
from kyodo.crypto import Signer
from kyodo.wire import (
    FAILURE_CODES,
    GATEWAY_SERVICE,
    AuditExportRequest,
    AuditExportResponse,
    AuditQueryRequest,
    AuditRecords,
    BlockRequest,
    BlockResponse,
    ConfigResponse,
    ErrorBody,
    EvaluateResponse,
    NodeStatus,
    ProofRequest,
    ProofResponse,
    RequestPayload,
    SignedRequest,
    StatusRequest,
    SubmitRequest,
    Transaction,
    TxEnvelope,
    TxRequest,
    TxResponse,
    TxStatusResponse,
    signed_part,
)

__all__ = [
    "Contract",
    "Gateway",
    "Identity",
    "Network",
    "SubmitResult",
    "TlsCredentials",
    "connect",
]

_ERROR_TRAILER = "kyodo-error-bin"
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who the application acts as: the signing certificate (DER) and its network."""

    certificate: bytes
    chain_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCredentials:
    """Mutual TLS material: the CA bundle to trust, and the client's cert and key (PEM)."""

    root_certificates: bytes
    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, ca: Path, cert: Path, key_pem: bytes) -> TlsCredentials:
        """Read the CA bundle and certificate from files; the key is given decrypted."""
        return cls(
            root_certificates=ca.read_bytes(),
            certificate_chain=cert.read_bytes(),
            private_key=key_pem,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """A transaction that is final."""

    tx_id: str
    height: int
    tx_index: int
    result: Any


def connect(
    identity: Identity,
    signer: Signer,
    address: str,
    *,
    tls: TlsCredentials,
    timeout_s: float = 30.0,
    retries: int = 3,
) -> Gateway:
    """Open a gateway connection (lazily: the first call connects)."""
    return Gateway(identity, signer, address, tls=tls, timeout_s=timeout_s, retries=retries)


class Gateway:
    """A connection to one gateway, acting as one identity."""

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        address: str,
        *,
        tls: TlsCredentials,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self._timeout_s = timeout_s
        self._retries = retries
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        )
        self._channel = grpc.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self._calls: dict[str, Callable[..., bytes]] = {}

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def network(self) -> Network:
        """The network this gateway belongs to."""
        return Network(self)

    def contract(self, name: str) -> Contract:
        """Shortcut for ``network().contract(name)``."""
        return Network(self).contract(name)

    # -- building and signing --------------------------------------------------------

    def sign(
        self, contract: str, function: str, args: tuple[Any, ...], *, query: bool = False
    ) -> TxEnvelope:
        """A signed envelope for one call (its id is fixed from here on). A ``query``
        envelope is signed under the query domain: it cannot be ordered as a transaction."""
        tx = Transaction(
            chain_id=self.identity.chain_id,
            contract=contract,
            function=function,
            args=tuple(args),
            nonce=os.urandom(16),
            created_ms=time.time_ns() // 1_000_000,
            creator=self.identity.certificate,
        )
        payload = encode(tx)
        return TxEnvelope(
            payload=payload, signature=self._signer.sign(signed_part(payload, query=query))
        )

    # -- calls -----------------------------------------------------------------------

    def call(
        self,
        method: str,
        request: Any,
        response_type: type[R],
        timeout_s: float | None = None,
        *,
        retries: int | None = None,
    ) -> R:
        """Send one request, retrying transient failures; raise a typed error if refused."""
        stub = self._calls.get(method)
        if stub is None:
            stub = self._channel.unary_unary(f"/{GATEWAY_SERVICE}/{method}")
            self._calls[method] = stub
        body = encode(request)
        delay = 0.1
        retries = self._retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                raw = stub(body, timeout=timeout_s or self._timeout_s)
                return decode_record(response_type, raw)
            except grpc.RpcError as exc:
                error = _typed_error(exc)
                if not isinstance(error, Unavailable) or attempt == retries:
                    raise error from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def signed_call(
        self, method: str, request: Any, response_type: type[R], timeout_s: float | None = None
    ) -> R:
        """A read or status call, signed by this identity (signed afresh on every retry:
        the gateway refuses a signed request it has seen)."""
        body = encode(request)
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return self.call(
                    method, self.sign_request(method, body), response_type, timeout_s, retries=0
                )
            except Unavailable:
                if attempt == self._retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def evaluate(self, contract: str, function: str, args: tuple[Any, ...]) -> EvaluateResponse:
        """Run a query, signed afresh on every retry (a gateway refuses a replayed one)."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                envelope = self.sign(contract, function, args, query=True)
                return self.call("Evaluate", envelope, EvaluateResponse, retries=0)
            except Unavailable:
                if attempt == self._retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def sign_request(self, method: str, body: bytes) -> SignedRequest:
        """A signed request for ``method`` carrying ``body`` (an encoded request record)."""
        payload = encode(
            RequestPayload(
                chain_id=self.identity.chain_id,
                method=method,
                body=body,
                nonce=os.urandom(16),
                created_ms=time.time_ns() // 1_000_000,
                creator=self.identity.certificate,
            )
        )
        return SignedRequest(payload=payload, signature=self._signer.sign(payload))

    def submit_envelope(self, envelope: TxEnvelope, *, wait_s: float = 30.0) -> TxStatusResponse:
        """Submit a signed envelope and wait up to ``wait_s`` for finality."""
        request = SubmitRequest(envelope=envelope, wait_ms=int(wait_s * 1000))
        try:
            response: TxStatusResponse = self.call(
                "Submit", request, TxStatusResponse, timeout_s=wait_s + 10
            )
        except TransactionRejected as exc:
            if exc.reason != "duplicate":
                raise
            # a retry of an envelope the gateway already accepted: report its status
            response = self.signed_call(
                "TxStatus",
                StatusRequest(tx_id=envelope.tx_id(), wait_ms=int(wait_s * 1000)),
                TxStatusResponse,
                timeout_s=wait_s + 10,
            )
            if response.state == "unknown":
                raise
        return response

    def status(self) -> NodeStatus:
        """The gateway node's status."""
        return self.signed_call("NodeStatus", StatusRequest(tx_id=b"", wait_ms=0), NodeStatus)

    def config(self) -> ConfigResponse:
        """The newest network configuration (decode ``.config`` with kyodo.ledger)."""
        return self.signed_call("GetConfig", StatusRequest(tx_id=b"", wait_ms=0), ConfigResponse)

    def block(self, height: int = -1) -> bytes:
        """A block's canonical bytes (-1 for the tip)."""
        response: BlockResponse = self.signed_call(
            "GetBlock", BlockRequest(height=height), BlockResponse
        )
        return response.block

    def transaction(self, tx_id: bytes) -> TxResponse:
        """A committed transaction with its result."""
        return self.signed_call("GetTransaction", TxRequest(tx_id=tx_id), TxResponse)

    def proof(self, request: ProofRequest) -> dict[str, Any]:
        """A ``kyodo-proof/v1`` document (check it with :meth:`verify` or
        ``kyodo verify-proof``)."""
        response: ProofResponse = self.signed_call("GetProof", request, ProofResponse)
        document: dict[str, Any] = json.loads(response.document)
        return document

    def verified_read(
        self, contract: str, key: str, *, genesis: Any, at_height: int = -1
    ) -> tuple[Any, Any]:
        """A contract's raw state value, proven: (value or None, what was verified).

        The gateway sends a proof and this SDK checks it against ``genesis`` (the
        network's genesis block, trusted), following the validator set through every
        configuration change: a node that served falsified data cannot pass.
        """
        document = self.proof(
            ProofRequest(kind="key", namespace=contract, key=key, height=at_height)
        )
        proven = _proof_verifier()(document, genesis)
        return proven.value, proven

    def audit_query(self, request: AuditQueryRequest) -> tuple[list[Any], int]:
        """Records of the gateway node's audit log (``kyodo.audit.AuditRecord``) and the
        log's size. Needs ``audit.read``; the query is itself recorded."""
        from kyodo.audit import AuditRecord

        response: AuditRecords = self.signed_call("AuditQuery", request, AuditRecords)
        return [decode_record(AuditRecord, raw) for raw in response.records], response.size

    def audit_export(self, request: AuditExportRequest) -> AuditExportResponse:
        """An export of the gateway node's audit log, under a checkpoint it signs now."""
        return self.signed_call("AuditExport", request, AuditExportResponse, timeout_s=120)

    def audit_anchor(self) -> TxStatusResponse:
        """Have the gateway node anchor its audit log's root on the ledger now."""
        return self.signed_call(
            "AuditAnchor", StatusRequest(tx_id=b"", wait_ms=0), TxStatusResponse, timeout_s=30
        )

    def tx_status(self, tx_id: bytes, *, wait_s: float = 0.0) -> TxStatusResponse:
        """Where a transaction stands (optionally waiting for finality)."""
        return self.signed_call(
            "TxStatus",
            StatusRequest(tx_id=tx_id, wait_ms=int(wait_s * 1000)),
            TxStatusResponse,
            timeout_s=wait_s + 10,
        )


def _proof_verifier() -> Any:
    from kyodo.ledger._proofs import verify_proof_document

    return verify_proof_document


class Network:
    """The network behind a gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def contract(self, name: str) -> Contract:
        """A deployed contract, by name."""
        return Contract(self.gateway, name)


class Contract:
    """Calls to one contract."""

    def __init__(self, gateway: Gateway, name: str) -> None:
        self.gateway = gateway
        self.name = name

    def submit(self, function: str, *args: Any, wait_s: float = 30.0) -> Any:
        """Order a transaction, wait until final, return the function's result.

        Raises ContractFailed when the contract refused it (the failure is recorded
        in the block), TransactionRejected when it was not admitted, NotFinal when it
        was not final within ``wait_s``.
        """
        return self.submit_transaction(function, *args, wait_s=wait_s).result

    def submit_transaction(
        self,
        function: str,
        *args: Any,
        wait_s: float = 30.0,
    ) -> SubmitResult:
        """Like :meth:`submit`, returning the transaction id and position too."""
        envelope = self.gateway.sign(self.name, function, args)
        response = self.gateway.submit_envelope(envelope, wait_s=wait_s)
        tx_id = envelope.tx_id().hex()
        if response.state != "final":
            raise NotFinal(f"transaction {tx_id} not final after {wait_s} s", tx_id=tx_id)
        if response.status != 0:
            code = FAILURE_CODES.get(response.status, "contract_error")
            error = AccessDenied if code == "access_denied" else ContractFailed
            raise error(response.message, code=code, tx_id=tx_id, height=response.height)
        return SubmitResult(
            tx_id=tx_id, height=response.height, tx_index=response.tx_index, result=response.result
        )

    def evaluate(self, function: str, *args: Any) -> Any:
        """Run a query against committed state; nothing is written."""
        return self.gateway.evaluate(self.name, function, args).result


def _typed_error(exc: grpc.RpcError) -> KyodoError:
    code = exc.code() if hasattr(exc, "code") else None
    message = exc.details() if hasattr(exc, "details") else str(exc)
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == _ERROR_TRAILER:
            body = decode_record(ErrorBody, value)
            return _from_body(body)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"gateway unavailable: {message}", code="unavailable")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return KyodoError(f"request refused as too large: {message}", code="too_large")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message or "unauthenticated", code="unauthenticated")
    return KyodoError(f"gateway error {code}: {message}", code="error")


def _from_body(body: ErrorBody) -> KyodoError:
    if body.code.startswith("rejected."):
        return TransactionRejected(body.message, code=body.code)
    if body.code == "access_denied":
        return AccessDenied(body.message, code=body.code)
    if body.code in ("contract_error", "unknown_function"):
        return ContractFailed(body.message, code=body.code)
    if body.code == "quarantined":  # that node is repairing itself: another may serve
        return Unavailable(body.message, code=body.code)
    if body.code == "not_found":
        return NotFound(body.message, code=body.code)
    if body.code == "unauthenticated" or body.code.startswith("auth."):
        return Unauthenticated(body.message, code=body.code)
    return KyodoError(body.message, code=body.code)
