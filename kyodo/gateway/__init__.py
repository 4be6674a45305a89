"""The API gateway: gRPC service applications use to submit, evaluate and read."""

from kyodo.gateway._auth import (
    AuthContext,
    ReplayGuard,
    RequestRejectedError,
    check_request,
    request_id,
)
from kyodo.gateway._server import ERROR_TRAILER, GatewayBackend, GatewayError, GatewayServer

__all__ = [
    "ERROR_TRAILER",
    "AuthContext",
    "GatewayBackend",
    "GatewayError",
    "GatewayServer",
    "ReplayGuard",
    "RequestRejectedError",
    "check_request",
    "request_id",
]
