"""The host's recorder: `provider_execution` and `provider_breaker` spans appended in batches.

One signed append per call in its own transaction costs a commit (a WAL flush) per call, more
than everything else LogLine adds to a model call. So the host hands each record to a
Recorder, which signs it at once (in the caller's thread: its id, time and signature are
fixed when the call ends, and a record that could not be appended fails there, as an append
did) and queues it; a thread of the recorder appends what is queued, in one statement,
`interval_s` (5 ms) after the first record came or as soon as `batch` (256) records wait,
like OpenTelemetry's BatchSpanProcessor, except that nothing is dropped to make room:

- the queue is bounded (`max_queue`): a caller that finds it full waits until a flush makes
  room (back-pressure, logged once per stall) rather than losing a record;
- a flush that fails is logged (`provider_records_flush_failed`: how many, the reason code)
  and retried with a growing pause (up to 5 s), on a new connection when the old one broke,
  in the same order; the records stay queued meanwhile;
- `flush()` returns once everything queued before it is committed (or raises after its
  timeout); `close()` flushes and stops the thread (`Loader.close()`, the end of `logline
  boot` and of `logline worker`); what it cannot commit within 10 s (the database is gone)
  is logged as `provider_records_lost`, with the ids.

Durability window: a record is in the ledger at most `interval_s` plus one commit after its
call ended. A process that dies in between (SIGKILL, power loss) loses the records still
queued: at most `max_queue`, in practice the last few ms of calls. Nothing else is lost or
corrupted (each flush is one atomic statement; the chain re-checks every row).

Tokens are counted while queued: `pending_tokens(tenant, provider, day)` is what this
recorder holds for that budget day and has not committed yet. The budget check adds it to
the ledger's count, reading it first: a flush committing in between is then counted twice
(a refusal a few ms early), never missed (a burst cannot overspend while its records wait).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.log import log

#: (tenant_id, provider, UTC day "YYYY-MM-DD")
BudgetKey = tuple[str, str, str]
INTERVAL_S = 0.005
BATCH = 256
MAX_QUEUE = 10_000
RETRY_MAX_S = 5.0


class Recorder:
    def __init__(self, connect: Callable[[], Connection], key: SigningKey, *,
                 interval_s: float = INTERVAL_S, batch: int = BATCH,
                 max_queue: int = MAX_QUEUE, name: str = "stage0") -> None:
        self._connect, self.key, self.name = connect, key, name
        self.interval_s, self.batch, self.max_queue = interval_s, batch, max_queue
        self._conn: Connection | None = None
        #: (the span, signed; budget; tokens)
        self._queue: deque[tuple[dict[str, Any], BudgetKey | None, int]] = deque()
        self._tokens: dict[BudgetKey, int] = defaultdict(int)
        self._cond = threading.Condition()
        self._queued = 0     # records ever queued
        self._committed = 0  # records ever committed (in queue order)
        self._closing = False
        self._urgent = False  # flush()/close()/a full queue: do not wait for the interval
        self._failing: str | None = None  # the last flush's failure code, while it lasts
        self._thread: threading.Thread | None = None

    # --- the callers' side ----------------------------------------------------------------
    def add(self, draft: Mapping[str, Any], budget: BudgetKey | None = None,
            tokens: int = 0) -> dict[str, Any]:
        """Sign `draft` as a new span (seq 0) and queue it; the span as it will be stored.
        `tokens` count against `budget` until the span is committed."""
        span = store.prepare(draft, {}, self.key, None)
        stalled = False
        with self._cond:
            if self._closing:
                raise LoglineError("RECORDER_CLOSED", "the host's recorder is closed",
                                   self.name)
            while len(self._queue) >= self.max_queue:
                if not stalled:
                    stalled = True
                    log("provider_records_backlog", queued=len(self._queue),
                        failing=self._failing, worker=self.name)
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(0.5)
            self._queue.append((span, budget, tokens))
            self._queued += 1
            if budget is not None and tokens:
                self._tokens[budget] += tokens
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"llm-recorder-{self.name}")
                self._thread.start()
            if len(self._queue) == 1 or len(self._queue) >= self.batch:
                self._cond.notify_all()  # the thread sleeps while nothing is queued
        return span

    def pending_tokens(self, budget: BudgetKey) -> int:
        with self._cond:
            return self._tokens.get(budget, 0)

    def pending_tokens_by_day(self, tenant: str, provider: str) -> dict[str, int]:
        """{UTC day: tokens} queued and not committed yet for `tenant` and `provider`."""
        with self._cond:
            if not self._tokens:
                return {}
            return {day: n for (t, p, day), n in self._tokens.items()
                    if t == tenant and p == provider}

    @property
    def queued(self) -> int:
        """Records waiting to be committed."""
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Return once every record queued before this call is committed."""
        with self._cond:
            target = self._queued
            if self._committed >= target:
                return
            self._urgent = True
            self._cond.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._committed < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LoglineError("RECORDER_FLUSH_FAILED", f"{target - self._committed} "
                                       f"provider records are not committed yet (last "
                                       f"failure: {self._failing or 'none'}); they stay "
                                       "queued and are retried", self.name)
                if self._thread is None or not self._thread.is_alive():
                    self._flush_here()  # no thread (closed, or never started): flush now
                    continue
                self._cond.wait(left if left is not None else 1.0)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then stop. Records that still cannot be committed after
        `timeout` (the database is gone) are reported, never silently dropped: the log line
        `provider_records_lost` names how many and their ids (close never raises: it runs
        while a process stops, or a worker reconnects after losing its database)."""
        with self._cond:
            if self._closing and self._thread is None and not self._queue:
                return
        try:
            self.flush(timeout)
        except LoglineError:
            pass  # said below, with the ids
        finally:
            with self._cond:
                self._closing = True
                self._urgent = True
                self._cond.notify_all()
                thread = self._thread
            if thread is not None:
                thread.join(timeout=5)
            with self._cond:
                self._thread = None
                left = [span["id"] for span, _, _ in self._queue]
            if left:
                log("provider_records_lost", records=len(left), ids=left[:100],
                    failing=self._failing, worker=self.name)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- the recorder's thread ------------------------------------------------------------
    def _run(self) -> None:
        pause = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()  # nothing to do: asleep until a record comes
                if not self._queue:
                    return  # closing, and everything is committed
                if not (self._urgent or self._closing or len(self._queue) >= self.batch):
                    self._cond.wait(self.interval_s)  # gather a batch (or until asked)
                self._urgent = False
            if self._flush_once():
                pause = 0.0
                continue
            pause = min(RETRY_MAX_S, max(0.05, pause * 2))
            with self._cond:
                if self._closing:
                    return  # close() reports what is left
                self._cond.wait(pause)

    def _flush_here(self) -> None:
        if not self._flush_once():
            time.sleep(0.05)

    def _flush_once(self) -> bool:
        """Append the oldest batch in one statement; True when it committed (or nothing
        was queued)."""
        with self._cond:
            batch = [self._queue[i] for i in range(min(self.batch, len(self._queue)))]
        if not batch:
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            store.insert(self._conn, [span for span, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 - any failure is logged and retried
            code = exc.code if isinstance(exc, LoglineError) else type(exc).__name__
            with self._cond:
                self._failing = code
                queued = len(self._queue)
            log("provider_records_flush_failed", records=len(batch), code=code,
                queued=queued, worker=self.name)
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn = None
            return False
        with self._cond:
            for _ in batch:
                _, budget, tokens = self._queue.popleft()
                if budget is not None and tokens:
                    left = self._tokens[budget] - tokens
                    if left > 0:
                        self._tokens[budget] = left
                    else:
                        del self._tokens[budget]
            self._committed += len(batch)
            if self._failing is not None:
                log("provider_records_flushed", records=len(batch), after=self._failing,
                    worker=self.name)
            self._failing = None
            self._cond.notify_all()
        return True
