"""Canonical encoding of every structure Kyodo signs, hashes or sends.

Theory of operation
-------------------
Everything signed or hashed must have exactly one byte representation, or two
nodes could disagree on a hash, or an attacker could re-encode a signed
message. Kyodo uses deterministically encoded CBOR (RFC 8949 section 4.2.1:
shortest integer forms, definite lengths, map keys sorted by their encoded
bytes), produced by the `cbor2` library's ``canonical`` mode. What is written
here by hand is only what cbor2 does not do:

* a **restricted value model**: ``None``, ``bool``, ``int`` (64-bit range),
  ``bytes``, ``str``, lists and maps with string keys. No floats (they are not
  deterministic across platforms once arithmetic is involved), no tags;
* a **canonical check on decode**: decoded values are re-encoded and must give
  back the input bytes exactly, otherwise :class:`NonCanonicalError`;
* **records**: frozen dataclasses registered with :func:`record` encode as the
  array ``[tag, version, field_1, ..., field_n]`` in declaration order, with
  field types taken from the annotations, and decode back strictly (a field of
  the wrong type is a :class:`DecodeError` naming the path).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import cbor2

from kyodo.codec.errors import DecodeError, EncodeError, NonCanonicalError

__all__ = [
    "MAX_DEPTH",
    "decode",
    "decode_record",
    "decode_value",
    "encode",
    "encode_value",
    "record",
    "record_class",
    "to_plain",
]

MAX_DEPTH = 32
"""Deepest nesting accepted in a decoded value (bounds recursion on hostile input)."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

R = TypeVar("R")
_ToPlain = Callable[[Any], Any]
_FromPlain = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    cls: type
    tag: int
    version: int
    names: tuple[str, ...]
    to_plain: tuple[_ToPlain, ...]
    from_plain: tuple[_FromPlain, ...]


_BY_TAG: dict[int, type] = {}
_PLANS: dict[type, _Plan] = {}


def record(tag: int, version: int = 1) -> Callable[[type[R]], type[R]]:
    """Register a frozen dataclass as a canonically encoded record type.

    ``tag`` is unique across Kyodo (it lets a decoder tell message types apart);
    ``version`` changes whenever the field list changes.
    """

    def register(cls: type[R]) -> type[R]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if tag in _BY_TAG and _BY_TAG[tag] is not cls:
            raise TypeError(f"record tag {tag} already used by {_BY_TAG[tag].__name__}")
        _BY_TAG[tag] = cls
        cls.__kyodo_record__ = (tag, version)  # type: ignore[attr-defined]
        return cls

    return register


def record_class(tag: int) -> type | None:
    """The record type registered under ``tag``, or None."""
    return _BY_TAG.get(tag)


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        tag, version = cls.__kyodo_record__  # type: ignore[attr-defined]
        hints = get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        names = tuple(f.name for f in fields)
        convs = [_compile(hints[f.name]) for f in fields]
        plan = _Plan(
            cls=cls,
            tag=tag,
            version=version,
            names=names,
            to_plain=tuple(c[0] for c in convs),
            from_plain=tuple(c[1] for c in convs),
        )
        _PLANS[cls] = plan
    return plan


def _identity(value: Any) -> Any:
    return value


def _check_int(value: Any, path: str) -> int:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise DecodeError(f"expected a 64-bit integer, got {type(value).__name__}", path=path)
    return value


def _checker(expected: type) -> _FromPlain:
    def check(value: Any, path: str) -> Any:
        if type(value) is not expected:
            raise DecodeError(
                f"expected {expected.__name__}, got {type(value).__name__}", path=path
            )
        return value

    return check


def _encoding(check: _FromPlain) -> _ToPlain:
    """An encoder-side converter that applies the decoder's check, as an EncodeError.

    Encoding refuses exactly what decoding would refuse, so no record can be
    written that its readers cannot read back.
    """

    def to_plain(value: Any) -> Any:
        try:
            return check(value, "")
        except DecodeError as exc:
            raise EncodeError(str(exc)) from exc

    return to_plain


def _compile(tp: Any) -> tuple[_ToPlain, _FromPlain]:
    """Converters (to plain value, from plain value) for a field annotation."""
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:  # typing.NewType
        return _compile(supertype)
    if tp is int:
        return _encoding(_check_int), _check_int
    if tp in (bytes, str, bool):
        return _encoding(_checker(tp)), _checker(tp)
    if tp is type(None) or tp is None:
        return _encoding(_checker(type(None))), _checker(type(None))
    if tp is Any or tp is object:
        return _encoding(_check_value), _check_value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _compile_union(get_args(tp))
    if origin is tuple:
        return _compile_tuple(get_args(tp))
    if origin is dict:
        key_t, value_t = get_args(tp)
        if key_t is not str:
            raise TypeError("record maps must have str keys")
        return _compile_dict(value_t)
    if isinstance(tp, type) and hasattr(tp, "__kyodo_record__"):
        return _record_to_plain, lambda value, path: _from_plain_record(tp, value, path)
    raise TypeError(f"unsupported field type {tp!r}")


def _compile_union(args: tuple[Any, ...]) -> tuple[_ToPlain, _FromPlain]:
    non_none = [a for a in args if a is not type(None)]
    if len(non_none) != 1 or len(args) != 2:
        raise TypeError("only `X | None` unions are supported in records")
    to_inner, from_inner = _compile(non_none[0])

    def to_plain(value: Any) -> Any:
        return None if value is None else to_inner(value)

    def from_plain(value: Any, path: str) -> Any:
        return None if value is None else from_inner(value, path)

    return to_plain, from_plain


def _compile_tuple(args: tuple[Any, ...]) -> tuple[_ToPlain, _FromPlain]:
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError("only tuple[X, ...] is supported in records")
    to_inner, from_inner = _compile(args[0])

    def to_plain(value: Any) -> Any:
        return [to_inner(v) for v in value]

    def from_plain(value: Any, path: str) -> Any:
        if type(value) is not list:
            raise DecodeError(f"expected a list, got {type(value).__name__}", path=path)
        return tuple(from_inner(v, f"{path}[{i}]") for i, v in enumerate(value))

    return to_plain, from_plain


def _compile_dict(value_t: Any) -> tuple[_ToPlain, _FromPlain]:
    to_inner, from_inner = _compile(value_t)

    def to_plain(value: Any) -> Any:
        return {k: to_inner(v) for k, v in value.items()}

    def from_plain(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise DecodeError(f"expected a map, got {type(value).__name__}", path=path)
        return {k: from_inner(v, f"{path}.{k}") for k, v in value.items()}

    return to_plain, from_plain


def _record_to_plain(obj: Any) -> list[Any]:
    plan = _plan(type(obj))
    out: list[Any] = [plan.tag, plan.version]
    for name, conv in zip(plan.names, plan.to_plain, strict=True):
        out.append(conv(getattr(obj, name)))
    return out


def _from_plain_record(cls: type[R], value: Any, path: str) -> R:
    plan = _plan(cls)
    where = path or cls.__name__
    if type(value) is not list or len(value) != len(plan.names) + 2:
        raise DecodeError(f"expected a {cls.__name__} record", path=where)
    if value[0] != plan.tag or type(value[0]) is not int:
        raise DecodeError(f"expected record tag {plan.tag}, got {value[0]!r}", path=where)
    if value[1] != plan.version or type(value[1]) is not int:
        raise DecodeError(f"unsupported {cls.__name__} version {value[1]!r}", path=where)
    kwargs = {
        name: conv(item, f"{where}.{name}")
        for name, conv, item in zip(plan.names, plan.from_plain, value[2:], strict=True)
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a record's own __post_init__ validation
        raise DecodeError(str(exc), path=where) from exc


def to_plain(obj: Any) -> Any:
    """The plain canonical value (lists, maps, ints, bytes...) of a record or value."""
    if hasattr(type(obj), "__kyodo_record__"):
        return _record_to_plain(obj)
    return obj


def _check_value(value: Any, path: str = "", depth: int = 0) -> Any:
    """Check a plain value against the restricted value model; return it."""
    if depth > MAX_DEPTH:
        raise DecodeError("value nested too deeply", path=path)
    kind = type(value)
    if kind is int:
        return _check_int(value, path)
    if kind in (bytes, str, bool) or value is None:
        return value
    if kind is list:
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
        return value
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise DecodeError("map keys must be strings", path=path)
            _check_value(item, f"{path}.{key}", depth + 1)
        return value
    raise DecodeError(f"type {kind.__name__} is not allowed in canonical values", path=path)


def encode_value(value: Any) -> bytes:
    """Canonical bytes of a plain value (None, bool, int, bytes, str, list, str-keyed map)."""
    try:
        _check_value(value)
    except DecodeError as exc:
        raise EncodeError(str(exc)) from exc
    return cbor2.dumps(value, canonical=True)


def encode(obj: Any) -> bytes:
    """Canonical bytes of a registered record (or of a plain value)."""
    if hasattr(type(obj), "__kyodo_record__"):
        return cbor2.dumps(_record_to_plain(obj), canonical=True)
    return encode_value(obj)


def decode_value(data: bytes, *, max_size: int = 16 * 1024 * 1024) -> Any:
    """Decode canonical bytes into a plain value; reject anything non-canonical."""
    if type(data) is not bytes:
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"{len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = cbor2.loads(data)
    except RecursionError as exc:
        raise DecodeError("value nested too deeply") from exc
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise DecodeError(f"not valid CBOR: {exc}") from exc
    _check_value(value)
    if cbor2.dumps(value, canonical=True) != data:
        raise NonCanonicalError("bytes are not the canonical encoding of their value")
    return value


def decode_record(cls: type[R], data: bytes, *, max_size: int = 16 * 1024 * 1024) -> R:
    """Decode canonical bytes into a record of type ``cls`` (strictly typed)."""
    return _from_plain_record(cls, decode_value(data, max_size=max_size), "")


def decode(data: bytes, *, max_size: int = 16 * 1024 * 1024) -> Any:
    """Decode canonical bytes into whichever registered record their tag names."""
    value = decode_value(data, max_size=max_size)
    if type(value) is not list or len(value) < 2 or type(value[0]) is not int:
        raise DecodeError("not a record")
    cls = _BY_TAG.get(value[0])
    if cls is None:
        raise DecodeError(f"unknown record tag {value[0]}")
    return _from_plain_record(cls, value, "")
