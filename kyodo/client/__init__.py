"""The Python SDK applications use to call contracts through a gateway."""

from kyodo.client._gateway import (
    Contract,
    Gateway,
    Identity,
    Network,
    SubmitResult,
    TlsCredentials,
    connect,
)
from kyodo.client._login import AccessToken, rest_call, rest_login
from kyodo.client._wallet import UserCredentials, load_user
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

__all__ = [
    "AccessDenied",
    "AccessToken",
    "Contract",
    "ContractFailed",
    "Gateway",
    "Identity",
    "KyodoError",
    "Network",
    "NotFinal",
    "NotFound",
    "SubmitResult",
    "TlsCredentials",
    "TransactionRejected",
    "Unauthenticated",
    "Unavailable",
    "UserCredentials",
    "connect",
    "load_user",
    "rest_call",
    "rest_login",
]
