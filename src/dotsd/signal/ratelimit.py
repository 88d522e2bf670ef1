"""Per-client request rate limit of the signal server (RFC 9132 §4.4.1.3), sans-IO.

RFC 9132 §4.4.1.3: "A DOTS server MAY reject mitigation requests when it is near capacity or
needs to rate-limit a particular client"; §9 answers such a request with 5.03 (Service
Unavailable), and RFC 7252 §5.9.3.4 lets Max-Age say when to retry. Every signal request costs
the server validation and often a durable commit (about 0.5 ms for a mitigation request), so
one authenticated client sending in a loop could take the server from everyone else during an
attack. :class:`TokenBucket` allows ``rate`` requests a second on average with bursts of
``burst``; :class:`RateLimiter` keeps one bucket per client identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # most tokens held
    tokens: float
    updated: float  # when ``tokens`` was last brought up to date

    def take(self, now: float) -> float:
        """Spend one token: 0.0 if there was one, else the seconds until there will be."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per client identity."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, identity: str, rate: float | None, now: float) -> int | None:
        """None if ``identity`` may send this request at ``rate`` requests a second (None:
        no limit); else the whole seconds to wait (a Max-Age, at least 1)."""
        if rate is None:
            return None
        bucket = self._buckets.get(identity)
        burst = max(1.0, 2.0 * rate)  # a client may repeat a request at once after a loss
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[identity] = TokenBucket(rate, burst, burst, now)
        wait = bucket.take(now)
        return None if wait == 0.0 else max(1, math.ceil(wait))

    def forget_idle(self, now: float, idle: float = 3600.0) -> None:
        """Drop the buckets of clients not heard for ``idle`` seconds (they are full again
        by then), so that the table does not grow with every client ever seen."""
        for identity in [k for k, b in self._buckets.items() if now - b.updated >= idle]:
            del self._buckets[identity]
