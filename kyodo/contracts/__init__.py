"""Smart contract services: the contract SDK, the execution context, the executor."""

from kyodo.contracts._asset_transfer import AssetTransfer
from kyodo.contracts._config import ConfigContract
from kyodo.contracts._context import Caller, Context, StateReader, TxOverlay
from kyodo.contracts._executor import BlockExecution, Executor
from kyodo.contracts._sdk import Contract, FunctionSpec, function, sha256_hex
from kyodo.contracts.errors import ArgumentError, ContractError, UnknownContractError

BUILTIN_CONTRACTS: dict[str, type[Contract]] = {
    AssetTransfer.name: AssetTransfer,
    ConfigContract.name: ConfigContract,
}
"""Contracts every node runs (deployment through governance comes with issue 4)."""

__all__ = [
    "BUILTIN_CONTRACTS",
    "ArgumentError",
    "AssetTransfer",
    "BlockExecution",
    "Caller",
    "ConfigContract",
    "Context",
    "Contract",
    "ContractError",
    "Executor",
    "FunctionSpec",
    "StateReader",
    "TxOverlay",
    "UnknownContractError",
    "function",
    "sha256_hex",
]
