"""Per-key rate limit: a token bucket per API key, in the memory of each worker.

A key may make ``per_minute`` requests a minute on average and a burst of as many at once. The
buckets live in one worker's memory: with N workers a key can reach N times the limit, which is
the price of needing no shared store (set the limit per worker accordingly). The point is to keep
one runaway caller from starving the others, not exact accounting.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets by key id: capacity ``per_minute``, refilled at ``per_minute / 60`` a second.

    ``per_minute`` = 0 turns the limit off. ``clock`` is injectable for tests (seconds, monotonic).
    """

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0:
            raise ValueError(f"per_minute must be >= 0, got {per_minute}")
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: int) -> float:
        """Spend one token of ``key_id``; 0.0 if it had one, else the seconds until it will."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a caller that waits that long succeeds."""
    return str(max(1, math.ceil(seconds)))


__all__ = ["RateLimiter", "retry_after_header"]
