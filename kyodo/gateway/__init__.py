"""The API gateway: gRPC service applications use to submit, evaluate and read."""

from kyodo.gateway._server import ERROR_TRAILER, GatewayBackend, GatewayError, GatewayServer

__all__ = ["ERROR_TRAILER", "GatewayBackend", "GatewayError", "GatewayServer"]
