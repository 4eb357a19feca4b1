"""`logline agent`: the governed local agent's loop.

It claims jobs of its tenant over HTTP (long-poll), runs each at most once inside its root
(the journal records a job as begun before anything is touched), and reports every result
until the server acknowledges it. On start it first closes jobs a crash interrupted (never
re-running them) and re-sends results the server has not acknowledged.

Job kinds: `plan` (what a destructive action would do, computed from the disk: the
approvers see it) and `execute` (safe actions directly; destructive ones run exactly the
approved plan, every file checked against its planned hash and inode).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stage0.agent.client import Client
from stage0.agent.fsops import ACTIONS, FsRefused, Root
from stage0.agent.journal import Journal
from stage0.errors import LoglineError
from stage0.log import log

CONFIG = "config.json"
#: The personal_ops actions this agent performs (it claims no other job).
PERFORMS = ("list_files", "detect_duplicates", "suggest_cleanup", "restore", *ACTIONS)
MAX_LISTED = 2000  # listings beyond this are cut (the result must fit an API body)
#: Waits between claims the server refused or could not answer: doubled each time, reset by
#: an answer. A refusal (4xx: a revoked key, a job the server cannot hand out, a limit) is
#: the server's to fix, not a reason for the agent to stop.
BACKOFF_MIN_S = 2.0
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class AgentConfig:
    url: str
    token: str
    root: str

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / CONFIG

    @classmethod
    def load(cls, state_dir: Path) -> AgentConfig:
        try:
            return cls(**json.loads(cls.path(state_dir).read_text()))
        except FileNotFoundError:
            raise LoglineError("AGENT_NOT_CONFIGURED", "run `logline agent configure --url "
                               "URL --token TOKEN --root DIR` first", str(state_dir)) from None
        except (ValueError, TypeError) as exc:
            raise LoglineError("AGENT_BAD_CONFIG", str(exc), str(cls.path(state_dir))) from None

    def save(self, state_dir: Path) -> None:
        """Written 0600 (it holds the token), atomically."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = state_dir / (CONFIG + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, self.path(state_dir))

    def redacted(self) -> dict[str, str]:
        key_id = self.token.split("_")[1] if self.token.count("_") >= 2 else "?"
        return {"url": self.url, "token": f"llk_{key_id}_…", "root": self.root}


def configure(state_dir: Path, url: str, token: str, root: str) -> dict[str, Any]:
    """Check the root, the server and the key (it must carry the agent role), then save."""
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise LoglineError("AGENT_BAD_ROOT", "not a directory", str(root_path))
    state = state_dir.resolve()
    if state == root_path or root_path in state.parents:
        raise LoglineError("AGENT_BAD_ROOT", "the agent's state directory may not be inside "
                           "its root (set LOGLINE_HOME elsewhere)", str(root_path))
    me = Client(url, token).get("/api/me")
    if "agent" not in me["roles"]:
        raise LoglineError("AGENT_ROLE_MISSING", f"key {me['key_id']} has roles "
                           f"{', '.join(me['roles'])}; issue one with --role agent")
    AgentConfig(url, token, str(root_path)).save(state_dir)
    return me


class _Stop(Exception):
    """Raised by a signal while the agent waits for work."""


class Agent:
    def __init__(self, state_dir: Path, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig.load(state_dir)
        self.client = Client(self.config.url, self.config.token)
        self.journal = Journal(state_dir)
        self.root = Root(self.config.root)
        self.stopping = threading.Event()
        self.busy = False  # a job (or the final flush) is in progress: signals wait for it

    # --- the loop -------------------------------------------------------------------------
    def run(self, once: bool = False, wait_s: float = 10.0) -> int:
        """Work until stopped (SIGTERM/SIGINT), or with `once` until no job is queued."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.log("agent_started", root=self.config.root, url=self.config.url)
        done = 0
        backoff = BACKOFF_MIN_S
        try:
            self.recover()
            while not self.stopping.is_set():
                try:
                    self.flush()
                    jobs = self.client.post("/api/jobs/claim", {
                        "limit": 4, "wait_s": 0 if once else wait_s,
                        "actions": list(PERFORMS)})["jobs"]
                except LoglineError as exc:
                    status = getattr(exc, "status", None)
                    if once or (exc.code != "API_UNREACHABLE" and status is None):
                        raise
                    self.log("claim_refused" if status and status < 500
                             else "server_unreachable", code=exc.code, status=status,
                             error=exc.message, retry_in_s=backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_MIN_S
                for job in jobs:
                    self.busy = True
                    done += self.handle(job)
                    self.busy = False
                if once and not jobs:
                    break
        except _Stop:
            pass  # stopped while waiting; a claim answered meanwhile is delivered again
        self.busy = True  # the final flush is not interrupted
        self.flush()
        self.log("agent_stopped", jobs=done, unacked=len(self.journal.unacked()))
        return done

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Mid-job: finish the job, then stop. Idle (waiting for work): stop now."""
        self.stopping.set()
        if not self.busy:
            raise _Stop

    def recover(self) -> None:
        for job_id in self.journal.interrupted():
            result = self.journal.close_interrupted(job_id, {"message": "the agent stopped "
                                                            "during this job; not re-run"})
            self.log("job_interrupted", job_id=job_id, ops_done=len(result.get("ops_done", [])))
        self.flush()

    def flush(self) -> None:
        """Send every result the server has not acknowledged (retried on the next call)."""
        for job_id, status, result in self.journal.unacked():
            try:
                self.client.post(f"/api/jobs/{job_id}/result",
                                 {"status": status, "output": result})
            except LoglineError as exc:
                if exc.code == "API_UNREACHABLE" or getattr(exc, "status", 500) >= 500:
                    self.log("result_not_sent", job_id=job_id, error=exc.message)
                    return
                # The server will never take it (another result is recorded, or the job is
                # gone): keep it locally, stop resending.
                self.log("result_refused", job_id=job_id, code=exc.code, error=exc.message)
            self.journal.ack(job_id)

    def handle(self, job: dict[str, Any]) -> int:
        if not self.journal.begin(job["id"], job):
            self.log("job_skipped", job_id=job["id"], why="already begun once")
            return 0
        self.log("job_started", job_id=job["id"], kind=job["kind"], job_action=job["action"])
        try:
            status, output = self.work(job)
        except FsRefused as exc:
            status, output = "failed", {"code": exc.code, "message": exc.message,
                                        "where": exc.where}
        self.journal.finish(job["id"], status, output)
        self.log("job_finished", job_id=job["id"], status=status)
        self.flush()
        return 1

    # --- the work -------------------------------------------------------------------------
    def work(self, job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        action, args = job["action"], job["args"]
        if job["kind"] == "plan":
            return "done", {"ops": self.root.plan(action, args)}
        if job.get("plan") is not None:
            results = self.root.execute(
                job["plan"], on_op=lambda i, r: self.journal.op_done(job["id"], i, r))
            return _summary(results)
        if action == "list_files":
            return "done", _capped("files", self.root.list_files(args["path"]))
        if action == "detect_duplicates":
            return "done", _capped("groups", self.root.detect_duplicates(args["path"]))
        if action == "suggest_cleanup":
            return "done", _capped("ops", self.root.suggest_cleanup(args["path"]))
        if action == "restore":
            return _summary(self.root.restore(args["paths"]))
        return "failed", {"code": "AGENT_NO_PLAN", "message": f"{action} needs an approved "
                          "plan and this job carries none"}

    def status(self) -> dict[str, Any]:
        return {"config": self.config.redacted(), "journal": self.journal.status()}

    def log(self, event: str, **fields: Any) -> None:
        log(event, component="agent", **fields)


def _summary(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    done = sum(1 for r in results if r["status"] == "done")
    status = "done" if done == len(results) else "failed"
    return status, {"results": results, "done": done, "refused": len(results) - done}


def _capped(name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: items[:MAX_LISTED], "count": len(items), "truncated": len(items) > MAX_LISTED}
