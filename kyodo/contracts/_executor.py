"""Executes a block's transactions deterministically and collects their writes.

Theory of operation
-------------------
A contract name resolves to a class in one of two ways: the built-in contracts
(trusted code shipped with the node: ``asset_transfer``, ``_config``,
``_lifecycle``), or a package deployed through ``_lifecycle``, whose definition
the executor reads from the committed state *under the block* (never from the
block's own writes), so a deployment, upgrade or termination takes effect from
the next block on and every transaction runs exactly one version. Deployed
packages are compiled in the sandbox once per package hash and cached.

Each transaction runs under its own :class:`Meter`. A transaction fails with
its reason recorded, and the chain goes on, when its contract refuses
(``CONTRACT_ERROR``), the contract or function is unknown, the caller's
organization and role match none of the function's access rules
(``ACCESS_DENIED``), the contract is terminated and the function is not
read-only (``CONTRACT_TERMINATED``), or a resource limit is exceeded
(``RESOURCE_LIMIT``, also when contract code swallowed the limit's exception).
"""

from __future__ import annotations

import queue
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from kyodo.codec import EncodeError, decode_value, encode, encode_value
from kyodo.contracts._context import (
    DELETED,
    Caller,
    Context,
    StateReader,
    TxOverlay,
    canonical,
    storable,
)
from kyodo.contracts._package import ContractPackage, decode_package
from kyodo.contracts._sandbox import DEFAULT_LIMITS, Meter, SandboxLimits, compile_contract, metered
from kyodo.contracts._sdk import Contract, FunctionSpec, rule_matches, specs_of
from kyodo.contracts.errors import (
    AccessDeniedError,
    ContractError,
    ContractTerminatedError,
    LifecycleError,
    PackageError,
    ResourceLimitExceeded,
    UnknownContractError,
)
from kyodo.ledger import CheckedTx, LedgerError, TxResult, TxStatus
from kyodo.policy import AccessRefused, AclTable, Identity

__all__ = ["BlockExecution", "Executor", "load_package_class"]

MAX_INVOKE_DEPTH = 8
MAX_RESULT_BYTES = 256 * 1024
"""Encoded size of one transaction's result (it is kept in the block)."""
EXECUTION_STACK_BYTES = 256 * 1024 * 1024
"""Stack of the execution threads: C code that recurses without a check (hashing a
nested tuple) must hit the sandbox's depth and step limits long before this."""
EXECUTION_THREADS = 4
"""Threads executions run on (the block executor and concurrent queries)."""
_INT_MAX_STR_DIGITS = 4300
_T = TypeVar("_T")
MAX_CACHED_PACKAGES = 64
LIFECYCLE = "_lifecycle"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockExecution:
    """The outcome of executing a block's transactions."""

    results: tuple[TxResult, ...]
    writes: dict[bytes, tuple[int, bytes, Any]]
    """state key -> (tx_index, tx_id, value or None) of its last write in the block."""
    history: list[tuple[bytes, int, bytes, Any]]
    """every write: (state key, tx_index, tx_id, value or None), in block order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Resolved:
    cls: type[Contract]
    active: bool
    access: tuple[str, ...]
    sandboxed: bool


def load_package_class(
    package: ContractPackage, limits: SandboxLimits = DEFAULT_LIMITS
) -> type[Contract]:
    """Compile ``package`` in the sandbox; its one Contract subclass, named as the package.

    Raises CodeRejectedError or PackageError.
    """
    namespace = compile_contract(package.source, package.filename, limits=limits)
    found = [
        value
        for value in namespace.values()
        if isinstance(value, type) and issubclass(value, Contract) and value is not Contract
    ]
    if len(found) != 1:
        raise PackageError(
            f"{package.filename} must define exactly one Contract subclass, found {len(found)}"
        )
    cls = found[0]
    cls.name = package.name  # the namespace is the package's name, whatever the class says
    cls._kyodo_sandboxed = True  # never evaluate its annotations from strings
    specs_of(cls)  # refuse badly annotated functions now, not at the first call
    return cls


class _Call:
    """One transaction's execution: its caller, block, meter and events."""

    def __init__(
        self,
        executor: Executor,
        resolve: Any,
        *,
        caller: Caller,
        block_time_ms: int,
        height: int,
        tx_id: bytes,
        members: tuple[str, ...],
        acl: AclTable | None = None,
        action: str = "submit",
    ) -> None:
        self.executor = executor
        self.acl = acl
        self.action = action
        """The network ACL and the action (submit, evaluate) it applies to invocations."""
        self.resolve = resolve
        self.caller = caller
        self.block_time_ms = block_time_ms
        self.height = height
        self.tx_id = tx_id
        self.members = members
        self.events: list[Any] = []
        self.ran_sandboxed = False
        """Whether deployed (untrusted) code ran in this transaction."""

    def context(
        self, overlay: TxOverlay, namespace: str, depth: int, *, trusted: bool = False
    ) -> Context:
        def invoke(other: str, fn: str, other_args: tuple[Any, ...]) -> Any:
            copied = tuple(storable(list(other_args), "the invoked function's arguments"))
            encode_value(list(copied))
            # The callee writes into its own overlay, kept only if it returns: a caller
            # that catches the callee's error does not keep the callee's partial writes.
            child = TxOverlay(overlay)
            result = self.call(child, other, fn, copied, depth=depth + 1)
            overlay.writes.update(child.writes)
            overlay.note_written(child.written_bytes)
            return result

        ctx = Context(
            namespace=namespace,
            overlay=overlay,
            caller=self.caller,
            block_time_ms=self.block_time_ms,
            height=self.height,
            tx_id=self.tx_id,
            invoke=invoke,
            members=self.members,
            system=_SystemHooks(self, overlay) if namespace == LIFECYCLE else None,
        )
        ctx._trusted = trusted  # never a constructor argument: contract code can construct
        return ctx

    def call(
        self, overlay: TxOverlay, contract: str, function: str, args: tuple[Any, ...], depth: int
    ) -> Any:
        if depth > MAX_INVOKE_DEPTH:
            raise ContractError("contract invocations nested too deeply")
        if depth > 0 and (contract.startswith("_") or contract in self.executor.builtin_names):
            raise ContractError(f"built-in contract {contract!r} cannot be invoked by a contract")
        resolved: _Resolved = self.resolve(contract)
        spec = _spec(resolved.cls, contract, function)
        if not resolved.active and not spec.read_only:
            raise ContractTerminatedError(
                f"contract {contract!r} is terminated: it answers queries only"
            )
        _check_access(spec, resolved.access, self.caller, contract)
        if depth > 0 and self.acl is not None:  # an invocation is a call like any other
            caller = self.caller
            try:
                self.acl.check(
                    f"{self.action}/{contract}/{function}",
                    Identity(org=caller.org, role=caller.role, name=caller.name),
                )
            except AccessRefused as exc:
                raise AccessDeniedError(str(exc), rule=exc.rule) from None
        spec.check_args(args)
        if not spec.read_only:
            return self.run(overlay, resolved.cls, contract, spec, args, depth)
        # A read-only function runs over a scratch overlay: if it wrote, it failed.
        scratch = TxOverlay(overlay)
        result = self.run(scratch, resolved.cls, contract, spec, args, depth)
        if scratch.writes:
            raise ContractError(f"{contract}.{function} is read-only but wrote state")
        return result

    def run(
        self,
        overlay: TxOverlay,
        cls: type[Contract],
        namespace: str,
        spec: FunctionSpec,
        args: tuple[Any, ...],
        depth: int,
    ) -> Any:
        trusted = not cls._kyodo_sandboxed
        self.ran_sandboxed = self.ran_sandboxed or not trusted
        ctx = self.context(overlay, namespace, depth, trusted=trusted)
        instance = self.executor.instance(cls)
        result = spec.fn(instance, ctx, *args)
        spec.check_result(result)
        result = canonical(result) if trusted else storable(result, f"the result of {spec.name}")
        self.events.extend(ctx._events)  # the executor's own record of what was emitted
        try:
            size = len(encode_value(result))
        except EncodeError as exc:
            raise ContractError(f"{spec.name} returned a value that cannot be encoded") from exc
        if size > MAX_RESULT_BYTES:
            raise ContractError(f"{spec.name} returned {size} bytes, over {MAX_RESULT_BYTES}")
        return result


class _SystemHooks:
    """What ``_lifecycle`` may do beyond a contract: load packages, run them once."""

    def __init__(self, call: _Call, overlay: TxOverlay) -> None:
        self._call = call
        self._overlay = overlay

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` is a built-in contract (packages may not take its name)."""
        return name in self._call.executor.contract_names()

    def run_once(self, package: ContractPackage, function: str, args: tuple[Any, ...]) -> Any:
        """Run ``function`` of ``package`` (if it has one; ``init`` is optional) in its
        namespace within this transaction, bypassing access rules."""
        cls = self._call.executor.package_class(package)
        spec = specs_of(cls).get(function)
        if spec is None:
            if function == "init":
                return None
            raise LifecycleError(f"{package.filename} has no function {function!r} to run")
        spec.check_args(args)
        return self._call.run(self._overlay, cls, package.name, spec, args, depth=1)


def _spec(cls: type[Contract], contract: str, function: str) -> FunctionSpec:
    spec = specs_of(cls).get(function)
    if spec is None:
        raise UnknownContractError(f"contract {contract!r} has no function {function!r}")
    return spec


def _check_access(
    spec: FunctionSpec, default: tuple[str, ...], caller: Caller, contract: str
) -> None:
    rules = spec.allow if spec.allow is not None else default
    if any(rule_matches(rule, caller.org, caller.role) for rule in rules):
        return
    shown = " or ".join(rules) if rules else "nobody"
    source = "function" if spec.allow is not None else "package default"
    raise AccessDeniedError(
        f"{contract}.{spec.name} allows {shown} ({source} rule); "
        f"caller {caller.org}.{caller.role} matches none",
        rule=shown,
    )


class _DeepStackPool:
    """Worker threads with a large stack, each running submitted calls from the same
    loop at the same stack depth (so recursion limits are met at the same point)."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        with _STACK_SIZE_LOCK:
            previous = threading.stack_size(EXECUTION_STACK_BYTES)
            try:
                for i in range(threads):
                    worker = threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
                    worker.start()
            finally:
                threading.stack_size(previous)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who decides
                future.set_exception(exc)

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        """Run ``fn(*args)`` on a worker; its future."""
        future: Future[_T] = Future()
        self._queue.put((lambda: fn(*args), future))
        return future


_STACK_SIZE_LOCK = threading.Lock()


class Executor:
    """Runs contract functions against state; the same input gives the same output."""

    def __init__(
        self, contracts: Mapping[str, type[Contract]], limits: SandboxLimits = DEFAULT_LIMITS
    ) -> None:
        self._builtins = dict(contracts)
        self._limits = limits
        self._instances = {cls: cls() for cls in self._builtins.values()}
        self._packages: OrderedDict[bytes, type[Contract]] = OrderedDict()
        self._package_lock = threading.Lock()
        self._workers = _DeepStackPool(EXECUTION_THREADS, "contracts")
        self._compiler = _DeepStackPool(1, "contract-compiler")
        """Every execution runs on one of these threads, at the same stack depth, so that
        Python's recursion limit (reached by C code walking deeply nested values) is hit
        at the same point on every node, whichever path (proposal, verification, query)
        asked for the execution."""
        # The int <-> text limit is process-wide and settable by the environment
        # (PYTHONINTMAXSTRDIGITS); pin it, so no node's environment decides a result.
        sys.set_int_max_str_digits(_INT_MAX_STR_DIGITS)

    def _at_fixed_depth(self, fn: Callable[[], _T]) -> _T:
        return self._workers.submit(fn).result()

    @property
    def builtin_names(self) -> frozenset[str]:
        """Names of the built-in contracts."""
        return frozenset(self._builtins)

    def contract_names(self) -> list[str]:
        """Names of the built-in contracts (deployed ones are in ``_lifecycle``'s state)."""
        return sorted(self._builtins)

    def instance(self, cls: type[Contract]) -> Contract:
        """The instance to call: shared for built-ins, fresh for sandboxed code."""
        shared = self._instances.get(cls)
        return shared if shared is not None else cls()

    def package_class(self, package: ContractPackage) -> type[Contract]:
        """The compiled class of ``package`` (cached by hash).

        Compiling runs the module's top-level code (decorators, constants), so it runs
        on its own thread at a fixed stack depth too: whether a package is compiled at
        its deployment, after a restart or by a query must not change what it does.
        """
        digest = package.package_hash()
        with self._package_lock:
            cls = self._packages.get(digest)
            if cls is not None:
                self._packages.move_to_end(digest)
                return cls
        cls = self._compiler.submit(load_package_class, package, self._limits).result()
        with self._package_lock:
            self._packages[digest] = cls
            while len(self._packages) > MAX_CACHED_PACKAGES:
                self._packages.popitem(last=False)
        return cls

    def _resolver(self, state: StateReader) -> Any:
        memo: dict[str, _Resolved] = {}

        def resolve(name: str) -> _Resolved:
            found = memo.get(name)
            if found is None:
                found = self._resolve(state, name)
                memo[name] = found
            return found

        return resolve

    def _resolve(self, state: StateReader, name: str) -> _Resolved:
        builtin = self._builtins.get(name)
        if builtin is not None:
            return _Resolved(cls=builtin, active=True, access=("*",), sandboxed=False)
        entry = state.get_state(LIFECYCLE, f"definition/{name}") if name else None
        if entry is None or entry.value.get("status") not in ("active", "terminated"):
            raise UnknownContractError(f"no contract named {name!r} is deployed")
        definition = entry.value
        stored = state.get_state(LIFECYCLE, f"package/{definition['hash']}")
        if stored is None:
            raise AssertionError(f"definition of {name} points to a package not in state")
        package = decode_package(stored.value)
        return _Resolved(
            cls=self.package_class(package),
            active=definition["status"] == "active",
            access=tuple(package.access),
            sandboxed=True,
        )

    def describe(self, state: StateReader, name: str) -> dict[str, Any]:
        """A contract as callers see it: kind, whether it takes transactions, and each
        function's parameters, read-only flag and access rule (UnknownContractError)."""
        resolved = self._resolve(state, name)
        functions = [
            {
                "name": fn,
                "params": [{"name": p, "type": t.__name__} for p, t in spec.params],
                "read_only": spec.read_only,
                "allow": list(spec.allow) if spec.allow is not None else list(resolved.access),
            }
            for fn, spec in sorted(specs_of(resolved.cls).items())
        ]
        return {
            "name": name,
            "kind": "deployed" if resolved.sandboxed else "builtin",
            "active": resolved.active,
            "functions": functions,
        }

    def execute_block(
        self,
        state: StateReader,
        txs: Sequence[CheckedTx],
        *,
        height: int,
        block_time_ms: int,
        members: tuple[str, ...] = (),
        cut_at_block_budget: bool = False,
        acl: AclTable | None = None,
    ) -> BlockExecution:
        """Execute ``txs`` in order over ``state``; nothing is written to ``state``.

        With ``cut_at_block_budget`` (a proposer building a block), execution stops
        after the transaction that brings the steps spent to the limits'
        ``max_block_steps``; ``results`` then covers a prefix of ``txs``, which is
        what the block carries. With ``acl``, a transaction whose creator the rule for
        ``submit/<contract>/<function>`` refuses fails with ACCESS_DENIED.
        """
        trap = _FaultTrap(state)
        execution = self._at_fixed_depth(
            lambda: self._execute_block(
                trap, txs, height, block_time_ms, members, cut_at_block_budget, acl
            )
        )
        trap.raise_if_faulted()
        return execution

    def _execute_block(
        self,
        state: StateReader,
        txs: Sequence[CheckedTx],
        height: int,
        block_time_ms: int,
        members: tuple[str, ...],
        cut_at_block_budget: bool,
        acl: AclTable | None,
    ) -> BlockExecution:
        block = TxOverlay(state)
        resolve = self._resolver(state)
        results: list[TxResult] = []
        history: list[tuple[bytes, int, bytes, Any]] = []
        last: dict[bytes, tuple[int, bytes, Any]] = {}
        spent = 0
        for index, checked in enumerate(txs):
            if cut_at_block_budget and spent >= self._limits.max_block_steps:
                break
            refusal = _acl_refusal(acl, "submit", checked)
            if refusal is not None:
                results.append(_failed(checked, TxStatus.ACCESS_DENIED, refusal[1]))
                continue
            overlay = TxOverlay(block)
            call = self._new_call(resolve, checked, height, block_time_ms, members, acl)
            status, value, message, steps = self._run_tx(call, overlay, checked)
            spent += steps
            if status is not TxStatus.OK:
                results.append(_failed(checked, status, message))
                continue
            done = TxResult(
                tx_id=checked.tx_id,
                status=int(TxStatus.OK),
                result=value,
                message="",
                events=tuple(call.events),
            )
            try:
                if call.ran_sandboxed:
                    encode(done)  # it goes into the block: prove now that it can
            except Exception:  # a contract found a value we failed to refuse earlier
                results.append(
                    _failed(checked, TxStatus.CONTRACT_ERROR, "the result cannot be recorded")
                )
                continue
            for state_key in sorted(overlay.writes):
                written = overlay.writes[state_key]
                block.writes[state_key] = written
                stored = None if written is DELETED else decode_value(written)  # type: ignore[arg-type]
                history.append((state_key, index, checked.tx_id, stored))
                last[state_key] = (index, checked.tx_id, stored)
            results.append(done)
        return BlockExecution(results=tuple(results), writes=last, history=history)

    def _new_call(
        self,
        resolve: Any,
        checked: CheckedTx,
        height: int,
        block_time_ms: int,
        members: tuple[str, ...],
        acl: AclTable | None = None,
        action: str = "submit",
    ) -> _Call:
        creator = checked.creator
        return _Call(
            self,
            resolve,
            caller=Caller(org=creator.org, role=str(creator.role), name=creator.name),
            block_time_ms=block_time_ms,
            height=height,
            tx_id=checked.tx_id,
            members=tuple(sorted(members)),
            acl=acl,
            action=action,
        )

    def _run_tx(
        self, call: _Call, overlay: TxOverlay, checked: CheckedTx
    ) -> tuple[TxStatus, Any, str, int]:
        """(status, result, failure message, steps spent) of one transaction."""
        tx = checked.tx
        meter = Meter(self._limits)
        outcome: tuple[TxStatus, Any, str]
        try:
            with metered(meter):
                value = call.call(overlay, tx.contract, tx.function, tuple(tx.args), depth=0)
            outcome = TxStatus.OK, value, ""
        except ResourceLimitExceeded as exc:
            outcome = TxStatus.RESOURCE_LIMIT, None, str(exc)
        except MemoryError:
            outcome = TxStatus.RESOURCE_LIMIT, None, "out of memory"
        except RecursionError:  # reached at the same depth everywhere: _at_fixed_depth
            outcome = TxStatus.RESOURCE_LIMIT, None, "recursion too deep"
        except Exception as exc:  # a contract's failure fails its transaction, not the chain
            outcome = _classify(exc), None, _describe(exc)
        if meter.exhausted is not None:  # even if the contract swallowed the exception
            outcome = TxStatus.RESOURCE_LIMIT, None, meter.exhausted
        spent = min(self._limits.max_steps, self._limits.max_steps - meter.steps_left)
        return (*outcome, spent)

    def evaluate(
        self,
        state: StateReader,
        checked: CheckedTx,
        *,
        height: int,
        block_time_ms: int,
        members: tuple[str, ...] = (),
        acl: AclTable | None = None,
    ) -> Any:
        """Run a function without keeping its writes (a query); raise ContractError
        (UnknownContractError, AccessDeniedError, ...) if it fails. With ``acl``, the
        rule for ``evaluate/<contract>/<function>`` must allow the creator."""
        refusal = _acl_refusal(acl, "evaluate", checked)
        if refusal is not None:
            raise AccessDeniedError(refusal[1], rule=refusal[0])
        trap = _FaultTrap(state)
        try:
            value = self._at_fixed_depth(
                lambda: self._evaluate(trap, checked, height, block_time_ms, members, acl)
            )
        finally:
            trap.raise_if_faulted()  # a storage fault outranks whatever the contract did
        return value

    def _evaluate(
        self,
        state: StateReader,
        checked: CheckedTx,
        height: int,
        block_time_ms: int,
        members: tuple[str, ...],
        acl: AclTable | None = None,
    ) -> Any:
        call = self._new_call(
            self._resolver(state), checked, height, block_time_ms, members, acl, "evaluate"
        )
        tx = checked.tx
        meter = Meter(self._limits)
        try:
            with metered(meter):
                value = call.call(
                    TxOverlay(state), tx.contract, tx.function, tuple(tx.args), depth=0
                )
        except ResourceLimitExceeded as exc:
            raise ContractError(f"resource limit: {exc}") from None
        except MemoryError:
            raise ContractError("resource limit: out of memory") from None
        except RecursionError:
            raise ContractError("resource limit: recursion too deep") from None
        except ContractError as exc:
            if meter.exhausted is not None:
                raise ContractError(f"resource limit: {meter.exhausted}") from None
            exc.args = (_describe(exc),)
            raise
        except Exception as exc:
            raise ContractError(_describe(exc)) from exc
        if meter.exhausted is not None:
            raise ContractError(f"resource limit: {meter.exhausted}")
        return value


class _FaultTrap:
    """The state as contracts read it, remembering the first storage fault.

    A read that fails because this node's own store is corrupt must fail the whole
    block (or query), never just the transaction: a contract could catch the error,
    and recording a failure the other validators did not see would fork the state.
    """

    def __init__(self, state: StateReader) -> None:
        self._state = state
        self.fault: LedgerError | None = None

    def _guard(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except LedgerError as exc:
            if self.fault is None:
                self.fault = exc
            raise

    def get_state(self, namespace: str, key: str) -> Any:
        return self._guard(lambda: self._state.get_state(namespace, key))

    def iter_state(self, namespace: str, start: str = "", end: str | None = None) -> Any:
        items = self._guard(lambda: iter(self._state.iter_state(namespace, start, end)))
        while True:
            try:
                item = self._guard(lambda: next(items, None))
            except LedgerError:
                raise
            if item is None:
                return
            yield item

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> Any:
        return self._guard(lambda: self._state.get_history(namespace, key, limit=limit))

    def raise_if_faulted(self) -> None:
        if self.fault is not None:
            raise self.fault


def _acl_refusal(acl: AclTable | None, action: str, checked: CheckedTx) -> tuple[str, str] | None:
    """(the rule, why) if the ACL refuses ``action`` of this transaction, else None."""
    if acl is None:
        return None
    creator, tx = checked.creator, checked.tx
    try:
        acl.check(
            f"{action}/{tx.contract}/{tx.function}",
            Identity(org=creator.org, role=str(creator.role), name=creator.name),
        )
    except AccessRefused as exc:
        return exc.rule, str(exc)
    return None


_STATUS_OF: tuple[tuple[type[Exception], TxStatus], ...] = (
    (UnknownContractError, TxStatus.UNKNOWN_FUNCTION),
    (AccessDeniedError, TxStatus.ACCESS_DENIED),
    (ContractTerminatedError, TxStatus.CONTRACT_TERMINATED),
)


def _classify(exc: Exception) -> TxStatus:
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return status
    return TxStatus.CONTRACT_ERROR


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")
_MESSAGE_CHARS = 1000


def _describe(exc: BaseException) -> str:
    """The failure message kept in the block: the same on every node.

    Only text arguments are shown (rendering an arbitrary object could recurse or
    take exponential time), cut short, with memory addresses blanked and anything
    that is not valid Unicode replaced.
    """
    try:
        if all(isinstance(a, str) for a in exc.args):
            detail = ", ".join(a[:_MESSAGE_CHARS] for a in exc.args)[:_MESSAGE_CHARS]
        else:
            detail = "(the error's message is not text)"
        kind = type(exc).__name__
        text = detail if isinstance(exc, ContractError) else f"contract raised {kind}: {detail}"
        return _clean(text)
    except Exception:  # describing must never fail the node
        return "contract failed (its error could not be described)"


def _clean(text: str) -> str:
    text = _ADDRESS.sub("0x?", text[:_MESSAGE_CHARS])
    return text.encode("utf-8", "replace").decode("utf-8")


def _failed(checked: CheckedTx, status: TxStatus, message: str) -> TxResult:
    return TxResult(
        tx_id=checked.tx_id, status=int(status), result=None, message=_clean(message), events=()
    )
