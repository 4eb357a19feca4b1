"""The sandbox for untrusted code: a warm pool of separate, hardened OS worker processes.

    with SandboxPool(size=2, limits=Limits(wall_ms=3000)) as pool:
        result = pool.run("def main(input):\\n    return input * 2", 21, tenant="acme")
        result.ok, result.output, result.error   # True, 42, None

Untrusted code is a user function span's `code` (it defines `main(input)`, or
`main(input, context)`, and returns a JSON value) or a policy's code. Every run goes to one
idle worker (stage0/sandbox/worker.py), started with `python -I` and an empty environment,
never forked from this process (which holds database connections and keys). A worker runs
code of one tenant only (the first it ran for), and is replaced after any run that did not
end ok or that left something behind. Refusals and failures come back as a RunResult with a
stable error code (ERROR_CODES); problems of the pool itself (closed, cannot start workers,
invalid limits or requests) raise LoglineError. docs/sandbox.md describes the threat model
and the layers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stage0.errors import LoglineError
from stage0.spans.canonical import check_json

WORKER = Path(__file__).with_name("worker.py")

#: Every code a RunResult.error can carry (docs/sandbox.md explains each).
ERROR_CODES = (
    "SANDBOX_TIMEOUT", "SANDBOX_CPU_LIMIT", "SANDBOX_MEMORY_LIMIT", "SANDBOX_RECURSION",
    "SANDBOX_OUTPUT_TOO_LARGE", "SANDBOX_OUTPUT_NOT_JSON", "SANDBOX_INPUT_TOO_LARGE",
    "SANDBOX_INPUT_NOT_JSON", "SANDBOX_COMPILE_ERROR", "SANDBOX_FORBIDDEN",
    "SANDBOX_RUNTIME_ERROR", "SANDBOX_NO_ENTRY", "SANDBOX_WORKER_DIED",
)
_CPU_SIGNALS = {signal.SIGXCPU, signal.SIGPROF}
_FRAME_OVERHEAD = 64 * 1024
_START_TIMEOUT_S = 30.0
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True)
class Limits:
    """Per-run limits. memory_mb above the pool's own limit is refused (the worker's hard
    address-space limit is fixed when it starts and cannot be raised after the privilege drop).
    """

    wall_ms: int = 5000
    cpu_ms: int | None = None  # None: the same as wall_ms
    memory_mb: int = 256
    output_bytes: int = 1024 * 1024
    input_bytes: int = 1024 * 1024
    recursion: int = 200
    stdout_bytes: int = 64 * 1024
    code_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.cpu_ms is None:
            object.__setattr__(self, "cpu_ms", self.wall_ms)
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LoglineError("SANDBOX_LIMITS_INVALID",
                                   f"must be a positive integer, got {value!r}", f"limits.{name}")
        if self.recursion < 20:
            raise LoglineError("SANDBOX_LIMITS_INVALID", "must be at least 20",
                               "limits.recursion")


@dataclass
class RunResult:
    ok: bool
    output: Any = None
    error: dict[str, str] | None = None
    duration_ms: int = 0
    cpu_ms: int = 0
    stdout: str = ""
    stdout_truncated: bool = False
    worker_pid: int | None = None  # the worker process that ran it; None when none did

    @property
    def code(self) -> str | None:
        """The error code, or None when the run succeeded."""
        return self.error["code"] if self.error else None


def _failure(code: str, message: str, **extra: Any) -> RunResult:
    return RunResult(ok=False, error={"code": code, "message": message}, **extra)


class _Died(Exception):
    pass


class _TimedOut(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: The tenant of runs that name none (direct library use: tests, tools, one party's code).
_ANONYMOUS = ("anonymous",)
#: probe() takes any idle worker: it runs trusted code only.
_ANY = ("any",)


def _tenant_key(tenant: Any) -> tuple[str, ...]:
    if tenant is None:
        return _ANONYMOUS
    if not isinstance(tenant, str) or not tenant:
        raise LoglineError("SANDBOX_INVALID_REQUEST",
                           f"tenant must be a non-empty string or None, got {tenant!r}", "tenant")
    return ("tenant", tenant)


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    buf: bytearray = field(default_factory=bytearray)
    cpu_total_ms: int = 0
    runs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    poller: Any = None
    tenant: tuple[str, ...] | None = None  # bound at its first run; None while fresh

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def rfd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        data = memoryview(struct.pack(">I", len(payload)) + payload)
        try:
            while data:
                n = os.write(self.proc.stdin.fileno(), data)
                data = data[n:]
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise _Died from None

    def recv(self, deadline: float, max_bytes: int) -> bytes:
        """One frame, or _TimedOut at the deadline, or _Died at EOF / protocol violation."""
        if self.poller is None:
            self.poller = select.poll()
            self.poller.register(self.rfd, select.POLLIN)
        poller = self.poller
        need = 4
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if size > max_bytes:
                    raise _Died(f"protocol violation: a {size}-byte frame")
                need = 4 + size
                if len(self.buf) >= need:
                    frame = bytes(self.buf[4:need])
                    del self.buf[:need]
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _TimedOut
            if not poller.poll(max(1, int(remaining * 1000) + 1)):
                continue
            chunk = os.read(self.rfd, max(65536, need - len(self.buf)))
            if not chunk:
                raise _Died
            self.buf += chunk

    def kill(self) -> int | None:
        """Kill (if alive) and reap. Returns the wait status' exit code (-signal if killed)."""
        with self.lock:
            return self._kill()

    def _kill(self) -> int | None:
        if self.proc.returncode is None:
            # os.kill, not Popen.kill: that polls first and would reap the child, losing the
            # rusage that os.wait4 reports below. The pid cannot be reused before the reap.
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        if self.proc.returncode is None:
            try:
                _, status, usage = os.wait4(self.proc.pid, 0)
            except ChildProcessError:
                self.proc.wait()
            else:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_total_ms = max(self.cpu_total_ms,
                                        round((usage.ru_utime + usage.ru_stime) * 1000))
        return self.proc.returncode


def _spawn(memory_mb: int, jail: str | None) -> _Worker:
    config = {"memory_mb": memory_mb, "chroot": jail}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(WORKER), json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={}, cwd="/", close_fds=True, start_new_session=True, bufsize=0,
    )
    return _Worker(proc)


def _await_ready(worker: _Worker) -> _Worker:
    try:
        hello = json.loads(worker.recv(time.monotonic() + _START_TIMEOUT_S, 1 << 20))
    except (_Died, _TimedOut, ValueError) as e:
        code = worker.kill()
        raise LoglineError("SANDBOX_UNAVAILABLE",
                           f"a sandbox worker failed to start (exit {code}): {e!r}") from None
    if hello.get("type") != "ready":
        worker.kill()
        raise LoglineError("SANDBOX_UNAVAILABLE",
                           f"a sandbox worker failed to start: {hello.get('message')}")
    worker.info = hello
    worker.cpu_total_ms = int(hello.get("cpu_total_ms", 0))
    return worker


def _reap_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()


class SandboxPool:
    """`size` warm workers; `run` is thread-safe (each run takes one idle worker, waiting for
    one when all are busy).

    A worker is bound to the tenant of its first run and never runs code of another: a run
    takes an idle worker of its tenant, else a fresh one, else an idle worker of another
    tenant is retired and the run takes its fresh replacement. A worker that did not end a
    run ok (except a compile refusal: nothing ran), that hit a limit, died, misbehaved or
    kept anything of a run is killed and replaced in the background, so the pool returns to
    `size`."""

    def __init__(self, size: int = 2, limits: Limits | None = None, *,
                 cache_code: bool = True) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LoglineError("SANDBOX_LIMITS_INVALID", f"size must be >= 1, got {size!r}")
        self.size = size
        self.limits = limits or Limits()
        self.cache_code = cache_code
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._pending = 0
        self._closed = False
        self._spawn_error: LoglineError | None = None
        self._threads: set[threading.Thread] = set()
        self.replaced = 0
        self._jail: str | None = None
        if os.geteuid() == 0:
            self._jail = _shared_jail()
        self._all: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._all, self._jail)
        started = [_spawn(self.limits.memory_mb, self._jail) for _ in range(size)]
        self._all.extend(started)
        try:
            for w in started:
                _await_ready(w)
        except LoglineError:
            self.close()
            raise
        self._idle.extend(started)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        for t in threads:
            t.join()
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection

    def worker_info(self) -> list[dict[str, Any]]:
        """What the second wall does in each live worker (uid, netns, chroot ...), and the
        tenant it is bound to (`bound`: False while fresh; `tenant`: None when anonymous)."""
        with self._cond:
            return [dict(w.info, bound=w.tenant is not None,
                         tenant=w.tenant[1] if w.tenant and len(w.tenant) > 1 else None)
                    for w in self._idle + list(self._busy.values())]

    def busy_pids(self) -> list[int]:
        with self._cond:
            return list(self._busy)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"size": self.size, "idle": len(self._idle), "busy": len(self._busy),
                    "starting": self._pending, "replaced": self.replaced}

    def wait_full(self, timeout: float = _START_TIMEOUT_S) -> bool:
        """Wait until every replacement has started (idle + busy == size)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or len(self._idle) + len(self._busy) >= self.size, timeout)

    def probe(self, **request: Any) -> dict[str, Any]:
        """Ask one idle worker to test its own walls from trusted code (see docs/sandbox.md)."""
        worker = self._acquire(_ANY)
        try:
            worker.send(json.dumps({"type": "probe", **request}).encode())
            reply = json.loads(worker.recv(time.monotonic() + 30, 1 << 20))
        except (_Died, _TimedOut):
            self._release(worker, healthy=False)
            raise LoglineError("SANDBOX_WORKER_DIED", "worker died during a probe") from None
        self._release(worker, healthy=True)
        return reply

    # ------------------------------------------------------------------ running

    def run(self, code: str, input: Any = None, *, entry: str = "main",
            limits: Limits | None = None, context: dict[str, Any] | None = None,
            tenant: str | None = None) -> RunResult:
        """Run `entry(input)` (or `entry(input, context)` when it takes two parameters) in a
        worker that never ran code of another tenant. `tenant` names whose code this is;
        None (direct library use) is one anonymous tenant of its own, which shares workers
        with no named tenant: pass the owner of the code whenever code of several owners
        runs through one pool."""
        started = time.monotonic()
        key = _tenant_key(tenant)
        lim = limits or self.limits
        if lim.memory_mb > self.limits.memory_mb:
            raise LoglineError("SANDBOX_LIMITS_INVALID",
                               f"memory_mb {lim.memory_mb} is above the pool's "
                               f"{self.limits.memory_mb}", "limits.memory_mb")
        if not isinstance(code, str):
            raise LoglineError("SANDBOX_INVALID_REQUEST",
                               f"code must be a string, got {type(code).__name__}", "code")
        if not isinstance(entry, str) or not entry.isidentifier() or entry.startswith("_"):
            raise LoglineError("SANDBOX_INVALID_REQUEST",
                               f"entry must be a public identifier, got {entry!r}", "entry")
        refused = self._check_request(code, input, context, lim)
        if refused is not None:
            refused.duration_ms = _ms(time.monotonic() - started)
            return refused
        payload = self._payload(code, entry, input, context, lim)
        if isinstance(payload, RunResult):
            payload.duration_ms = _ms(time.monotonic() - started)
            return payload
        worker = self._acquire(key)
        t0 = time.monotonic()
        try:
            result = self._exchange(worker, payload, lim, t0)
        except BaseException:  # e.g. KeyboardInterrupt mid-exchange: never leak a busy worker
            if worker.pid in self.busy_pids():
                self._release(worker, healthy=False)
            raise
        result.duration_ms = _ms(time.monotonic() - t0)
        result.worker_pid = worker.pid
        return result

    def _check_request(self, code: str, input: Any, context: Any, lim: Limits) -> RunResult | None:
        if len(code.encode("utf-8", "surrogatepass")) > lim.code_bytes:
            return _failure("SANDBOX_INPUT_TOO_LARGE",
                            f"code is larger than {lim.code_bytes} bytes")
        if context is not None and not isinstance(context, dict):
            return _failure("SANDBOX_INPUT_NOT_JSON",
                            f"context must be an object, got {type(context).__name__}")
        for where, value in (("input", input), ("context", context)):
            try:
                check_json(value, where)
            except LoglineError as e:
                return _failure("SANDBOX_INPUT_NOT_JSON", str(e))
            except RecursionError:
                return _failure("SANDBOX_INPUT_NOT_JSON", f"{where} nests too deeply")
        return None

    def _payload(self, code: str, entry: str, input: Any, context: Any,
                 lim: Limits) -> bytes | RunResult:
        head = {"type": "run", "code": code, "entry": entry, "cache": self.cache_code,
                "context": context,
                "limits": {"cpu_ms": lim.cpu_ms, "memory_mb": lim.memory_mb,
                           "recursion": lim.recursion, "output_bytes": lim.output_bytes,
                           "stdout_bytes": lim.stdout_bytes}}
        data = _ENCODER.encode(input).encode("utf-8")
        if len(data) > lim.input_bytes:
            return _failure("SANDBOX_INPUT_TOO_LARGE",
                            f"input is {len(data)} bytes, larger than {lim.input_bytes}")
        body = _ENCODER.encode(head).encode("utf-8")
        return body[:-1] + b',"input":' + data + b"}"

    def _exchange(self, worker: _Worker, payload: bytes, lim: Limits, t0: float) -> RunResult:
        max_frame = lim.output_bytes + 6 * lim.stdout_bytes + _FRAME_OVERHEAD
        try:
            worker.send(payload)
            frame = worker.recv(t0 + lim.wall_ms / 1000, max_frame)
        except _TimedOut:
            before = worker.cpu_total_ms
            self._release(worker, healthy=False)
            return _failure("SANDBOX_TIMEOUT", f"wall-clock limit of {lim.wall_ms} ms exceeded",
                            cpu_ms=max(0, worker.cpu_total_ms - before))
        except _Died as e:
            before = worker.cpu_total_ms
            status = self._release(worker, healthy=False)
            cpu = max(0, worker.cpu_total_ms - before)
            if status is not None and -status in _CPU_SIGNALS:
                return _failure("SANDBOX_CPU_LIMIT", f"CPU limit of {lim.cpu_ms} ms exceeded",
                                cpu_ms=cpu)
            how = f"killed by signal {-status}" if status and status < 0 else f"exit {status}"
            detail = f" ({e})" if str(e) else ""
            return _failure("SANDBOX_WORKER_DIED", f"the worker died: {how}{detail}", cpu_ms=cpu)
        try:
            reply = json.loads(frame, parse_constant=_reject_constant)
        except ValueError as e:
            self._release(worker, healthy=False)
            return _failure("SANDBOX_WORKER_DIED", f"protocol violation: {e}")
        worker.cpu_total_ms = reply.get("cpu_total_ms", worker.cpu_total_ms)
        result = RunResult(ok=bool(reply.get("ok")), error=reply.get("error"),
                           cpu_ms=int(reply.get("cpu_ms", 0)),
                           stdout=reply.get("stdout", ""),
                           stdout_truncated=bool(reply.get("stdout_truncated")))
        if result.ok:
            output = reply.get("output")
            try:
                check_json(output, "output")  # the ledger's rules, checked again on this side
            except LoglineError as e:
                result = _failure("SANDBOX_OUTPUT_NOT_JSON", str(e), cpu_ms=result.cpu_ms,
                                  stdout=result.stdout)
            else:
                result.output = output
        # Kept only after a run that ended ok, or one that never executed (compile refusal),
        # and only if the worker itself found nothing of the run left behind.
        keep = result.ok or reply.get("executed") is False
        self._release(worker, healthy=keep and not reply.get("retire"))
        return result

    # ------------------------------------------------------------------ pool bookkeeping

    def _acquire(self, key: tuple[str, ...]) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise LoglineError("SANDBOX_CLOSED", "the sandbox pool is closed")
                worker = self._pick(key)
                if worker is not None:
                    self._busy[worker.pid] = worker
                    return worker
                if not self._busy and not self._pending and self._spawn_error is not None:
                    raise self._spawn_error
                self._cond.wait()

    def _pick(self, key: tuple[str, ...]) -> _Worker | None:
        """Under the lock: the most recently used idle worker of this tenant, else a fresh
        one (bound to the tenant now). Else, unless a replacement is already on its way, the
        least recently used idle worker of another tenant is retired: the caller waits for
        its fresh replacement."""
        if key is _ANY:
            return self._idle.pop() if self._idle else None
        fresh = None
        for i in range(len(self._idle) - 1, -1, -1):
            tenant = self._idle[i].tenant
            if tenant == key:
                return self._idle.pop(i)
            if tenant is None and fresh is None:
                fresh = i
        if fresh is not None:
            worker = self._idle.pop(fresh)
            worker.tenant = key
            return worker
        if self._idle and not self._pending:
            self._retire(self._idle.pop(0))
        return None

    def _retire(self, worker: _Worker) -> None:
        """Under the lock: replace `worker` (idle or finished) with a fresh one; the
        replacement thread kills and reaps it first."""
        if self._closed:
            return  # close() reaps every worker still listed in _all
        with suppress(ValueError):
            self._all.remove(worker)
        self.replaced += 1
        self._pending += 1
        t = threading.Thread(target=self._replace, args=(worker,), name="sandbox-replace",
                             daemon=True)
        self._threads.add(t)
        t.start()

    def _release(self, worker: _Worker, *, healthy: bool) -> int | None:
        status = None
        if not healthy:
            status = worker.kill()
        with self._cond:
            self._busy.pop(worker.pid, None)
            if healthy and not self._closed:
                worker.runs += 1
                self._idle.append(worker)
                self._cond.notify_all()  # waiters of other tenants cannot all use it
                return None
            if not healthy:
                self._retire(worker)
        if healthy:  # closed meanwhile
            worker.kill()
        return status

    def _replace(self, old: _Worker) -> None:
        old.kill()  # already dead and reaped when retired after a run
        worker: _Worker | None = None
        error: LoglineError | None = None
        for attempt in range(3):
            with self._cond:
                if self._closed:
                    break
            try:
                worker = _spawn(self.limits.memory_mb, self._jail)
                with self._cond:
                    self._all.append(worker)
                _await_ready(worker)
                break
            except (LoglineError, OSError) as e:
                error = e if isinstance(e, LoglineError) else LoglineError(
                    "SANDBOX_UNAVAILABLE", f"cannot start a sandbox worker: {e}")
                worker = None
                time.sleep(0.1 * (attempt + 1))
        with self._cond:
            self._pending -= 1
            self._threads.discard(threading.current_thread())
            if worker is not None and not self._closed:
                self._idle.append(worker)
            elif worker is None and error is not None:
                self._spawn_error = error
            self._cond.notify_all()
        if worker is not None and self._closed:
            worker.kill()


def _cleanup(workers: list[_Worker], jail: str | None) -> None:
    _reap_all(list(workers))
    workers.clear()


_JAIL = os.path.join(tempfile.gettempdir(), "logline-sandbox-root")


def _shared_jail() -> str:
    """The empty, read-only directory workers chroot into. One per machine, reused by every
    pool, so a pool whose process is SIGKILLed leaves nothing behind. Used only if it is
    root's, not writable by anyone and empty; otherwise a private one is made."""
    try:
        os.mkdir(_JAIL, 0o555)
    except FileExistsError:
        pass
    st = os.lstat(_JAIL)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o222 \
            and not os.listdir(_JAIL):
        return _JAIL
    jail = tempfile.mkdtemp(prefix="logline-sandbox-root-")
    os.chmod(jail, 0o555)
    return jail


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))

