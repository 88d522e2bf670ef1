"""The per-client request rate limit (dotsd.signal.ratelimit, RFC 9132 §4.4.1.3 / §9)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from dotsd.signal.ratelimit import RateLimiter


def test_burst_then_rate_then_retry_time() -> None:
    limiter = RateLimiter()
    # 2 a second: bursts of 4, then one every 0.5 s.
    assert [limiter.check("a", 2.0, 100.0) for _ in range(4)] == [None] * 4
    assert limiter.check("a", 2.0, 100.0) == 1  # Max-Age: whole seconds, at least 1
    assert limiter.check("b", 2.0, 100.0) is None  # per client
    assert limiter.check("a", 2.0, 100.5) is None
    assert limiter.check("a", 2.0, 100.5) == 1
    assert limiter.check("a", None, 100.5) is None  # no limit
    slow = RateLimiter()
    assert slow.check("c", 0.1, 0.0) is None  # burst of 1 at least
    assert slow.check("c", 0.1, 0.0) == 10
    slow.forget_idle(3600.0)
    assert len(slow) == 0


@given(st.floats(0.1, 50.0), st.lists(st.floats(0.0, 2.0), max_size=300))
def test_never_more_than_burst_plus_rate_times_time(rate: float, gaps: list[float]) -> None:
    limiter = RateLimiter()
    now = 1000.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap
        wait = limiter.check("x", rate, now)
        if wait is None:
            accepted.append(now)
        else:
            assert wait >= 1 and wait <= math.ceil(1 / rate)
    burst = max(1.0, 2.0 * rate)
    # In any window [t0, t1], at most burst + rate x (t1 - t0) requests got through.
    for i, t0 in enumerate(accepted):
        for j in range(i, len(accepted)):
            assert j - i + 1 <= burst + rate * (accepted[j] - t0) + 1e-6
