"""Smart contract services: the contract SDK, the execution context, the executor."""

from kyodo.contracts._asset_transfer import AssetTransfer
from kyodo.contracts._audit import AUDIT_CONTRACT, AuditAnchorContract
from kyodo.contracts._config import ConfigContract
from kyodo.contracts._context import Caller, Context, StateReader, TxOverlay
from kyodo.contracts._executor import BlockExecution, Executor, load_package_class
from kyodo.contracts._lifecycle import ACTIONS, LifecycleContract, policy_digest
from kyodo.contracts._package import MAX_PACKAGE_BYTES, ContractPackage, decode_package
from kyodo.contracts._recovery import RecoveryContract
from kyodo.contracts._sandbox import Meter, SandboxLimits, Violation, check_source, metered
from kyodo.contracts._sdk import Contract, FunctionSpec, function, sha256_hex, specs_of
from kyodo.contracts.errors import (
    AccessDeniedError,
    ArgumentError,
    CodeRejectedError,
    ContractError,
    ContractTerminatedError,
    LifecycleError,
    PackageError,
    ResourceLimitExceeded,
    UnknownContractError,
)

BUILTIN_CONTRACTS: dict[str, type[Contract]] = {
    AssetTransfer.name: AssetTransfer,
    ConfigContract.name: ConfigContract,
    LifecycleContract.name: LifecycleContract,
    RecoveryContract.name: RecoveryContract,
    AuditAnchorContract.name: AuditAnchorContract,
}
"""Contracts built into every node (trusted code); others are deployed through
``_lifecycle`` and run sandboxed."""

__all__ = [
    "ACTIONS",
    "AUDIT_CONTRACT",
    "BUILTIN_CONTRACTS",
    "MAX_PACKAGE_BYTES",
    "AccessDeniedError",
    "ArgumentError",
    "AssetTransfer",
    "AuditAnchorContract",
    "BlockExecution",
    "Caller",
    "CodeRejectedError",
    "ConfigContract",
    "Context",
    "Contract",
    "ContractError",
    "ContractPackage",
    "ContractTerminatedError",
    "Executor",
    "FunctionSpec",
    "LifecycleContract",
    "LifecycleError",
    "Meter",
    "PackageError",
    "RecoveryContract",
    "ResourceLimitExceeded",
    "SandboxLimits",
    "StateReader",
    "TxOverlay",
    "UnknownContractError",
    "Violation",
    "check_source",
    "decode_package",
    "function",
    "load_package_class",
    "metered",
    "policy_digest",
    "sha256_hex",
    "specs_of",
]
