"""How a contract is declared: a class of functions with typed parameters.

A contract is a subclass of :class:`Contract` with a ``name`` (its state
namespace) and methods marked with :func:`function`. Each takes ``self``,
then the :class:`Context`, then parameters annotated with ``int``, ``str``,
``bytes``, ``bool``, ``list`` or ``dict``; arguments are checked against them
before the function runs, so a contract never sees a wrongly typed value.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar, overload

from kyodo.contracts._sandbox import charge_current
from kyodo.contracts.errors import ArgumentError, ContractError
from kyodo.policy import Identity, Policy, PolicySyntaxError, Principal, evaluate, parse_policy

__all__ = [
    "Contract",
    "FunctionSpec",
    "check_rule",
    "function",
    "rule_matches",
    "sha256_hex",
    "specs_of",
]

_ALLOWED = {int: "int", str: "str", bytes: "bytes", bool: "bool", list: "list", dict: "dict"}
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSpec:
    """A contract function: name, parameters (name, type), whether it only reads.

    ``fn`` is the plain function; call it as ``fn(contract_instance, ctx, *args)``.
    """

    name: str
    fn: Callable[..., Any]
    params: tuple[tuple[str, type], ...]
    read_only: bool
    allow: tuple[str, ...] | None = None
    """Access rules (``org.role``, ``*`` matches any); None: the package's default."""
    returns: type | None = None
    """The declared return type (its outer type: ``dict`` for ``dict[str, Any]``;
    ``type(None)`` for ``None``); None when undeclared or ``Any``."""

    def check_result(self, value: Any) -> None:
        """Raise ContractError unless ``value`` is of the declared return type."""
        expected = self.returns
        if expected is None or type(value) is expected:
            return
        if expected is list and type(value) is tuple:
            return  # tuples become lists in the canonical model
        shown = "None" if expected is type(None) else _ALLOWED.get(expected, expected.__name__)
        raise ContractError(
            f"{self.name} is declared to return {shown} but returned {type(value).__name__}"
        )

    def check_args(self, args: tuple[Any, ...]) -> None:
        """Raise ArgumentError unless ``args`` match the declared parameters exactly."""
        if len(args) != len(self.params):
            expected = ", ".join(f"{n}: {_ALLOWED[t]}" for n, t in self.params)
            raise ArgumentError(
                f"{self.name} takes {len(self.params)} arguments ({expected}), got {len(args)}"
            )
        for (name, expected_type), value in zip(self.params, args, strict=True):
            if type(value) is not expected_type:
                raise ArgumentError(
                    f"argument {name!r} of {self.name} must be {_ALLOWED[expected_type]}, "
                    f"got {type(value).__name__}"
                )


@overload
def function(fn: F, /) -> F: ...


@overload
def function(
    *, read_only: bool = False, allow: tuple[str, ...] | list[str] | None = None
) -> Callable[[F], F]: ...


def function(
    fn: Any = None,
    /,
    *,
    read_only: bool = False,
    allow: tuple[str, ...] | list[str] | None = None,
) -> Any:
    """Mark a contract function.

    ``read_only=True`` for queries that write nothing; ``allow`` lists who may call
    it as ``org.role`` rules (``"*.admin"``: any organization's admins, ``"bank1.*"``:
    anyone of bank1, ``"*"``: every member). Without ``allow`` the package's default
    access applies (every member, unless the package says otherwise).
    """
    if type(read_only) is not bool:
        raise ArgumentError("read_only must be True or False")
    if allow is not None and not isinstance(allow, tuple | list):
        raise ArgumentError("allow must be a tuple of 'org.role' rules")
    rules = None if allow is None else tuple(check_rule(rule) for rule in allow)

    def mark(target: F) -> F:
        if not isinstance(target, types.FunctionType):
            raise ArgumentError("@function marks functions defined in the contract only")
        target.__kyodo_function__ = read_only  # type: ignore[attr-defined]
        target.__kyodo_allow__ = rules  # type: ignore[attr-defined]
        return target

    return mark(fn) if fn is not None else mark


def _outer_type(annotation: Any) -> Any:
    """``list`` for ``list[str]``, ``dict`` for ``dict[str, Any]``; else unchanged."""
    origin = typing.get_origin(annotation)
    return origin if origin in (list, dict) else annotation


def _return_type(annotation: Any) -> type | None:
    if annotation is None or annotation is type(None):
        return type(None)
    outer = _outer_type(annotation)
    return outer if outer in _ALLOWED else None


def check_rule(rule: Any) -> str:
    """``rule`` if it is a well-formed access rule; raise ArgumentError otherwise.

    A rule is ``'*'`` (every member), the shorthand ``org.role`` (``*`` for any part),
    or a policy of the policy language (``OR('org1.admin', 'org2.client')``).
    """
    if not isinstance(rule, str):
        raise ArgumentError(f"access rule {rule!r} must be a string 'org.role' or a policy")
    try:
        parse_rule(rule)
    except PolicySyntaxError as exc:
        raise ArgumentError(f"access rule {rule!r}: {exc}") from None
    return rule


@functools.lru_cache(maxsize=1024)
def parse_rule(rule: str) -> Policy:
    """The policy a rule stands for (raises PolicySyntaxError)."""
    if rule == "*":
        return Principal(org="*", role="*")
    if rule and rule[0] not in "'\"" and "(" not in rule:
        return parse_policy(f"'{rule}'")  # the org.role shorthand
    return parse_policy(rule)


def rule_matches(rule: str, org: str, role: str) -> bool:
    """Whether a caller of ``org`` with ``role`` satisfies ``rule``."""
    if rule == "*":  # the default of every function without rules: no evaluation needed
        return True
    return evaluate(parse_rule(rule), [Identity(org=org, role=role)]).allowed


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 of ``data`` (text is UTF-8 encoded) as lowercase hex."""
    if not isinstance(data, str | bytes):
        raise ArgumentError(f"sha256_hex takes str or bytes, not {type(data).__name__}")
    raw = data.encode() if isinstance(data, str) else data
    charge_current(len(raw) // 64)
    return hashlib.sha256(raw).hexdigest()


class Contract:
    """Base class of contracts; subclasses set ``name`` and declare functions.

    A contract keeps no state in the instance (it has only its ledger state,
    through the context); the executor creates one instance and reuses it.
    """

    name: ClassVar[str] = ""
    _specs: ClassVar[Mapping[str, FunctionSpec] | None] = None
    _kyodo_sandboxed: ClassVar[bool] = False
    """Set by the loader on classes compiled in the sandbox: their annotations are
    never evaluated from strings."""

    @classmethod
    def functions(cls) -> Mapping[str, FunctionSpec]:
        """The declared functions by name (a read-only mapping)."""
        return specs_of(cls)


def specs_of(cls: type[Contract]) -> Mapping[str, FunctionSpec]:
    """The declared functions of ``cls``, by name; what the executor calls through.

    Computed once per class and kept read-only: contract code reaches this mapping
    (``self.functions()``) and must not be able to change what the executor runs.
    """
    found = cls.__dict__.get("_specs")
    if found is None:
        found = MappingProxyType(_collect_specs(cls))
        cls._specs = found
    return found


def _collect_specs(cls: type[Contract]) -> dict[str, FunctionSpec]:
    sandboxed = bool(getattr(cls, "_kyodo_sandboxed", False))
    specs: dict[str, FunctionSpec] = {}
    for attr, member in inspect.getmembers(cls):
        read_only = getattr(member, "__kyodo_function__", None)
        if read_only is None or attr.startswith("_"):
            continue
        # Trusted built-ins use postponed (string) annotations; sandboxed code may not:
        # evaluating a string would run code the verifier never saw.
        hints = inspect.get_annotations(member, eval_str=not sandboxed)
        params = []
        for pname in list(inspect.signature(member).parameters)[2:]:
            ptype = _outer_type(hints.get(pname))
            if ptype not in _ALLOWED:
                raise TypeError(
                    f"{cls.__name__}.{attr}: parameter {pname} needs a type "
                    f"({', '.join(_ALLOWED.values())})"
                )
            params.append((pname, ptype))
        specs[attr] = FunctionSpec(
            name=attr,
            fn=member,
            params=tuple(params),
            read_only=read_only,
            allow=getattr(member, "__kyodo_allow__", None),
            returns=_return_type(hints.get("return", Any)),
        )
    return specs
