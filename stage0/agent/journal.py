"""The agent's local journal: each job runs at most once, each result is sent until acknowledged.

One durable JSON-lines file, `<state dir>/journal.jsonl`. Every record is appended, flushed and
fsynced before the call returns, so after `begin()` returns True the job is on disk as begun
and can never be begun again, even if the agent is killed the next instant. Records:

    {"t": "begin",  "job": ID, "at": ..., "data": JOB}
    {"t": "op",     "job": ID, "at": ..., "index": I, "result": {...}}
    {"t": "finish", "job": ID, "at": ..., "status": "done"|"failed"|"interrupted",
                    "result": {...}}
    {"t": "ack",    "job": ID, "at": ...}

A job begun but never finished was interrupted (the agent crashed mid-job). It is NOT run
again: `close_interrupted()` finishes it with status "interrupted" and the ops the journal
recorded as done (an op after the last recorded one may or may not have happened; the trash
and the hashes in the report tell). Call `interrupted()` at start-up, before running jobs.

Writers (several Journal objects, even in several processes) serialise on an exclusive
`flock` of `<state dir>/journal.lock` and re-read what others appended before deciding, so two
agents sharing a state dir still never begin the same job twice. A torn last line (a crash in
the middle of a write) is ignored when reading and cut off by the next writer; a damaged line
anywhere else is refused (J_CORRUPT): guessing there could run a job twice.

Reason codes: J_CORRUPT (file:line), J_UNKNOWN_JOB, J_NOT_RUNNING (an op or finish for a job
that is not begun-and-unfinished), J_NOT_FINISHED (ack before finish), J_BAD_STATUS,
J_BAD_ARGS (a job id that is not a non-empty string, a result that is not an object).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stage0.errors import LoglineError

FILE = "journal.jsonl"
LOCK = "journal.lock"
FINISH_STATUSES = ("done", "failed")


class _Job:
    __slots__ = ("id", "data", "ops", "status", "result", "acked", "finish_seq")

    def __init__(self, job_id: str, data: Any) -> None:
        self.id = job_id
        self.data = data
        self.ops: dict[int, dict[str, Any]] = {}
        self.status: str | None = None
        self.result: dict[str, Any] | None = None
        self.acked = False
        self.finish_seq = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise LoglineError("J_BAD_ARGS", "a job id must be a non-empty string", repr(job_id))
    return job_id


class Journal:
    """At-most-once job execution and result retry, in `<state_dir>/journal.jsonl`."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / FILE
        self._jobs: dict[str, _Job] = {}
        self._offset = 0      # bytes of the file already applied
        self._line = 0        # lines already applied (for J_CORRUPT's file:line)
        self._finishes = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self._refresh(locked=False)

    # --- reading ---

    def _refresh(self, locked: bool) -> None:
        """Apply what was appended since the last read. A last line without its newline is a
        write in progress (or, under the lock, a torn write from a crash: then it is cut)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            self._line += 1
            try:
                rec = json.loads(raw)
                self._apply(rec)
            except (ValueError, KeyError, TypeError) as exc:
                raise LoglineError("J_CORRUPT", f"unreadable journal record ({exc})",
                                   f"{self.path}:{self._line}") from None
        self._offset += end
        if locked and end < len(data):  # torn tail from a crash: no writer is active now
            os.truncate(self.path, self._offset)

    def _apply(self, rec: dict[str, Any]) -> None:
        kind, job_id = rec["t"], rec["job"]
        if kind == "begin":
            self._jobs.setdefault(job_id, _Job(job_id, rec.get("data")))
            return
        job = self._jobs[job_id]
        if kind == "op":
            job.ops[int(rec["index"])] = rec["result"]
        elif kind == "finish":
            if job.status is None:
                self._finishes += 1
                job.status, job.result, job.finish_seq = rec["status"], rec["result"], \
                    self._finishes
        elif kind == "ack":
            job.acked = True
        else:
            raise ValueError(f"unknown record type {kind!r}")

    # --- writing ---

    @contextmanager
    def _locked(self):
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._refresh(locked=True)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _append(self, rec: dict[str, Any]) -> None:
        rec = {"t": rec.pop("t"), "job": rec.pop("job"), "at": _now(), **rec}
        raw = (json.dumps(rec, separators=(",", ":")) + "\n").encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            written = 0
            while written < len(raw):
                written += os.write(fd, raw[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._refresh(locked=True)

    def _running(self, job_id: str) -> _Job:
        job = self._jobs.get(_job_id(job_id))
        if job is None or job.status is not None:
            raise LoglineError("J_NOT_RUNNING", "the job is not begun-and-unfinished", job_id)
        return job

    def begin(self, job_id: str, job: dict[str, Any]) -> bool:
        """Record that `job_id` starts now; False if it was ever begun (never run twice)."""
        _job_id(job_id)
        with self._locked():
            if job_id in self._jobs:
                return False
            self._append({"t": "begin", "job": job_id, "data": job})
            return True

    def op_done(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        """Record one op's result (execute()'s on_op)."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise LoglineError("J_BAD_ARGS", "an op index is a non-negative integer", job_id)
        with self._locked():
            self._running(job_id)
            self._append({"t": "op", "job": job_id, "index": index, "result": result})

    def finish(self, job_id: str, status: str, result: dict[str, Any]) -> None:
        """Record the job's outcome; it stays unacked until ack()."""
        if status not in FINISH_STATUSES:
            raise LoglineError("J_BAD_STATUS", f"status must be one of {FINISH_STATUSES}",
                               job_id)
        self._finish(job_id, status, result)

    def _finish(self, job_id: str, status: str, result: dict[str, Any]) -> None:
        if not isinstance(result, dict):
            raise LoglineError("J_BAD_ARGS", "a result is an object", job_id)
        with self._locked():
            self._running(job_id)
            self._append({"t": "finish", "job": job_id, "status": status, "result": result})

    def close_interrupted(self, job_id: str,
                          result: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish an interrupted job with status "interrupted" WITHOUT running it again. The
        result is `result` plus "ops_done": the op results the journal recorded, by index.
        Returns that result."""
        with self._locked():
            job = self._running(job_id)
            final = dict(result or {})
            final["ops_done"] = [job.ops[i] for i in sorted(job.ops)]
            self._append({"t": "finish", "job": job_id, "status": "interrupted",
                          "result": final})
        return final

    def ack(self, job_id: str) -> None:
        """The server acknowledged the result: stop sending it. Idempotent."""
        with self._locked():
            job = self._jobs.get(_job_id(job_id))
            if job is None:
                raise LoglineError("J_UNKNOWN_JOB", "no such job in the journal", job_id)
            if job.status is None:
                raise LoglineError("J_NOT_FINISHED", "a job is acked after it finishes", job_id)
            if not job.acked:
                self._append({"t": "ack", "job": job_id})

    # --- queries ---

    def job(self, job_id: str) -> dict[str, Any] | None:
        """What the journal knows of one job, or None."""
        self._refresh(locked=False)
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return {"job_id": job.id, "job": job.data, "ops": [job.ops[i] for i in sorted(job.ops)],
                "status": job.status, "result": job.result, "acked": job.acked}

    def interrupted(self) -> list[str]:
        """Jobs begun but never finished, in the order they were begun."""
        self._refresh(locked=False)
        return [j.id for j in self._jobs.values() if j.status is None]

    def unacked(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Finished results the server has not acknowledged: (job_id, status, result), in the
        order they finished."""
        self._refresh(locked=False)
        done = [j for j in self._jobs.values() if j.status is not None and not j.acked]
        done.sort(key=lambda j: j.finish_seq)
        return [(j.id, j.status, j.result) for j in done]  # type: ignore[misc]

    def status(self) -> dict[str, Any]:
        """Counts (begun, finished, unacked, interrupted) and the last job ids."""
        self._refresh(locked=False)
        jobs = list(self._jobs.values())
        finished = sorted((j for j in jobs if j.status is not None), key=lambda j: j.finish_seq)
        return {
            "begun": len(jobs),
            "finished": len(finished),
            "unacked": sum(1 for j in finished if not j.acked),
            "interrupted": sum(1 for j in jobs if j.status is None),
            "last_begun": jobs[-1].id if jobs else None,
            "last_finished": finished[-1].id if finished else None,
        }
