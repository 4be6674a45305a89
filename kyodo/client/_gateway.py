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
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kyodo.client._events import (
    Checkpointer,
    LedgerEvent,
    Subscription,
    event_filter,
    replay_ended,
)
from kyodo.client.errors import (
    AccessDenied,
    Conflict,
    ContractFailed,
    InvalidRequest,
    KyodoError,
    NotFinal,
    NotFound,
    RateLimited,
    StreamSuperseded,
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
    ContractList,
    ErrorBody,
    EvaluateResponse,
    EventFilter,
    NodeStatus,
    ProofRequest,
    ProofResponse,
    RequestPayload,
    SignedRequest,
    StatusRequest,
    StreamAck,
    StreamBatch,
    StreamOpen,
    SubmitRequest,
    SubscribeRequest,
    SubscriptionInfo,
    SubscriptionList,
    SubscriptionRequest,
    Transaction,
    TxEnvelope,
    TxRequest,
    TxResponse,
    TxStatusResponse,
    check_position,
    signed_part,
)

__all__ = [
    "Commit",
    "Contract",
    "EventStream",
    "Gateway",
    "Identity",
    "Network",
    "SubmitResult",
    "TlsCredentials",
    "TxState",
    "connect",
]

_ERROR_TRAILER = "kyodo-error-bin"
R = TypeVar("R")
Position = tuple[int, int, int]


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

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials (sync and asyncio channels alike)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """A transaction that is final."""

    tx_id: str
    height: int
    tx_index: int
    result: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TxState:
    """Where a transaction stands (:meth:`Commit.status`).

    Attributes:
        state: ``unknown`` (the gateway never saw it, or it expired unordered),
            ``pending`` (accepted, not final yet) or ``final``.
        code: once final: ``OK`` or the failure code (``contract_error``...).
    """

    tx_id: str
    state: str
    height: int
    tx_index: int
    code: str
    result: Any
    message: str

    @classmethod
    def of(cls, response: TxStatusResponse) -> TxState:
        """The SDK's view of a gateway's status answer."""
        final = response.state == "final"
        return cls(
            tx_id=response.tx_id.hex(),
            state=response.state,
            height=response.height,
            tx_index=response.tx_index,
            code=("OK" if response.status == 0 else FAILURE_CODES.get(response.status, "error"))
            if final
            else "",
            result=response.result,
            message=response.message,
        )


def connect(
    identity: Identity,
    signer: Signer,
    address: str | Sequence[str],
    *,
    tls: TlsCredentials,
    timeout_s: float = 30.0,
    retries: int = 3,
) -> Gateway:
    """Open a gateway connection (lazily: the first call connects).

    ``address`` may list several gateways of your organization: when one is
    unreachable (or quarantined) the SDK moves to the next, and event streams resume
    there from their last acknowledged position.
    """
    return Gateway(identity, signer, address, tls=tls, timeout_s=timeout_s, retries=retries)


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options of the SDK (sync and asyncio)."""
    return [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def addresses_of(address: str | Sequence[str]) -> list[str]:
    """One or several gateway addresses as a non-empty list."""
    found = [address] if isinstance(address, str) else list(address)
    if not found or not all(isinstance(a, str) and a for a in found):
        raise ValueError("give at least one gateway address (host:port)")
    return found


def sign_transaction(
    identity: Identity,
    signer: Signer,
    contract: str,
    function: str,
    args: tuple[Any, ...],
    *,
    query: bool = False,
) -> TxEnvelope:
    """A signed envelope for one call; its id is fixed from here on."""
    tx = Transaction(
        chain_id=identity.chain_id,
        contract=contract,
        function=function,
        args=tuple(args),
        nonce=os.urandom(16),
        created_ms=time.time_ns() // 1_000_000,
        creator=identity.certificate,
    )
    payload = encode(tx)
    return TxEnvelope(payload=payload, signature=signer.sign(signed_part(payload, query=query)))


def sign_request(identity: Identity, signer: Signer, method: str, body: bytes) -> SignedRequest:
    """A signed request for ``method`` carrying ``body`` (an encoded request record)."""
    payload = encode(
        RequestPayload(
            chain_id=identity.chain_id,
            method=method,
            body=body,
            nonce=os.urandom(16),
            created_ms=time.time_ns() // 1_000_000,
            creator=identity.certificate,
        )
    )
    return SignedRequest(payload=payload, signature=signer.sign(payload))


def outcome(response: TxStatusResponse, tx_id: str, wait_s: float) -> SubmitResult:
    """A final transaction's result, or the typed error of what became of it."""
    if response.state != "final":
        raise NotFinal(f"transaction {tx_id} not final after {wait_s} s", tx_id=tx_id)
    if response.status != 0:
        code = FAILURE_CODES.get(response.status, "contract_error")
        error = AccessDenied if code == "access_denied" else ContractFailed
        raise error(response.message, code=code, tx_id=tx_id, height=response.height)
    return SubmitResult(
        tx_id=tx_id, height=response.height, tx_index=response.tx_index, result=response.result
    )


def retry_delay(error: KyodoError, delay: float) -> float | None:
    """How long to wait before retrying after ``error``; None: not transient."""
    if isinstance(error, RateLimited):
        return min(5.0, error.retry_after_s or delay)
    if isinstance(error, Unavailable):
        return delay
    return None


class Gateway:
    """A connection to a gateway of your organization, acting as one identity."""

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        address: str | Sequence[str],
        *,
        tls: TlsCredentials,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self._timeout_s = timeout_s
        self._retries = retries
        self.addresses = addresses_of(address)
        self._credentials = tls.channel_credentials()
        self._index = 0
        self._lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        """One channel per address, opened on first use and kept until close(): a
        failover never closes a channel under another thread's call or stream."""
        self._calls: dict[tuple[int, str], Callable[..., bytes]] = {}

    @property
    def address(self) -> str:
        """The gateway in use now."""
        return self.addresses[self._index]

    @property
    def index(self) -> int:
        """Which of ``addresses`` is in use now."""
        return self._index

    def failover(self, *, from_index: int | None = None) -> None:
        """Move to the next gateway address (no-op with a single address). With
        ``from_index`` (the address a failed call used): only if no other thread moved
        on already, so concurrent failures move once, not once each."""
        with self._lock:
            if len(self.addresses) == 1 or (from_index is not None and from_index != self._index):
                return
            self._index = (self._index + 1) % len(self.addresses)

    def channel(self, index: int | None = None) -> grpc.Channel:
        """The gRPC channel to the gateway in use (or to ``addresses[index]``)."""
        at = self._index if index is None else index
        with self._lock:
            channel = self._channels.get(at)
            if channel is None:
                channel = grpc.secure_channel(
                    self.addresses[at], self._credentials, options=channel_options()
                )
                self._channels[at] = channel
            return channel

    def _stub(self, index: int, method: str) -> Callable[..., bytes]:
        stub = self._calls.get((index, method))
        if stub is None:
            stub = self.channel(index).unary_unary(f"/{GATEWAY_SERVICE}/{method}")
            self._calls[(index, method)] = stub
        return stub

    def close(self) -> None:
        """Close the connections."""
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._calls.clear()
        for channel in channels:
            channel.close()

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
        return sign_transaction(self.identity, self._signer, contract, function, args, query=query)

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
        """Send one request, retrying transient failures (on the next gateway when one is
        unavailable); raise a typed error if refused."""
        body = encode(request)
        delay = 0.1
        retries = self._retries if retries is None else retries
        for attempt in range(retries + 1):
            used = self._index
            try:
                raw = self._stub(used, method)(body, timeout=timeout_s or self._timeout_s)
                return decode_record(response_type, raw)
            except grpc.RpcError as exc:
                error = typed_error(exc)
                if isinstance(error, Unavailable):
                    self.failover(from_index=used)
                wait = retry_delay(error, delay)
                if wait is None or attempt == retries:
                    raise error from None
                time.sleep(wait)
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
            except (Unavailable, RateLimited) as error:
                wait = retry_delay(error, delay)
                if wait is None or attempt == self._retries:
                    raise
                time.sleep(wait)  # call() moved to the next gateway already
                delay *= 2
        raise AssertionError("unreachable")

    def evaluate(self, contract: str, function: str, args: tuple[Any, ...]) -> EvaluateResponse:
        """Run a query, signed afresh on every retry (a gateway refuses a replayed one)."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                envelope = self.sign(contract, function, args, query=True)
                return self.call("Evaluate", envelope, EvaluateResponse, retries=0)
            except (Unavailable, RateLimited) as error:
                wait = retry_delay(error, delay)
                if wait is None or attempt == self._retries:
                    raise
                time.sleep(wait)  # call() moved to the next gateway already
                delay *= 2
        raise AssertionError("unreachable")

    def sign_request(self, method: str, body: bytes) -> SignedRequest:
        """A signed request for ``method`` carrying ``body`` (an encoded request record)."""
        return sign_request(self.identity, self._signer, method, body)

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

    def contracts(self) -> list[dict[str, Any]]:
        """The contracts you can call: functions, parameters, read-only, access rules."""
        response: ContractList = self.gateway.signed_call(
            "ListContracts", StatusRequest(tx_id=b"", wait_ms=0), ContractList
        )
        return list(response.contracts)

    def subscribe(
        self, subscription: Subscription, *, after: Position | None = None
    ) -> SubscriptionInfo:
        """Create the durable subscription on the gateway's node (or accept the same
        declaration again). ``after``: your own checkpoint, when failing over."""
        return self.gateway.signed_call(
            "Subscribe",
            SubscribeRequest(spec=subscription.spec(), after=after),
            SubscriptionInfo,
        )

    def subscription(self, name: str) -> SubscriptionInfo:
        """A subscription of your organization and where it stands (checkpoint, dead
        letters, webhook failures)."""
        return self.gateway.signed_call(
            "GetSubscription", SubscriptionRequest(name=name), SubscriptionInfo
        )

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Your organization's subscriptions on the gateway's node."""
        response: SubscriptionList = self.gateway.signed_call(
            "ListSubscriptions", StatusRequest(tx_id=b"", wait_ms=0), SubscriptionList
        )
        return list(response.subscriptions)

    def unsubscribe(self, name: str) -> SubscriptionInfo:
        """Delete a subscription (its last state is returned)."""
        return self.gateway.signed_call(
            "DeleteSubscription", SubscriptionRequest(name=name), SubscriptionInfo
        )

    def events(
        self,
        subscription: Subscription | str | None = None,
        *,
        kind: str = "events",
        contracts: Sequence[str] = (),
        names: Sequence[str] = (),
        include_state: bool = False,
        after: Position | None = None,
        checkpointer: Checkpointer | None = None,
        window: int = 256,
        until: int | None = None,
    ) -> EventStream:
        """Items in ledger order: ``for event in network.events(sub): ...; event.ack()``.

        With a :class:`Subscription` (declared here) or a subscription's name, the node
        keeps the checkpoint and ``ack()`` advances it. Without one, the filter is given
        here and the consumer keeps its place: in ``checkpointer`` (``ack()`` saves
        it), or from ``after``. On a lost connection the stream resumes, on the next
        gateway address if there are several, after the last acknowledged item.
        ``until``: stop after block ``until`` (a replay); else the stream never ends.
        """
        return EventStream(
            self.gateway,
            subscription=subscription,
            flt=event_filter(kind, contracts, names, include_state),
            after=after,
            checkpointer=checkpointer,
            window=window,
            until=until,
        )


class Commit:
    """A transaction submitted without waiting (:meth:`Contract.submit_async`)."""

    def __init__(self, gateway: Gateway, envelope: TxEnvelope) -> None:
        self._gateway = gateway
        self._envelope = envelope
        self.tx_id = envelope.tx_id().hex()

    def status(self, *, wait_s: float = 0.0) -> TxState:
        """Where it stands now (or once final, waiting up to ``wait_s``)."""
        return TxState.of(self._gateway.tx_status(bytes.fromhex(self.tx_id), wait_s=wait_s))

    def result(self, *, wait_s: float = 30.0) -> SubmitResult:
        """Wait until final; the result, or the typed error of the failure. If the gateway
        lost track of it (restart before ordering), the same signed envelope is sent
        again: the id is fixed, so it can never apply twice."""
        response = self._gateway.tx_status(bytes.fromhex(self.tx_id), wait_s=wait_s)
        if response.state == "unknown":
            response = self._gateway.submit_envelope(self._envelope, wait_s=wait_s)
        return outcome(response, self.tx_id, wait_s)


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
        return outcome(response, envelope.tx_id().hex(), wait_s)

    def submit_async(self, function: str, *args: Any) -> Commit:
        """Order a transaction and return once the gateway accepted it; ``.status()``
        and ``.result()`` follow it (the transaction id is fixed at signing)."""
        envelope = self.gateway.sign(self.name, function, args)
        self.gateway.submit_envelope(envelope, wait_s=0.0)
        return Commit(self.gateway, envelope)

    def evaluate(self, function: str, *args: Any) -> Any:
        """Run a query against committed state; nothing is written."""
        return self.gateway.evaluate(self.name, function, args).result


def typed_error(exc: grpc.RpcError) -> KyodoError:
    code = exc.code() if hasattr(exc, "code") else None
    message = exc.details() if hasattr(exc, "details") else str(exc)
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == _ERROR_TRAILER:
            body = decode_record(ErrorBody, value)
            return _from_body(body)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"gateway unavailable: {message}", code="unavailable")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidRequest(f"request refused as too large: {message}", code="too_large")
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
    if body.code in ("not_found", "events.not_found"):
        return NotFound(body.message, code=body.code)
    if body.code == "rate_limited":
        return RateLimited(
            body.message, retry_after_s=body.retry_after_ms / 1000 if body.retry_after_ms else None
        )
    if body.code == "events.conflict":
        return Conflict(body.message, code=body.code)
    if body.code == "events.superseded":
        return StreamSuperseded(body.message, code=body.code)
    if body.code in ("malformed", "too_large") or body.code.startswith("events."):
        return InvalidRequest(body.message, code=body.code)
    if body.code == "unauthenticated" or body.code.startswith("auth."):
        return Unauthenticated(body.message, code=body.code)
    return KyodoError(body.message, code=body.code)


class EventStream:
    """A consumer's stream of :class:`LedgerEvent` (see :meth:`Network.events`)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        subscription: Subscription | str | None,
        flt: EventFilter,
        after: Position | None,
        checkpointer: Checkpointer | None,
        window: int,
        until: int | None = None,
    ) -> None:
        self._gateway = gateway
        self._until = -1 if until is None else until
        self._ended = False
        self._subscription = subscription
        self._filter = flt
        self._checkpointer = checkpointer
        self._window = window
        if after is None and checkpointer is not None:
            after = checkpointer.load()
        self._acked: Position | None = after
        """The last position this consumer acknowledged (where a reopen resumes)."""
        self._known: Position | None = None
        """The subscription's checkpoint when first declared (before any ack)."""
        self._requests: queue.Queue[bytes | None] | None = None
        self._call: Any = None
        self._closed = False
        self._used = gateway.index
        self.reconnects = 0

    @property
    def name(self) -> str:
        """The subscription's name ("" for an inline stream)."""
        if isinstance(self._subscription, Subscription):
            return self._subscription.name
        return self._subscription or ""

    @property
    def acked(self) -> Position | None:
        """The last acknowledged position."""
        return self._acked

    def close(self, *, flush_s: float = 2.0) -> None:
        """End the stream (from any thread); iteration stops. Acknowledgements already
        given are sent first: the request side is closed, and the node ends the stream
        once it has read them (at most ``flush_s``)."""
        self._closed = True
        if self._requests is not None and self._call is not None:
            _finish(self._call, self._requests, flush_s)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[LedgerEvent]:
        delay = 0.2
        while not self._closed and not self._ended:
            try:
                for event in self._open():
                    delay = 0.2
                    yield event
            except (Unavailable, RateLimited) as error:
                if self._closed:
                    return
                wait = retry_delay(error, delay) or delay
                if isinstance(error, Unavailable):
                    self._gateway.failover(from_index=self._used)
                self.reconnects += 1
                time.sleep(wait)
                delay = min(delay * 2, 5.0)

    def _open_request(self) -> StreamOpen:
        resume = self._acked or self._known
        if isinstance(self._subscription, Subscription):
            info = Network(self._gateway).subscribe(self._subscription, after=resume)
            if self._known is None:
                self._known = check_position(info.checkpoint)
        if self.name:
            return StreamOpen(
                subscription=self.name,
                after=resume,
                window=self._window,
                until_height=self._until,
            )
        return StreamOpen(
            filter=self._filter, after=resume, window=self._window, until_height=self._until
        )

    def _open(self) -> Iterator[LedgerEvent]:
        opened = self._open_request()
        requests: queue.Queue[bytes | None] = queue.Queue()
        requests.put(encode(self._gateway.sign_request("Events", encode(opened))))

        def outgoing() -> Iterator[bytes]:
            while (message := requests.get()) is not None:
                yield message

        self._used = self._gateway.index
        stub = self._gateway.channel(self._used).stream_stream(f"/{GATEWAY_SERVICE}/Events")
        call = stub(outgoing())
        self._requests, self._call = requests, call

        def ack(position: Position) -> None:
            if self._checkpointer is not None:
                self._checkpointer.save(position)
            if self._acked is None or position > self._acked:
                self._acked = position
            requests.put(encode(StreamAck(position=position)))

        try:
            for raw in call:
                batch: StreamBatch = decode_record(StreamBatch, raw)
                for item in batch.items:
                    yield LedgerEvent.from_item(item, ack)
                if replay_ended(batch, self._until):  # the node said so: we close our
                    self._ended = True  # side (acks sent first), it ends the call
                    return
        except grpc.RpcError as exc:
            if self._closed:
                return
            raise typed_error(exc) from None
        finally:  # also when the consumer stops iterating: its acks are sent first
            _finish(call, requests, 2.0)
        if self._until >= 0:  # a replay: the node ended it after the last block
            self._ended = True
            return
        if not self._closed:  # the node ended the stream (stopping): resume elsewhere
            raise Unavailable("the gateway ended the event stream", code="unavailable")


def _finish(call: Any, requests: queue.Queue[bytes | None], flush_s: float) -> None:
    """Half-close a stream (after the acknowledgements queued), let the node end it
    within ``flush_s``, then cancel whatever is left."""
    requests.put(None)
    done = threading.Event()
    call.add_done_callback(lambda _call: done.set())
    done.wait(flush_s)
    call.cancel()
