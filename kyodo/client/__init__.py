"""The Python SDK applications use to call contracts through a gateway.

Two flavours with the same shape: :func:`connect` (blocking) and
:func:`kyodo.client.aio.connect` (asyncio).
"""

from kyodo.client._events import (
    Checkpointer,
    FileCheckpointer,
    LedgerEvent,
    SqliteCheckpointer,
    Subscription,
)
from kyodo.client._gateway import (
    Commit,
    Contract,
    EventStream,
    Gateway,
    Identity,
    Network,
    SubmitResult,
    TlsCredentials,
    TxState,
    connect,
)
from kyodo.client._login import AccessToken, rest_call, rest_login
from kyodo.client._wallet import UserCredentials, load_user
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

__all__ = [
    "AccessDenied",
    "AccessToken",
    "Checkpointer",
    "Commit",
    "Conflict",
    "Contract",
    "ContractFailed",
    "EventStream",
    "FileCheckpointer",
    "Gateway",
    "Identity",
    "InvalidRequest",
    "KyodoError",
    "LedgerEvent",
    "Network",
    "NotFinal",
    "NotFound",
    "RateLimited",
    "SqliteCheckpointer",
    "StreamSuperseded",
    "SubmitResult",
    "Subscription",
    "TlsCredentials",
    "TransactionRejected",
    "TxState",
    "Unauthenticated",
    "Unavailable",
    "UserCredentials",
    "connect",
    "load_user",
    "rest_call",
    "rest_login",
]
