"""Executes a block's transactions deterministically and collects their writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kyodo.codec import EncodeError, decode_value, encode_value
from kyodo.contracts._context import (
    DELETED,
    Caller,
    Context,
    StateReader,
    TxOverlay,
    canonical,
)
from kyodo.contracts._sdk import Contract, FunctionSpec
from kyodo.contracts.errors import ContractError, UnknownContractError
from kyodo.ledger import CheckedTx, TxResult, TxStatus, split_state_key

__all__ = ["BlockExecution", "Executor"]

MAX_INVOKE_DEPTH = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockExecution:
    """The outcome of executing a block's transactions."""

    results: tuple[TxResult, ...]
    writes: dict[bytes, tuple[int, bytes, Any]]
    """state key -> (tx_index, tx_id, value or None) of its last write in the block."""
    history: list[tuple[bytes, int, bytes, Any]]
    """every write: (state key, tx_index, tx_id, value or None), in block order."""


class Executor:
    """Runs contract functions against state; the same input gives the same output."""

    def __init__(self, contracts: Mapping[str, type[Contract]]) -> None:
        self._contracts = dict(contracts)
        self._instances = {name: cls() for name, cls in self._contracts.items()}

    def contract_names(self) -> list[str]:
        """Names of the contracts this executor knows."""
        return sorted(self._contracts)

    def _spec(self, contract: str, function: str) -> FunctionSpec:
        cls = self._contracts.get(contract)
        if cls is None:
            raise UnknownContractError(f"no contract named {contract!r} is deployed")
        spec = cls.functions().get(function)
        if spec is None:
            raise UnknownContractError(f"contract {contract!r} has no function {function!r}")
        return spec

    def _call(
        self,
        overlay: TxOverlay,
        contract: str,
        function: str,
        args: tuple[Any, ...],
        *,
        caller: Caller,
        block_time_ms: int,
        height: int,
        tx_id: bytes,
        events: list[Any],
        depth: int = 0,
    ) -> Any:
        if depth > MAX_INVOKE_DEPTH:
            raise ContractError("contract invocations nested too deeply")
        if depth > 0 and contract.startswith("_"):
            raise ContractError(f"built-in contract {contract!r} cannot be invoked by a contract")
        spec = self._spec(contract, function)
        spec.check_args(args)

        def invoke(other: str, fn: str, other_args: tuple[Any, ...]) -> Any:
            return self._call(
                overlay,
                other,
                fn,
                tuple(other_args),
                caller=caller,
                block_time_ms=block_time_ms,
                height=height,
                tx_id=tx_id,
                events=events,
                depth=depth + 1,
            )

        ctx = Context(
            namespace=contract,
            overlay=overlay,
            caller=caller,
            block_time_ms=block_time_ms,
            height=height,
            tx_id=tx_id,
            invoke=invoke,
        )
        result = canonical(spec.fn(self._instances[contract], ctx, *args))
        events.extend(ctx.events)
        try:
            encode_value(result)
        except EncodeError as exc:
            raise ContractError(f"{function} returned a value that cannot be encoded") from exc
        return result

    def execute_block(
        self,
        state: StateReader,
        txs: Sequence[CheckedTx],
        *,
        height: int,
        block_time_ms: int,
    ) -> BlockExecution:
        """Execute ``txs`` in order over ``state``; nothing is written to ``state``."""
        block = TxOverlay(state)
        results: list[TxResult] = []
        history: list[tuple[bytes, int, bytes, Any]] = []
        last: dict[bytes, tuple[int, bytes, Any]] = {}
        for index, checked in enumerate(txs):
            tx = checked.tx
            overlay = TxOverlay(block)
            events: list[Any] = []
            caller = Caller(
                org=checked.creator.org, role=str(checked.creator.role), name=checked.creator.name
            )
            try:
                value = self._call(
                    overlay,
                    tx.contract,
                    tx.function,
                    tuple(tx.args),
                    caller=caller,
                    block_time_ms=block_time_ms,
                    height=height,
                    tx_id=checked.tx_id,
                    events=events,
                )
            except UnknownContractError as exc:
                results.append(_failed(checked, TxStatus.UNKNOWN_FUNCTION, str(exc)))
                continue
            except ContractError as exc:
                results.append(_failed(checked, TxStatus.CONTRACT_ERROR, str(exc)))
                continue
            except Exception as exc:  # a contract bug fails its transaction, not the chain
                message = f"contract raised {type(exc).__name__}: {exc}"
                results.append(_failed(checked, TxStatus.CONTRACT_ERROR, message))
                continue
            for state_key in sorted(overlay.writes):
                written = overlay.writes[state_key]
                block.writes[state_key] = written
                stored = None if written is DELETED else decode_value(written)  # type: ignore[arg-type]
                history.append((state_key, index, checked.tx_id, stored))
                last[state_key] = (index, checked.tx_id, stored)
            results.append(
                TxResult(
                    tx_id=checked.tx_id,
                    status=int(TxStatus.OK),
                    result=value,
                    message="",
                    events=tuple(events),
                )
            )
        return BlockExecution(results=tuple(results), writes=last, history=history)

    def evaluate(
        self,
        state: StateReader,
        checked: CheckedTx,
        *,
        height: int,
        block_time_ms: int,
    ) -> Any:
        """Run a function without keeping its writes (a query); raises ContractError."""
        tx = checked.tx
        caller = Caller(
            org=checked.creator.org, role=str(checked.creator.role), name=checked.creator.name
        )
        try:
            return self._call(
                TxOverlay(state),
                tx.contract,
                tx.function,
                tuple(tx.args),
                caller=caller,
                block_time_ms=block_time_ms,
                height=height,
                tx_id=checked.tx_id,
                events=[],
            )
        except ContractError:
            raise
        except Exception as exc:  # a contract bug is the contract's failure, not the node's
            raise ContractError(f"contract raised {type(exc).__name__}: {exc}") from exc


def _failed(checked: CheckedTx, status: TxStatus, message: str) -> TxResult:
    return TxResult(
        tx_id=checked.tx_id, status=int(status), result=None, message=message[:1000], events=()
    )


def describe_write(state_key: bytes) -> str:
    """``namespace/key`` of a state key, for messages."""
    namespace, key = split_state_key(state_key)
    return f"{namespace}/{key}"
