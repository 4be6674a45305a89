"""How a contract is declared: a class of functions with typed parameters.

A contract is a subclass of :class:`Contract` with a ``name`` (its state
namespace) and methods marked with :func:`function`. Each takes ``self``,
then the :class:`Context`, then parameters annotated with ``int``, ``str``,
``bytes``, ``bool``, ``list`` or ``dict``; arguments are checked against them
before the function runs, so a contract never sees a wrongly typed value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

from kyodo.contracts.errors import ArgumentError

__all__ = ["Contract", "FunctionSpec", "function"]

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
def function(*, read_only: bool = False) -> Callable[[F], F]: ...


def function(fn: Any = None, /, *, read_only: bool = False) -> Any:
    """Mark a contract function (``read_only=True`` for queries that write nothing)."""

    def mark(target: F) -> F:
        target.__kyodo_function__ = read_only  # type: ignore[attr-defined]
        return target

    return mark(fn) if fn is not None else mark


class Contract:
    """Base class of contracts; subclasses set ``name`` and declare functions.

    A contract keeps no state in the instance (it has only its ledger state,
    through the context); the executor creates one instance and reuses it.
    """

    name: ClassVar[str] = ""
    _specs: ClassVar[dict[str, FunctionSpec] | None] = None

    @classmethod
    def functions(cls) -> dict[str, FunctionSpec]:
        """The declared functions by name."""
        if cls.__dict__.get("_specs") is None:
            specs: dict[str, FunctionSpec] = {}
            for attr, member in inspect.getmembers(cls):
                read_only = getattr(member, "__kyodo_function__", None)
                if read_only is None or attr.startswith("_"):
                    continue
                hints = inspect.get_annotations(member, eval_str=True)
                params = []
                for pname in list(inspect.signature(member).parameters)[2:]:
                    ptype = hints.get(pname)
                    if ptype not in _ALLOWED:
                        raise TypeError(f"{cls.__name__}.{attr}: parameter {pname} needs a type")
                    params.append((pname, ptype))
                specs[attr] = FunctionSpec(
                    name=attr, fn=member, params=tuple(params), read_only=read_only
                )
            cls._specs = specs
        specs_now: dict[str, FunctionSpec] | None = cls.__dict__["_specs"]
        assert specs_now is not None
        return specs_now
