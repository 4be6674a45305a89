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
2. a transaction or query carries the user's signature over its payload,
   checked against the creator's signing certificate (membership, expiry).

A refused call ends with a gRPC status code and an :class:`ErrorBody` in the
``kyodo-error-bin`` trailer, so the SDK raises a typed error. Each call is
recorded as an ``audit`` log event: who called (certificate subject), from
where (peer address), what (method and subject: a transaction id or a
height), the decision (and the refusal code), and the SHA-256 of the response,
not the data itself. The tamper-evident, hash-chained audit log of issue 6
builds on these records.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from kyodo.codec import DecodeError, decode_record, encode
from kyodo.contracts import AccessDeniedError, ContractError, UnknownContractError
from kyodo.crypto import sha256
from kyodo.identity import IdentityError, load_certificate
from kyodo.ledger import TransactionRejectedError
from kyodo.wire import (
    GATEWAY_SERVICE,
    MAX_REQUEST_BYTES,
    BlockRequest,
    BlockResponse,
    ConfigResponse,
    ErrorBody,
    EvaluateResponse,
    NodeStatus,
    StatusRequest,
    SubmitRequest,
    TxEnvelope,
    TxRequest,
    TxResponse,
    TxStatusResponse,
)

__all__ = ["ERROR_TRAILER", "GatewayBackend", "GatewayError", "GatewayServer"]

log = structlog.get_logger("kyodo.gateway")
ERROR_TRAILER = "kyodo-error-bin"


class GatewayError(Exception):
    """A refusal with a stable code, mapped to a gRPC status."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class GatewayBackend(Protocol):
    """What the node offers the gateway."""

    org_id: str

    async def submit(self, envelope: TxEnvelope, wait_ms: int) -> TxStatusResponse: ...

    async def evaluate(self, envelope: TxEnvelope) -> EvaluateResponse: ...

    async def tx_status(self, tx_id: bytes, wait_ms: int) -> TxStatusResponse: ...

    async def get_block(self, height: int) -> bytes | None: ...

    async def get_tx(self, tx_id: bytes) -> TxResponse | None: ...

    def status(self) -> NodeStatus: ...

    def current_config(self) -> ConfigResponse: ...

    def is_revoked(self, org: str, serial: int) -> bool: ...


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
    ) -> None:
        self._backend = backend
        self._org_ca = x509.load_pem_x509_certificate(org_ca_pem)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        handlers = {
            "Submit": self._unary(self._submit),
            "Evaluate": self._unary(self._evaluate),
            "TxStatus": self._unary(self._tx_status),
            "GetBlock": self._unary(self._get_block),
            "GetTransaction": self._unary(self._get_tx),
            "NodeStatus": self._unary(self._node_status),
            "GetConfig": self._unary(self._get_config),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(GATEWAY_SERVICE, handlers),)
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

    def _unary(self, fn: Callable[[bytes, str], Awaitable[Any]]) -> grpc.RpcMethodHandler:
        name = fn.__name__.lstrip("_")

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            caller = _presented(context)  # until authenticated: who the certificate claims
            try:
                caller = self._authenticate(context)
                response = await fn(request, caller)
            except GatewayError as exc:
                await self._refuse(context, name, caller, started, exc)
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
            log.info(
                "audit",
                method=name,
                caller=caller,
                peer=context.peer(),
                decision="allowed",
                subject=_subject(response),
                response_sha256=sha256(body).hex(),
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
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
        log.info(
            "audit",
            method=method,
            caller=caller,
            peer=context.peer(),
            decision="refused",
            code=exc.code,
            detail=str(exc),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        body = encode(ErrorBody(code=exc.code, message=str(exc)))
        await context.abort(exc.status, str(exc), trailing_metadata=((ERROR_TRAILER, body),))

    def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        """``org/role/name`` of the TLS client certificate, issued by this org's CA."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no client certificate"
            )
        try:
            cert = load_certificate(pems[0])
            cert.verify_directly_issued_by(self._org_ca)
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
        if self._backend.is_revoked(org, cert.serial_number):
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthenticated",
                f"client certificate of {org}/{name} is revoked by {org}",
            )
        return f"{org}/{role}/{name}"

    # -- methods ---------------------------------------------------------------------

    async def _submit(self, request: bytes, caller: str) -> TxStatusResponse:
        req = _decode(SubmitRequest, request)
        try:
            return await self._backend.submit(req.envelope, req.wait_ms)
        except TransactionRejectedError as exc:
            raise _rejected(exc) from exc

    async def _evaluate(self, request: bytes, caller: str) -> EvaluateResponse:
        envelope = _decode(TxEnvelope, request)
        try:
            return await self._backend.evaluate(envelope)
        except TransactionRejectedError as exc:
            raise _rejected(exc) from exc
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

    async def _tx_status(self, request: bytes, caller: str) -> TxStatusResponse:
        req = _decode(StatusRequest, request)
        return await self._backend.tx_status(req.tx_id, req.wait_ms)

    async def _get_block(self, request: bytes, caller: str) -> BlockResponse:
        req = _decode(BlockRequest, request)
        raw = await self._backend.get_block(req.height)
        if raw is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, "not_found", f"no block at height {req.height}"
            )
        return BlockResponse(block=raw)

    async def _get_tx(self, request: bytes, caller: str) -> TxResponse:
        req = _decode(TxRequest, request)
        found = await self._backend.get_tx(req.tx_id)
        if found is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                "not_found",
                f"no committed transaction {req.tx_id.hex()}",
            )
        return found

    async def _node_status(self, request: bytes, caller: str) -> NodeStatus:
        return self._backend.status()

    async def _get_config(self, request: bytes, caller: str) -> ConfigResponse:
        return self._backend.current_config()


def _decode(cls: type[Any], data: bytes) -> Any:
    try:
        return decode_record(cls, data, max_size=MAX_REQUEST_BYTES)
    except DecodeError as exc:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT, "malformed", f"malformed {cls.__name__}: {exc}"
        ) from exc


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
