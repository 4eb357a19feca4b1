#!/usr/bin/env python
"""Pipeline benchmark: trivial function executions end to end through real `logline worker`
processes, beside the same workload on procrastinate (a PostgreSQL job queue), in one run.

    python tools/bench_pipeline.py [--quick] [--n 4000] [--latency-n 200] [--batch 32]
                                   [--no-peer] [--no-policies] [--variants] [--profile]
                                   [--json FILE] [--keep]

The peer is a benchmark comparison, not a dependency: `pip install -e ".[bench]"` (and
`pip install py-spy` for --profile). Without it the script says so and prints LogLine's
figures alone.

Starts its own embedded PostgreSQL in a temporary directory (or uses the server named by
LOGLINE_DATABASE_URL), creates two fresh databases on it (LogLine's, migrated and seeded, and
the peer's, with procrastinate's schema), then measures, in one run:

* throughput: N requests for a function whose code is `def main(input): return input`,
  scheduled in one append (stage0.ledger.store.append), drained by 1 and by 2 `python -m stage0.cli
  worker` processes (each with its own sandbox pool), with the seeded policies off and on;
  executions/s from the schedule's commit to the last request head with status complete
  (polled from the ledger against a deadline). The peer: the same N jobs (a task returning its
  input) deferred in one batch and drained by 1 and by 2 `procrastinate worker` processes at
  concurrency 1;
* latency: with the workers idle and LISTENing, requests one at a time at a steady pace
  (each after the previous one finished), from the schedule's commit to the commit of its
  completion, seen by LISTEN on a separate connection (the ledger's own NOTIFY for LogLine; for
  the peer a trigger added to its jobs table that notifies when a job succeeds);
* CPU per execution: worker processes (with their sandbox processes) and the PostgreSQL
  backends serving them (from /proc, when the server runs on this host);
* ceilings in the same run: the sandbox round trip of the same function, and recording an
  execution (execution span + the request's next seq, signed, one append per batch) alone;
* where the workers' database sessions are (pg_stat_activity sampled during the runs), and
  what run_code's daily quota count costs against the tenant's executions today;
* --variants: what-ifs that cost suggestions for stage0/ and kernels/ by patching the worker
  processes (never the repository), each between two as-shipped runs;
* --profile: py-spy (wall time) on one worker, while draining and while serving requests one
  at a time, split into the parts of a batch.

A benchmark never fails: it reports. docs/benchmarks.md ("Pipeline") holds a recorded run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tools"))  # also when run through `logline bench`

import psycopg  # noqa: E402
from bench_ingest import met, release, run_bench, table  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from rich.console import Console  # noqa: E402

from stage0 import keys  # noqa: E402
from stage0.config import Home, row_dir  # noqa: E402
from stage0.ledger import db, manifest, migrate, seed, store  # noqa: E402
from stage0.spans.proofs import public_key_hex  # noqa: E402

GOALS = {
    "one_worker_per_s": 1_000,   # executions/s with one worker process
    "vs_peer": 2.0,              # x procrastinate's jobs/s at equal concurrency
    "p50_ms": 10.0,              # schedule -> execution, p50
}
TENANT = "bench"
ECHO = "def main(input):\n    return input\n"
KERNEL_WORKER = "00000000-0000-4000-8000-000000000003"
POLICY_AGENT = "00000000-0000-4000-8000-000000000004"
SCHEDULE = {"request_worker": {"every_ms": 2000, "batch": 32},  # batch: --batch
            "observer_bot": {"every_ms": 60000},
            "policy_agent": {"every_ms": 60000, "batch": 200}}  # with policies off
POLICY_AGENT_DEFAULT = {"every_ms": 5000, "batch": 200}  # ROW/manifest, with policies on
PEER_APP = '''"""procrastinate app of tools/bench_pipeline.py (generated; removed after the run)."""
import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PEER_CONNINFO"]))


@app.task(name="echo")
def echo(input):
    return input
'''
PEER_DONE_TRIGGER = """
CREATE FUNCTION bench_job_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_done', NEW.id::text); RETURN NEW; END $$;
CREATE TRIGGER bench_job_done AFTER UPDATE OF status ON procrastinate_jobs
FOR EACH ROW WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION bench_job_done();
"""
#: What-ifs for the LogLine workers (--variants), each to cost a suggestion for stage0/ or
#: kernels/ without editing them: Python run in the worker before `logline worker` (a patch),
#: and/or the request worker's batch size in the manifest. Measurements, not LogLine as shipped.
VARIANTS: dict[str, dict[str, Any]] = {
    "no NOTIFY debounce (worker.POLICY_DEBOUNCE_S = 0)": {"processes": (1,), "patch": (
        "import stage0.runtime.worker as w\n"
        "w.POLICY_DEBOUNCE_S = 0\n")},
    "sign outside the append lock (costing only: the recount moves out too)": {
        "processes": (2,), "patch": (
        "import stage0.boot.capabilities as c\n"
        "import stage0.ledger as l\n"
        "from stage0.ledger.queries import q\n"
        "def lock_appends(self):\n"
        "    self._late_lock = True\n"
        "def append(self, spans):\n"
        "    if not getattr(self, '_late_lock', False):\n"
        "        return l.append(self._conn, spans, self._loader.key)\n"
        "    self._late_lock = False\n"
        "    prepared = l._prepare_all(self._conn, spans, self._loader.key, None)\n"
        "    self._conn.execute(q('append_lock'))\n"
        "    l.insert(self._conn, prepared)\n"
        "    return prepared\n"
        "c.KernelContext.lock_appends = lock_appends\n"
        "c.KernelContext.append = append\n")},
    "no daily quota count (costing only)": {"processes": (1,), "patch": (
        "import stage0.boot.capabilities as c\n"
        "sql = c.KernelContext.sql\n"
        "def no_count(self, query, params=None):\n"
        "    if query.startswith('SELECT count(*) AS n FROM ledger.universal_registry WHERE "
        "entity_type = \\'execution\\''):\n"
        "        return [{'n': 0}]\n"
        "    return sql(self, query, params)\n"
        "c.KernelContext.sql = no_count\n")},
    "request_worker batch 128 instead of 32 (manifest)": {"processes": (1,), "batch": 128},
}
VARIANTS["the first three"] = {"processes": (1, 2), "patch": "".join(
    v.get("patch", "") for v in list(VARIANTS.values())[:3])}
#: run_code's daily quota count (kernels/run_code.py COUNT_TODAY), timed after each run.
COUNT_TODAY = ("SELECT count(*) AS n FROM ledger.universal_registry WHERE entity_type = "
               "'execution' AND tenant_id = %(tenant)s AND at >= date_trunc('day', now() AT "
               "TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
console = Console(width=150)
#: Connection strings for other databases than the one this benchmark creates.
FOREIGN_ENV = ("LOGLINE_APP_DATABASE_URL", "LOGLINE_KERNEL_DATABASE_URL")


# ---------------------------------------------------------------------------------------------
# Processes and their CPU
# ---------------------------------------------------------------------------------------------

def proc_cpu(pid: int, with_reaped: bool = False) -> float | None:
    """CPU seconds of a process (and of its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@dataclass
class Cpu:
    """CPU seconds by part: the worker processes, their children (sandboxes), DB backends."""

    worker: float = 0.0
    sandbox: float = 0.0
    server: float | None = 0.0

    def __sub__(self, other: Cpu) -> Cpu:
        server = None if self.server is None or other.server is None \
            else self.server - other.server
        return Cpu(self.worker - other.worker, self.sandbox - other.sandbox, server)

    def total(self) -> float:
        return self.worker + self.sandbox + (self.server or 0.0)


class Proc:
    """A worker subprocess in its own session; stdout and stderr go to files."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, env={**env, "PGAPPNAME": name}, cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.01,
             check: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# The two systems, behind one small interface
# ---------------------------------------------------------------------------------------------

class System:
    """What the measurements need from a job system."""

    name = ""
    procs: list[Proc]
    conn: psycopg.Connection

    def start(self, processes: int, label: str) -> None: ...
    def submit(self, n: int) -> list[str]: ...
    def submit_one(self) -> str: ...
    def pending(self) -> int: ...
    def listen(self) -> psycopg.Connection: ...
    def is_done(self, payload: str, job: str) -> bool: ...
    def outcome(self, ids: list[str]) -> dict[str, int]: ...

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs = []

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")

    def backend_pids(self) -> list[int]:
        names = [p.name for p in self.procs]
        return [r["pid"] for r in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,))]

    def cpu(self, backends: list[int]) -> Cpu:
        cpu = Cpu()
        for p in self.procs:
            cpu.worker += proc_cpu(p.pid, with_reaped=True) or 0.0
            cpu.sandbox += sum(proc_cpu(c) or 0.0 for c in children(p.pid))
        for pid in backends:
            value = proc_cpu(pid)
            if value is None or cpu.server is None:
                cpu.server = None
            else:
                cpu.server += value
        return cpu


class LogLine(System):
    name = "LogLine"

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.database = bench.database
        self.key = bench.key
        self.conn = self.database.connect("kernel")
        self.procs = []
        self.env = {**{k: v for k, v in os.environ.items() if k not in FOREIGN_ENV},
                    "LOGLINE_HOME": str(bench.home.path),
                    "LOGLINE_DATABASE_URL": self.database.admin_url}
        manifest.amend(self.conn, self.key, throttle={"per_tenant_daily_exec_limit": 10**9})
        self.i = 0
        self.variant: str | None = None
        self.tenants: list[str] = []
        self.use_tenant("warm")

    def use_tenant(self, label: str) -> None:
        """A function in a tenant of its own: each run starts with no executions today, so
        run_code's daily quota count (which grows with them) weighs the same in every run."""
        self.tenant = f"{TENANT}-{label}"
        self.tenants.append(self.tenant)
        [self.function] = store.append(self.conn, [{
            "entity_type": "function", "who": "bench", "did": "defined", "this": "echo",
            "name": "echo", "code": ECHO, "language": "python", "owner_id": "bench",
            "tenant_id": self.tenant, "visibility": "tenant", "status": "active"}], self.key)

    def set_policies(self, active: bool) -> int:
        """Every seeded policy's next seq with status active (on) or disabled (off)."""
        want = "active" if active else "disabled"
        heads = [store.head(self.conn, r["id"]) for r in self.conn.execute(
            "SELECT id::text AS id FROM ledger.span_heads WHERE entity_type = 'policy'")]
        drafts = [{k: v for k, v in h.items() if k not in (
            "seq", "prev_hash", "curr_hash", "signature", "public_key", "at")}
            | {"status": want} for h in heads if h and h["status"] != want]
        if drafts:
            store.append(self.conn, drafts, self.key)
        return len(heads)

    def start(self, processes: int, label: str) -> None:
        self.use_tenant(label)
        batch = VARIANTS[self.variant].get("batch") if self.variant else None
        schedule = json.loads(json.dumps(SCHEDULE))
        schedule["request_worker"]["batch"] = batch or self.bench.args.batch
        if self.bench.policies_on:  # the seeded manifest's own schedule for the agent
            schedule["policy_agent"] = dict(POLICY_AGENT_DEFAULT)
        if (manifest.latest(self.conn, public_key_hex(self.key))["metadata"] or {}).get(
                "schedule") != schedule:
            manifest.amend(self.conn, self.key, schedule=schedule)

        def argv(name: str) -> list[str]:
            if self.variant is None:
                return [sys.executable, "-m", "stage0.cli", "worker", "--id", name]
            return [sys.executable, "-c", VARIANTS[self.variant].get("patch", "") +
                    "import sys\n"
                    "from stage0.cli.main import main\n"
                    f"sys.exit(main(['worker', '--id', {name!r}]))\n"]

        self.procs = [Proc(f"logline-{label}-{k}", argv(f"logline-{label}-{k}"), self.env,
                           self.bench.tmp) for k in range(processes)]
        names = [p.name for p in self.procs]
        # Ready: each worker finished its first cycle (the policy agent, booted last, left a
        # boot_event naming it).
        wait_for(lambda: self.conn.execute(
            "SELECT count(DISTINCT metadata ->> 'worker') AS n FROM ledger.universal_registry "
            "WHERE entity_type = 'boot_event' AND parent_id = %s AND metadata ->> 'worker' "
            "= ANY(%s)", (POLICY_AGENT, names)).fetchone()["n"] == len(names),
            60, "the LogLine workers to start", 0.05, self.check_alive)

    def _requests(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self.i += 1
            out.append({
                "entity_type": "request", "who": "bench", "did": "scheduled", "this": "echo",
                "parent_id": self.function["id"], "owner_id": "bench",
                "tenant_id": self.tenant,
                "visibility": "tenant", "status": "scheduled", "input": {"i": self.i},
                "trace_id": str(uuid.uuid4()),
                "metadata": {"function_seq": self.function["seq"]}})
        return out

    def submit(self, n: int) -> list[str]:
        return [s["id"] for s in store.append(self.conn, self._requests(n), self.key)]

    def submit_one(self) -> str:
        return self.submit(1)[0]

    def pending(self) -> int:
        return self.conn.execute(
            "SELECT count(*) AS n FROM ledger.span_heads WHERE entity_type = 'request' "
            "AND status = 'scheduled' AND tenant_id = %s", (self.tenant,)).fetchone()["n"]

    def listen(self) -> psycopg.Connection:
        listener = self.database.connect("kernel")
        listener.execute("LISTEN timeline_updates")
        return listener

    def is_done(self, payload: str, job: str) -> bool:
        note = json.loads(payload)
        return note.get("id") == job and note.get("seq", 0) >= 1

    def outcome(self, ids: list[str]) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, count(*) AS n FROM ledger.span_heads WHERE id = ANY(%s::uuid[]) "
            "GROUP BY status", (ids,)).fetchall()
        runs = self.conn.execute(
            "SELECT count(*) AS n FROM ledger.universal_registry WHERE entity_type = "
            "'execution' AND related_to && %s::uuid[]", (ids,)).fetchone()["n"]
        return {**{r["status"]: r["n"] for r in rows}, "executions": runs}

    def policies_behind(self) -> int:
        """Spans the active (non-sweep) policies have not evaluated yet."""
        behind = 0
        for p in self.conn.execute(
                "SELECT r.id::text AS id, r.metadata FROM ledger.span_heads h JOIN "
                "ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq WHERE "
                "h.entity_type = 'policy' AND h.status = 'active'").fetchall():
            types = (p["metadata"] or {}).get("on_entity_types")
            if not types or (p["metadata"] or {}).get("sweep_entity_types"):
                continue
            cursor = self.conn.execute(
                "SELECT metadata FROM ledger.latest_spans WHERE entity_type = 'policy_cursor' "
                "AND metadata ->> 'policy_id' = %s", (p["id"],)).fetchone()
            after = ((cursor or {}).get("metadata") or {}).get("position", 0)
            behind += self.conn.execute(
                "SELECT count(*) AS n FROM ledger.universal_registry WHERE position > %s "
                "AND entity_type = ANY(%s)", (after, types)).fetchone()["n"]
        return behind

    def quota_count(self, tenants: list[str]) -> dict[str, Any]:
        """What run_code's daily quota count costs (it runs twice per batch), for a tenant with
        as many executions today as these tenants together (the same index range scan)."""
        sql = COUNT_TODAY.replace("tenant_id = %(tenant)s", "tenant_id = ANY(%(tenant)s)")
        n = self.conn.execute(sql, {"tenant": tenants}).fetchone()["n"]
        times = []
        for _ in range(7):
            t = time.perf_counter()
            self.conn.execute(sql, {"tenant": tenants}).fetchone()
            times.append((time.perf_counter() - t) * 1000)
        return {"executions_today": n, "ms": statistics.median(times)}


class Peer(System):
    name = "procrastinate"

    def __init__(self, bench: Bench) -> None:
        import procrastinate

        self.version = procrastinate.__version__ if hasattr(procrastinate, "__version__") \
            else _version("procrastinate")
        self.bench = bench
        server = bench.server
        assert server is not None
        self.dbname = f"logline_bench_peer_{uuid.uuid4().hex[:8]}"
        with server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.conninfo = server.with_dbname(self.dbname).admin_url
        (bench.tmp / "bench_peer_app.py").write_text(PEER_APP)
        self.env = {**os.environ, "BENCH_PEER_CONNINFO": self.conninfo,
                    "PYTHONPATH": os.pathsep.join([str(bench.tmp), os.environ.get(
                        "PYTHONPATH", "")]).rstrip(os.pathsep)}
        os.environ["BENCH_PEER_CONNINFO"] = self.conninfo
        sys.path.insert(0, str(bench.tmp))
        import bench_peer_app

        self.app = bench_peer_app.app
        self.task = bench_peer_app.echo
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
        self.procs = []
        self.i = 0

    def close(self) -> None:
        self.stop()
        self.app.close()
        self.conn.close()

    def start(self, processes: int, label: str, concurrency: int = 1) -> None:
        self.procs = [Proc(f"peer-{label}-{k}", [
            sys.executable, "-m", "procrastinate", "--app=bench_peer_app.app", "worker",
            f"--concurrency={concurrency}", f"--name=peer-{label}-{k}"],
            self.env, self.bench.tmp) for k in range(processes)]
        names = [p.name for p in self.procs]
        # Ready: each worker has both its connections (pool + LISTEN) open.
        wait_for(lambda: self.conn.execute(
            "SELECT count(DISTINCT application_name) AS n FROM pg_stat_activity WHERE "
            "application_name = ANY(%s) AND query ILIKE 'LISTEN%%'", (names,)
        ).fetchone()["n"] == len(names), 60, "the procrastinate workers to start", 0.05,
            self.check_alive)

    def submit(self, n: int) -> list[str]:
        payloads = []
        for _ in range(n):
            self.i += 1
            payloads.append({"input": {"i": self.i}})
        return [str(i) for i in self.task.batch_defer(*payloads)]

    def submit_one(self) -> str:
        self.i += 1
        return str(self.task.defer(input={"i": self.i}))

    def pending(self) -> int:
        return self.conn.execute("SELECT count(*) AS n FROM procrastinate_jobs "
                                 "WHERE status IN ('todo', 'doing')").fetchone()["n"]

    def listen(self) -> psycopg.Connection:
        self.conn.execute(PEER_DONE_TRIGGER)
        listener = psycopg.connect(self.conninfo, autocommit=True)
        listener.execute("LISTEN bench_done")
        return listener

    def unlisten(self) -> None:
        self.conn.execute("DROP TRIGGER bench_job_done ON procrastinate_jobs; "
                          "DROP FUNCTION bench_job_done()")

    def is_done(self, payload: str, job: str) -> bool:
        return payload == job

    def outcome(self, ids: list[str]) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs "
            "WHERE id = ANY(%s::bigint[]) GROUP BY status", ([int(i) for i in ids],)).fetchall()
        return {r["status"]: r["n"] for r in rows}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------

def throughput(system: System, n: int, deadline_s: float, warmup: int) -> dict[str, Any]:
    """Submit n jobs in one transaction to idle workers; time from its commit until none is
    pending. Returns the figures (partial if the deadline passed)."""
    warm = system.submit(warmup)
    wait_for(lambda: system.pending() == 0, 120, "the warm-up jobs", 0.02, system.check_alive)
    behind_at_start = None
    if isinstance(system, LogLine) and system.bench.policies_on:
        try:
            wait_for(lambda: system.policies_behind() == 0, deadline_s,
                     "the policy agent to catch up", 0.05, system.check_alive)
        except TimeoutError:
            behind_at_start = system.policies_behind()
    del warm
    backends = system.backend_pids()
    names = [p.name for p in system.procs]
    states: collections.Counter[str] = collections.Counter()
    before = system.cpu(backends)
    t = time.perf_counter()
    ids = system.submit(n)
    t0 = time.perf_counter()
    submit_us = (t0 - t) * 1e6 / n
    first = None
    left = n
    while left > 0 and time.perf_counter() - t0 < deadline_s:
        left = system.pending()
        if first is None and left < n:
            first = time.perf_counter() - t0
        if left:
            system.check_alive()
            sample_states(system.conn, names, states)
            time.sleep(0.01)
    seconds = time.perf_counter() - t0
    after = system.cpu(backends)
    done = n - left
    cpu = after - before
    out: dict[str, Any] = {
        "n": n, "done": done, "seconds": round(seconds, 3), "per_s": done / seconds,
        "first_s": first, "submit_us": submit_us, "timed_out": left > 0,
        "policies_behind_at_start": behind_at_start,
        "outcome": system.outcome(ids),
        "backend_states": {k: v / max(1, sum(states.values()))
                           for k, v in states.most_common()},
        "cpu_ms": {"worker": cpu.worker * 1000 / max(done, 1),
                   "sandbox": cpu.sandbox * 1000 / max(done, 1),
                   "server": None if cpu.server is None else cpu.server * 1000 / max(done, 1),
                   "total": cpu.total() * 1000 / max(done, 1)},
    }
    if isinstance(system, LogLine) and system.bench.policies_on:
        t = time.perf_counter()
        try:
            wait_for(lambda: system.policies_behind() == 0, deadline_s, "the policy agent",
                     0.05, system.check_alive)
            out["policies_caught_up_s"] = round(seconds + time.perf_counter() - t, 3)
        except TimeoutError:
            out["policies_behind"] = system.policies_behind()
    return out


def sample_states(conn: psycopg.Connection, names: list[str],
                  states: collections.Counter[str]) -> None:
    """What the workers' database sessions (not their LISTEN sessions) are doing now."""
    for r in conn.execute(
            "SELECT state, wait_event_type AS wt, wait_event AS we FROM pg_stat_activity "
            "WHERE application_name = ANY(%s) AND query NOT ILIKE 'LISTEN%%'", (names,)):
        label = r["state"] or "?"
        if r["state"] == "active":
            label += f" ({r['wt']}: {r['we']})" if r["wt"] else " (running)"
        states[label] += 1


def latency(system: System, n: int, rate: float) -> dict[str, Any]:
    """n jobs, one at a time, at most `rate` per second, each after the previous finished:
    milliseconds from the submit's commit (its return) to the completion's NOTIFY."""
    listener = system.listen()
    try:
        for _ in range(5):  # warm: connections, prepared statements, code caches
            _one(system, listener, 30)
        times, calls = [], []
        next_at = time.perf_counter()
        for _ in range(n):
            now = time.perf_counter()
            if next_at > now:
                time.sleep(next_at - now)  # the pace of the workload, not a wait for work
            call, lat = _one(system, listener, 30)
            times.append(lat)
            calls.append(call)
            next_at = max(next_at + 1 / rate, time.perf_counter())
    finally:
        listener.close()
        if isinstance(system, Peer):
            system.unlisten()
    return {"n": n, "rate": rate, "p50_ms": statistics.median(times),
            "p90_ms": pct(times, 90), "p99_ms": pct(times, 99), "max_ms": max(times),
            "min_ms": min(times), "submit_p50_ms": statistics.median(calls)}


def _one(system: System, listener: psycopg.Connection, timeout: float) -> tuple[float, float]:
    t = time.perf_counter()
    job = system.submit_one()
    committed = time.perf_counter()
    deadline = committed + timeout
    while True:
        for note in listener.notifies(timeout=max(0.0, deadline - time.perf_counter())):
            if system.is_done(note.payload, job):
                done = time.perf_counter()
                return (committed - t) * 1000, (done - committed) * 1000
        if time.perf_counter() > deadline:
            system.check_alive()
            raise TimeoutError(f"{system.name}: job {job} did not finish in {timeout} s")


# ---------------------------------------------------------------------------------------------
# Ceilings: the two halves of an execution, alone, in this process
# ---------------------------------------------------------------------------------------------

def ceilings(bench: Bench, n: int) -> dict[str, Any]:
    from stage0.sandbox.pool import SandboxPool

    out: dict[str, Any] = {}
    with SandboxPool(size=1) as pool:
        for i in range(200):
            pool.run(ECHO, {"i": i})
        cpu0, t = _own_cpu(), time.perf_counter()
        worker = pool._idle[0].pid  # noqa: SLF001 - the benchmark reads the worker's CPU
        w0 = proc_cpu(worker) or 0.0
        for i in range(n):
            pool.run(ECHO, {"i": i})
        seconds = time.perf_counter() - t
        out["sandbox"] = {"per_s": n / seconds,
                          "cpu_us": ((_own_cpu() - cpu0) + (proc_cpu(worker) or 0.0) - w0)
                          * 1e6 / n}
    # Recording: the spans run_code appends per execution (execution + request's next seq),
    # 32 executions per append, as one batch of the request worker does (without the claim,
    # the quota count and the sandbox).
    sys_ = bench.logline
    assert sys_ is not None
    reqs = store.append(sys_.conn, sys_._requests(n), bench.key)  # noqa: SLF001
    with bench.database.connect("kernel") as conn:
        pid = conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
        s0, cpu0, t = proc_cpu(pid), _own_cpu(), time.perf_counter()
        for k in range(0, n, 32):
            spans = []
            for r in reqs[k:k + 32]:
                ex = {"entity_type": "execution", "who": "run_code", "did": "executed",
                      "this": "echo", "parent_id": r["parent_id"], "related_to": [r["id"]],
                      "owner_id": "bench", "tenant_id": sys_.tenant, "visibility": "tenant",
                      "status": "complete", "input": r["input"], "output": r["input"],
                      "duration_ms": 0, "trace_id": r["trace_id"],
                      "metadata": {"function_seq": 0, "function_hash": "0" * 64,
                                   "cpu_ms": 0, "stdout": None, "kernel": {"id": "x"}}}
                done = {k2: v for k2, v in r.items() if k2 not in (
                    "at", "seq", "prev_hash", "curr_hash", "signature", "public_key")}
                done.update(seq=r["seq"] + 1, prev_hash=r["curr_hash"], status="complete",
                            metadata={**r["metadata"], "execution_id": str(uuid.uuid4())})
                spans += [ex, done]
            with conn.transaction():
                store.append(conn, spans, bench.key)
        seconds = time.perf_counter() - t
        server = proc_cpu(pid)
        out["record"] = {"per_s": n / seconds, "cpu_us": (_own_cpu() - cpu0) * 1e6 / n,
                         "server_us": None if server is None or s0 is None
                         else (server - s0) * 1e6 / n}
    return out


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------------------------------------
# Profiling a worker with py-spy (an extra run, never a measured figure)
# ---------------------------------------------------------------------------------------------

def profile(bench: Bench, n: int, latency_n: int) -> dict[str, Any]:
    """py-spy (wall time, --idle) on one as-shipped worker: while it drains n requests, and
    while it serves latency_n requests one at a time."""
    spy = shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    system = bench.logline
    assert system is not None
    system.start(1, "profile")
    out: dict[str, Any] = {}

    def drain(jobs: int) -> None:
        system.submit(jobs)
        wait_for(lambda: system.pending() == 0, 300, "the profiled run", 0.02,
                 system.check_alive)

    try:
        drain(200)  # warm-up
        for what, rate, jobs, work in (
                ("throughput", 250, n, lambda: drain(n)),
                ("latency", 1000, latency_n + 5,
                 lambda: latency(system, latency_n, bench.args.rate))):
            path = bench.tmp / f"profile-{what}.txt"
            rec = subprocess.Popen([spy, "record", "--pid", str(system.procs[0].pid), "--idle",
                                    "--rate", str(rate), "--format", "raw", "--nonblocking",
                                    "-o", str(path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            # py-spy says nothing when it has attached (to a pipe); it takes a fraction of a
            # second, and only busy samples are counted, so a short head start is enough.
            time.sleep(0.5)
            work()
            rec.send_signal(signal.SIGINT)
            err = rec.communicate(timeout=60)[1]
            out[what] = summarise_stacks(path.read_text(), rate, jobs) if path.exists() \
                else {"error": f"py-spy wrote nothing: {err[-500:]}"}
    finally:
        system.stop()
    return out


#: Where a busy worker's wall time goes: each sampled stack is counted once, under the first
#: of these parts whose pattern it contains (most specific first).
PARTS = (
    ("claim the batch (ledger.claim_requests_v2)", r"KernelContext\.claim_requests "),
    ("boot: read the manifest, check kernel heads (Loader.load)", r"Loader\.load "),
    ("run_code: check the function span (ctx.verified)", r"KernelContext\.verified "),
    ("run_code: daily quota counts (2 per batch)", r"quota_take "),
    ("sandbox round trip (parent side)", r"KernelContext\.sandbox "),
    ("wait for the append lock", r"KernelContext\.lock_appends "),
    ("append: normalise, hash, sign", r"_prepare_(all|rows) "),
    ("append: INSERT or COPY through the append trigger",
     r";(insert|_insert_if_new|_insert_rows) \([^;]*ledger\.py"),
    ("commit of the batch (WAL flush)",
     r"Loader\.boot \([^;]*\);_GeneratorContextManager\.__exit__"),
    ("BEGIN, SAVEPOINT and RELEASE round trips",
     r"Loader\.boot \([^;]*\);_GeneratorContextManager\.__enter__|"
     r"\(request_worker:\d+\);_GeneratorContextManager"),
    ("policy agent", r"policy_agent"),
    ("the rest (kernel glue, RestrictedPython guards, logging, drain loop)", r""),
)


def summarise_stacks(text: str, rate: int, n: int) -> dict[str, Any]:
    """Collapsed stacks (`a;b;c count`, py-spy --idle) -> the busy samples (a kernel boot on
    the stack) by part (PARTS), and the frames most often on top of them."""
    parts: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = busy = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        if "Worker._boot " not in stack:
            continue
        busy += k
        part = next(name for name, pattern in PARTS if re.search(pattern, stack))
        parts[part] += k
        own[_frame(stack.split(";")[-1])] += k
    return {"samples": total, "busy": busy, "rate": rate, "n": n,
            "parts": [(name, parts[name]) for name, _ in PARTS],
            "own": own.most_common(15)}


def _frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    return re.sub(r"\((?:[^()]*/)?([^/()]+)\)$", r"(\1)", frame.strip())


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="logline-pipe-")))
    results: dict[str, Any] = field(default_factory=lambda: {
        "throughput": [], "latency": [], "peer": None})
    server: db.Database | None = None
    database: db.Database | None = None
    logline: LogLine | None = None
    peer: Peer | None = None
    policies_on: bool = False

    def __post_init__(self) -> None:
        if os.geteuid() == 0:  # the embedded server runs as another user: let it traverse (only)
            self.tmp.chmod(0o711)
        self.home = Home(self.tmp / "home")
        self.external = bool(os.environ.get("LOGLINE_DATABASE_URL"))

    def setup(self) -> None:
        for var in FOREIGN_ENV:
            os.environ.pop(var, None)
        started = time.perf_counter()
        self.server = db.Database(os.environ["LOGLINE_DATABASE_URL"]) if self.external \
            else db.embedded(self.home)
        name = f"logline_bench_{uuid.uuid4().hex[:8]}"
        with self.server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            settings = {s: conn.execute(f"SHOW {s}").fetchone()[s] for s in (
                "server_version", "fsync", "synchronous_commit", "shared_buffers")}
        self.database = self.server.with_dbname(name)
        migrate.migrate(self.database)
        self.key, _ = keys.ensure_operator_key(self.home)
        with self.database.connect("kernel") as conn:
            seed.seed(conn, [row_dir()], self.key)
        self.logline = LogLine(self)
        self.logline.set_policies(False)
        self.results["meta"] = {
            "command": "python tools/bench_pipeline.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "load_avg_at_start": os.getloadavg(),
            "server": "LOGLINE_DATABASE_URL" if self.external else "embedded pgserver",
            "postgres": settings, "setup_seconds": round(time.perf_counter() - started, 1),
            "root_key": public_key_hex(self.key)[:16],
        }
        if self.args.no_peer:
            self.results["peer"] = {"skipped": "--no-peer"}
            return
        try:
            import procrastinate  # noqa: F401
        except ImportError:
            self.results["peer"] = {"skipped": "procrastinate is not installed: "
                                    "pip install procrastinate"}
            return
        self.peer = Peer(self)
        self.results["peer"] = {"version": self.peer.version}

    def teardown(self) -> None:
        for system in (self.logline, self.peer):
            if system is not None:
                system.stop()
        if self.peer is not None:
            self.peer.close()
        if self.logline is not None:
            self.logline.conn.close()
        if self.args.keep:
            console.print(f"[yellow]kept[/] {self.tmp} (server running)")
            return
        release(self.server, [self.database.dbname if self.database else None,
                              self.peer.dbname if self.peer else None],
                self.home, self.tmp, self.external)

    def step(self, what: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        with console.status(f"{what} ..."):
            value = fn()
        console.log(f"{what}: {time.perf_counter() - t:.1f} s "
                    f"(load average {os.getloadavg()[0]:.1f})")
        return value

    def measure(self, system: System, processes: int, label: str, policies: str,
                latency_too: bool, pair: str | None = None) -> None:
        """One throughput run (and optionally a latency run) with fresh worker processes.
        `pair`: this is the as-shipped baseline measured just before that what-if."""
        a = self.args
        variant = getattr(system, "variant", None)
        system.start(processes, label)
        try:
            r = throughput(system, a.n, a.deadline, a.warmup)
            self.results["throughput"].append({"system": system.name, "processes": processes,
                                               "concurrency": 1, "policies": policies,
                                               "variant": variant, "pair": pair, **r})
            if latency_too:
                lat = latency(system, a.latency_n, a.rate)
                self.results["latency"].append({"system": system.name,
                                                "processes": processes,
                                                "policies": policies, "variant": variant,
                                                "pair": pair, **lat})
        finally:
            system.stop()

    def what_if(self, k: int, name: str, variant: str | None, procs: int
                ) -> Callable[[], None]:
        ll = self.logline
        assert ll is not None
        latency_too = procs == 1 and ("debounce" in name or name == "the first three")
        label = f"{'v' if variant else 'b'}{k}-{procs}w"
        return lambda: self.measure(ll, procs, label, "off", latency_too,
                                    None if variant else name)

    def quota_scaling(self) -> list[dict[str, Any]]:
        ll = self.logline
        assert ll is not None
        run = [t for t in ll.tenants if t != f"{TENANT}-warm"]
        return [ll.quota_count(run[:k]) for k in sorted({1, max(1, len(run) // 2), len(run)})]

    def run_all(self) -> None:
        a = self.args
        ll = self.logline
        assert ll is not None
        self.results["ceilings"] = self.step(
            "ceilings (sandbox round trip, recording alone)", lambda: ceilings(self, a.n // 2))
        self.step("LogLine, 1 worker, policies off",
                  lambda: self.measure(ll, 1, "1w", "off", True))
        self.step("LogLine, 2 workers, policies off",
                  lambda: self.measure(ll, 2, "2w", "off", False))
        if self.peer is not None:
            peer = self.peer
            self.step("procrastinate, 1 worker",
                      lambda: self.measure(peer, 1, "1w", "-", True))
            self.step("procrastinate, 2 workers",
                      lambda: self.measure(peer, 2, "2w", "-", False))
        if not a.no_policies:
            ll.set_policies(True)
            self.policies_on = True
            self.step("LogLine, 1 worker, policies on",
                      lambda: self.measure(ll, 1, "1w-pol", "on", not a.quick))
            if not a.quick:
                self.step("LogLine, 2 workers, policies on",
                          lambda: self.measure(ll, 2, "2w-pol", "on", False))
            ll.set_policies(False)
            self.policies_on = False
        self.results["quota_count"] = self.step(
            "run_code's quota count, 1 tenant .. all tenants' executions", self.quota_scaling)
        if a.variants:
            # Each what-if between as-shipped runs with the same processes (A B B A, best of
            # two each): on a shared machine only neighbours in time compare, and other load
            # only ever slows a run down.
            for k, (name, spec) in enumerate(VARIANTS.items()):
                for procs in spec["processes"]:
                    for variant in (None, name, name, None):
                        ll.variant = variant
                        self.step(f"what-if: {variant or 'as shipped'}, {procs} worker(s)",
                                  self.what_if(k, name, variant, procs))
            ll.variant = None
        if a.profile:
            self.results["profile"] = self.step(
                "profile: py-spy on one worker (extra run, not measured)",
                lambda: profile(self, a.n, a.latency_n))


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The best of the matching runs: highest rate, lowest CPU, lowest latency (each apart)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not found:
        return None
    if "p50_ms" in found[0]:
        return min(found, key=lambda r: r["p50_ms"])
    top = dict(max(found, key=lambda r: r["per_s"]))
    top["cpu_ms"] = min((r["cpu_ms"] for r in found), key=lambda c: c["total"])
    return top


def report(results: dict[str, Any]) -> None:
    meta = results["meta"]
    pg = meta["postgres"]
    peer = results.get("peer") or {}
    console.print(f"\n[bold]LogLine pipeline benchmark[/]  {meta['date']}  {meta['cpus']} cores, "
                  f"load average at start {meta['load_avg_at_start'][0]:.1f}, Python "
                  f"{meta['python']}, PostgreSQL {pg['server_version']} ({meta['server']}; "
                  f"fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}), "
                  f"peer: " + (f"procrastinate {peer['version']}" if "version" in peer
                               else peer.get("skipped", "-")))
    if "skipped" in peer:
        console.print(f"[yellow]peer not measured: {peer['skipped']}[/]")

    t = table("Throughput: N trivial executions submitted in one transaction to idle workers, "
              "commit -> last completion",
              ["system", "worker processes", "policies", "jobs", "submit µs/job", "seconds",
               "per s", "first done after ms", "CPU ms/job: worker / sandbox / db = total",
               "outcome"],
              ("system", "outcome"))
    shipped = [r for r in results["throughput"]
               if not r.get("variant") and not r.get("pair")]
    a_deadline = meta.get("deadline", 0)
    for r in shipped:
        c = r["cpu_ms"]
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(r["outcome"].items()))
        if r["timed_out"]:
            outcome = f"[red]TIMED OUT {r['done']}/{r['n']}[/] " + outcome
        if r.get("policies_caught_up_s"):
            outcome += f"; policies caught up at {r['policies_caught_up_s']:.1f} s"
        if r.get("policies_behind"):
            outcome += (f"; [red]policies NOT caught up after {r['seconds'] + a_deadline:.0f} "
                        f"s: {r['policies_behind']:,} spans behind[/]")
        t.add_row(r["system"], f"{r['processes']} x concurrency {r['concurrency']}",
                  r["policies"], f"{r['n']:,}", fmt(r["submit_us"]), f"{r['seconds']:.2f}",
                  fmt(r["per_s"]),
                  fmt((r["first_s"] or 0) * 1000), f"{c['worker']:.2f} / {c['sandbox']:.2f} / "
                  f"{fmt(c['server'], 2)} = {c['total']:.2f}", outcome)
    console.print(t)

    t = table("Latency: one job at a time (each after the previous finished, at most "
              f"{results['latency'][0]['rate']:.0f}/s), submit's commit -> completion's NOTIFY"
              if results["latency"] else "Latency", ["system", "worker processes", "policies",
                                                     "jobs", "p50 ms", "p90 ms", "p99 ms",
                                                     "max ms", "min ms", "submit call p50 ms"],
              ("system",))
    for r in results["latency"]:
        if r.get("variant") or r.get("pair"):
            continue
        t.add_row(r["system"], str(r["processes"]), r["policies"], str(r["n"]),
                  fmt(r["p50_ms"], 1), fmt(r["p90_ms"], 1), fmt(r["p99_ms"], 1),
                  fmt(r["max_ms"], 1), fmt(r["min_ms"], 1), fmt(r["submit_p50_ms"], 1))
    console.print(t)

    t = table("Where the workers' database sessions were (sampled every ~10 ms during the "
              "throughput runs; LISTEN sessions left out)",
              ["system", "processes", "policies", "share of samples by state"], ("system",
                                                                               "share of samples "
                                                                               "by state"))
    for r in shipped:
        t.add_row(r["system"], str(r["processes"]), r["policies"], "; ".join(
            f"{k} {v:.0%}" for k, v in r["backend_states"].items() if v >= 0.01))
    console.print(t)
    counts = results.get("quota_count") or []
    if counts:
        t = table("run_code's daily quota count (run twice per batch) against the tenant's "
                  "executions today (measured on this run's tenants together, median of 7)",
                  ["executions today", "ms per count", "µs per counted row",
                   "ms per execution (2 counts / batch of 32)"])
        for qc in counts:
            t.add_row(f"{qc['executions_today']:,}", f"{qc['ms']:.2f}",
                      f"{qc['ms'] * 1000 / max(1, qc['executions_today']):.3f}",
                      f"{qc['ms'] * 2 / 32:.3f}")
        console.print(t)
    variants = [r for r in results["throughput"] if r.get("variant")]
    if variants:
        t = table("What-ifs: patched LogLine workers costing the suggestions (NOT LogLine as "
                  "shipped), policies off; each run twice between two as-shipped runs (best of "
                  "two each)",
                  ["variant", "processes", "per s: as shipped -> what-if",
                   "CPU ms/job: as shipped -> what-if", "latency p50 / p99 ms: as shipped -> "
                   "what-if"], ("variant",))
        done: set[tuple[str, int]] = set()
        for r in variants:
            if (r["variant"], r["processes"]) in done:
                continue
            done.add((r["variant"], r["processes"]))
            r = best(results["throughput"], variant=r["variant"], processes=r["processes"])
            base = best(results["throughput"], pair=r["variant"], processes=r["processes"])
            lat_v = best(results["latency"], variant=r["variant"], processes=r["processes"])
            lat_b = best(results["latency"], pair=r["variant"], processes=r["processes"])
            lat = (f"{lat_b['p50_ms']:.1f} / {lat_b['p99_ms']:.1f} -> {lat_v['p50_ms']:.1f} / "
                   f"{lat_v['p99_ms']:.1f}") if lat_v and lat_b else ""
            if base:
                t.add_row(r["variant"], str(r["processes"]),
                          f"{fmt(base['per_s'])} -> {fmt(r['per_s'])} "
                          f"({r['per_s'] / base['per_s']:.2f}x)",
                          f"{base['cpu_ms']['total']:.2f} -> {r['cpu_ms']['total']:.2f} "
                          f"({r['cpu_ms']['total'] / base['cpu_ms']['total']:.2f}x)", lat)
        console.print(t)

    ce = results.get("ceilings")
    if ce:
        sb, rec = ce["sandbox"], ce["record"]
        both = 1 / (1 / sb["per_s"] + 1 / rec["per_s"])
        t = table("Ceilings, same run, in one process (no worker, no claim, no quota count)",
                  ["what", "per s", "CPU µs each (ours + sandbox / db)"], ("what",))
        t.add_row("sandbox round trip of the same function (SandboxPool.run, warm, cached)",
                  fmt(sb["per_s"]), fmt(sb["cpu_us"]))
        t.add_row("record an execution: execution span + request's next seq, normalised, "
                  "hashed, signed, 32 per append", fmt(rec["per_s"]),
                  f"{fmt(rec['cpu_us'])} / {fmt(rec['server_us'])}")
        t.add_row("both in sequence (1 / (1/a + 1/b)): one worker's ceiling", fmt(both), "")
        console.print(t)

    # Goals
    rows = results["throughput"]
    one = find(rows, system="LogLine", processes=1, policies="off", variant=None)
    two = find(rows, system="LogLine", processes=2, policies="off", variant=None)
    p1 = find(rows, system="procrastinate", processes=1)
    p2 = find(rows, system="procrastinate", processes=2)
    lat = find(results["latency"], system="LogLine", policies="off", variant=None)
    plat = find(results["latency"], system="procrastinate")
    t = table("Goals (issue 3, item 8)", ["goal", "LogLine", "procrastinate", "ratio", "met"],
              ("goal",))
    if one:
        t.add_row(f">= {GOALS['one_worker_per_s']:,} executions/s with one worker process",
                  fmt(one["per_s"]), fmt(p1["per_s"]) if p1 else "-",
                  f"{one['per_s'] / p1['per_s']:.2f}x" if p1 else "",
                  met(one["per_s"] >= GOALS["one_worker_per_s"]))
    for ours, theirs, what in ((one, p1, "1 process each"), (two, p2, "2 processes each")):
        if ours and theirs:
            ratio = ours["per_s"] / theirs["per_s"]
            t.add_row(f">= {GOALS['vs_peer']:.0f}x procrastinate's throughput, {what}",
                      fmt(ours["per_s"]), fmt(theirs["per_s"]), f"{ratio:.2f}x",
                      met(ratio >= GOALS["vs_peer"]))
    if lat:
        t.add_row(f"p50 schedule -> execution under {GOALS['p50_ms']:.0f} ms",
                  f"{lat['p50_ms']:.1f} ms", f"{plat['p50_ms']:.1f} ms" if plat else "-",
                  f"{lat['p50_ms'] / plat['p50_ms']:.2f}x" if plat else "",
                  met(lat["p50_ms"] < GOALS["p50_ms"]))
    if one and p1:
        t.add_row("CPU per execution, 1 process (all processes + db backends)",
                  f"{one['cpu_ms']['total']:.2f} ms", f"{p1['cpu_ms']['total']:.2f} ms",
                  f"{one['cpu_ms']['total'] / p1['cpu_ms']['total']:.2f}x", "")
    console.print(t)

    t = table("What one execution includes", ["", "LogLine", "procrastinate"], ("",))
    for row in (
        ("job record", "request span (signed at schedule) + its next seq (complete) + an "
         "execution span: 3 spans normalised, BLAKE3-hashed and Ed25519-signed, each through "
         "the append trigger (chain check, head row, NOTIFY)", "one row inserted, then updated "
         "(doing, succeeded)"),
        ("code trust", "the function span's hash and signature checked, key trusted by the "
         "manifest (cached per digest); every batch re-reads the manifest (signature checked) "
         "and the kernels' heads (boot)", "none: the task is imported Python"),
        ("isolation", "RestrictedPython in a separate sandbox process (no fs, net, env; CPU, "
         "memory, wall, output limits); input and output JSON-checked on both sides",
         "runs in the worker process"),
        ("accounting", "per-tenant daily quota counted under the ledger's append lock; "
         "execution recorded with duration, CPU, stdout, kernel version", "none"),
        ("exactly once", "claim = row lock on the request head; completion appended in the "
         "claiming transaction", "status update with a worker id; stalled-job recovery"),
    ):
        t.add_row(*row)
    console.print(t)

    prof = results.get("profile") or {}
    if "error" in prof:
        console.print(f"[yellow]profile: {prof['error']}[/]")
    for what, p in prof.items():
        if what == "error":
            continue
        if "error" in p:
            console.print(f"[yellow]profile of the {what} run: {p['error']}[/]")
            continue
        busy, per = p["busy"], 1000 / p["rate"] / p["n"]
        doing = (f"draining {p['n']:,} requests" if what == "throughput" else
                 f"serving {p['n']:,} requests one at a time")
        t = table(f"py-spy on one as-shipped worker {doing} (extra run, not measured): "
                  f"{busy:,} busy samples (a kernel boot on the stack) of {p['samples']:,} at "
                  f"{p['rate']} Hz; wall time, waits included; the sandbox processes run as "
                  "another user and are not sampled",
                  ["part", "samples", "share of busy", "ms per execution"], ("part",))
        for name, k in p["parts"]:
            t.add_row(name, f"{k:,}", f"{k / max(1, busy):.0%}", f"{k * per:.3f}")
        t.add_row("total", f"{busy:,}", "100%", f"{busy * per:.3f}")
        console.print(t)
        t = table(f"Frames most often on top of the busy stacks ({what} run)",
                  ["frame", "samples", "share of busy"], ("frame",))
        for frame, k in p["own"][:10]:
            t.add_row(frame, f"{k:,}", f"{k / max(1, busy):.0%}")
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--n", type=int, help="jobs per throughput run (default 4,000; "
                        "quick 1,000)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="jobs run before each throughput run (not timed)")
    parser.add_argument("--latency-n", type=int, help="jobs in the latency run (default 200; "
                        "quick 50)")
    parser.add_argument("--batch", type=int, default=32,
                        help="the request worker's batch (manifest schedule; default 32)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="at most this many latency jobs per second (default 20)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds a throughput run may take before it is reported partial")
    parser.add_argument("--no-peer", action="store_true", help="LogLine only")
    parser.add_argument("--no-policies", action="store_true",
                        help="skip the runs with the seeded policies on")
    parser.add_argument("--variants", action="store_true",
                        help="also measure patched LogLine workers that cost the suggestions "
                        "in docs/benchmarks.md (what-ifs, not LogLine as shipped)")
    parser.add_argument("--profile", action="store_true",
                        help="after the measurements, py-spy one worker draining --n requests "
                        "(pip install py-spy) and print where its time goes")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and the server")
    args = parser.parse_args(argv)
    args.n = args.n or (1_000 if args.quick else 4_000)
    args.latency_n = args.latency_n or (50 if args.quick else 200)

    bench = Bench(args)
    return run_bench(bench, args, report, n=args.n, deadline=args.deadline,
                     setup=lambda: bench.step("setup (server, two databases, migrate, seed)",
                                              bench.setup))


if __name__ == "__main__":
    sys.exit(main())
