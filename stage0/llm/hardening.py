"""What keeps a slow or failing provider from taking LogLine down with it.

- `backoff`: exponential backoff with full jitter, honouring Retry-After (bounded attempts;
  which outcomes are retried is `RETRYABLE`: 429, 5xx, timeouts and connection errors).
- `Breaker`: a circuit breaker per provider. Closed -> open after `breaker_failures`
  consecutive failures, or an error rate of `breaker_error_rate` over the last
  `breaker_window` calls; open refuses at once (BREAKER_OPEN) for `breaker_open_s`; then
  half-open lets one probe through: success closes it, failure opens it again. Every change
  is handed to `on_change` so the caller records it (a `provider_breaker` span).
- `TokenBucket`: requests per second with a burst, per provider and per tenant.
All of them take a clock, so tests drive time instead of sleeping.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from stage0.llm.providers import Limits

Clock = Callable[[], float]

#: Outcomes worth another attempt: the provider may answer next time.
RETRYABLE = frozenset({"PROVIDER_RATE_LIMITED", "PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT",
                       "PROVIDER_STREAM_IDLE", "PROVIDER_STREAM_TRUNCATED"})
#: Outcomes that say the provider is unhealthy (they count against the breaker). A 429 says
#: "slow down", not "broken"; a 4xx says the request was wrong.
BREAKER_FAILURES = frozenset({"PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT",
                              "PROVIDER_BAD_RESPONSE", "PROVIDER_RESPONSE_TOO_LARGE",
                              "PROVIDER_STREAM_IDLE", "PROVIDER_STREAM_TRUNCATED"})


def backoff(limits: Limits, attempt: int, retry_after: float | None,
            rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1): full jitter over
    min(max, base * 2**(attempt-1)), and never less than the provider's Retry-After."""
    ceiling = min(limits.backoff_max_s, limits.backoff_base_s * (2 ** (attempt - 1)))
    delay = rng(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (a number of seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass
class BreakerChange:
    provider: str
    before: str
    after: str
    reason: str
    failures: int
    error_rate: float


@dataclass
class Breaker:
    name: str
    limits: Limits
    clock: Clock = time.monotonic
    on_change: Callable[[BreakerChange], None] | None = None
    state: str = "closed"
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False
    recent: deque[bool] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self) -> bool:
        """May a call go out now? In half-open state exactly one probe at a time."""
        with self._lock:
            if self.state == "open":
                if self.clock() - self.opened_at < self.limits.breaker_open_s:
                    return False
                self._move("half_open", "open for breaker_open_s; probing")
            if self.state == "half_open":
                if self.probing:
                    return False
                self.probing = True
            return True

    def retry_in(self) -> float:
        return max(0.0, self.limits.breaker_open_s - (self.clock() - self.opened_at))

    def record(self, ok: bool) -> None:
        with self._lock:
            self.recent.append(ok)
            while len(self.recent) > self.limits.breaker_window:
                self.recent.popleft()
            self.consecutive = 0 if ok else self.consecutive + 1
            if self.state == "half_open":
                self.probing = False
                if ok:
                    self.recent.clear()
                    self._move("closed", "the probe succeeded")
                else:
                    self._open("the probe failed")
            elif self.state == "closed" and not ok:
                if self.consecutive >= self.limits.breaker_failures:
                    self._open(f"{self.consecutive} consecutive failures")
                elif len(self.recent) >= self.limits.breaker_window and \
                        self.error_rate() >= self.limits.breaker_error_rate:
                    self._open(f"error rate {self.error_rate():.2f} over the last "
                               f"{len(self.recent)} calls")

    def release(self) -> None:
        """A probe that ended without a verdict on the provider (refused before sending,
        cancelled): let the next call probe instead."""
        with self._lock:
            self.probing = False

    def error_rate(self) -> float:
        return (self.recent.count(False) / len(self.recent)) if self.recent else 0.0

    def _open(self, reason: str) -> None:
        self.opened_at = self.clock()
        self._move("open", reason)

    def _move(self, state: str, reason: str) -> None:
        change = BreakerChange(self.name, self.state, state, reason, self.consecutive,
                               round(self.error_rate(), 4))
        self.state = state
        if self.on_change is not None:
            self.on_change(change)


@dataclass
class TokenBucket:
    rate: float
    burst: int
    clock: Clock = time.monotonic
    tokens: float = -1.0
    updated: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> float:
        """Take a token: 0.0 when one was available, else the seconds until one will be
        (nothing taken)."""
        with self._lock:
            now = self.clock()
            if self.tokens < 0:
                self.tokens, self.updated = float(self.burst), now
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate
