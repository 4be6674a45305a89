"""The simulator's clock and event queue, and the trace that fingerprints a run.

Virtual time is an integer number of milliseconds that only moves when the
next event is taken off the queue. Events are ordered by ``(time_ms,
sequence)``: two events due at the same millisecond run in the order they
were scheduled, so the order never depends on anything but the calls made,
which in turn depend only on the seed.

Every event carries a short label. Running an event feeds its time and
label into a SHA-256 (the *trace hash*, equal for two runs exactly when they
did the same things at the same times) and into a short ring of recent
lines, quoted when an invariant breaks.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable

__all__ = ["Scheduler"]

_TRACE_TAIL = 40
"""Lines of recent history kept for failure reports."""


class Scheduler:
    """A virtual clock and a deterministic priority queue of callbacks."""

    def __init__(self) -> None:
        self.now_ms = 0
        """Virtual time of the event being run (ms since the start of the run)."""
        self.events_run = 0
        """Events taken off the queue so far."""
        self._queue: list[tuple[int, int, str, Callable[[], None]]] = []
        self._sequence = 0
        self._hash = hashlib.sha256()
        self._tail: deque[str] = deque(maxlen=_TRACE_TAIL)

    def at(self, time_ms: int, label: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` at virtual time ``time_ms`` (never in the past)."""
        assert time_ms >= self.now_ms, f"event {label!r} scheduled in the past"
        heapq.heappush(self._queue, (time_ms, self._sequence, label, callback))
        self._sequence += 1

    def after(self, delay_ms: int, label: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``delay_ms`` from now."""
        assert delay_ms >= 0
        self.at(self.now_ms + delay_ms, label, callback)

    def next_time_ms(self) -> int | None:
        """When the next event is due, or None when the queue is empty."""
        return self._queue[0][0] if self._queue else None

    def run_next(self) -> None:
        """Advance the clock to the next event, record it in the trace, run it."""
        time_ms, _, label, callback = heapq.heappop(self._queue)
        assert time_ms >= self.now_ms, "virtual time never goes back"
        self.now_ms = time_ms
        self.events_run += 1
        self.note(label)
        callback()

    def note(self, label: str) -> None:
        """Add a line to the trace (events, and decisions taken inside them)."""
        line = f"{self.now_ms} {label}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self._tail.append(line)

    def trace_hash(self) -> str:
        """Hex SHA-256 of every trace line so far."""
        return self._hash.hexdigest()

    def recent(self) -> tuple[str, ...]:
        """The last trace lines, oldest first."""
        return tuple(self._tail)
