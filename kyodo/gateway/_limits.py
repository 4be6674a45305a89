"""Per-identity rate limits for the gateways (token buckets).

Each identity (``org/role/name`` of the authenticated caller; for login
challenges, the certificate's fingerprint) has a bucket of ``burst`` calls that
refills at ``rate_per_s``. A call that finds the bucket empty is refused with
``rate_limited`` and the time after which one call will pass again, so a client
backs off exactly as long as needed (gRPC ``RESOURCE_EXHAUSTED``, HTTP 429 with
``Retry-After``). A refused call costs nothing: it does not reach the node.

Memory is bounded: at most ``max_identities`` buckets, the least recently used
dropped first (a dropped identity starts again with a full bucket, which is what
an identity idle long enough would have anyway).

Why written here: thirty lines; the libraries that do this (slowapi, limits)
are HTTP-framework middleware keyed by client address, not by the signed
identity both of our transports share.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimited", "RateLimiter"]


class RateLimited(Exception):
    """An identity exceeded its rate; ``retry_after_s`` until one call passes."""

    def __init__(self, identity: str, retry_after_s: float, rate_per_s: float) -> None:
        super().__init__(
            f"{identity} exceeded {rate_per_s:g} calls/s; retry after {retry_after_s:.2f} s"
        )
        self.identity = identity
        self.retry_after_s = retry_after_s


class RateLimiter:
    """Token buckets keyed by identity; thread-safe."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._max = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, identity: str, cost: float = 1.0) -> None:
        """Take ``cost`` from the identity's bucket, or raise RateLimited."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(identity, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens < cost:
                self._buckets[identity] = (tokens, now)
                wait = (cost - tokens) / self.rate_per_s
                raise RateLimited(identity, math.ceil(wait * 100) / 100, self.rate_per_s)
            self._buckets[identity] = (tokens - cost, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
