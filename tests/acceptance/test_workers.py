"""`logline worker` as real processes against real PostgreSQL: exactly-once execution with
several workers, kill -9 and SIGTERM mid-run, NOTIFY wake-up, new kernel versions without a
restart, the policy cursor under concurrent writers, and `logline demo`.

Workers are started as `python -m stage0.cli worker --id W` in their own session (so a
SIGKILL of the process group takes the whole worker down at once), with their stderr (the
structured JSON log) in a file. Nothing sleeps for a fixed time: every wait polls the ledger
(or the log) against a deadline.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import REPO
from helpers.cli import DB_ENV, Ran
from helpers.cli import logline as run_logline
from helpers.run import reachable_by_postgres

from stage0.boot.loader import Loader
from stage0.ledger import manifest, store, verify
from stage0.runtime.worker import KERNELS

RUN_CODE_ID = "00000000-0000-4000-8000-000000000001"
TENANT = "acme"
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")

#: A user function that spins for input["ms"] milliseconds of wall time (0: returns at once).
SPIN = '''import datetime


def main(input):
    ms = input.get("ms", 0)
    end = datetime.datetime.now() + datetime.timedelta(milliseconds=ms)
    spins = 0
    while datetime.datetime.now() < end:
        spins += 1
    return {"i": input.get("i"), "spins": spins}
'''


# --- helpers ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               every: float = 0.05) -> Any:
    """Poll `predicate` every `every` seconds until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class WorkerProcess:
    """One `logline worker` subprocess; its stderr (JSON log lines) goes to a file."""

    def __init__(self, worker_id: str, env: dict[str, str], log_dir: Path) -> None:
        self.id = worker_id
        self.stderr_path = log_dir / f"{worker_id}.stderr"
        self.stdout_path = log_dir / f"{worker_id}.stdout"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stage0.cli", "worker", "--id", worker_id],
                # PGAPPNAME names the worker's database sessions in pg_stat_activity.
                env={**env, "PGAPPNAME": worker_id}, cwd=REPO, stdout=out, stderr=err,
                start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log(self) -> list[dict[str, Any]]:
        """The structured log lines so far (a half-written last line is left out)."""
        lines = []
        for line in self.stderr().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def actions(self) -> list[str]:
        return [e.get("action") for e in self.log()]

    def signal_group(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def sandbox_children(self) -> list[int]:
        """Pids whose parent is this worker (its sandbox processes)."""
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                children.append(int(entry.name))
        return children

    def describe(self) -> str:
        return f"worker {self.id} (exit {self.proc.poll()}) stderr:\n{self.stderr()[-4000:]}"


@pytest.fixture
def env(home, seeded) -> dict[str, str]:
    return {**os.environ, "LOGLINE_HOME": str(home.path),
            "LOGLINE_DATABASE_URL": seeded.admin_url}


@pytest.fixture
def workers(env, tmp_path) -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(worker_id: str) -> WorkerProcess:
        w = WorkerProcess(worker_id, env, tmp_path)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            try:
                w.signal_group(signal.SIGKILL)
            except ProcessLookupError:
                pass
        w.proc.wait(timeout=30)


@pytest.fixture
def conn(seeded, operator) -> Iterator[psycopg.Connection]:
    """A kernel connection to a ledger whose daily quota does not get in the way."""
    with seeded.connect("kernel") as c:
        manifest.amend(c, operator, throttle={"per_tenant_daily_exec_limit": 10**6})
        yield c


def add_function(conn, operator, code: str = SPIN, tenant: str = TENANT) -> dict[str, Any]:
    [fn] = store.append(conn, [{
        "entity_type": "function", "who": "tester", "did": "defined", "this": "spin",
        "name": "spin", "code": code, "language": "python", "owner_id": "tester",
        "tenant_id": tenant, "visibility": "tenant", "status": "active"}], operator)
    return fn


def schedule_many(conn, operator, function: dict[str, Any], inputs: list[Any]) -> list[str]:
    """Append one scheduled request per input, all in one append (one transaction)."""
    spans = [{
        "entity_type": "request", "who": "tester", "did": "scheduled", "this": "spin",
        "parent_id": function["id"], "owner_id": "tester", "tenant_id": function["tenant_id"],
        "visibility": "tenant", "status": "scheduled", "input": payload,
        "trace_id": str(uuid.uuid4()), "metadata": {"function_seq": function["seq"]},
    } for payload in inputs]
    return [s["id"] for s in store.append(conn, spans, operator)]


def executions(conn, tenant: str = TENANT) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id::text AS id, seq, status, related_to, metadata, at FROM "
        "ledger.universal_registry WHERE entity_type = 'execution' AND tenant_id = %s "
        "ORDER BY position", (tenant,)).fetchall()
    for row in rows:
        row["related_to"] = [str(u) for u in row["related_to"] or []]
    return rows


def request_heads(conn, ids: list[str]) -> dict[str, str]:
    rows = conn.execute("SELECT id::text AS id, status FROM ledger.span_heads "
                        "WHERE id = ANY(%s::uuid[])", (ids,)).fetchall()
    return {r["id"]: r["status"] for r in rows}


def all_done(conn, ids: list[str]) -> bool:
    return all(s != "scheduled" for s in request_heads(conn, ids).values())


def assert_exactly_once(conn, ids: list[str]) -> None:
    """Every request is complete and named by exactly one execution; no other executions."""
    runs = executions(conn)
    per_request = Counter(r for e in runs for r in e["related_to"])
    twice = {r: n for r, n in per_request.items() if n > 1}
    assert not twice, f"requests executed more than once: {twice}"
    missing = set(ids) - set(per_request)
    assert not missing, f"{len(missing)} requests have no execution"
    assert len(runs) == len(ids), f"{len(runs)} executions for {len(ids)} requests"
    assert all(len(e["related_to"]) == 1 for e in runs)
    assert all(e["status"] == "complete" for e in runs), Counter(e["status"] for e in runs)
    heads = request_heads(conn, ids)
    assert Counter(heads.values()) == {"complete": len(ids)}, Counter(heads.values())


def assert_verifies(conn, home) -> None:
    report = verify.verify(conn, home.root_public_key(), jobs=1)
    assert report.ok, [(f.id, f.seq, f.reason, f.detail) for f in report.failures[:5]]


def boot_events(conn, function_id: str) -> list[dict[str, Any]]:
    return conn.execute("SELECT metadata FROM ledger.universal_registry WHERE entity_type = "
                        "'boot_event' AND parent_id = %s ORDER BY position",
                        (function_id,)).fetchall()


def claimed_by(*workers: WorkerProcess) -> int:
    """Requests the workers say (in their logs) they ran to completion."""
    return sum(e.get("claimed", 0) for w in workers for e in w.log()
               if e.get("action") == "requests_done")


def idle(conn, worker: WorkerProcess) -> bool:
    """The worker finished its first cycle: the policy agent (booted last) has a boot_event
    from it, so its request worker has already claimed whatever there was."""
    assert worker.proc.poll() is None, worker.describe()
    return any(e["metadata"].get("worker") == worker.id
               for e in boot_events(conn, KERNELS["policy_agent"]))


#: stage0/runtime/worker.py Worker._wait calls listener.notifies() again while the generator of an
#: outer listener.notifies() loop is still open; psycopg 3 holds the connection's
#: (non-reentrant) lock for a generator's whole life, so the first NOTIFY that arrives while
#: the worker waits deadlocks it for good. Everything after a worker's first cycle needs it.


# --- exactly once with several workers ----------------------------------------------------


@pytest.mark.slow
def test_three_workers_run_300_requests_exactly_once(conn, operator, home, workers):
    fn = add_function(conn, operator)
    pool = [workers(f"w{i}") for i in range(3)]
    ids = schedule_many(conn, operator, fn, [{"i": i} for i in range(300)])
    wait_until(lambda: all_done(conn, ids), 90, "300 requests to complete")
    assert_exactly_once(conn, ids)
    for w in pool:
        assert w.proc.poll() is None, w.describe()
    assert_verifies(conn, home)


@pytest.mark.slow
def test_two_workers_never_run_a_request_twice_and_both_do_work(conn, operator, workers):
    fn = add_function(conn, operator)
    a, b = workers("alpha"), workers("beta")
    wait_until(lambda: idle(conn, a) and idle(conn, b), 60, "both workers to start")
    # 20 ms each: a batch of 8 takes long enough that both workers are woken with work left.
    ids = schedule_many(conn, operator, fn, [{"i": i, "ms": 20} for i in range(120)])
    wait_until(lambda: all_done(conn, ids), 40, "120 requests to complete")
    assert_exactly_once(conn, ids)
    # A worker logs a batch just after committing it: wait for the logs to catch up.
    wait_until(lambda: claimed_by(a, b) >= len(ids), 10, "the workers to log their batches")
    claimed = {w.id: claimed_by(w) for w in (a, b)}
    assert sum(claimed.values()) == len(ids), claimed
    assert all(n > 0 for n in claimed.values()), f"one worker did all the work: {claimed}"


# --- kill -9 and SIGTERM mid-run ----------------------------------------------------------
# The requests are scheduled before the worker starts, so its first cycle drains them
# (request_worker runs again while it claims something) without waiting for a NOTIFY.


def mid_batch(conn, worker: WorkerProcess) -> bool:
    """The worker's request_worker transaction holds claimed request heads (a row lock on
    ledger.span_heads) and does not hold the append lock: it is running the batch in its
    sandbox, nothing recorded yet. (The first batch after a start also appends run_code's
    boot_event in that transaction, so it holds the append lock and is not matched.)"""
    assert worker.proc.poll() is None, worker.describe()
    rows = conn.execute(
        "SELECT a.pid, bool_or(l.locktype = 'relation' AND l.relation = "
        "'ledger.span_heads'::regclass AND l.mode = 'RowShareLock') AS claims, "
        "bool_or(l.locktype = 'advisory') AS appending "
        "FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE a.application_name = %s AND a.datname = current_database() "
        "AND a.state LIKE 'idle in transaction%%' GROUP BY a.pid", (worker.id,)).fetchall()
    return any(r["claims"] and not r["appending"] for r in rows)


def sessions(conn, worker: WorkerProcess) -> int:
    return conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s",
                        (worker.id,)).fetchone()["n"]


def state(pid: int) -> str | None:
    """The process state letter (R running, S sleeping, Z zombie), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z")


def batches(conn) -> list[int]:
    """Executions per recording transaction (rows one transaction inserted share an xmin)."""
    return [r["n"] for r in conn.execute(
        "SELECT count(*) AS n FROM ledger.universal_registry WHERE entity_type = 'execution' "
        "AND tenant_id = %s GROUP BY xmin::text", (TENANT,))]


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_and_completes_nothing_twice(conn, operator, home,
                                                                  workers):
    fn = add_function(conn, operator)
    # 300 ms per run, batches of 8: each batch holds its claims for ~2.4 s.
    ids = schedule_many(conn, operator, fn, [{"i": i, "ms": 300} for i in range(24)])
    victim = workers("victim")
    wait_until(lambda: mid_batch(conn, victim), 60, "the victim to be mid-batch")
    children = victim.sandbox_children()
    assert children, "the victim has no sandbox processes"
    before = len(executions(conn))
    victim.signal_group(signal.SIGKILL)
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    assert before < len(ids)
    # PostgreSQL sees the client gone and rolls its transaction back: the claims are free.
    wait_until(lambda: sessions(conn, victim) == 0, 30, "the victim's sessions to end")
    assert len(executions(conn)) == before, "a batch of the dead worker was recorded"
    # Its sandbox processes (in sessions of their own) notice the closed pipe and exit.
    wait_until(lambda: not any(alive(p) for p in children), 30,
               "the victim's sandbox processes to exit")
    survivors = [workers("s1"), workers("s2")]
    wait_until(lambda: all_done(conn, ids), 60, "the survivors to finish every request")
    assert_exactly_once(conn, ids)
    wait_until(lambda: claimed_by(*survivors) >= len(ids) - before, 10,
               "the survivors to log their batches")
    assert claimed_by(*survivors) == len(ids) - before, \
        "the survivors ran exactly what the victim did not"
    assert_verifies(conn, home)


@pytest.mark.slow
def test_sigterm_mid_run_exits_zero_and_its_batch_is_recorded_or_released(conn, operator,
                                                                          workers):
    fn = add_function(conn, operator)
    schedule = manifest.latest(conn, operator.verify_key.encode().hex())["metadata"]["schedule"]
    manifest.amend(conn, operator, schedule={  # batches of 8: a SIGTERM lands between batches
        **schedule, "request_worker": {**schedule["request_worker"], "batch": 8}})
    ids = schedule_many(conn, operator, fn, [{"i": i, "ms": 300} for i in range(24)])
    worker = workers("term")
    wait_until(lambda: mid_batch(conn, worker), 60, "the worker to be mid-batch")
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(timeout=30)
    took = time.monotonic() - sent
    assert code == 0, worker.describe()
    assert took < 10, f"took {took:.1f}s to stop"

    # Each batch was recorded as a whole (one transaction) or not at all, and what is not
    # complete is still scheduled, untouched: released for the next worker.
    assert set(batches(conn)) <= {8}, batches(conn)
    heads = request_heads(conn, ids)
    done = {i for i, s in heads.items() if s == "complete"}
    assert len(done) == 8 * len(batches(conn)) < len(ids), Counter(heads.values())
    assert set(heads.values()) <= {"complete", "scheduled"}, Counter(heads.values())
    assert {r for e in executions(conn) for r in e["related_to"]} == done

    lines = [ln for ln in worker.stderr().splitlines() if ln.strip()]
    log = [json.loads(ln) for ln in lines]  # every line is JSON...
    assert all(isinstance(e, dict) and "action" in e for e in log), lines  # ...with an action
    actions = [e["action"] for e in log]
    assert actions[0] == "worker_started" and actions[-1] == "worker_stopped", actions
    assert all(e["worker"] == "term" for e in log)
    assert log[-1]["request_worker"] >= 1  # the stop line carries the per-kernel counts

    # What it released is finished by a restarted worker, once.
    restarted = workers("term-2")
    wait_until(lambda: all_done(conn, ids), 60, "the restarted worker to finish")
    assert_exactly_once(conn, ids)
    assert restarted.proc.poll() is None, restarted.describe()


@pytest.mark.slow
def test_sigterm_to_worker_and_sandbox_finishes_in_flight_runs(conn, operator, workers):
    fn = add_function(conn, operator)
    ids = schedule_many(conn, operator, fn, [{"i": i, "ms": 300} for i in range(24)])
    worker = workers("stopped-by-systemd")

    def spinning() -> list[int]:  # mid-batch, and a sandbox process is running user code
        if not mid_batch(conn, worker):
            return []
        children = worker.sandbox_children()
        return children if any(state(p) == "R" for p in children) else []

    children = wait_until(spinning, 60, "a sandbox process to be running a request")
    for pid in [worker.pid, *children]:
        os.kill(pid, signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0, worker.describe()
    failed = [(e["related_to"], e["status"]) for e in executions(conn)
              if e["status"] != "complete"]
    errors = conn.execute("SELECT DISTINCT error ->> 'code' AS code FROM "
                          "ledger.universal_registry WHERE entity_type = 'execution' "
                          "AND status = 'error'").fetchall()
    assert not failed, f"{len(failed)} in-flight runs failed: {errors}"
    assert set(request_heads(conn, ids).values()) <= {"complete", "scheduled"}


def test_worker_that_loses_its_database_keeps_serving_or_exits_with_a_structured_log(
        conn, operator, workers):
    fn = add_function(conn, operator)
    worker = workers("dropped")
    wait_until(lambda: idle(conn, worker), 60, "the worker to start")
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = %s", (worker.id,))
    [request_id] = schedule_many(conn, operator, fn, [{"i": 1}])
    wait_until(lambda: worker.proc.poll() is not None or all_done(conn, [request_id]), 15,
               "the worker to reconnect and run the request, or to exit")
    if worker.proc.poll() is None:
        return  # it reconnected and kept serving
    assert worker.proc.returncode != 0
    lines = [ln for ln in worker.stderr().splitlines() if ln.strip()]
    unstructured = [ln for ln in lines if not ln.startswith("{")]
    assert not unstructured, "\n".join(unstructured[-8:])


# --- a worker on another machine ------------------------------------------------------------


def machine_home(tmp_path: Path, home, name: str):
    """The $LOGLINE_HOME of another machine: its own signing key, the operator's root pinned
    and the id secret copied from the operator's home (`logline keys id-secret`)."""
    from stage0 import keys
    from stage0.config import Home

    other = Home(tmp_path / name)
    key = keys.write_new_key(other.operator_key)
    other.write_config({"root_public_key": home.root_public_key()})
    keys.write_id_secret(other.keys / keys.ID_SECRET_FILE,
                         keys.id_secret(home, keys.operator_key(home)))
    return other, key.verify_key.encode().hex()


@pytest.mark.slow
def test_a_worker_with_its_own_trusted_key_signs_what_it_records(conn, operator, home, env,
                                                                 workers, tmp_path):
    other, public = machine_home(tmp_path, home, "machine-2")
    manifest.set_trust(conn, operator, public, "machine-2", trusted=True, role="platform")
    fn = add_function(conn, operator)
    ids = schedule_many(conn, operator, fn, [{"i": i} for i in range(5)])
    env["LOGLINE_HOME"] = str(other.path)
    worker = workers("machine-2")
    wait_until(lambda: all_done(conn, ids), 60, "the other machine's worker to run them")
    assert_exactly_once(conn, ids)
    signers = {r["public_key"] for r in conn.execute(
        "SELECT public_key FROM ledger.universal_registry WHERE entity_type IN "
        "('execution', 'boot_event') OR (entity_type = 'request' AND seq > 0)")}
    assert signers == {public}
    assert_verifies(conn, home)
    assert worker.proc.poll() is None, worker.describe()


@pytest.mark.slow
def test_a_worker_with_an_untrusted_key_records_nothing_unverifiable(conn, operator, home, env,
                                                                     workers, tmp_path):
    other, _ = machine_home(tmp_path, home, "rogue")
    fn = add_function(conn, operator)
    ids = schedule_many(conn, operator, fn, [{"i": 1}])
    env["LOGLINE_HOME"] = str(other.path)
    worker = workers("rogue")
    wait_until(lambda: worker.proc.poll() is not None or all_done(conn, ids), 30,
               "the worker to refuse to start or to run the request")
    assert_verifies(conn, home)


# --- NOTIFY wake-up and new kernel versions ------------------------------------------------


def test_a_request_wakes_an_idle_worker_at_once_not_at_the_next_poll(conn, operator, workers):
    schedule = manifest.latest(conn, operator.verify_key.encode().hex())["metadata"]["schedule"]
    manifest.amend(conn, operator, schedule={
        name: {**(schedule.get(name) or {}), "every_ms": 60_000} for name in KERNELS})
    fn = add_function(conn, operator)
    worker = workers("listener")
    wait_until(lambda: idle(conn, worker), 60, "the worker to finish its first cycle")
    [request_id] = schedule_many(conn, operator, fn, [{"i": 1}])
    started = time.monotonic()
    wait_until(lambda: all_done(conn, [request_id]), 5,
               "the request (a poll would take 60 s; NOTIFY should take ms)", every=0.01)
    assert time.monotonic() - started < 5
    [run] = executions(conn)
    assert run["related_to"] == [request_id] and run["status"] == "complete"


def next_version(conn, operator, kernel_id: str, marker: str) -> dict[str, Any]:
    """Append the next seq of a kernel: the same source with one more comment line."""
    head = store.head(conn, kernel_id)
    draft = {k: v for k, v in head.items() if k not in CHAIN_FIELDS}
    draft["code"] = head["code"] + f"\n# {marker}\n"
    [span] = store.append(conn, [draft], operator)
    assert span["seq"] == head["seq"] + 1
    return span


@pytest.mark.slow
def test_a_new_kernel_seq_is_used_without_a_restart(conn, operator, workers):
    fn = add_function(conn, operator)
    worker = workers("upgrader")
    wait_until(lambda: idle(conn, worker), 60, "the worker to start")
    [first] = schedule_many(conn, operator, fn, [{"i": 1}])
    wait_until(lambda: all_done(conn, [first]), 20, "the first request")
    assert executions(conn)[0]["metadata"]["kernel"]["seq"] == 0

    run_code = next_version(conn, operator, RUN_CODE_ID, "v2: same behaviour, new hash")
    request_worker = next_version(conn, operator, KERNELS["request_worker"], "v2")
    [second] = schedule_many(conn, operator, fn, [{"i": 2}])
    wait_until(lambda: all_done(conn, [second]), 20, "the second request")

    runs = executions(conn)
    assert [r["metadata"]["kernel"]["seq"] for r in runs] == [0, 1]
    assert runs[1]["metadata"]["kernel"]["curr_hash"] == run_code["curr_hash"]
    # run_code v2 ran the second request, so it was booted before it; the request worker
    # already in its cycle when v2 landed (under load it may have claimed the second request
    # itself) boots v2 on its next cycle, still without a restart.
    for kernel in (run_code, request_worker):
        wanted = {"function_seq": 1, "function_hash": kernel["curr_hash"], "worker": "upgrader"}
        wait_until(lambda k=kernel, w=wanted: w in [e["metadata"] for e in
                                                   boot_events(conn, k["id"])],
                   20, f"a boot_event of {kernel['id']} seq 1")
    assert worker.proc.poll() is None, worker.describe()
    assert worker.actions().count("worker_started") == 1


# --- the policy cursor under concurrent writers ----------------------------------------------

PROBE_TENANT = "probes"
ECHO_POLICY = """def main(span):
    return [{"emit_span": {"entity_type": "probe_seen", "this": span["id"], "status": "seen"}}]
"""


class Agent(threading.Thread):
    """A policy agent booted over and over by one thread, with its own loader."""

    def __init__(self, database, home, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.loader = Loader(database, home, worker_id=name)
        self.loader.conn.execute(f"SET application_name = '{name}'")
        self.stop = stop
        self.boots = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.loader.boot(KERNELS["policy_agent"], {"batch": 50})
                self.boots += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.loader.close()


@pytest.mark.slow
def test_policy_cursor_skips_and_repeats_nothing_under_concurrent_writers(
        conn, seeded, home, operator):
    [policy] = store.append(conn, [{
        "entity_type": "policy", "who": "tester", "did": "defined", "this": "echo",
        "name": "echo_probe", "code": ECHO_POLICY, "owner_id": "tester",
        "tenant_id": PROBE_TENANT, "visibility": "tenant", "status": "active",
        "metadata": {"on_entity_types": ["probe"], "timeout_ms": 10_000}}], operator)
    stop_agents = threading.Event()
    agents = [Agent(seeded, home, f"agent-{i}", stop_agents) for i in range(2)]
    held: queue.Queue[threading.Event] = queue.Queue()
    errors: list[BaseException] = []
    writers, per_writer, holds_per_writer = 4, 20, 3

    def probe(writer: int, k: int) -> dict[str, Any]:
        return {"entity_type": "probe", "who": f"writer-{writer}", "did": "wrote",
                "this": f"{writer}:{k}", "owner_id": "writer", "tenant_id": PROBE_TENANT,
                "visibility": "tenant", "status": "new"}

    def writer(n: int) -> None:
        try:
            with seeded.connect("kernel") as c:
                for k in range(per_writer):
                    if k % 8 == 3:  # begin, append, wait for the agents to read past it, commit
                        release = threading.Event()
                        with c.transaction():
                            store.append(c, [probe(n, k)], operator)
                            held.put(release)
                            if not release.wait(60):
                                raise AssertionError("never released")
                    else:
                        store.append(c, [probe(n, k)], operator)
        except BaseException as exc:
            errors.append(exc)

    def blocked(agent: Agent) -> bool:
        return bool(conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'", (agent.name,)).fetchone())

    def agents_ran_since(boots: list[int]) -> bool:
        return all(a.boots > b + 1 or blocked(a) or a.error
                   for a, b in zip(agents, boots, strict=True))

    for a in agents:
        a.start()
    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    for _ in range(writers * holds_per_writer):
        release = held.get(timeout=60)
        # Keep the span uncommitted until every agent has evaluated at least once since (or
        # is queued to append behind it): agents run while a lower position is uncommitted.
        boots = [a.boots for a in agents]
        wait_until(lambda b=boots: agents_ran_since(b), 30,
                   "the agents to run while a transaction is held open")
        release.set()
    for t in threads:
        t.join(30)
    assert not errors, errors

    last = conn.execute("SELECT max(position) AS p FROM ledger.universal_registry "
                        "WHERE entity_type = 'probe'").fetchone()["p"]

    def caught_up() -> bool:
        for a in agents:
            assert a.error is None, a.error
        cursor = conn.execute(
            "SELECT r.metadata FROM ledger.latest_spans r WHERE r.entity_type = "
            "'policy_cursor' AND r.metadata ->> 'policy_id' = %s", (policy["id"],)).fetchone()
        return cursor is not None and cursor["metadata"]["position"] >= last

    wait_until(caught_up, 60, "the agents to catch up with the last probe")
    stop_agents.set()
    for a in agents:
        a.join(30)
    probes = {r["id"] for r in conn.execute(
        "SELECT id::text AS id FROM ledger.universal_registry WHERE entity_type = 'probe'")}
    seen = Counter(r["parent_id"] for r in conn.execute(
        "SELECT parent_id::text AS parent_id FROM ledger.universal_registry "
        "WHERE entity_type = 'probe_seen'"))
    assert len(probes) == writers * per_writer
    assert set(seen) == probes, f"{len(probes - set(seen))} probes never evaluated"
    assert max(seen.values()) == 1, {p: n for p, n in seen.items() if n > 1}
    assert not conn.execute("SELECT 1 FROM ledger.universal_registry WHERE entity_type = "
                            "'policy_error' AND parent_id = %s", (policy["id"],)).fetchone()


# --- what kernels hold while untrusted code runs ---------------------------------------------


def named_loader(database, home, name: str) -> Loader:
    loader = Loader(database, home, worker_id=name)
    loader.conn.execute(f"SET application_name = '{name}'")
    return loader


def backend(conn, name: str) -> dict[str, Any] | None:
    """The loader's session: its state, last statement, and whether it holds the append lock
    (the advisory lock every append takes and keeps until commit)."""
    return conn.execute(
        "SELECT a.state, a.query, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND "
        "l.locktype = 'advisory' AND l.granted) AS append_lock FROM pg_stat_activity a "
        "WHERE a.application_name = %s", (name,)).fetchone()


def time_an_append(conn, operator) -> float:
    started = time.monotonic()
    store.append(conn, [{"entity_type": "note", "who": "bystander", "did": "wrote",
                          "this": "hello", "owner_id": "bystander", "tenant_id": "bystander",
                          "visibility": "tenant", "status": "new"}], operator)
    return time.monotonic() - started


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


@pytest.mark.slow
def test_appends_are_not_blocked_while_a_first_batch_runs(conn, seeded, home, operator):
    fn = add_function(conn, operator)
    schedule_many(conn, operator, fn, [{"i": i, "ms": 500} for i in range(6)])
    with named_loader(seeded, home, "first-batch") as loader:
        thread, result = in_thread(
            lambda: loader.boot(KERNELS["request_worker"], {"batch": 8}))

        def running() -> bool:  # claimed, and past the claim: in the sandbox
            b = backend(conn, "first-batch")
            return bool(b and b["state"].startswith("idle in transaction")
                        and "claim_requests" not in b["query"])

        wait_until(running, 30, "the batch to be running")
        took = time_an_append(conn, operator)
        thread.join(60)
    assert result and result[0]["claimed"] == 6, result
    assert took < 1.0, f"an unrelated append waited {took:.1f}s for the batch's sandbox runs"


SLOW_POLICY = """import datetime


def main(span):
    end = datetime.datetime.now() + datetime.timedelta(milliseconds=3000)
    while datetime.datetime.now() < end:
        pass
    return []
"""


@pytest.mark.slow
def test_appends_are_not_blocked_while_a_policy_runs(conn, seeded, home, operator):
    def policy(name: str, code: str) -> dict[str, Any]:
        return {"entity_type": "policy", "who": "tester", "did": "defined", "this": name,
                "name": name, "code": code, "owner_id": "tester", "tenant_id": PROBE_TENANT,
                "visibility": "tenant", "status": "active",
                "metadata": {"on_entity_types": ["probe"], "timeout_ms": 10_000}}

    store.append(conn, [policy("echo", ECHO_POLICY), policy("slow", SLOW_POLICY)], operator)
    store.append(conn, [{"entity_type": "probe", "who": "w", "did": "wrote", "this": "p",
                          "owner_id": "w", "tenant_id": PROBE_TENANT, "visibility": "tenant",
                          "status": "new"}], operator)
    with named_loader(seeded, home, "agent") as loader:
        thread, result = in_thread(lambda: loader.boot(KERNELS["policy_agent"], {"batch": 50}))

        def slow_policy_running() -> bool:  # the agent is evaluating: its code is running
            b = backend(conn, "agent")
            return bool(b and b["state"].startswith("idle in transaction")
                        and "tenant_id = $1 AND position >" in b["query"])

        wait_until(slow_policy_running, 30, "the slow policy to be running")
        took = time_an_append(conn, operator)
        thread.join(60)
    assert result and result[0]["errors"] == 0, result
    assert took < 1.0, f"an unrelated append waited {took:.1f}s for a tenant's policy code"


def untrusted_run_code_seq(conn) -> None:
    """Append a next seq of run_code signed by a key the manifest does not trust."""
    from nacl.signing import SigningKey

    from stage0.spans.canonical import normalise, now_at
    from stage0.spans.proofs import seal

    head = store.head(conn, RUN_CODE_ID)
    draft = {k: v for k, v in head.items() if k not in CHAIN_FIELDS}
    draft.update(seq=head["seq"] + 1, prev_hash=head["curr_hash"], at=now_at())
    store.insert(conn, [seal(normalise(draft), SigningKey.generate())])


def test_refused_run_code_inside_the_request_worker_leaves_a_boot_refused_span(
        conn, seeded, home, operator):
    fn = add_function(conn, operator)
    untrusted_run_code_seq(conn)
    ids = schedule_many(conn, operator, fn, [{"i": 1}])
    with Loader(seeded, home) as loader:
        out = loader.boot(KERNELS["request_worker"], {"batch": 8})
    assert out["claimed"] == 1 and request_heads(conn, ids) == {ids[0]: "error"}
    assert not executions(conn)
    refused = conn.execute("SELECT error FROM ledger.universal_registry WHERE entity_type = "
                           "'boot_refused' AND parent_id = %s", (RUN_CODE_ID,)).fetchall()
    # Refused for the batch, then again for the request alone: each refusal is on record,
    # although the batch's transaction rolled back.
    assert refused and {r["error"]["reason"] for r in refused} == {"KEY_UNTRUSTED"}


@pytest.mark.slow
def test_a_refused_run_code_in_a_batch_of_two_does_not_hang_the_request_worker(
        conn, seeded, home, operator):
    fn = add_function(conn, operator)
    untrusted_run_code_seq(conn)
    ids = schedule_many(conn, operator, fn, [{"i": 1}, {"i": 2}])
    loader = named_loader(seeded, home, "refusing")
    thread, result = in_thread(lambda: loader.boot(KERNELS["request_worker"], {"batch": 8}))
    thread.join(15)
    hung = thread.is_alive()
    if hung:  # free the ledger: the hung transaction holds the append lock
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        thread.join(30)
    loader.close()
    assert not hung, "request_worker deadlocked on its own append lock"
    assert result and result[0]["claimed"] == 2, result
    assert request_heads(conn, ids) == {i: "error" for i in ids}


# --- logline demo -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_in_an_empty_directory_on_the_embedded_database(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    reachable_by_postgres(project)
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env["LOGLINE_HOME"] = str(project / ".logline")

    def logline(*args: str) -> Ran:  # its own process: it starts the embedded server
        return run_logline(*args, env=env, cwd=project, timeout=300, own_process=True)

    try:
        demo = logline("demo")
    finally:
        stopped = logline("db", "stop")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "(embedded)" in demo.stdout
    out = demo.stdout
    assert "scheduled request" in out and "claimed 1 request(s)" in out
    boots = out.split("boots", 1)[1].split("trace of the request:", 1)[0]
    assert {"request_worker", "run_code", "policy_agent"} <= set(
        line.split()[2] for line in boots.splitlines() if "boot_event" in line), boots
    trace = out.split("trace of the request:", 1)[1].splitlines()
    kinds = [line.split()[1] for line in trace if line.strip().startswith("#")]
    assert kinds[:3] == ["request", "execution", "request"], trace
    assert "'fib': [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]" in out
    assert any(k not in ("request", "execution") for k in kinds[3:]), \
        f"no span emitted by a policy in the trace: {kinds}"
    assert re.search(r"^verify: \d+ spans, ok$", out, re.MULTILINE), out
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
