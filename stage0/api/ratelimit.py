"""Token buckets per (API key, route class), in this process's memory.

Several API processes each enforce the limit on their own share of traffic; put the
limit per process accordingly (documented in docs/api.md).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int


#: Route classes and their defaults; `logline serve --rate CLASS=PER_SECOND:BURST` changes them.
DEFAULT_LIMITS = {
    "read": Limit(50, 200),
    "write": Limit(20, 60),
    "stream": Limit(1, 10),
    "admin": Limit(5, 10),
}


@dataclass
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class RateLimiter:
    def __init__(self, limits: dict[str, Limit] | None = None) -> None:
        self.limits = dict(limits or DEFAULT_LIMITS)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, route_class: str) -> Decision:
        limit = self.limits[route_class]
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get((who, route_class), (float(limit.burst), now))
            tokens = min(limit.burst, tokens + (now - at) * limit.per_second)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[(who, route_class)] = (tokens, now)
        missing = limit.burst - tokens
        return Decision(allowed, limit.burst, int(tokens),
                        math.ceil(missing / limit.per_second) if missing > 0 else 0,
                        math.ceil((1 - tokens) / limit.per_second) if not allowed else 0)
