"""The execution context a contract function sees, and the block executor.

Theory of operation
-------------------
Transactions of a block execute one after another, in block order, against
the committed state plus the writes of the block's earlier transactions (the
*block overlay*). Each transaction writes into its own *transaction overlay*;
if the function returns, its overlay is merged into the block overlay; if it
raises, the overlay is dropped and the failure is recorded as the result.
Order-execute means there are no read/write conflicts to detect: every
validator sees exactly the same sequence (DESIGN.md section 2).

Determinism: the context gives the block's timestamp (set by the proposer),
never the clock; ``range`` iterates in sorted key order; values are canonical
(no floats). Deployed contract code also runs sandboxed and metered
(``_sandbox.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kyodo.codec import EncodeError, decode_value, encode_value
from kyodo.contracts._sandbox import charge_current, check_no_address, expanded_size
from kyodo.contracts.errors import ContractError
from kyodo.ledger import Event, HistoryEntry, StateEntry, encode_state_key

__all__ = ["Caller", "Context", "StateReader", "TxOverlay"]

_DELETED = object()
MAX_VALUE_BYTES = 256 * 1024
MAX_KEY_CHARS = 512
MAX_STORED_ELEMENTS = 262_144
"""Elements (counted as a walk visits them) of one stored value, payload or result."""
MAX_EVENTS = 1000
MAX_EVENT_NAME = 128
MAX_EVENT_BYTES = 1024 * 1024
"""Encoded size of all events of one transaction."""
MAX_TX_WRITE_BYTES = 4 * 1024 * 1024
"""Encoded size of all values one transaction puts."""


class StateReader(Protocol):
    """Committed state, as a contract may read it."""

    def get_state(self, namespace: str, key: str) -> StateEntry | None: ...

    def iter_state(
        self, namespace: str, start: str = "", end: str | None = None
    ) -> Iterator[tuple[str, StateEntry]]: ...

    def get_history(self, namespace: str, key: str, *, limit: int = 1000) -> list[HistoryEntry]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """Who submitted the transaction (from its verified certificate)."""

    org: str
    role: str
    name: str

    @property
    def identity(self) -> str:
        """``org/name``: the enrollment identity assets are bound to."""
        return f"{self.org}/{self.name}"


class TxOverlay:
    """Writes of one block (and, nested, of one transaction) over committed state."""

    def __init__(self, parent: StateReader | TxOverlay) -> None:
        self.parent = parent
        self.written_bytes = 0
        """Bytes this overlay's puts encoded (bounded per transaction)."""
        self.writes: dict[bytes, bytes | object] = {}
        """state key -> canonical bytes of the value written, or DELETED. Values are kept
        encoded so every read decodes a fresh object: a value a contract read and then
        mutated can never alter what another transaction wrote."""

    def lookup(self, state_key: bytes, namespace: str, key: str) -> Any:
        """The value as this overlay sees it (None if absent), as a fresh object."""
        if state_key in self.writes:
            written = self.writes[state_key]
            return None if written is _DELETED else decode_value(written)  # type: ignore[arg-type]
        if isinstance(self.parent, TxOverlay):
            return self.parent.lookup(state_key, namespace, key)
        entry = self.parent.get_state(namespace, key)
        return None if entry is None else entry.value

    def merged_keys(
        self,
        namespace: str,
        start: str,
        end: str | None,
        on_value: Callable[[Any], None] = lambda _value: None,
    ) -> dict[str, Any]:
        """Every key of namespace in [start, end) as this overlay sees it; ``on_value``
        sees each value as it is read (to charge for it before the next is decoded)."""
        if isinstance(self.parent, TxOverlay):
            view = self.parent.merged_keys(namespace, start, end, on_value)
        else:
            view = {}
            for k, e in self.parent.iter_state(namespace, start, end):
                on_value(e.value)
                view[k] = e.value
        prefix = namespace.encode() + b"\x00"
        for state_key, value in self.writes.items():
            if not state_key.startswith(prefix):
                continue
            key = state_key[len(prefix) :].decode()
            if key < start or (end is not None and key >= end):
                continue
            if value is _DELETED:
                view.pop(key, None)
            else:
                view[key] = decode_value(value)  # type: ignore[arg-type]
                on_value(view[key])
        return view

    def note_written(self, size: int) -> None:
        """Count a put of ``size`` bytes; refuse once a transaction wrote too much."""
        self.written_bytes += size
        if self.written_bytes > MAX_TX_WRITE_BYTES:
            raise ContractError(f"a transaction writes at most {MAX_TX_WRITE_BYTES} bytes")

    def committed(self) -> StateReader:
        """The committed state under all overlays."""
        parent = self.parent
        return parent.committed() if isinstance(parent, TxOverlay) else parent


class Context:
    """What a contract function may do: read and write its state, emit events."""

    def __init__(
        self,
        *,
        namespace: str,
        overlay: TxOverlay,
        caller: Caller,
        block_time_ms: int,
        height: int,
        tx_id: bytes,
        invoke: Callable[[str, str, tuple[Any, ...]], Any] | None = None,
        members: tuple[str, ...] = (),
        system: Any = None,
    ) -> None:
        self._namespace = namespace
        self._trusted = False
        """Set by the executor (never by the constructor, which contract code can call)
        for built-in contract code: its values need no size or address checks."""
        self._overlay = overlay
        self._events: list[Event] = []
        self._event_bytes = 0
        self.caller = caller
        self.block_time = block_time_ms
        """The block's timestamp in ms since the epoch (the same on every node)."""
        self.height = height
        self.tx_id = tx_id.hex()
        self.members = members
        """The member organizations' ids in force at this height, sorted."""
        self.system = system
        """Lifecycle hooks of the executor; given to the built-in ``_lifecycle`` only."""
        self._invoke = invoke

    def _state_key(self, key: str) -> bytes:
        if not isinstance(key, str) or not key or "\x00" in key or len(key) > MAX_KEY_CHARS:
            shown = f"{key[:40]!r}" if isinstance(key, str) else f"a {type(key).__name__}"
            raise ContractError(
                f"invalid key {shown}: keys are non-empty strings without NUL, "
                f"at most {MAX_KEY_CHARS} characters"
            )
        return encode_state_key(self._namespace, key)

    def get(self, key: str) -> Any:
        """The value of ``key``, or None if absent."""
        value = self._overlay.lookup(self._state_key(key), self._namespace, key)
        if not self._trusted:
            _charge_read(value)
        return value

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (a canonical value: no floats, not None)."""
        state_key = self._state_key(key)
        if value is None:
            raise ContractError("cannot store None; use delete()")
        try:
            stored = (
                canonical(value) if self._trusted else storable(value, f"value for {key[:40]!r}")
            )
            encoded = encode_value(stored)
        except EncodeError as exc:
            raise ContractError(f"value for {key!r} is not storable: {exc}") from exc
        if len(encoded) > MAX_VALUE_BYTES:
            raise ContractError(
                f"value for {key!r} is {len(encoded)} bytes, over {MAX_VALUE_BYTES}"
            )
        charge_current(len(encoded) // 64)
        self._overlay.note_written(len(encoded))
        self._overlay.writes[state_key] = encoded

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error, and nothing recorded, if absent)."""
        state_key = self._state_key(key)
        if self._overlay.lookup(state_key, self._namespace, key) is None:
            return
        charge_current(1)
        self._overlay.note_written(len(state_key))
        self._overlay.writes[state_key] = _DELETED

    def range(self, start: str = "", end: str | None = None) -> list[tuple[str, Any]]:
        """Keys in [start, end), sorted, with their values."""
        for bound in (start, end):
            if bound is not None and (not isinstance(bound, str) or len(bound) > MAX_KEY_CHARS):
                raise ContractError(
                    f"range bounds are strings of at most {MAX_KEY_CHARS} characters"
                )
        charge = (lambda _value: None) if self._trusted else _charge_read
        view = self._overlay.merged_keys(self._namespace, start, end, charge)
        return sorted(view.items())

    def prefix(self, prefix: str) -> list[tuple[str, Any]]:
        """Keys starting with ``prefix``, sorted, with their values."""
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY_CHARS:
            raise ContractError(f"a prefix is a string of at most {MAX_KEY_CHARS} characters")
        return self.range(prefix, prefix_end(prefix))

    def history(self, key: str) -> list[HistoryEntry]:
        """Committed writes of ``key``, oldest first (this block's are not included)."""
        self._state_key(key)
        charge_current(1)
        found = self._overlay.committed().get_history(self._namespace, key, limit=100)
        if not self._trusted:
            _charge_read([entry.value for entry in found])
        return found

    def emit(self, name: str, payload: Any = None) -> None:
        """Record an event in the transaction's result (kept in the block).

        Delivery to subscribers (event streams) comes with issue 7.
        """
        if not isinstance(name, str) or not 0 < len(name) <= MAX_EVENT_NAME:
            raise ContractError(f"an event name is a string of 1 to {MAX_EVENT_NAME} characters")
        _check_text_encodes(name)
        if len(self._events) >= MAX_EVENTS:
            raise ContractError(f"a transaction emits at most {MAX_EVENTS} events")
        payload = (
            canonical(payload) if self._trusted else storable(payload, f"payload of event {name!r}")
        )
        try:
            size = len(encode_value(payload))
        except EncodeError as exc:
            raise ContractError(f"event payload is not encodable: {exc}") from exc
        self._event_bytes += size
        if self._event_bytes > MAX_EVENT_BYTES:
            raise ContractError(f"a transaction's events are at most {MAX_EVENT_BYTES} bytes")
        self._events.append(Event(contract=self._namespace, name=name, payload=payload))

    def invoke(self, contract: str, function: str, *args: Any) -> Any:
        """Call another contract's function within this transaction."""
        for name in (contract, function):
            if not isinstance(name, str) or not 0 < len(name) <= 128:
                raise ContractError("invoke takes a contract and a function name (strings)")
        if self._invoke is None:
            raise ContractError("invoke is not available here")
        return self._invoke(contract, function, args)


DELETED = _DELETED


def canonical(value: Any) -> Any:
    """``value`` with tuples turned into lists (the canonical model has lists only)."""
    if isinstance(value, tuple | list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _charge_read(value: Any) -> None:
    """Decoding and handing out a value costs in proportion to its elements."""
    if isinstance(value, list | tuple | dict):
        charge_current(
            expanded_size(value, MAX_STORED_ELEMENTS * 64) // 4
        )  # decoding costs ~1 us per element


def storable(value: Any, what: str) -> Any:
    """``value`` made canonical for state, events or results; refused (ContractError)
    if it would expand to more than MAX_STORED_ELEMENTS, nests too deeply, or holds
    text showing a memory address. Its size is charged to the running meter."""
    elements = expanded_size(value, MAX_STORED_ELEMENTS)
    if elements > MAX_STORED_ELEMENTS:
        raise ContractError(f"{what} has over {MAX_STORED_ELEMENTS} elements")
    charge_current(elements // 4)  # checking and encoding ~1 us per element
    return _canonical_checked(value)


def _check_text_encodes(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ContractError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


def _canonical_checked(value: Any) -> Any:
    if isinstance(value, str):
        return _check_text_encodes(check_no_address(value))
    if isinstance(value, tuple | list):
        return [_canonical_checked(v) for v in value]
    if isinstance(value, dict):
        return {_canonical_checked(k): _canonical_checked(v) for k, v in value.items()}
    return value


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none).

    The last code point is incremented (skipping the surrogate range, which UTF-8
    cannot encode); a last code point of U+10FFFF is dropped and the one before it
    incremented instead.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000
            return "".join(chars) + chr(code)
    return None
