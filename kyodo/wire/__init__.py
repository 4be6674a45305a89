"""Wire formats shared by nodes and applications: transactions, results, gateway calls."""

from kyodo.wire._gateway import (
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
    TxRequest,
    TxResponse,
    TxStatusResponse,
)
from kyodo.wire._tx import (
    Event,
    Transaction,
    TxEnvelope,
    TxId,
    TxResult,
    TxStatus,
    compute_tx_id,
)

__all__ = [
    "GATEWAY_SERVICE",
    "MAX_REQUEST_BYTES",
    "BlockRequest",
    "BlockResponse",
    "ConfigResponse",
    "ErrorBody",
    "EvaluateResponse",
    "Event",
    "NodeStatus",
    "StatusRequest",
    "SubmitRequest",
    "Transaction",
    "TxEnvelope",
    "TxId",
    "TxRequest",
    "TxResponse",
    "TxResult",
    "TxStatus",
    "TxStatusResponse",
    "compute_tx_id",
]
