"""The policies of ROW/policies: each one's main() as plain Python (and the same answers in the
sandbox), then through policy_agent on a real ledger; and the agent's own guarantees: failures
become policy_error spans, the cursor never re-processes or skips a span, and two agents never
both apply one batch."""

from __future__ import annotations

import importlib.util
import threading
import uuid
from pathlib import Path

import pytest
from helpers import REPO
from helpers.kernels import (
    ECHO,
    RAISES,
    SLOW,
    Recorder,
    add,
    agent,
    await_lock_waiters,
    emitted_by,
    in_threads,
    join_all,
    of_type,
    run,
    set_limit,
    tenant_policy,
    user_function,
)
from nacl.signing import SigningKey

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.keys import derivation_secret
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS
from stage0.sandbox.pool import SandboxPool
from stage0.spans.canonical import normalise, now_at
from stage0.spans.ids import derive_id
from stage0.spans.proofs import check_proofs, seal

POLICY_DIR = REPO / "kernels" / "policies"
AGENT = KERNELS["policy_agent"]
WORKER = KERNELS["request_worker"]


def policy_module(name: str):
    spec = importlib.util.spec_from_file_location(f"policy_{name}", POLICY_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slow_exec = policy_module("slow_exec")
metrics_exec_duration = policy_module("metrics_exec_duration")
daily_exec_rollup = policy_module("daily_exec_rollup")
error_report = policy_module("error_report")
throttle = policy_module("throttle")
ttl_reaper = policy_module("ttl_reaper")

EXEC_ID = "11111111-1111-4111-8111-111111111111"
FN_ID = "22222222-2222-4222-8222-222222222222"


def execution(**extra) -> dict:
    return {"id": EXEC_ID, "entity_type": "execution", "parent_id": FN_ID, "owner_id": "alice",
            "tenant_id": "acme", "status": "complete", "at": "2025-03-04T05:06:07.089Z",
            "duration_ms": 12, "error": None, "metadata": {}, **extra}


# --- main() as plain Python ------------------------------------------------------------------
def test_slow_exec_labels_only_executions_over_their_slow_ms():
    """The threshold is the one run_code wrote into the execution (the manifest's
    policy.slow_ms); without one, the manifest's default."""
    assert slow_exec.DEFAULT_SLOW_MS == 5000
    assert slow_exec.main(execution(duration_ms=2000, metadata={"slow_ms": 2000})) == []
    assert slow_exec.main(execution(duration_ms=None)) == []
    assert slow_exec.main({"id": EXEC_ID}) == []
    [action] = slow_exec.main(execution(duration_ms=2001, metadata={"slow_ms": 2000}))
    patch = action["emit_span"]
    assert (patch["entity_type"], patch["status"], patch["parent_id"]) == (
        "status_patch", "slow", EXEC_ID)
    assert patch["metadata"] == {"duration_ms": 2001, "slow_ms": 2000}
    assert slow_exec.main(execution(duration_ms=4000)) == []
    for odd in ("100", -1, None, True, 1.5):
        assert slow_exec.main(execution(duration_ms=4000, metadata={"slow_ms": odd})) == []
    [default] = slow_exec.main(execution(duration_ms=5001))
    assert default["emit_span"]["metadata"] == {"duration_ms": 5001, "slow_ms": 5000}


def test_metrics_exec_duration_emits_one_metric_per_execution():
    [action] = metrics_exec_duration.main(execution(duration_ms=37, status="error"))
    metric = action["emit_span"]
    assert (metric["entity_type"], metric["parent_id"], metric["status"]) == (
        "metric", EXEC_ID, "error")
    assert metric["metadata"] == {"name": "exec_duration_ms", "value": 37, "status": "error",
                                  "function_id": FN_ID}
    [missing] = metrics_exec_duration.main({"id": EXEC_ID})
    assert missing["emit_span"]["metadata"]["value"] == 0


def test_daily_exec_rollup_counts_by_day_owner_and_status():
    assert daily_exec_rollup.main(execution()) == [{"count": {"name": "daily_exec", "labels": {
        "day": "2025-03-04", "owner_id": "alice", "status": "complete"}}}]
    [timeless] = daily_exec_rollup.main({"id": EXEC_ID})
    assert timeless["count"]["labels"] == {"day": "", "owner_id": None, "status": None}


def test_error_report_opens_a_report_for_failed_executions_only():
    assert error_report.main(execution(status="complete")) == []
    assert error_report.main(execution(status=None)) == []
    error = {"code": "SANDBOX_RUNTIME_ERROR", "message": "line 2: ValueError: boom"}
    [action] = error_report.main(execution(status="error", error=error))
    report = action["emit_span"]
    assert (report["entity_type"], report["status"], report["parent_id"]) == (
        "error_report", "open", EXEC_ID)
    assert report["error"] == error
    assert report["metadata"] == {"function_id": FN_ID, "code": "SANDBOX_RUNTIME_ERROR"}
    [bare] = error_report.main(execution(status="error", error=None))
    assert bare["emit_span"]["error"] == {} and bare["emit_span"]["metadata"]["code"] is None


def test_throttle_labels_over_quota_violations_only():
    violation = {"id": EXEC_ID, "entity_type": "policy_violation", "tenant_id": "acme",
                 "status": "over_quota", "metadata": {"limit": 3, "function_id": FN_ID}}
    assert throttle.main({**violation, "status": "refused"}) == []
    [action] = throttle.main(violation)
    patch = action["emit_span"]
    assert (patch["entity_type"], patch["status"], patch["parent_id"]) == (
        "status_patch", "throttled", EXEC_ID)
    assert patch["metadata"] == {"tenant_id": "acme", "limit": 3, "function_id": FN_ID}
    [bare] = throttle.main({**violation, "metadata": None})
    assert bare["emit_span"]["metadata"]["limit"] is None


def test_ttl_reaper_archives_what_it_is_handed():
    assert ttl_reaper.SWEEP_ENTITY_TYPES == ["prompt_block", "memory"]
    [action] = ttl_reaper.main({"id": EXEC_ID, "metadata": {"ttl_at": "2000-01-01T00:00:00Z"}})
    patch = action["emit_span"]
    assert (patch["entity_type"], patch["status"], patch["parent_id"]) == (
        "status_patch", "archived", EXEC_ID)
    assert patch["metadata"] == {"ttl_at": "2000-01-01T00:00:00Z", "reason": "ttl"}
    [bare] = ttl_reaper.main({"id": EXEC_ID, "metadata": None})
    assert bare["emit_span"]["metadata"]["ttl_at"] is None


SAMPLES = [execution(), execution(status="error", duration_ms=4000,
                                  error={"code": "X", "message": "m"}),
           {"id": EXEC_ID, "entity_type": "policy_violation", "status": "over_quota",
            "tenant_id": "acme", "metadata": {"limit": 1}},
           {"id": EXEC_ID, "entity_type": "memory", "metadata": {"ttl_at": "2000-01-01"}}]


@pytest.mark.parametrize("module", [slow_exec, metrics_exec_duration, daily_exec_rollup,
                                    error_report, throttle, ttl_reaper],
                         ids=lambda m: m.NAME)
def test_policy_gives_the_same_answers_in_the_sandbox(pool, module):
    """The agent runs the source under RestrictedPython: it must agree with plain Python."""
    source = Path(module.__file__).read_text()
    for span in SAMPLES:
        result = pool.run(source, span)
        assert result.ok, result.error
        assert result.output == module.main(span)


# --- through policy_agent --------------------------------------------------------------------


def test_error_report_for_a_failed_execution(loader, kernel_conn, operator):
    failed = run(loader, user_function(kernel_conn, operator, RAISES)["id"], {"x": 1})
    run(loader, user_function(kernel_conn, operator, ECHO)["id"], {"x": 1})
    agent(loader)
    agent(loader)
    [report] = of_type(kernel_conn, "error_report")
    assert (report["parent_id"], report["tenant_id"], report["status"]) == (
        failed["id"], "acme", "open")
    assert report["owner_id"] == "policy:error_report"
    assert report["error"]["code"] == "SANDBOX_RUNTIME_ERROR"
    assert report["metadata"]["function_id"] == failed["parent_id"]
    assert report["metadata"]["policy_id"] == error_report.POLICY_ID
    assert check_proofs(store.head(kernel_conn, report["id"])).ok


def test_metrics_exec_duration_one_metric_per_execution(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO)
    runs = [run(loader, fn["id"], {"i": i}) for i in range(2)]
    agent(loader)
    agent(loader)
    metrics = of_type(kernel_conn, "metric")
    assert [(m["parent_id"], m["metadata"]["value"]) for m in metrics] == [
        (r["id"], r["duration_ms"]) for r in runs]
    assert all(m["metadata"]["status"] == "complete" for m in metrics)


def test_slow_exec_follows_the_manifests_slow_ms(loader, kernel_conn, operator):
    """One threshold for run_code and the policy: the manifest's policy.slow_ms."""
    manifest.amend(kernel_conn, operator, policy={"slow_ms": 100, "timeout_ms": 30000})
    slow = run(loader, user_function(kernel_conn, operator, SLOW)["id"])
    fast = run(loader, user_function(kernel_conn, operator, ECHO)["id"], {"x": 1})
    agent(loader)
    agent(loader)
    patches = {p["parent_id"]: p for p in emitted_by(kernel_conn, slow_exec.POLICY_ID)}
    # Exactly the executions over slow_ms are labelled, once each (the fast one too, were it
    # ever slow); run_code labels none itself.
    assert set(patches) == {e["id"] for e in (slow, fast) if e["duration_ms"] > 100}
    assert len(of_type(kernel_conn, "status_patch")) == len(patches)
    assert (patches[slow["id"]]["entity_type"], patches[slow["id"]]["status"]) == (
        "status_patch", "slow")
    assert patches[slow["id"]]["metadata"]["slow_ms"] == 100
    assert patches[slow["id"]]["metadata"]["duration_ms"] == slow["duration_ms"]


def rollups(conn) -> dict:
    heads = [store.head(conn, r["id"]) for r in of_type(conn, "rollup") if r["seq"] == 0]
    return {h["metadata"]["labels"]["status"]: h for h in heads}


def test_daily_exec_rollup_counts_executions_per_day(loader, kernel_conn, operator):
    ok = user_function(kernel_conn, operator, ECHO)
    first = [run(loader, ok["id"], {"i": i}) for i in range(2)]
    run(loader, user_function(kernel_conn, operator, RAISES)["id"], {"x": 1})
    agent(loader)
    agent(loader)
    counted = rollups(kernel_conn)
    assert set(counted) == {"complete", "error"}
    complete = counted["complete"]
    assert complete["metadata"]["count"] == 2
    assert complete["metadata"]["labels"] == {"day": first[0]["at"][:10], "owner_id": "alice",
                                              "status": "complete"}
    assert complete["metadata"]["name"] == "daily_exec" and complete["tenant_id"] == "acme"
    assert counted["error"]["metadata"]["count"] == 1
    run(loader, ok["id"], {"i": 3})
    agent(loader)
    assert rollups(kernel_conn)["complete"]["metadata"]["count"] == 3
    assert rollups(kernel_conn)["complete"]["seq"] == complete["seq"] + 1


def test_throttle_labels_the_violation(loader, kernel_conn, operator):
    set_limit(kernel_conn, operator, 1)
    fn = user_function(kernel_conn, operator, ECHO)
    run(loader, fn["id"], {"i": 0})
    violation = run(loader, fn["id"], {"i": 1})
    assert violation["entity_type"] == "policy_violation"
    agent(loader)
    agent(loader)
    [patch] = emitted_by(kernel_conn, throttle.POLICY_ID)
    assert (patch["status"], patch["parent_id"], patch["tenant_id"]) == (
        "throttled", violation["id"], "acme")
    assert patch["metadata"]["limit"] == 1


def test_ttl_reaper_archives_expired_memory_exactly_once(loader, kernel_conn, operator):
    past, future = "2000-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"
    expired = add(kernel_conn, operator, "memory", metadata={"ttl_at": past})
    block = add(kernel_conn, operator, "prompt_block", tenant="globex",
                metadata={"ttl_at": past})
    add(kernel_conn, operator, "memory", metadata={"ttl_at": future})
    add(kernel_conn, operator, "memory", metadata={})
    add(kernel_conn, operator, "note", metadata={"ttl_at": past})
    agent(loader)
    agent(loader)
    patches = emitted_by(kernel_conn, ttl_reaper.POLICY_ID)
    assert sorted((p["parent_id"], p["status"], p["tenant_id"]) for p in patches) == sorted([
        (expired["id"], "archived", "acme"), (block["id"], "archived", "globex")])


def test_ttl_reaper_archives_once_under_two_agents(seeded, home, pool, kernel_conn, operator):
    with Loader(seeded, home, sandbox=pool) as a, Loader(seeded, home, sandbox=pool) as b:
        agent(a)
        agent(b)
        expired = add(kernel_conn, operator, "memory",
                      metadata={"ttl_at": "2000-01-01T00:00:00.000Z"})
        race_holding_the_append_lock(seeded, kernel_conn, lambda: agent(a), lambda: agent(b))
    assert len(emitted_by(kernel_conn, ttl_reaper.POLICY_ID)) == 1
    assert emitted_by(kernel_conn, ttl_reaper.POLICY_ID)[0]["parent_id"] == expired["id"]


# --- tenant policies, errors and the cursor --------------------------------------------------


def position(conn, span_id: str) -> int:
    return conn.execute("SELECT position FROM ledger.span_heads WHERE id = %s",
                        (span_id,)).fetchone()["position"]


def cursor(conn, policy_id: str) -> dict | None:
    row = conn.execute("SELECT id::text AS id FROM ledger.latest_spans WHERE entity_type = "
                       "'policy_cursor' AND metadata ->> 'policy_id' = %s",
                       (policy_id,)).fetchone()
    return store.head(conn, row["id"]) if row else None


SEEN = ("def main(span):\n"
        "    return [{'emit_span': {'entity_type': 'seen', 'status': 'ok',\n"
        "                           'metadata': {'of': span['entity_type']}}}]\n")


def test_policy_code_runs_only_in_sandbox_workers_of_the_policys_tenant(
        seeded, home, pool, kernel_conn, operator):
    """Batch and one-by-one evaluation alike pass the policy span's tenant."""
    seen = tenant_policy(kernel_conn, operator, SEEN, tenant="acme")
    # a refusal fails the whole batch run: each span is then evaluated in a run of its own
    refused = "def main(span):\n    return getattr(span, '__class__')\n"
    raising = tenant_policy(kernel_conn, operator, refused, tenant="globex")
    add(kernel_conn, operator, "note")
    add(kernel_conn, operator, "note", tenant="globex")
    add(kernel_conn, operator, "note", tenant="globex")
    recorder = Recorder(pool)
    with Loader(seeded, home, sandbox=recorder) as ld:
        assert agent(ld)["errors"] == 2
    tenants = {policy["id"]: {t for code, t, _ in recorder.runs
                              if code.startswith(policy["code"])} for policy in (seen, raising)}
    assert tenants == {seen["id"]: {"acme"}, raising["id"]: {"globex"}}
    assert len([1 for code, _, _ in recorder.runs if code.startswith(raising["code"])]) == 3
    assert not recorder.pids("acme") & recorder.pids("globex")
    assert not recorder.pids("system") & (recorder.pids("acme") | recorder.pids("globex"))


def test_policy_that_raises_yields_policy_error_and_moves_on(loader, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator,
                           "def main(span):\n    raise RuntimeError('bad policy')\n")
    note = add(kernel_conn, operator, "note")
    add(kernel_conn, operator, "note", tenant="globex")  # another tenant: not this policy's
    out = agent(loader)
    assert out["errors"] == 1
    [error] = emitted_by(kernel_conn, policy["id"])
    assert (error["entity_type"], error["status"], error["parent_id"]) == (
        "policy_error", "error", policy["id"])
    assert error["related_to"] == [note["id"]] and error["tenant_id"] == "acme"
    assert error["error"]["code"] == "POLICY_ERROR"
    assert "RuntimeError" in error["error"]["message"]
    assert "bad policy" in error["error"]["message"]
    assert cursor(kernel_conn, policy["id"])["metadata"]["position"] == \
        position(kernel_conn, note["id"])
    agent(loader)
    assert len(emitted_by(kernel_conn, policy["id"])) == 1


@pytest.mark.parametrize("body, fragment", [
    ("return 'nope'", "not a list"),
    ("return [42]", "not an object"),
    ("return [{'bogus': 1}]", "unknown action"),
    ("return {1, 2}", "JSON"),
    ("while True:\n        pass", "limit"),
    ("return [", "never closed"),
])
def test_policy_returning_garbage_yields_policy_error(loader, kernel_conn, operator, body,
                                                      fragment):
    policy = tenant_policy(kernel_conn, operator, f"def main(span):\n    {body}\n",
                           timeout_ms=300)
    notes = [add(kernel_conn, operator, "note") for _ in range(2)]
    agent(loader)
    agent(loader)
    errors = emitted_by(kernel_conn, policy["id"])
    assert [e["entity_type"] for e in errors] == ["policy_error"] * 2
    assert [e["related_to"] for e in errors] == [[n["id"]] for n in notes]
    assert all(fragment in e["error"]["message"] for e in errors), errors
    assert cursor(kernel_conn, policy["id"])["metadata"]["position"] == \
        position(kernel_conn, notes[-1]["id"])


@pytest.mark.parametrize("spec", [{"entity_type": "flag", "colour": "red"},
                                  {"entity_type": "flag", "visibility": "everyone"}, {}])
def test_policy_emitting_an_invalid_span_yields_policy_error(loader, kernel_conn, operator,
                                                             spec):
    policy = tenant_policy(kernel_conn, operator,
                           f"def main(span):\n    return [{{'emit_span': {spec!r}}}]\n")
    note = add(kernel_conn, operator, "note")
    agent(loader)
    assert [e["entity_type"] for e in emitted_by(kernel_conn, policy["id"])] == [
        "policy_error"]
    assert cursor(kernel_conn, policy["id"])["metadata"]["position"] == \
        position(kernel_conn, note["id"])


def test_cursor_never_reprocesses_and_skips_own_output(loader, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, SEEN, on=None)  # sees every entity type
    notes = [add(kernel_conn, operator, "note") for _ in range(3)]
    agent(loader)
    agent(loader)
    seen = emitted_by(kernel_conn, policy["id"])
    # The policy span itself is new in its tenant too; its own `seen` output is not.
    assert [s["parent_id"] for s in seen] == [policy["id"]] + [n["id"] for n in notes]
    assert all(s["owner_id"] == f"policy:{policy['name']}" for s in seen)
    late = add(kernel_conn, operator, "note")
    agent(loader)
    agent(loader)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [
        policy["id"]] + [n["id"] for n in [*notes, late]]
    assert cursor(kernel_conn, policy["id"])["metadata"]["position"] >= \
        position(kernel_conn, late["id"])


def test_run_action_schedules_a_request_once(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO)
    policy = tenant_policy(kernel_conn, operator, "def main(span):\n    return [{'run': "
                           f"'run_code', 'span_id': '{fn['id']}', 'input': {{'hi': 1}}}}]\n")
    note = add(kernel_conn, operator, "note")
    agent(loader)
    agent(loader)
    [request] = emitted_by(kernel_conn, policy["id"])
    assert (request["entity_type"], request["status"], request["parent_id"]) == (
        "request", "scheduled", fn["id"])
    assert request["metadata"]["caused_by"] == note["id"]
    assert loader.boot(WORKER, {"batch": 8})["claimed"] == 1
    assert store.head(kernel_conn, request["id"])["status"] == "complete"
    assert [e["output"] for e in of_type(kernel_conn, "execution")] == [{"hi": 1}]


def test_cursor_never_jumps_a_late_committing_writer(seeded, loader, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, SEEN)
    agent(loader)  # warm: later boots append nothing before the policy's own batch
    early = add(kernel_conn, operator, "note")
    with seeded.connect("kernel") as late_conn:
        with late_conn.transaction():  # a writer that commits late
            [late] = store.append(late_conn, [{
                "entity_type": "note", "who": "alice", "this": "late", "owner_id": "alice",
                "tenant_id": "acme", "visibility": "tenant"}], operator)
            threads, results = in_threads(lambda: agent(loader))
            threads[0].start()
            await_lock_waiters(kernel_conn, 1)  # the agent read `early` and waits to record
        join_all(threads, results)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [early["id"]]
    agent(loader)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [
        early["id"], late["id"]]


def race_holding_the_append_lock(seeded, conn, *calls):
    """Start `calls` together while the ledger's append lock is held, so each reads before
    any records; release it once all of them wait to record; return their results."""
    with seeded.connect("admin") as holder:
        with holder.transaction():  # released at its end, whatever happens
            holder.execute("SELECT ledger.append_lock()")
            threads, results = in_threads(*calls)
            for t in threads:
                t.start()
            await_lock_waiters(conn, len(calls))
        return join_all(threads, results)


def test_two_agents_never_both_apply_a_batch(seeded, home, pool, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, SEEN)
    with Loader(seeded, home, sandbox=pool) as a, Loader(seeded, home, sandbox=pool) as b:
        agent(a)
        agent(b)
        notes = [add(kernel_conn, operator, "note") for _ in range(3)]
        race_holding_the_append_lock(seeded, kernel_conn, lambda: agent(a), lambda: agent(b))
        assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [
            n["id"] for n in notes]
        for _ in range(3):  # and unforced races, started together
            more = [add(kernel_conn, operator, "note") for _ in range(3)]
            notes.extend(more)
            threads, results = in_threads(lambda: agent(a), lambda: agent(b))
            for t in threads:
                t.start()
            join_all(threads, results)
            agent(a)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [
        n["id"] for n in notes]


class Gate:
    """The real sandbox pool behind a gate: once armed, a run waits until the test opens it,
    so a test can decide that this agent records only after another agent has committed."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool, self.armed = pool, False
        self.entered, self.opened = threading.Event(), threading.Event()

    def run(self, *args, **kwargs):
        if self.armed:
            self.entered.set()
            assert self.opened.wait(60), "the gate was never opened"
        return self.pool.run(*args, **kwargs)


def test_agent_that_read_a_batch_before_another_committed_it_does_not_apply_it(
        seeded, home, pool, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, SEEN)
    gate = Gate(pool)
    with Loader(seeded, home, sandbox=pool) as a, Loader(seeded, home, sandbox=gate) as b:
        agent(a)
        agent(b)
        notes = [add(kernel_conn, operator, "note") for _ in range(2)]
        gate.armed = True
        threads, results = in_threads(lambda: agent(b))
        threads[0].start()
        assert gate.entered.wait(60)  # b has read the notes and is about to evaluate them
        agent(a)  # a evaluates and commits the same batch first
        gate.opened.set()
        join_all(threads, results)
        gate.armed = False
        agent(b)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"])] == [
        n["id"] for n in notes]
    assert cursor(kernel_conn, policy["id"])["seq"] == 0


@pytest.mark.parametrize("how", ["untrusted_key", "edited_behind_the_back"])
def test_unverified_policy_does_not_run(loader, seeded, kernel_conn, operator, how):
    code = SEEN
    if how == "untrusted_key":
        span = seal(normalise({
            "id": str(uuid.uuid4()), "seq": 0, "at": now_at(), "entity_type": "policy",
            "who": "mallory", "this": "p", "name": "mallory", "code": code,
            "owner_id": "alice", "tenant_id": "acme", "visibility": "tenant",
            "status": "active", "metadata": {"on_entity_types": ["note"]}}),
            SigningKey.generate())
        store.insert(kernel_conn, [span])
        policy_id = span["id"]
    else:
        policy_id = tenant_policy(kernel_conn, operator, "def main(span):\n    return []\n")["id"]
        with seeded.connect("admin") as admin:
            admin.execute("SET session_replication_role = replica")
            admin.execute("UPDATE ledger.universal_registry SET code = %s WHERE id = %s",
                          (code, policy_id))
    add(kernel_conn, operator, "note")
    agent(loader)
    assert emitted_by(kernel_conn, policy_id, "seen") == []



# --- hostile tenants: budgets, fairness, what a tenant policy may ask for, squatted ids -------
SPIN = "def main(span):\n    while True:\n        pass\n"


class Counting:
    """The real sandbox pool, counting the runs made for each tenant's spans (every run a
    policy gets is a batch of spans of one tenant) and their sandbox time."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool
        self.runs: dict[str, int] = {}
        self.ms: dict[str, int] = {}

    def run(self, code, spans, *args, **kwargs):
        result = self.pool.run(code, spans, *args, **kwargs)
        tenant = spans[0]["tenant_id"] if isinstance(spans, list) and spans else "?"
        self.runs[tenant] = self.runs.get(tenant, 0) + 1
        self.ms[tenant] = self.ms.get(tenant, 0) + result.duration_ms
        return result


def errors_of(conn, policy_id: str) -> list[dict]:
    return emitted_by(conn, policy_id, "policy_error")


@pytest.mark.slow
def test_a_spinning_policy_costs_one_bounded_run_per_round_not_one_per_span(
        seeded, home, pool, kernel_conn, operator):
    spinner = tenant_policy(kernel_conn, operator, SPIN, tenant="evil", timeout_ms=300)
    notes = [add(kernel_conn, operator, "note", tenant="evil") for _ in range(9)]
    good = tenant_policy(kernel_conn, operator, SEEN, tenant="good")
    mine = add(kernel_conn, operator, "note", tenant="good")
    counting = Counting(pool)
    with Loader(seeded, home, sandbox=counting) as loader:
        out = agent(loader)
    # One run for the spinner's 9 spans (it was 1 + 9 runs of 300 ms each, one by one).
    assert counting.runs["evil"] == 1, counting.runs
    assert out["spent_ms"]["evil"] == counting.ms["evil"] < 2 * 300
    spent = cursor(kernel_conn, spinner["id"])["metadata"]
    assert spent["spent_ms"] == counting.ms["evil"] and spent["evaluated"] == len(notes)
    assert spent["position"] == position(kernel_conn, notes[-1]["id"])
    errors = errors_of(kernel_conn, spinner["id"])
    assert [e["related_to"] for e in errors] == [[n["id"]] for n in notes]
    assert {e["metadata"]["cause"] for e in errors} == {"POLICY_BUDGET_EXHAUSTED"}
    assert all("SANDBOX_" in e["error"]["message"] for e in errors)
    # The other tenant's policy ran in the same round.
    assert [s["parent_id"] for s in emitted_by(kernel_conn, good["id"])] == [mine["id"]]


@pytest.mark.slow
def test_one_tenants_spinning_policies_cannot_starve_another_tenants(
        seeded, home, pool, kernel_conn, operator):
    manifest.amend(kernel_conn, operator, policy={"slow_ms": 5000, "timeout_ms": 30000,
                                                  "tenant_round_ms": 700})
    spinners = [tenant_policy(kernel_conn, operator, SPIN, tenant="evil", timeout_ms=300)
                for _ in range(4)]
    add(kernel_conn, operator, "note", tenant="evil")
    good = tenant_policy(kernel_conn, operator, SEEN, tenant="good")
    mine = add(kernel_conn, operator, "note", tenant="good")
    counting = Counting(pool)
    with Loader(seeded, home, sandbox=counting) as loader:
        first = agent(loader)
        # Two 300 ms budgets at most fit in the tenant's 700 ms: the others wait a round.
        assert counting.runs["evil"] <= 2 and first["deferred"] >= 2, (counting.runs, first)
        assert first["spent_ms"]["evil"] <= 700 + 300
        assert first["more"] is True  # the worker runs the agent again at once
        assert [s["parent_id"] for s in emitted_by(kernel_conn, good["id"])] == [mine["id"]]
        rounds = 1
        while any(cursor(kernel_conn, p["id"]) is None for p in spinners):
            agent(loader)
            rounds += 1
            assert rounds <= 4, "a deferred policy waited more than its turn"
    assert all(errors_of(kernel_conn, p["id"]) for p in spinners)


def platform_policy(conn, key, code: str, **meta) -> dict:
    return store.append(conn, [{
        "entity_type": "policy", "who": "ops", "did": "defined", "this": "system policy",
        "name": f"s{uuid.uuid4().hex[:6]}", "code": code, "owner_id": "system",
        "tenant_id": "system", "visibility": "public", "status": "active",
        "metadata": {"on_entity_types": ["note"], **meta}}], key)[0]


def emits(spec: dict, then_seen: bool = True) -> str:
    """A policy that asks for `spec`, then (if then_seen) for an allowed `seen` span."""
    second = ", {'emit_span': {'entity_type': 'seen'}}" if then_seen else ""
    return f"def main(span):\n    return [{{'emit_span': {spec!r}}}{second}]\n"


@pytest.mark.parametrize("spec, cause", [
    ({"entity_type": "job", "status": "queued",
      "content": {"kind": "execute", "action": "delete", "args": {"paths": ["a"]}}},
     "POLICY_KIND_NEVER_EMITTED"),
    ({"entity_type": "approval", "status": "approved"}, "POLICY_KIND_NEVER_EMITTED"),
    ({"entity_type": "execution", "status": "complete"}, "POLICY_KIND_NEVER_EMITTED"),
    ({"entity_type": "metric", "metadata": {"value": 1}}, "POLICY_KIND_RESERVED"),
    ({"entity_type": "policy_violation"}, "POLICY_KIND_RESERVED"),
    ({"entity_type": "job\u200b"}, "POLICY_KIND_INVALID"),
    ({"entity_type": "Job"}, "POLICY_KIND_INVALID"),
    ({"entity_type": "јob"}, "POLICY_KIND_INVALID"),  # Cyrillic j
], ids=["job", "approval", "execution", "metric", "violation", "zero-width", "upper",
        "cyrillic"])
def test_a_tenant_policy_is_refused_platform_kinds_and_the_rest_proceeds(
        loader, kernel_conn, operator, spec, cause):
    policy = tenant_policy(kernel_conn, operator, emits(spec))
    note = add(kernel_conn, operator, "note")
    agent(loader)
    [error] = errors_of(kernel_conn, policy["id"])
    assert error["metadata"]["cause"] == cause and error["related_to"] == [note["id"]]
    [seen] = emitted_by(kernel_conn, policy["id"], "seen")  # its allowed action went ahead
    assert seen["parent_id"] == note["id"]
    assert not of_type(kernel_conn, "job") and not of_type(kernel_conn, "approval")


def test_a_tenant_policy_may_not_reach_into_another_tenant(loader, kernel_conn, operator):
    theirs = add(kernel_conn, operator, "memory", tenant="globex")
    their_fn = user_function(kernel_conn, operator, ECHO, tenant="globex",
                             visibility="public")
    own_fn = user_function(kernel_conn, operator, ECHO)
    policy = tenant_policy(kernel_conn, operator, (
        "def main(span):\n    return [\n"
        f"        {{'emit_span': {{'entity_type': 'status_patch', 'status': 'archived',"
        f" 'parent_id': '{theirs['id']}'}}}},\n"
        f"        {{'emit_span': {{'entity_type': 'seen', 'related_to': ['{theirs['id']}']}}}},\n"
        f"        {{'run': 'run_code', 'span_id': '{their_fn['id']}'}},\n"
        f"        {{'run': 'run_code', 'span_id': 'not-a-uuid'}},\n"
        f"        {{'run': 'run_code', 'span_id': '{own_fn['id']}'}}]\n"))
    note = add(kernel_conn, operator, "note")
    agent(loader)
    causes = [e["metadata"]["cause"] for e in errors_of(kernel_conn, policy["id"])]
    assert causes == ["POLICY_CROSS_TENANT", "POLICY_CROSS_TENANT", "POLICY_RUN_FOREIGN",
                      "POLICY_ACTION_INVALID"]
    [request] = emitted_by(kernel_conn, policy["id"], "request")
    assert (request["parent_id"], request["tenant_id"]) == (own_fn["id"], "acme")
    assert request["metadata"]["caused_by"] == note["id"]
    assert not of_type(kernel_conn, "status_patch", "globex")


def test_a_system_tenant_policy_not_signed_by_a_platform_key_is_a_tenant_policy(
        loader, kernel_conn, operator):
    machine = SigningKey.generate()
    manifest.set_trust(kernel_conn, operator, machine.verify_key.encode().hex(), "machine",
                       trusted=True)  # trusted, but not with role platform
    policy = platform_policy(kernel_conn, machine, SEEN, scope="all_tenants")
    root = platform_policy(kernel_conn, operator, SEEN, scope="all_tenants")
    note = add(kernel_conn, operator, "note")  # in acme
    agent(loader)
    assert emitted_by(kernel_conn, policy["id"]) == []  # it sees the system tenant only
    assert [s["parent_id"] for s in emitted_by(kernel_conn, root["id"])] == [note["id"]]


def test_even_a_platform_policy_never_emits_approvals_or_jobs(loader, kernel_conn, operator):
    policy = platform_policy(kernel_conn, operator, emits({"entity_type": "approval"}),
                             scope="all_tenants")
    add(kernel_conn, operator, "note")
    agent(loader)
    [error] = errors_of(kernel_conn, policy["id"])
    assert error["metadata"]["cause"] == "POLICY_KIND_NEVER_EMITTED"
    assert len(emitted_by(kernel_conn, policy["id"], "seen")) == 1


def old_cursor_id(policy_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"logline:policy_cursor:{policy_id}"))


@pytest.mark.parametrize("squatter", [
    {"entity_type": "squat"},
    {"entity_type": "policy_cursor", "metadata": {"position": 10**12}},
], ids=["any-span", "fake-cursor"])
def test_a_span_at_the_old_cursor_id_no_longer_wedges_or_steers_a_policy(
        loader, kernel_conn, operator, squatter):
    policy = tenant_policy(kernel_conn, operator, SEEN)
    # mallory, a writer of the same tenant, takes the id the old uuid5 derivation gave
    store.append(kernel_conn, [{"id": old_cursor_id(policy["id"]), "seq": 0, "who": "mallory",
                                 "this": "squat", "owner_id": "mallory", "tenant_id": "acme",
                                 "visibility": "tenant", "parent_id": policy["id"],
                                 **squatter}], operator)
    notes = [add(kernel_conn, operator, "note") for _ in range(2)]
    agent(loader)
    agent(loader)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"], "seen")] == [
        n["id"] for n in notes]
    assert cursor(kernel_conn, policy["id"])["id"] != old_cursor_id(policy["id"])


def test_a_cursor_an_older_agent_kept_is_carried_on(loader, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, SEEN)
    before = add(kernel_conn, operator, "note")
    store.append(kernel_conn, [{  # what the agent recorded before ids were keyed
        "id": old_cursor_id(policy["id"]), "seq": 0, "entity_type": "policy_cursor",
        "who": "policy_agent", "did": "advanced", "this": policy["name"],
        "parent_id": policy["id"], "owner_id": policy["owner_id"], "tenant_id": "acme",
        "visibility": "private", "status": "active",
        "metadata": {"policy_id": policy["id"], "position": position(kernel_conn,
                                                                     before["id"])}}],
        operator)
    after = add(kernel_conn, operator, "note")
    agent(loader)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, policy["id"], "seen")] == [
        after["id"]]


def test_an_action_the_ledger_refuses_becomes_a_policy_error_and_the_rest_proceed(
        loader, kernel_conn, operator):
    policy = tenant_policy(kernel_conn, operator, emits({"entity_type": "flag"}))
    other = tenant_policy(kernel_conn, operator, SEEN)
    note = add(kernel_conn, operator, "note")
    # The id the agent will give the policy's first action is taken.
    taken = derive_id(derivation_secret(operator), "emit", policy["id"], note["id"], 0, 0)
    store.append(kernel_conn, [{"id": taken, "seq": 0, "entity_type": "note", "who": "x",
                                 "this": "taken", "owner_id": "x", "tenant_id": "globex",
                                 "visibility": "tenant"}], operator)
    agent(loader)
    [error] = errors_of(kernel_conn, policy["id"])
    assert error["metadata"]["cause"] == "POLICY_APPEND_FAILED"
    assert error["related_to"] == [note["id"]] and "LEDGER_" in error["error"]["message"]
    assert len(emitted_by(kernel_conn, policy["id"], "seen")) == 1  # its next action
    assert [s["parent_id"] for s in emitted_by(kernel_conn, other["id"])] == [note["id"]]
    assert cursor(kernel_conn, policy["id"])["metadata"]["position"] == \
        position(kernel_conn, note["id"])
    agent(loader)  # and nothing is retried
    assert len(errors_of(kernel_conn, policy["id"])) == 1


@pytest.mark.parametrize("meta", [{"on_entity_types": "note"}, {"timeout_ms": "soon"},
                                  {"sweep_entity_types": [1]}],
                         ids=["types-not-a-list", "timeout-not-a-number", "sweep-not-kinds"])
def test_a_malformed_policy_does_not_fail_the_round_for_the_others(loader, kernel_conn,
                                                                   operator, meta):
    tenant_policy(kernel_conn, operator, SEEN, **meta)
    good = tenant_policy(kernel_conn, operator, SEEN, tenant="globex")
    note = add(kernel_conn, operator, "note", tenant="globex")
    agent(loader)
    assert [s["parent_id"] for s in emitted_by(kernel_conn, good["id"])] == [note["id"]]


def test_a_tenants_archive_mark_does_not_keep_a_span_from_the_reaper(loader, kernel_conn,
                                                                     operator):
    """An archived status_patch counts only when the platform wrote it in the span's tenant:
    a writer's own (signed by the edge key, here from another tenant) once made the reaper
    skip the span for good."""
    expired = add(kernel_conn, operator, "memory", metadata={"ttl_at": "2000-01-01T00:00:00Z"})
    edge = keys.edge_key(operator)
    for tenant in ("acme", "globex"):
        store.append(kernel_conn, [{
            "entity_type": "status_patch", "who": "mallory", "this": "archived by hand",
            "parent_id": expired["id"], "status": "archived", "owner_id": "mallory",
            "tenant_id": tenant}], edge)
    agent(loader)
    patches = emitted_by(kernel_conn, ttl_reaper.POLICY_ID)
    assert [(p["parent_id"], p["status"]) for p in patches] == [(expired["id"], "archived")]
