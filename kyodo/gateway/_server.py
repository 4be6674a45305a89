"""The gateway: the gRPC service applications call on a node of their organization.

Theory of operation
-------------------
gRPC over mutual TLS (TLS 1.3). The service is declared with gRPC's generic
handlers and carries canonical CBOR records (:mod:`kyodo.wire`) as message
bodies, so no code generation step is needed and the bytes a client signs
are exactly the bytes the ledger stores.

Every call is authenticated twice:

1. the TLS client certificate must be issued by the CA of *this node's*
   organization (a gateway serves its own organization's members; the
   certificate's O and OU name the caller), and
2. the request itself is signed by the user's key: a transaction or query
   carries its creator's signature over its payload, every other call is a
   :class:`~kyodo.wire.SignedRequest` (see :mod:`kyodo.gateway._auth` for the
   checks and their distinct refusals, replays included). The signer must be
   of the same organization as the TLS client.

Then the network's ACL (:mod:`kyodo.policy`) decides: each method is a
resource (``blocks.read``, ``transactions.read``, ``config.read``,
``node.status``; submit and evaluate per contract and function, checked again
by the executor at execution). A refusal names the rule.

A refused call ends with a gRPC status code and an :class:`ErrorBody` in the
``kyodo-error-bin`` trailer, so the SDK raises a typed error. Each call is
recorded as an ``audit`` log event: who called (certificate subject), from
where (peer address), what (method and subject: a transaction id or a
height), the decision (and the refusal code), and the SHA-256 of the response,
not the data itself. The tamper-evident, hash-chained audit log of issue 6
builds on these records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf.message import DecodeError as DecodeProtobufError
from grpc_health.v1 import health_pb2

from kyodo.audit import AuditError, AuditLog
from kyodo.codec import DecodeError, decode_record, encode
from kyodo.contracts import AccessDeniedError, ContractError, UnknownContractError
from kyodo.crypto import sha256
from kyodo.events import EventHub, EventsError, Session
from kyodo.gateway._auth import (
    AuthContext,
    ReplayGuard,
    RequestRejectedError,
    check_request,
    request_id,
)
from kyodo.gateway._limits import RateLimited, RateLimiter
from kyodo.identity import IdentityError, Member, load_certificate
from kyodo.ledger import CheckedTx, LedgerError, TransactionRejectedError, check_envelope
from kyodo.policy import AccessRefused, Identity
from kyodo.wire import (
    GATEWAY_SERVICE,
    MAX_REQUEST_BYTES,
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
    SignedRequest,
    StatusRequest,
    StreamAck,
    StreamOpen,
    SubmitRequest,
    SubscribeRequest,
    SubscriptionInfo,
    SubscriptionList,
    SubscriptionRequest,
    TxEnvelope,
    TxRequest,
    TxResponse,
    TxStatusResponse,
)

__all__ = ["ERROR_TRAILER", "GatewayBackend", "GatewayError", "GatewayServer"]

HEALTH_SERVICE = "grpc.health.v1.Health"
log = structlog.get_logger("kyodo.gateway")
ERROR_TRAILER = "kyodo-error-bin"
_signer: ContextVar[str] = ContextVar("kyodo_gateway_signer", default="")
_about: ContextVar[str] = ContextVar("kyodo_gateway_about", default="")
"""What the call is about (contract and function, keys, a query), for the audit log."""
"""org/role/name of the request's verified signer, for the audit record."""


class GatewayError(Exception):
    """A refusal with a stable code, mapped to a gRPC status."""

    def __init__(
        self,
        status: grpc.StatusCode,
        code: str,
        message: str,
        *,
        rule: str = "",
        retry_after_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.rule = rule
        """The ACL rule that refused, if one did."""
        self.retry_after_ms = retry_after_ms


class GatewayBackend(Protocol):
    """What the node offers the gateway."""

    org_id: str

    async def submit(self, envelope: TxEnvelope, wait_ms: int) -> TxStatusResponse: ...

    async def evaluate(self, checked: CheckedTx) -> EvaluateResponse: ...

    async def tx_status(self, tx_id: bytes, wait_ms: int) -> TxStatusResponse: ...

    async def get_block(self, height: int) -> bytes | None: ...

    async def get_tx(self, tx_id: bytes) -> TxResponse | None: ...

    def status(self) -> NodeStatus: ...

    def current_config(self) -> ConfigResponse: ...

    def is_revoked(self, org: str, serial: int) -> bool: ...

    def auth_context(self) -> AuthContext: ...

    def serving_refusal(self) -> str | None: ...

    async def get_proof(self, request: ProofRequest) -> bytes: ...

    async def audit_query(self, request: AuditQueryRequest) -> AuditRecords: ...

    async def audit_export(self, request: AuditExportRequest) -> AuditExportResponse: ...

    async def audit_anchor(self) -> TxStatusResponse: ...

    async def contracts(self) -> list[dict[str, Any]]: ...

    events: EventHub


class GatewayServer:
    """The gRPC server of one node."""

    def __init__(
        self,
        *,
        backend: GatewayBackend,
        org_ca_pem: bytes,
        all_ca_pems: list[bytes],
        cert_pem: bytes,
        key_pem: bytes,
        host: str,
        port: int,
        audit: AuditLog | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._backend = backend
        self._audit = audit
        self._limiter = limiter
        self._org_cas = x509.load_pem_x509_certificates(org_ca_pem)  # root, intermediates
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # event streams sit idle between blocks: let clients keep them alive
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        handlers = {
            "Submit": self._unary(self._submit, "Submit"),
            "Evaluate": self._unary(self._evaluate, "Evaluate"),
            "TxStatus": self._signed("TxStatus", "transactions.read", self._tx_status),
            "GetBlock": self._signed("GetBlock", "blocks.read", self._get_block),
            "GetTransaction": self._signed("GetTransaction", "transactions.read", self._get_tx),
            "NodeStatus": self._signed("NodeStatus", "node.status", self._node_status),
            "GetConfig": self._signed("GetConfig", "config.read", self._get_config),
            "GetProof": self._signed("GetProof", "", self._get_proof),
            "AuditQuery": self._signed("AuditQuery", "audit.read", self._audit_query),
            "AuditExport": self._signed("AuditExport", "audit.read", self._audit_export),
            "AuditAnchor": self._signed("AuditAnchor", "audit.anchor", self._audit_anchor),
            "ListContracts": self._signed("ListContracts", "config.read", self._list_contracts),
            "Subscribe": self._signed("Subscribe", "events.subscribe", self._subscribe),
            "GetSubscription": self._signed(
                "GetSubscription", "events.subscribe", self._get_subscription
            ),
            "ListSubscriptions": self._signed(
                "ListSubscriptions", "events.subscribe", self._list_subscriptions
            ),
            "DeleteSubscription": self._signed(
                "DeleteSubscription", "events.subscribe", self._delete_subscription
            ),
            "Events": grpc.stream_stream_rpc_method_handler(self._events),
        }
        self._replays = ReplayGuard()
        health = {
            "Check": grpc.unary_unary_rpc_method_handler(self._health_check),
            "Watch": grpc.unary_stream_rpc_method_handler(self._health_watch),
        }
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(GATEWAY_SERVICE, handlers),
                grpc.method_handlers_generic_handler(HEALTH_SERVICE, health),
            )
        )
        credentials = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)],
            root_certificates=b"".join(all_ca_pems),
            require_client_auth=True,
        )
        self.address = f"{host}:{port}"
        self._server.add_secure_port(self.address, credentials)

    async def start(self) -> None:
        """Start serving."""
        await self._server.start()

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving, letting calls in progress finish within ``grace_s``."""
        await self._server.stop(grace_s)

    # -- plumbing --------------------------------------------------------------------

    def _signed(
        self, method: str, resource: str, fn: Callable[[bytes, Member], Awaitable[Any]]
    ) -> grpc.RpcMethodHandler:
        """A method whose request is a SignedRequest, guarded by the ACL of ``resource``."""

        async def checked(request: bytes, tls_caller: str) -> Any:
            body, member = self._check_signed(request, method, tls_caller)
            if resource:  # else the method checks the resource it is about itself
                _check_acl(self._backend.auth_context(), resource, member)
            return await fn(body, member)

        return self._unary(checked, method)

    def _check_signed(self, request: bytes, method: str, tls_caller: str) -> tuple[bytes, Member]:
        """The body of a SignedRequest for ``method`` and its signer, or GatewayError."""
        signed = _decode(SignedRequest, request)
        context = self._backend.auth_context()
        now = _now_ms()
        try:
            payload, member = check_request(signed, method=method, context=context, now_ms=now)
            _check_same_org(member, tls_caller)
            self._replays.admit(
                request_id(signed),
                created_ms=payload.created_ms,
                now_ms=now,
                window_ms=context.max_age_ms,
            )
        except RequestRejectedError as exc:
            raise _auth_refused(exc) from exc
        _signer.set(_name(member))
        return payload.body, member

    def _rate_check(self, caller: str) -> None:
        """Refuse a caller over its rate (RESOURCE_EXHAUSTED, ``rate_limited``)."""
        if self._limiter is None:
            return
        try:
            self._limiter.check(caller)
        except RateLimited as exc:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "rate_limited",
                str(exc),
                retry_after_ms=int(exc.retry_after_s * 1000),
            ) from exc

    def _unary(
        self, fn: Callable[[bytes, str], Awaitable[Any]], name: str = ""
    ) -> grpc.RpcMethodHandler:
        name = name or fn.__name__.lstrip("_")

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            _signer.set("")
            _about.set("")
            caller = _presented(context)  # until authenticated: who the certificate claims
            try:
                caller = self._authenticate(context)
                self._rate_check(caller)
                if name != "NodeStatus" and (refusal := self._backend.serving_refusal()):
                    raise GatewayError(grpc.StatusCode.UNAVAILABLE, "quarantined", refusal)
                response = await fn(request, caller)
            except GatewayError as exc:
                await self._refuse(context, name, caller, started, exc)
            except LedgerError as exc:  # this node's own store failed a check
                await self._refuse(
                    context,
                    name,
                    caller,
                    started,
                    GatewayError(
                        grpc.StatusCode.UNAVAILABLE,
                        "quarantined",
                        f"this node's stored data failed verification ({exc}); it quarantined "
                        "itself and repairs from its peers: use another node",
                    ),
                )
            except Exception as exc:  # a bug: logged in full, the caller gets a typed error
                log.exception("gateway_internal_error", method=name, caller=caller)
                await self._refuse(
                    context,
                    name,
                    caller,
                    started,
                    GatewayError(
                        grpc.StatusCode.INTERNAL,
                        "internal",
                        f"internal error ({type(exc).__name__}); the node logged the details",
                    ),
                )
            body = encode(response)
            digest = sha256(body)
            subject = " ".join(x for x in (_about.get(), _subject(response)) if x)
            log.info(
                "audit",
                method=name,
                caller=caller,
                signer=_signer.get(),
                peer=context.peer(),
                decision="allowed",
                subject=subject,
                response_sha256=digest.hex(),
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            self._record(name, caller, context.peer(), "allowed", subject, "", "", digest)
            return body

        return grpc.unary_unary_rpc_method_handler(handler)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        caller: str,
        started: float,
        exc: GatewayError,
    ) -> None:
        """Audit a refusal, then end the call with its status and ErrorBody."""
        rule = f"{exc.code}:{exc.rule}" if exc.rule else exc.code
        self._record(method, caller, context.peer(), "refused", _about.get(), rule, str(exc), b"")
        log.info(
            "audit",
            method=method,
            caller=caller,
            signer=_signer.get(),
            peer=context.peer(),
            decision="refused",
            code=exc.code,
            detail=str(exc),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        body = encode(ErrorBody(code=exc.code, message=str(exc), retry_after_ms=exc.retry_after_ms))
        await context.abort(exc.status, str(exc), trailing_metadata=((ERROR_TRAILER, body),))

    def _record(
        self,
        method: str,
        caller: str,
        peer: str,
        decision: str,
        subject: str,
        rule: str,
        detail: str,
        digest: bytes,
    ) -> None:
        """Append the call to the tamper-evident audit log (kyodo.audit)."""
        if self._audit is None:
            return
        try:
            self._audit.append(
                identity=_signer.get() or caller,
                tls_identity=caller,
                peer=peer,
                transport="grpc",
                operation=method,
                subject=subject,
                decision=decision,
                rule=rule,
                detail=detail,
                response_sha256=digest,
            )
        except AuditError as exc:  # the log itself failed: loud, but the call stands
            log.critical("audit_append_failed", method=method, detail=str(exc))

    def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        """``org/role/name`` of the TLS client certificate, issued by this org's CA."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no client certificate"
            )
        try:
            cert = load_certificate(pems[0])
            issuer = next((ca for ca in self._org_cas if ca.subject == cert.issuer), None)
            if issuer is None:
                raise ValueError("issued by no CA of this organization")
            cert.verify_directly_issued_by(issuer)
        except (IdentityError, ValueError, TypeError) as exc:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthenticated",
                f"client certificate is not issued by the CA of {self._backend.org_id}: "
                "a gateway serves its own organization's members",
            ) from exc
        org = _attr(cert, NameOID.ORGANIZATION_NAME)
        if org != self._backend.org_id:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthenticated",
                f"client certificate names organization {org!r}",
            )
        role = _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
        name = _attr(cert, NameOID.COMMON_NAME)
        if self._backend.is_revoked(org, cert.serial_number) or (
            issuer is not self._org_cas[0] and self._backend.is_revoked(org, issuer.serial_number)
        ):
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthenticated",
                f"client certificate of {org}/{name} is revoked by {org}",
            )
        return f"{org}/{role}/{name}"

    # -- methods ---------------------------------------------------------------------

    async def _submit(self, request: bytes, caller: str) -> TxStatusResponse:
        req = _decode(SubmitRequest, request)
        _about.set(_call_of(req.envelope, "submit"))
        creator = _creator_of(req.envelope, self._backend.auth_context())
        if creator is not None:  # a bad creator is refused below, with its reason
            _signer.set(_name(creator))
            try:
                _check_same_org(creator, caller)
            except RequestRejectedError as exc:
                raise _auth_refused(exc) from exc
        try:
            return await self._backend.submit(req.envelope, req.wait_ms)
        except TransactionRejectedError as exc:
            raise _rejected(exc) from exc
        except AccessDeniedError as exc:
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED, "access_denied", str(exc)
            ) from exc

    async def _evaluate(self, request: bytes, caller: str) -> EvaluateResponse:
        envelope = _decode(TxEnvelope, request)
        _about.set(_call_of(envelope, "evaluate"))
        context = self._backend.auth_context()
        now = _now_ms()
        try:
            checked = check_envelope(
                envelope,
                membership=context.membership,
                chain_id=context.chain_id,
                now_ms=now,
                max_age_ms=context.max_age_ms,
                query=True,  # a query is signed under its own domain: never a transaction
            )
        except TransactionRejectedError as exc:
            raise _rejected(exc) from exc
        _signer.set(_name(checked.creator))
        try:
            _check_same_org(checked.creator, caller)
        except RequestRejectedError as exc:
            raise _auth_refused(exc) from exc
        try:
            self._replays.admit(
                checked.tx_id,
                created_ms=checked.tx.created_ms,
                now_ms=now,
                window_ms=context.max_age_ms,
            )
        except RequestRejectedError as exc:
            raise _auth_refused(exc) from exc
        try:
            return await self._backend.evaluate(checked)
        except UnknownContractError as exc:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, "unknown_function", str(exc)) from exc
        except AccessDeniedError as exc:
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED, "access_denied", str(exc)
            ) from exc
        except ContractError as exc:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION, "contract_error", str(exc)
            ) from exc

    async def _tx_status(self, request: bytes, caller: Member) -> TxStatusResponse:
        req = _decode(StatusRequest, request)
        _about.set(f"tx {req.tx_id.hex()}")
        return await self._backend.tx_status(req.tx_id, req.wait_ms)

    async def _get_block(self, request: bytes, caller: Member) -> BlockResponse:
        req = _decode(BlockRequest, request)
        _about.set(f"block {req.height}")
        raw = await self._backend.get_block(req.height)
        if raw is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, "not_found", f"no block at height {req.height}"
            )
        return BlockResponse(block=raw)

    async def _get_tx(self, request: bytes, caller: Member) -> TxResponse:
        req = _decode(TxRequest, request)
        _about.set(f"tx {req.tx_id.hex()}")
        found = await self._backend.get_tx(req.tx_id)
        if found is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                "not_found",
                f"no committed transaction {req.tx_id.hex()}",
            )
        return found

    async def _node_status(self, request: bytes, caller: Member) -> NodeStatus:
        return self._backend.status()

    async def _get_config(self, request: bytes, caller: Member) -> ConfigResponse:
        return self._backend.current_config()

    async def _audit_query(self, request: bytes, caller: Member) -> AuditRecords:
        req = _decode(AuditQueryRequest, request)
        _about.set(
            f"audit query identity={req.identity!r} since={req.since_ms} until={req.until_ms} "
            f"subject~{req.subject_contains!r} op={req.operation!r}"
        )
        return await self._backend.audit_query(req)

    async def _audit_export(self, request: bytes, caller: Member) -> AuditExportResponse:
        req = _decode(AuditExportRequest, request)
        _about.set(f"audit export {req.from_seq}..{req.to_seq} proofs={req.with_proofs}")
        try:
            return await self._backend.audit_export(req)
        except AuditError as exc:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "malformed", str(exc)) from exc

    async def _audit_anchor(self, request: bytes, caller: Member) -> TxStatusResponse:
        _about.set("audit anchor")
        return await self._backend.audit_anchor()

    async def _get_proof(self, request: bytes, caller: Member) -> ProofResponse:
        req = _decode(ProofRequest, request)
        _about.set(f"proof {req.kind} {req.height} {req.tx_id.hex()} {req.namespace}/{req.key}")
        resource = {"block": "blocks.read", "tx": "transactions.read", "key": "state.read"}.get(
            req.kind
        )
        if resource is None:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT, "malformed", "kind is block, tx or key"
            )
        _check_acl(self._backend.auth_context(), resource, caller)
        try:
            document = await self._backend.get_proof(req)
        except LookupError as exc:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, "not_found", str(exc)) from exc
        return ProofResponse(document=document)

    # -- grpc.health.v1 (the standard health service, for load balancers and probes) ------

    def _health_of(self, service: str) -> int | None:
        """SERVING unless the node is quarantined; None for a service it does not have."""
        if service not in ("", GATEWAY_SERVICE):
            return None
        if self._backend.serving_refusal() is None:
            return health_pb2.HealthCheckResponse.SERVING  # type: ignore[no-any-return]
        return health_pb2.HealthCheckResponse.NOT_SERVING  # type: ignore[no-any-return]

    async def _health_request(
        self, request: bytes, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[str, str]:
        """Authenticate a health call (mutual TLS) and parse it: (caller, service)."""
        started = time.perf_counter()
        caller = _presented(context)
        try:
            caller = self._authenticate(context)
            self._rate_check(caller)
            try:
                service = health_pb2.HealthCheckRequest.FromString(request).service
            except DecodeProtobufError as exc:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT, "malformed", "bad HealthCheckRequest"
                ) from exc
            if self._health_of(service) is None:
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND, "not_found", f"no service {service[:64]!r}"
                )
        except GatewayError as exc:
            await self._refuse(context, method, caller, started, exc)
            raise AssertionError("unreachable") from exc  # abort raised above
        self._record(method, caller, context.peer(), "allowed", f"health {service}", "", "", b"")
        return caller, service

    async def _health_check(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        _, service = await self._health_request(request, context, "Health.Check")
        status = self._health_of(service)
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[no-any-return]

    async def _health_watch(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        caller, service = await self._health_request(request, context, "Health.Watch")
        try:
            with _events_errors():  # counted in the stream caps while it runs
                held = self._backend.events.hold_stream(caller)
        except GatewayError as exc:
            await self._refuse(context, "Health.Watch", caller, time.perf_counter(), exc)
            return
        try:
            last = None
            while True:
                status = self._health_of(service)
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
                await asyncio.sleep(1.0)  # a poll of an in-memory flag, not a synchronisation
        finally:
            self._backend.events.release_stream(held)

    async def _list_contracts(self, request: bytes, caller: Member) -> ContractList:
        _about.set("contracts")
        return ContractList(contracts=tuple(await self._backend.contracts()))

    def _check_filter_access(self, flt: EventFilter, member: Member) -> None:
        """What a stream delivers is readable by its consumer: blocks and transactions
        need their read rights, state changes need ``state.read``."""
        context = self._backend.auth_context()
        if flt.kind == "blocks":
            _check_acl(context, "blocks.read", member)
        if flt.kind == "transactions":
            _check_acl(context, "transactions.read", member)
        if flt.include_state:
            _check_acl(context, "state.read", member)

    async def _subscribe(self, request: bytes, caller: Member) -> SubscriptionInfo:
        req = _decode(SubscribeRequest, request)
        _about.set(f"subscription {req.spec.name[:64]}")
        self._check_filter_access(req.spec.filter, caller)
        with _events_errors():
            return await self._backend.events.declare(req.spec, _name(caller), after=req.after)

    async def _get_subscription(self, request: bytes, caller: Member) -> SubscriptionInfo:
        req = _decode(SubscriptionRequest, request)
        _about.set(f"subscription {req.name[:64]}")
        with _events_errors():
            return self._backend.events.get(req.name, caller.org)

    async def _list_subscriptions(self, request: bytes, caller: Member) -> SubscriptionList:
        _about.set("subscriptions")
        return SubscriptionList(subscriptions=tuple(self._backend.events.list(caller.org)))

    async def _delete_subscription(self, request: bytes, caller: Member) -> SubscriptionInfo:
        req = _decode(SubscriptionRequest, request)
        _about.set(f"subscription {req.name[:64]} delete")
        with _events_errors():
            info = self._backend.events.get(req.name, caller.org)
            await self._backend.events.delete(req.name, caller.org)
        return info

    async def _events(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """A pull stream: the first request is a signed StreamOpen, the next ones are
        StreamAck; the responses are StreamBatch. Refusals end the stream like a unary
        call's (status + ErrorBody trailer)."""
        started = time.perf_counter()
        _signer.set("")
        _about.set("")
        caller = _presented(context)
        hub = self._backend.events
        session: Session | None = None
        delivered = 0
        try:
            caller = self._authenticate(context)
            self._rate_check(caller)
            if refusal := self._backend.serving_refusal():
                raise GatewayError(grpc.StatusCode.UNAVAILABLE, "quarantined", refusal)
            try:
                first = await asyncio.wait_for(anext(aiter(requests)), timeout=30)
            except (StopAsyncIteration, TimeoutError) as exc:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT, "malformed", "no StreamOpen request"
                ) from exc
            body, member = self._check_signed(first, "Events", caller)
            _check_acl(self._backend.auth_context(), "events.subscribe", member)
            opened = _decode(StreamOpen, body)
            _about.set(f"events {opened.subscription[:64] or '(inline)'}")
            with _events_errors():
                flt = opened.filter
                if opened.subscription:
                    flt = hub.get(opened.subscription, member.org).filter
                if flt is not None:
                    self._check_filter_access(flt, member)
                session = hub.open(opened, _name(member))
                session.transport = "grpc"
        except GatewayError as exc:
            await self._refuse(context, "Events", caller, started, exc)
            return
        self._record("Events", caller, context.peer(), "allowed", _about.get(), "", "", b"")
        log.info("events_stream_opened", caller=caller, subject=_about.get())
        failure: list[GatewayError] = []

        async def read_acks() -> None:
            try:
                async for raw in requests:
                    ack = _decode(StreamAck, raw)
                    with _events_errors():
                        session.ack(ack.position)
            except GatewayError as exc:
                failure.append(exc)
            session.close()

        acks = asyncio.get_running_loop().create_task(read_acks())
        try:
            async for batch in session.batches():
                delivered += len(batch.items)
                yield encode(batch)
            if opened.until_height >= 0 and not session.closed:  # a replay that ended:
                await asyncio.wait({acks}, timeout=_REPLAY_CLOSE_S)  # its last acks come
        except LedgerError as exc:  # this node's store failed a check: it quarantined itself
            failure.append(
                GatewayError(
                    grpc.StatusCode.UNAVAILABLE,
                    "quarantined",
                    f"this node's stored data failed verification ({exc}); use another node",
                )
            )
        finally:
            acks.cancel()
            hub.release(session)
            log.info(
                "events_stream_closed",
                caller=caller,
                subject=_about.get(),
                delivered=delivered,
                superseded=session.superseded,
            )
        if session.deleted:
            failure.append(
                GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    "events.not_found",
                    f"subscription {opened.subscription!r} was deleted",
                )
            )
        if session.superseded:
            failure.append(
                GatewayError(
                    grpc.StatusCode.ABORTED,
                    "events.superseded",
                    "another consumer opened this subscription",
                )
            )
        if failure:  # the first reason the stream ended, as a refusal
            await self._refuse(context, "Events", caller, started, failure[0])


_REPLAY_CLOSE_S = 5.0
"""After the end of a replay, how long the node waits for the consumer to close its side
(its last acks on the way): the call never ends under an ack being sent."""

_EVENTS_STATUS = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "conflict": grpc.StatusCode.ALREADY_EXISTS,
    "limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "webhook_host": grpc.StatusCode.PERMISSION_DENIED,
}


@contextlib.contextmanager
def _events_errors() -> Iterator[None]:
    """EventsError as a GatewayError with its code."""
    try:
        yield
    except EventsError as exc:
        status = _EVENTS_STATUS.get(exc.reason, grpc.StatusCode.INVALID_ARGUMENT)
        raise GatewayError(status, exc.code, str(exc)) from exc


def _decode(cls: type[Any], data: bytes) -> Any:
    try:
        return decode_record(cls, data, max_size=MAX_REQUEST_BYTES)
    except DecodeError as exc:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT, "malformed", f"malformed {cls.__name__}: {exc}"
        ) from exc


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_AUTH_STATUS = {
    "wrong_role": grpc.StatusCode.PERMISSION_DENIED,
    "identity_mismatch": grpc.StatusCode.PERMISSION_DENIED,
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
}


def _auth_refused(exc: RequestRejectedError) -> GatewayError:
    status = _AUTH_STATUS.get(exc.reason, grpc.StatusCode.UNAUTHENTICATED)
    return GatewayError(status, f"auth.{exc.reason}", str(exc))


def _name(member: Member) -> str:
    return f"{member.org}/{member.role}/{member.name}"


def _check_same_org(member: Member, tls_caller: str) -> None:
    """The request's signer belongs to the organization of the TLS client."""
    tls_org = tls_caller.split("/", 1)[0]
    if member.org != tls_org:
        raise RequestRejectedError(
            f"request signed by {member.org}/{member.name} over a TLS connection of {tls_org}: "
            "a gateway serves its own organization's members",
            reason="identity_mismatch",
        )


def _check_acl(context: AuthContext, resource: str, member: Member) -> None:
    try:
        context.acl.check(
            resource, Identity(org=member.org, role=str(member.role), name=member.name)
        )
    except AccessRefused as exc:
        raise GatewayError(
            grpc.StatusCode.PERMISSION_DENIED, "access_denied", str(exc), rule=exc.rule
        ) from exc


def _creator_of(envelope: TxEnvelope, context: AuthContext) -> Member | None:
    """The member who created an envelope, if its certificate is acceptable now (the
    signature is checked when the node admits it)."""
    try:
        tx = envelope.transaction()
        return context.membership.validate(tx.creator, now=datetime.now(UTC))
    except (DecodeError, IdentityError, ValueError, TypeError):
        return None


def _call_of(envelope: TxEnvelope, action: str) -> str:
    """``submit contract.function`` of an envelope, for the audit log (what it claims;
    the signature is checked after)."""
    try:
        tx = envelope.transaction()
    except DecodeError:
        return f"{action} (malformed)"
    return f"{action} {tx.contract[:64]}.{tx.function[:64]}"


def _rejected(exc: TransactionRejectedError) -> GatewayError:
    status = {
        "duplicate": grpc.StatusCode.ALREADY_EXISTS,
        "unknown_identity": grpc.StatusCode.PERMISSION_DENIED,
        "unknown_ca": grpc.StatusCode.PERMISSION_DENIED,
        "certificate_expired": grpc.StatusCode.PERMISSION_DENIED,
        "wrong_role": grpc.StatusCode.PERMISSION_DENIED,
        "revoked": grpc.StatusCode.PERMISSION_DENIED,
        "bad_signature": grpc.StatusCode.PERMISSION_DENIED,
        "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    }.get(exc.reason, grpc.StatusCode.INVALID_ARGUMENT)
    return GatewayError(status, f"rejected.{exc.reason}", str(exc))


def _presented(context: grpc.aio.ServicerContext) -> str:
    """``presented:<subject>`` of the client's TLS certificate (not yet authenticated)."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return "presented:none"
    try:
        return "presented:" + load_certificate(pems[0]).subject.rfc4514_string()
    except IdentityError:
        return "presented:unparseable"


def _subject(response: Any) -> str:
    """What a call was about, for the audit record (a transaction id or a height)."""
    tx_id = getattr(response, "tx_id", None)
    if isinstance(tx_id, bytes) and tx_id:
        return f"tx:{tx_id.hex()}"
    height = getattr(response, "height", None)
    return f"height:{height}" if isinstance(height, int) else ""


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""
