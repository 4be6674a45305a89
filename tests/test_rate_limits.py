"""Per-identity token buckets: a burst passes, the rate holds, identities are separate,
memory stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kyodo.gateway._limits import RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 5, clock=clock)
    for _ in range(5):
        limiter.check("org1/client/alice")
    with pytest.raises(RateLimited) as refused:
        limiter.check("org1/client/alice")
    assert refused.value.retry_after_s == pytest.approx(0.1)
    clock.now += 0.1
    limiter.check("org1/client/alice")  # exactly one token back


def test_identities_are_separate() -> None:
    limiter = RateLimiter(1, 1, clock=Clock())
    limiter.check("a")
    limiter.check("b")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(1, 1, max_identities=3, clock=Clock())
    for name in "abcde":
        limiter.check(name)
    assert len(limiter._buckets) == 3


def test_bad_settings_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)


@given(st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(5, 3, clock=clock)
    passed = 0
    for gap in gaps:
        clock.now += gap
        try:
            limiter.check("x")
            passed += 1
        except RateLimited:
            pass
    assert passed <= 3 + 5 * clock.now + 1e-9
