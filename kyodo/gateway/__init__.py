"""The API gateway: gRPC service applications use to submit, evaluate and read."""

from kyodo.gateway._auth import (
    AuthContext,
    ReplayGuard,
    RequestRejectedError,
    check_request,
    request_id,
)
from kyodo.gateway._limits import RateLimited, RateLimiter
from kyodo.gateway._rest import RestGateway, create_app
from kyodo.gateway._server import ERROR_TRAILER, GatewayBackend, GatewayError, GatewayServer
from kyodo.gateway._tokens import TokenClaims, TokenService

__all__ = [
    "ERROR_TRAILER",
    "AuthContext",
    "GatewayBackend",
    "GatewayError",
    "GatewayServer",
    "RateLimited",
    "RateLimiter",
    "ReplayGuard",
    "RequestRejectedError",
    "RestGateway",
    "TokenClaims",
    "TokenService",
    "check_request",
    "create_app",
    "request_id",
]
