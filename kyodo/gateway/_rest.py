"""The REST gateway: HTTPS and JSON for browsers and tools without a client certificate.

Served by the node next to the gRPC gateway (``rest_port`` in ``node.json``;
0 turns it off), with the node's TLS certificate. It does not ask for a client
certificate: a caller authenticates by logging in with a signed challenge
(:mod:`kyodo.gateway._tokens`) and sends ``Authorization: Bearer <token>`` on
every other call. Each call is then checked like a gRPC one: the identity in
the token is validated against the configuration in force (revocation and
expiry), the network's ACL decides (``node.status``, ``blocks.read``,
``transactions.read``, ``evaluate/<contract>/<function>``), and the call is
recorded as an ``audit`` event (who, from where, what, the decision and the
refusal code, the SHA-256 of the response).

Every refusal is ``application/problem+json`` (RFC 9457) with the same stable
``code`` as the gRPC gateway (``docs/errors.md``): ``auth.<reason>`` for
authentication, ``access_denied`` naming the ACL rule, ``malformed``,
``not_found``, ``contract_error``...

Operations (OpenAPI 3.1 at ``/openapi.json``):

- ``POST /v1/auth/challenge``  {certificate: PEM} -> {challenge, expires_at_ms}
- ``POST /v1/auth/token``      {challenge, signature} -> {access_token, ...}
- ``POST /v1/auth/logout``, ``GET /v1/whoami``, ``GET /v1/status``, ``GET /healthz``
- ``GET  /v1/blocks/{height}`` (-1: the tip), ``GET /v1/transactions/{tx_id}``
- ``POST /v1/transactions`` {payload, signature}: a transaction signed by its
  creator (who must be the token's identity; a token proves who calls, the
  ledger keeps the creator's own signature), ``?mode=sync|async``;
  ``GET /v1/transactions/{tx_id}/status``
- ``POST /v1/contracts/{contract}/{function}/evaluate`` {args: [...]}
- ``GET  /v1/contracts[/{name}]``, ``GET /v1/network``
- ``POST|GET /v1/subscriptions``, ``GET|DELETE /v1/subscriptions/{name}``,
  ``POST /v1/subscriptions/{name}/ack``
- ``GET  /v1/subscriptions/{name}/events`` and ``GET /v1/events`` (Server-Sent
  Events), ``WS /v1/subscriptions/{name}/ws`` (WebSocket)

Calls are rate-limited per identity (``rate_limited``, 429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import ssl
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Protocol

import structlog
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from kyodo.audit import AuditError, AuditLog
from kyodo.codec import DecodeError, decode_record, encode
from kyodo.contracts import AccessDeniedError, ContractError, UnknownContractError
from kyodo.crypto import sha256
from kyodo.events import EventHub, EventsError, Session, info_json, item_json, jsonable
from kyodo.gateway._auth import AuthContext, RequestRejectedError
from kyodo.gateway._limits import RateLimited, RateLimiter
from kyodo.gateway._tokens import TokenService
from kyodo.identity import IdentityError, Member, certificate_der
from kyodo.ledger import (
    Block,
    CheckedTx,
    LedgerError,
    NetworkConfig,
    TransactionRejectedError,
)
from kyodo.policy import AccessRefused, Identity
from kyodo.wire import (
    FAILURE_CODES,
    MAX_REQUEST_BYTES,
    MAX_STREAM_WINDOW,
    ConfigResponse,
    EvaluateResponse,
    EventFilter,
    NodeStatus,
    StreamOpen,
    SubscriptionSpec,
    Transaction,
    TxEnvelope,
    TxResponse,
    TxStatusResponse,
)

__all__ = ["RestBackend", "RestGateway", "create_app"]

log = structlog.get_logger("kyodo.gateway.rest")
PROBLEM = "application/problem+json"
_AUTH_STATUS = {"wrong_role": 403, "identity_mismatch": 403, "malformed": 400}
AuthHeader = Annotated[str | None, Header(description="Bearer <access token>")]


class RestBackend(Protocol):
    """What the node offers the REST gateway (a subset of the gRPC backend)."""

    org_id: str

    def auth_context(self) -> AuthContext: ...

    def serving_refusal(self) -> str | None: ...

    def status(self) -> NodeStatus: ...

    async def get_block(self, height: int) -> bytes | None: ...

    async def get_tx(self, tx_id: bytes) -> TxResponse | None: ...

    async def evaluate(self, checked: CheckedTx) -> EvaluateResponse: ...

    async def submit(self, envelope: TxEnvelope, wait_ms: int) -> TxStatusResponse: ...

    async def tx_status(self, tx_id: bytes, wait_ms: int) -> TxStatusResponse: ...

    async def contracts(self) -> list[dict[str, Any]]: ...

    def current_config(self) -> ConfigResponse: ...

    events: EventHub


class Problem(Exception):
    """A refusal: HTTP status, stable code, detail (and the ACL rule, if one refused)."""

    def __init__(self, status: int, code: str, detail: str, rule: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.rule = status, code, detail, rule
        self.extra: dict[str, Any] = {}
        self.headers: dict[str, str] = {}


class ChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    certificate: str = Field(max_length=16_384, description="Your signing certificate (PEM).")


class ChallengeResponse(BaseModel):
    challenge: str = Field(description="base64 of 32 bytes; sign login_message(chain, it).")
    chain_id: str
    expires_at_ms: int


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge: str = Field(max_length=128)
    signature: str = Field(max_length=256, description="base64 Ed25519 signature.")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at_ms: int
    identity: str


class WhoAmI(BaseModel):
    identity: str
    org: str
    role: str
    name: str
    token_expires_at_ms: int


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    args: list[Any] = Field(default_factory=list, max_length=64)


class EvaluateResult(BaseModel):
    result: Any
    height: int


def _problem(
    request: Request,
    status: int,
    code: str,
    detail: str,
    rule: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        **(extra or {}),
        "type": f"https://kyodo.dev/errors/{code}",
        "title": code,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
    }
    if rule is not None:
        body["rule"] = rule
    log.info(
        "audit",
        method=f"{request.method} {request.url.path}",
        caller=getattr(request.state, "identity", "anonymous"),
        peer=request.client.host if request.client else "",
        decision="refused",
        code=code,
        detail=detail,
        transport="rest",
    )
    _record(request, "refused", f"{code}:{rule}" if rule else code, detail, b"")
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _ok(request: Request, payload: BaseModel | dict[str, Any]) -> JSONResponse:
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    log.info(
        "audit",
        method=f"{request.method} {request.url.path}",
        caller=getattr(request.state, "identity", "anonymous"),
        peer=request.client.host if request.client else "",
        decision="allowed",
        response_sha256=sha256(body).hex(),
        transport="rest",
    )
    _record(request, "allowed", "", "", sha256(body))
    return JSONResponse(data)


def _record(
    request: HTTPConnection,
    decision: str,
    rule: str,
    detail: str,
    digest: bytes,
    *,
    operation: str = "",
) -> None:
    """Append the call to the node's tamper-evident audit log (a WebSocket names its
    ``operation``; an HTTP request is its method and path)."""
    audit: AuditLog | None = getattr(request.app.state, "audit", None)
    if audit is None:
        return
    method = getattr(request, "method", "WS")
    try:
        audit.append(
            identity=getattr(request.state, "identity", "anonymous"),
            peer=request.client.host if request.client else "",
            transport="rest",
            operation=(operation or f"{method} {request.url.path}")[:128],
            subject=request.url.path[:256],
            decision=decision,
            rule=rule,
            detail=detail,
            response_sha256=digest,
        )
    except AuditError as exc:
        log.critical("audit_append_failed", detail=str(exc))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _auth_problem(exc: RequestRejectedError) -> Problem:
    return Problem(_AUTH_STATUS.get(exc.reason, 401), f"auth.{exc.reason}", str(exc))


def _canonical_arg(value: Any, path: str) -> Any:
    """A JSON argument as a canonical value; floats are refused."""
    if isinstance(value, float):
        raise Problem(
            400,
            "malformed",
            f"{path} is a float; use an integer (minor units) or a string: floats are not "
            "deterministic",
        )
    if isinstance(value, list):
        return [_canonical_arg(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _canonical_arg(v, f"{path}.{k}") for k, v in value.items()}
    return value


def create_app(
    backend: RestBackend,
    tokens: TokenService,
    *,
    audit: AuditLog | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """The REST application of one node (every call recorded in ``audit``)."""
    app = FastAPI(
        title="Kyodo gateway",
        version="1",
        description="Login by signed challenge, then read and query with a bearer token.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.audit = audit

    @app.exception_handler(Problem)
    async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
        response = _problem(request, exc.status, exc.code, exc.detail, exc.rule, exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _problem(request, 400, "malformed", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _problem(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(LedgerError)
    async def _on_store_fault(request: Request, exc: LedgerError) -> JSONResponse:
        return _problem(
            request,
            503,
            "quarantined",
            f"this node's stored data failed verification ({exc}); it quarantined itself "
            "and repairs from its peers: use another node",
        )

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("gateway_internal_error", path=request.url.path)
        return _problem(
            request,
            500,
            "internal",
            f"internal error ({type(exc).__name__}); the node logged the details",
        )

    app.add_middleware(_SizeLimit)

    def authenticate(request: HTTPConnection, authorization: str | None) -> tuple[Any, Member]:
        refusal = backend.serving_refusal()
        if refusal is not None:
            raise Problem(503, "quarantined", refusal)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                401,
                "auth.token_missing",
                "send Authorization: Bearer <token> (POST /v1/auth/challenge, then /v1/auth/token)",
            )
        try:
            claims, member = tokens.verify(token.strip(), backend.auth_context(), _now_ms())
        except RequestRejectedError as exc:
            raise _auth_problem(exc) from exc
        request.state.identity = f"{member.org}/{member.role}/{member.name}"
        limit(request.state.identity)
        return claims, member

    def limit(identity: str) -> None:
        if limiter is None:
            return
        try:
            limiter.check(identity)
        except RateLimited as exc:
            problem = Problem(429, "rate_limited", str(exc))
            problem.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            problem.extra["retry_after_ms"] = int(exc.retry_after_s * 1000)
            raise problem from exc

    def allow(resource: str, member: Member) -> None:
        try:
            backend.auth_context().acl.check(
                resource, Identity(org=member.org, role=str(member.role), name=member.name)
            )
        except AccessRefused as exc:
            raise Problem(403, "access_denied", str(exc), rule=exc.rule) from exc

    @app.post("/v1/auth/challenge", response_model=ChallengeResponse, tags=["auth"])
    async def challenge(request: Request, body: ChallengeRequest) -> JSONResponse:
        """Ask for a login challenge for your signing certificate."""
        try:
            der = certificate_der(body.certificate.encode())
        except IdentityError as exc:
            raise Problem(400, "malformed", f"certificate: {exc}") from exc
        # challenges cost the node memory (bounded: the oldest open ones give way):
        # limited per client address. Not per certificate: anyone may hold a member's
        # public certificate, and could so lock that member out of logging in.
        limit("login-from:" + (request.client.host if request.client else "?"))
        try:
            nonce, expires = tokens.challenge(der, backend.auth_context(), _now_ms())
        except RequestRejectedError as exc:
            raise _auth_problem(exc) from exc
        return _ok(
            request,
            ChallengeResponse(
                challenge=base64.b64encode(nonce).decode(),
                chain_id=backend.auth_context().chain_id,
                expires_at_ms=expires,
            ),
        )

    @app.post("/v1/auth/token", response_model=TokenResponse, tags=["auth"])
    async def token(request: Request, body: TokenRequest) -> JSONResponse:
        """Exchange a signed challenge for a short-lived access token."""
        limit("login-from:" + (request.client.host if request.client else "?"))
        try:
            nonce = base64.b64decode(body.challenge, validate=True)
            signature = base64.b64decode(body.signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Problem(400, "malformed", "challenge and signature are base64") from exc
        try:
            issued, claims, member = tokens.exchange(
                nonce, signature, backend.auth_context(), _now_ms()
            )
        except RequestRejectedError as exc:
            raise _auth_problem(exc) from exc
        request.state.identity = f"{member.org}/{member.role}/{member.name}"
        log.info("login", identity=request.state.identity, expires_ms=claims.expires_ms)
        return _ok(
            request,
            TokenResponse(
                access_token=issued,
                expires_at_ms=claims.expires_ms,
                identity=request.state.identity,
            ),
        )

    @app.post("/v1/auth/logout", tags=["auth"])
    async def logout(request: Request, authorization: AuthHeader = None) -> JSONResponse:
        """End this token's use (at this gateway) before it expires."""
        claims, _ = authenticate(request, authorization)
        tokens.revoke(claims, _now_ms())
        return _ok(request, {"logged_out": True})

    @app.get("/v1/whoami", response_model=WhoAmI, tags=["auth"])
    async def whoami(request: Request, authorization: AuthHeader = None) -> JSONResponse:
        """The identity your token is bound to."""
        claims, member = authenticate(request, authorization)
        return _ok(
            request,
            WhoAmI(
                identity=request.state.identity,
                org=member.org,
                role=str(member.role),
                name=member.name,
                token_expires_at_ms=claims.expires_ms,
            ),
        )

    @app.get("/v1/status", tags=["ledger"])
    async def status(request: Request, authorization: AuthHeader = None) -> JSONResponse:
        """This node's status (ACL ``node.status``)."""
        _, member = authenticate(request, authorization)
        allow("node.status", member)
        s = backend.status()
        return _ok(
            request,
            {
                "node_id": s.node_id,
                "org_id": s.org_id,
                "role": s.role,
                "view": s.view,
                "height": s.height,
                "tip_hash": s.tip_hash.hex(),
                "state_root": s.state_root.hex(),
                "healthy": s.healthy,
                "detail": s.detail,
                "chain_id": s.chain_id,
            },
        )

    @app.get("/v1/blocks/{height}", tags=["ledger"])
    async def block(request: Request, height: int, authorization: AuthHeader = None) -> Any:
        """A block's header, transaction ids and results (ACL ``blocks.read``)."""
        _, member = authenticate(request, authorization)
        allow("blocks.read", member)
        raw = await backend.get_block(height)
        if raw is None:
            raise Problem(404, "not_found", f"no block at height {height}")
        b = decode_record(Block, raw)
        h = b.header
        return _ok(
            request,
            {
                "height": h.height,
                "hash": b.block_hash().hex(),
                "prev_hash": h.prev_hash.hex(),
                "timestamp_ms": h.timestamp_ms,
                "epoch": h.epoch,
                "proposer": h.proposer,
                "txs_root": h.txs_root.hex(),
                "results_root": h.results_root.hex(),
                "state_root": h.state_root.hex(),
                "transactions": [{"tx_id": r.tx_id.hex(), "status": r.status} for r in b.results],
                "signers": [c.signer for c in b.certificate],
            },
        )

    @app.get("/v1/transactions/{tx_id}", tags=["ledger"])
    async def transaction(request: Request, tx_id: str, authorization: AuthHeader = None) -> Any:
        """A committed transaction and its result (ACL ``transactions.read``)."""
        _, member = authenticate(request, authorization)
        allow("transactions.read", member)
        try:
            key = bytes.fromhex(tx_id)
        except ValueError as exc:
            raise Problem(400, "malformed", "tx_id is 64 hex digits") from exc
        found = await backend.get_tx(key)
        if found is None:
            raise Problem(404, "not_found", f"no committed transaction {tx_id}")
        tx = found.envelope.transaction()
        return _ok(
            request,
            {
                "tx_id": tx_id,
                "height": found.height,
                "tx_index": found.tx_index,
                "status": found.status,
                "contract": tx.contract,
                "function": tx.function,
                "args": jsonable(list(tx.args)),
                "result": jsonable(found.result),
                "message": found.message,
            },
        )

    @app.post("/v1/contracts/{contract}/{function}/evaluate", tags=["contracts"])
    async def evaluate(
        request: Request,
        contract: str,
        function: str,
        body: EvaluateRequest,
        authorization: AuthHeader = None,
    ) -> Any:
        """Run a query as the token's identity (ACL ``evaluate/<contract>/<function>`` and
        the function's own access rule)."""
        claims, member = authenticate(request, authorization)
        args = tuple(_canonical_arg(a, f"args[{i}]") for i, a in enumerate(body.args))
        tx = Transaction(
            chain_id=claims.chain_id,
            contract=contract,
            function=function,
            args=args,
            nonce=os.urandom(16),
            created_ms=_now_ms(),
            creator=claims.certificate,
        )
        try:
            payload = encode(tx)
            decode_record(Transaction, payload)
        except (DecodeError, ValueError, TypeError) as exc:
            raise Problem(400, "malformed", f"arguments: {exc}") from exc
        envelope = TxEnvelope(payload=payload, signature=b"")  # authenticated by the token
        checked = CheckedTx(tx_id=envelope.tx_id(), envelope=envelope, tx=tx, creator=member)
        try:
            response = await backend.evaluate(checked)
        except UnknownContractError as exc:
            raise Problem(404, "unknown_function", str(exc)) from exc
        except AccessDeniedError as exc:
            raise Problem(403, "access_denied", str(exc), rule=exc.rule) from exc
        except ContractError as exc:
            raise Problem(422, "contract_error", str(exc)) from exc
        return _ok(request, {"result": jsonable(response.result), "height": response.height})

    @app.get("/healthz", tags=["ledger"])
    async def healthz(request: Request) -> Any:
        """Liveness for load balancers: no data, no authentication (503 when quarantined)."""
        refusal = backend.serving_refusal()
        if refusal is not None:
            return JSONResponse({"ok": False, "quarantined": True}, status_code=503)
        return JSONResponse({"ok": True})

    @app.post("/v1/transactions", tags=["transactions"], status_code=200)
    async def submit(
        request: Request,
        body: SubmitBody,
        mode: Annotated[str, Query(pattern="^(sync|async)$")] = "sync",
        wait_ms: Annotated[int, Query(ge=0, le=60_000)] = 30_000,
        authorization: AuthHeader = None,
    ) -> Any:
        """Order a transaction signed by its creator (who must be the token's identity).
        ``sync``: wait for finality (up to ``wait_ms``); ``async``: 202 and where to poll."""
        claims, member = authenticate(request, authorization)
        try:
            envelope = TxEnvelope(
                payload=base64.b64decode(body.payload, validate=True),
                signature=base64.b64decode(body.signature, validate=True),
            )
            tx = envelope.transaction()
        except (binascii.Error, ValueError, DecodeError) as exc:
            raise Problem(400, "malformed", f"payload and signature: {exc}") from exc
        if tx.creator != claims.certificate:
            raise Problem(
                403,
                "auth.identity_mismatch",
                "the transaction's creator is not the identity this token is bound to",
            )
        allow(f"submit/{tx.contract}/{tx.function}", member)
        try:
            status = await backend.submit(envelope, 0 if mode == "async" else wait_ms)
        except TransactionRejectedError as exc:
            http = {"duplicate": 409, "busy": 503}.get(exc.reason, 400)
            if exc.reason in _IDENTITY_REASONS:
                http = 403
            raise Problem(http, f"rejected.{exc.reason}", str(exc)) from exc
        except AccessDeniedError as exc:
            raise Problem(403, "access_denied", str(exc), rule=exc.rule) from exc
        outcome = _status_json(status)
        if status.state != "final":
            response = _ok(request, outcome)
            response.status_code = 202
            response.headers["Location"] = f"/v1/transactions/{status.tx_id.hex()}/status"
            return response
        if status.status != 0:
            failure = FAILURE_CODES.get(status.status, "contract_error")
            problem = Problem(422, failure, status.message or failure)
            problem.extra = {"tx_id": status.tx_id.hex(), "height": status.height}
            raise problem
        return _ok(request, outcome)

    @app.get("/v1/transactions/{tx_id}/status", tags=["transactions"])
    async def status_of(
        request: Request,
        tx_id: str,
        wait_ms: Annotated[int, Query(ge=0, le=60_000)] = 0,
        authorization: AuthHeader = None,
    ) -> Any:
        """Where a transaction stands: unknown, pending or final (with its result)."""
        _, member = authenticate(request, authorization)
        allow("transactions.read", member)
        try:
            key = bytes.fromhex(tx_id)
        except ValueError as exc:
            raise Problem(400, "malformed", "tx_id is 64 hex digits") from exc
        return _ok(request, _status_json(await backend.tx_status(key, wait_ms)))

    @app.get("/v1/contracts", tags=["contracts"])
    async def contracts(request: Request, authorization: AuthHeader = None) -> Any:
        """The contracts callers can use, with their functions and access rules."""
        _, member = authenticate(request, authorization)
        allow("config.read", member)
        return _ok(request, {"contracts": jsonable(await backend.contracts())})

    @app.get("/v1/contracts/{name}", tags=["contracts"])
    async def contract(request: Request, name: str, authorization: AuthHeader = None) -> Any:
        """One contract's functions: parameters, read-only, who may call."""
        _, member = authenticate(request, authorization)
        allow("config.read", member)
        for found in await backend.contracts():
            if found["name"] == name:
                return _ok(request, jsonable(found))
        raise Problem(404, "not_found", f"no contract named {name!r}")

    @app.get("/v1/network", tags=["ledger"])
    async def network(request: Request, authorization: AuthHeader = None) -> Any:
        """The network's members: organizations, nodes, validators, configuration epoch."""
        _, member = authenticate(request, authorization)
        allow("config.read", member)
        current = backend.current_config()
        config = decode_record(NetworkConfig, current.config)
        return _ok(
            request,
            {
                "chain_id": config.chain_id,
                "epoch": config.epoch,
                "in_force_from": current.in_force_from,
                "organizations": [o.org_id for o in config.orgs],
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "org_id": n.org_id,
                        "validator": n.validator,
                        "address": f"{n.host}:{n.gateway_port}",
                    }
                    for n in config.nodes
                ],
            },
        )

    # -- event streams -------------------------------------------------------------------

    def events_problem(exc: EventsError) -> Problem:
        status = {
            "not_found": 404,
            "conflict": 409,
            "no_session": 409,
            "limit": 429,
            "webhook_host": 403,
        }.get(exc.reason, 400)
        return Problem(status, exc.code, str(exc))

    def filter_access(flt: EventFilter, member: Member) -> None:
        allow("events.subscribe", member)
        if flt.kind == "blocks":
            allow("blocks.read", member)
        if flt.kind == "transactions":
            allow("transactions.read", member)
        if flt.include_state:
            allow("state.read", member)

    @app.post("/v1/subscriptions", tags=["events"], status_code=201)
    async def subscribe(
        request: Request, body: SubscriptionBody, authorization: AuthHeader = None
    ) -> Any:
        """Create a durable subscription of your organization on this node (the same
        declaration again: 200). ``after``: your own checkpoint, failing over."""
        _, member = authenticate(request, authorization)
        spec = body.spec()
        filter_access(spec.filter, member)
        hub = backend.events
        try:
            existed = any(i.name == spec.name for i in hub.list(member.org))
            info = await hub.declare(spec, request.state.identity, after=body.after)
        except EventsError as exc:
            raise events_problem(exc) from exc
        response = _ok(request, info_json(info))
        response.status_code = 200 if existed else 201
        return response

    @app.get("/v1/subscriptions", tags=["events"])
    async def subscriptions(request: Request, authorization: AuthHeader = None) -> Any:
        """Your organization's subscriptions on this node."""
        _, member = authenticate(request, authorization)
        allow("events.subscribe", member)
        found = backend.events.list(member.org)
        return _ok(request, {"subscriptions": [info_json(i) for i in found]})

    @app.get("/v1/subscriptions/{name}", tags=["events"])
    async def subscription(request: Request, name: str, authorization: AuthHeader = None) -> Any:
        """Where a subscription stands: checkpoint, acknowledged count, webhook failures
        and dead letters."""
        _, member = authenticate(request, authorization)
        allow("events.subscribe", member)
        try:
            return _ok(request, info_json(backend.events.get(name, member.org)))
        except EventsError as exc:
            raise events_problem(exc) from exc

    @app.delete("/v1/subscriptions/{name}", tags=["events"])
    async def unsubscribe(request: Request, name: str, authorization: AuthHeader = None) -> Any:
        """Delete a subscription (its open stream ends, its webhook stops)."""
        _, member = authenticate(request, authorization)
        allow("events.subscribe", member)
        try:
            info = backend.events.get(name, member.org)
            await backend.events.delete(name, member.org)
        except EventsError as exc:
            raise events_problem(exc) from exc
        return _ok(request, info_json(info))

    @app.post("/v1/subscriptions/{name}/ack", tags=["events"])
    async def ack(
        request: Request, name: str, body: AckBody, authorization: AuthHeader = None
    ) -> Any:
        """Acknowledge every item up to ``position`` on the subscription's open SSE
        stream (the node's checkpoint advances)."""
        _, member = authenticate(request, authorization)
        allow("events.subscribe", member)
        try:
            backend.events.ack(name, member.org, body.position)
        except EventsError as exc:
            raise events_problem(exc) from exc
        return _ok(request, {"acked": body.position})

    def sse(
        request: Request, session: Session, name: str, *, auto_ack: bool, idle_s: float | None
    ) -> StreamingResponse:
        hub = backend.events

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for batch in session.batches(idle_s=idle_s):
                    if not batch.items:
                        yield f": tip {batch.tip}\n\n".encode()
                        continue
                    for item in batch.items:
                        data = json.dumps(item_json(item, name), separators=(",", ":"))
                        h, t, i = item.position
                        yield f"id: {h}.{t}.{i}\nevent: {item.kind}\ndata: {data}\n\n".encode()
                    if auto_ack:  # inline: the client keeps its place (Last-Event-ID)
                        session.ack(batch.items[-1].position)
                if session.superseded or session.deleted:
                    code = "events.superseded" if session.superseded else "events.not_found"
                    yield f"event: error\ndata: {json.dumps({'code': code})}\n\n".encode()
            except LedgerError:  # this node's store failed a check: it quarantined itself
                yield b'event: error\ndata: {"code":"quarantined"}\n\n'
            finally:
                hub.release(session)

        _record(request, "allowed", "", "", b"")
        log.info(
            "audit",
            method=f"GET {request.url.path}",
            caller=getattr(request.state, "identity", "anonymous"),
            decision="allowed",
            transport="rest",
            stream="sse",
        )
        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/subscriptions/{name}/events",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def subscription_events(
        request: Request,
        name: str,
        window: Annotated[int, Query(ge=1, le=MAX_STREAM_WINDOW)] = 256,
        wait_s: Annotated[float | None, Query(ge=0, le=3600)] = None,
        authorization: AuthHeader = None,
    ) -> Any:
        """Server-Sent Events of a named subscription, after its checkpoint: ``id`` is the
        position ``h.t.i``, ``event`` the kind, ``data`` the item (JSON). Acknowledge with
        ``POST .../ack``; unacknowledged items come again on the next stream.
        ``wait_s``: end the stream once nothing new came for that long."""
        _, member = authenticate(request, authorization)
        allow("events.subscribe", member)
        hub = backend.events
        try:
            flt = hub.get(name, member.org).filter
            filter_access(flt, member)
            session = hub.open(StreamOpen(subscription=name, window=window), request.state.identity)
        except EventsError as exc:
            raise events_problem(exc) from exc
        session.transport = "sse"
        return sse(request, session, name, auto_ack=False, idle_s=wait_s)

    @app.get(
        "/v1/events",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def inline_events(
        request: Request,
        kind: Annotated[str, Query(pattern="^(events|transactions|blocks)$")] = "events",
        contracts: Annotated[str, Query(max_length=1024)] = "",
        names: Annotated[str, Query(max_length=1024)] = "",
        include_state: bool = False,
        after: Annotated[str, Query(pattern=r"^\d{1,18}\.-?\d{1,9}\.-?\d{1,9}$")] = "",
        wait_s: Annotated[float | None, Query(ge=0, le=3600)] = None,
        last_event_id: Annotated[
            str | None,
            Header(alias="Last-Event-ID", pattern=r"^\d{1,18}\.-?\d{1,9}\.-?\d{1,9}$"),
        ] = None,
        authorization: AuthHeader = None,
    ) -> Any:
        """Server-Sent Events without a subscription: the items after ``after`` (or the
        ``Last-Event-ID`` a reconnecting browser sends), filtered here. Nothing is kept on
        the node. ``contracts`` and ``names`` are comma-separated."""
        _, member = authenticate(request, authorization)
        flt = EventFilter(
            kind=kind,
            contracts=tuple(c for c in contracts.split(",") if c),
            names=tuple(n for n in names.split(",") if n),
            include_state=include_state,
        )
        filter_access(flt, member)
        resume = last_event_id or after
        position = tuple(int(x) for x in resume.split(".")) if resume else None
        try:
            session = backend.events.open(
                StreamOpen(filter=flt, after=position, window=MAX_STREAM_WINDOW),
                request.state.identity,
            )
        except EventsError as exc:
            raise events_problem(exc) from exc
        return sse(request, session, "", auto_ack=True, idle_s=wait_s)

    @app.websocket("/v1/subscriptions/{name}/ws")
    async def subscription_ws(websocket: WebSocket, name: str) -> None:
        """A named subscription over WebSocket: the client sends
        ``{"token": "..."}`` first (or an Authorization header), then
        ``{"ack": [h, t, i]}`` messages; the node sends ``{"items": [...], "tip": N}``."""
        await websocket.accept()
        hub = backend.events
        session: Session | None = None
        try:
            header = websocket.headers.get("authorization")
            if header is None:
                first = await asyncio.wait_for(websocket.receive_json(), timeout=30)
                header = f"Bearer {first.get('token', '')}" if isinstance(first, dict) else ""
            _, member = authenticate(websocket, header)
            allow("events.subscribe", member)
            flt = hub.get(name, member.org).filter
            filter_access(flt, member)
            session = hub.open(StreamOpen(subscription=name), websocket.state.identity)
            session.transport = "ws"
        except (Problem, EventsError, TimeoutError, ValueError, WebSocketDisconnect) as exc:
            refusal = events_problem(exc) if isinstance(exc, EventsError) else exc
            code = refusal.code if isinstance(refusal, Problem) else "malformed"
            with contextlib.suppress(Exception):
                await websocket.send_json({"error": code, "detail": str(refusal)})
                await websocket.close(code=1008)
            _record(websocket, "refused", code, "", b"", operation="WS events")
            return
        _record(websocket, "allowed", "", "", b"", operation="WS events")
        open_session = session

        async def read_acks() -> None:
            try:
                while True:
                    message = await websocket.receive_json()
                    position = message.get("ack") if isinstance(message, dict) else None
                    open_session.ack(position)
            except EventsError as exc:
                with contextlib.suppress(Exception):
                    await websocket.send_json({"error": exc.code, "detail": str(exc)})
            except (WebSocketDisconnect, ValueError, RuntimeError):
                pass
            open_session.close()

        reader = asyncio.get_running_loop().create_task(read_acks())
        try:
            async for batch in open_session.batches():
                await websocket.send_json(
                    {"items": [item_json(i, name) for i in batch.items], "tip": batch.tip}
                )
            if open_session.superseded:
                await websocket.send_json(
                    {"error": "events.superseded", "detail": "another consumer opened it"}
                )
            if open_session.deleted:
                await websocket.send_json(
                    {"error": "events.not_found", "detail": f"subscription {name!r} was deleted"}
                )
        except LedgerError:  # this node's store failed a check: it quarantined itself
            with contextlib.suppress(Exception):
                await websocket.send_json({"error": "quarantined", "detail": "use another node"})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            reader.cancel()
            hub.release(open_session)
            with contextlib.suppress(Exception):
                await websocket.close()

    return app


class _SizeLimit:
    """Refuse a request whose declared body is over MAX_REQUEST_BYTES (413), before the
    body is read. A plain ASGI middleware: Starlette's BaseHTTPMiddleware would cut
    streaming responses (Server-Sent Events) short."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_BYTES):
                response = _problem(
                    request, 413, "too_large", f"request body over {MAX_REQUEST_BYTES} bytes"
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


class SubscriptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["events", "transactions", "blocks"] = "events"
    contracts: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    names: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)
    include_state: bool = False
    start: Literal["oldest", "latest", "height"] = "latest"
    start_height: int = Field(0, ge=0, le=2**62)
    webhook_url: str = Field("", max_length=2048)
    webhook_secret: str = Field(
        "", max_length=256, description="Shared secret for the HMAC-SHA256 signature header."
    )
    max_attempts: int = Field(8, ge=1, le=100)
    after: list[Annotated[int, Field(ge=-1, le=2**62)]] | None = Field(
        None, min_length=3, max_length=3
    )

    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(
            name=self.name,
            filter=EventFilter(
                kind=self.kind,
                contracts=tuple(self.contracts),
                names=tuple(self.names),
                include_state=self.include_state,
            ),
            start=self.start,
            start_height=self.start_height,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret.encode(),
            max_attempts=self.max_attempts,
        )


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: list[Annotated[int, Field(ge=-1, le=2**62)]] = Field(min_length=3, max_length=3)


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: str = Field(
        max_length=2 * MAX_REQUEST_BYTES, description="base64 of the canonical Transaction."
    )
    signature: str = Field(max_length=256, description="base64 Ed25519 signature.")


_IDENTITY_REASONS = frozenset(
    {
        "unknown_identity",
        "unknown_ca",
        "certificate_expired",
        "wrong_role",
        "revoked",
        "bad_signature",
    }
)


def _status_json(status: TxStatusResponse) -> dict[str, Any]:
    return {
        "tx_id": status.tx_id.hex(),
        "state": status.state,
        "height": status.height,
        "tx_index": status.tx_index,
        "status": status.status,
        "result": jsonable(status.result),
        "message": status.message,
    }


class RestGateway:
    """Serves :func:`create_app` over HTTPS (TLS 1.2+, no client certificate asked)."""

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str,
        port: int,
        cert_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
    ) -> None:
        from kyodo.p2p import load_key_chain

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_key_chain(context, cert_pem, key)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            limit_concurrency=1024,
            # a request line and headers up to 64 KiB reach the application, which
            # refuses what is too long with a problem+json (the query limits are lower)
            h11_max_incomplete_event_size=64 * 1024,
        )
        config.load()
        config.ssl = context  # our context: the key never touches the disk in plaintext
        self._server = uvicorn.Server(config)
        # the node handles SIGTERM/SIGINT itself (graceful stop): uvicorn must not take them
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None
        self.address = f"{host}:{port}"

    async def start(self) -> None:
        """Start serving; return once the socket listens."""
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise OSError(f"REST gateway on {self.address} stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
