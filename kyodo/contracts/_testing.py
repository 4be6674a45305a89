"""An in-process ledger for contract authors' tests (``kyodo.contract.testing``).

It runs the node's own executor, sandbox and ``_lifecycle`` contract over a
state kept in memory: a contract is deployed by the same approve-then-commit
transactions a network would run, every ``submit`` is one block, and failures
carry the status and message a client would receive. What it does not have:
consensus, signatures, the gateway; those are the network's, and a contract
cannot tell the difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

from kyodo.codec import decode_value, encode, encode_value
from kyodo.contracts._executor import BlockExecution, Executor
from kyodo.contracts._lifecycle import LifecycleContract
from kyodo.contracts._package import ContractPackage
from kyodo.contracts._sandbox import DEFAULT_LIMITS, SandboxLimits
from kyodo.contracts._sdk import Contract
from kyodo.identity import Member, Role
from kyodo.ledger import (
    CheckedTx,
    HistoryEntry,
    StateEntry,
    Transaction,
    TxEnvelope,
    TxId,
    TxResult,
    TxStatus,
    split_state_key,
)
from kyodo.policy import AclTable

__all__ = ["Call", "InMemoryState", "LocalLedger", "TxFailed"]

_CHAIN_ID = "kyodo-contract-test"


class TxFailed(Exception):
    """A transaction the test submitted failed; ``status`` says how, the message why."""

    def __init__(self, status: TxStatus, message: str) -> None:
        super().__init__(f"{status.name.lower()}: {message}")
        self.status = status
        self.reason = message


class InMemoryState:
    """Committed state and history, read like the node's store."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], StateEntry] = {}
        self.history: dict[tuple[str, str], list[HistoryEntry]] = {}

    def get_state(self, namespace: str, key: str) -> StateEntry | None:
        entry = self.entries.get((namespace, key))
        return None if entry is None else _fresh(entry)

    def iter_state(
        self, namespace: str, start: str = "", end: str | None = None
    ) -> Iterator[tuple[str, StateEntry]]:
        keys = sorted((k for ns, k in self.entries if ns == namespace), key=str.encode)
        for key in keys:
            raw = key.encode()
            if raw < start.encode() or (end is not None and raw >= end.encode()):
                continue
            yield key, _fresh(self.entries[(namespace, key)])

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> list[HistoryEntry]:
        return [
            HistoryEntry(
                height=h.height,
                tx_index=h.tx_index,
                tx_id=h.tx_id,
                value=None if h.value is None else decode_value(encode_value(h.value)),
            )
            for h in self.history.get((namespace, key), [])[:limit]
        ]

    def apply(self, height: int, execution: BlockExecution) -> None:
        """Apply a block's writes and history, as the store does when it appends."""
        for state_key, index, tx_id, value in execution.history:
            where = split_state_key(state_key)
            self.history.setdefault(where, []).append(
                HistoryEntry(height=height, tx_index=index, tx_id=tx_id, value=value)
            )
        for state_key, (index, _tx_id, value) in execution.writes.items():
            where = split_state_key(state_key)
            if value is None:
                self.entries.pop(where, None)
            else:
                self.entries[where] = StateEntry(value=value, height=height, tx_index=index)


def _fresh(entry: StateEntry) -> StateEntry:
    """A copy whose value a reader may mutate freely, as the store's decoded reads are."""
    copy = decode_value(encode_value(entry.value))
    return StateEntry(value=copy, height=entry.height, tx_index=entry.tx_index)


@dataclass(frozen=True, slots=True)
class Call:
    """One call in a block: who calls which function of which contract."""

    caller: Member
    contract: str
    function: str
    args: tuple[Any, ...] = ()


class LocalLedger:
    """A ledger in one process for testing contracts; see the module docstring."""

    def __init__(
        self,
        orgs: Sequence[str] = ("org1", "org2", "org3"),
        *,
        limits: SandboxLimits = DEFAULT_LIMITS,
        start_ms: int = 1_767_225_600_000,
        builtins: Mapping[str, type[Contract]] | None = None,
        acls: Mapping[str, str] | None = None,
    ) -> None:
        self.orgs = tuple(sorted(orgs))
        self.acl = AclTable((acls or {}).items())
        """The network's access rules (the defaults, overridden by ``acls``)."""
        self.state = InMemoryState()
        contracts: dict[str, type[Contract]] = {LifecycleContract.name: LifecycleContract}
        contracts.update(builtins or {})
        self.executor = Executor(contracts, limits)
        self.height = 0
        self.block_time_ms = start_ms
        """The timestamp of the next block (``advance`` moves it)."""
        self._nonce = count()

    # -- identities

    def member(self, org: str, name: str = "user1", role: str = "client") -> Member:
        """An identity of ``org`` with ``role`` (client, admin, auditor)."""
        digest = hashlib.sha256(f"{org}/{role}/{name}".encode()).digest()
        return Member(
            org=org,
            role=Role(role),
            name=name,
            fingerprint=digest,
            public_key=digest,
            not_after=datetime.now(UTC) + timedelta(days=365),
        )

    def admin(self, org: str) -> Member:
        """``org``'s admin."""
        return self.member(org, "admin", "admin")

    # -- blocks

    def advance(self, ms: int) -> None:
        """Move the clock the next block will carry."""
        self.block_time_ms += ms

    def block(self, calls: Sequence[Call]) -> list[TxResult]:
        """Execute ``calls`` as one block, in order; return every result."""
        self.height += 1
        checked = [self._checked(c) for c in calls]
        execution = self.executor.execute_block(
            self.state,
            checked,
            height=self.height,
            block_time_ms=self.block_time_ms,
            members=self.orgs,
            acl=self.acl,
        )
        self.state.apply(self.height, execution)
        self.block_time_ms += 1000
        return list(execution.results)

    def submit(self, caller: Member, contract: str, function: str, *args: Any) -> Any:
        """Submit one transaction in its own block; its result, or raise TxFailed."""
        (result,) = self.block([Call(caller, contract, function, tuple(args))])
        if result.status != TxStatus.OK:
            raise TxFailed(TxStatus(result.status), result.message)
        return result.result

    def query(self, caller: Member, contract: str, function: str, *args: Any) -> Any:
        """Evaluate a function against committed state (nothing is written)."""
        return self.executor.evaluate(
            self.state,
            self._checked(Call(caller, contract, function, tuple(args))),
            height=self.height,
            block_time_ms=self.block_time_ms,
            members=self.orgs,
            acl=self.acl,
        )

    def get(self, contract: str, key: str) -> Any:
        """A key's committed value (None if absent)."""
        entry = self.state.get_state(contract, key)
        return None if entry is None else entry.value

    def history(self, contract: str, key: str) -> list[HistoryEntry]:
        """A key's committed writes, oldest first."""
        return self.state.get_history(contract, key)

    # -- lifecycle

    def deploy(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        init_args: Sequence[Any] = (),
        migrate: str = "",
        access: Sequence[str] = ("*",),
    ) -> ContractPackage:
        """Deploy (or upgrade, if ``name`` exists) through approvals of every org."""
        path = Path(source) if not isinstance(source, str) or "\n" not in source else None
        text = path.read_text() if path is not None else str(source)
        filename = path.name if path is not None else f"{name}.py"
        package = ContractPackage(
            name=name or (path.stem if path is not None else "contract"),
            version=version,
            filename=filename,
            source=text,
            init_args=tuple(init_args),
            migrate=migrate,
            access=tuple(access),
        )
        definition = self.state.get_state("_lifecycle", f"definition/{package.name}")
        sequence = 1 if definition is None else int(definition.value["sequence"]) + 1
        action = "deploy" if definition is None else "upgrade"
        digest = package.package_hash()
        for org in self.orgs:
            self.submit(
                self.admin(org), "_lifecycle", "approve", package.name, sequence, action, digest
            )
        self.submit(self.admin(self.orgs[0]), "_lifecycle", "commit", encode(package))
        return package

    def _checked(self, call: Call) -> CheckedTx:
        transaction = Transaction(
            chain_id=_CHAIN_ID,
            contract=call.contract,
            function=call.function,
            args=tuple(call.args),
            nonce=next(self._nonce).to_bytes(16, "big"),
            created_ms=self.block_time_ms,
            creator=f"{call.caller.org}/{call.caller.name}".encode(),
        )
        payload = encode(transaction)
        return CheckedTx(
            tx_id=TxId(hashlib.sha256(payload).digest()),
            envelope=TxEnvelope(payload=payload, signature=b""),
            tx=transaction,
            creator=call.caller,
        )
