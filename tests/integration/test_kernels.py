"""The core kernels at work: run_code, observer_bot and request_worker booted through the
stage-0 loader, on a real ledger with the real sandbox. Each test states one behaviour a user
of `logline boot` / `logline schedule` / `logline worker` relies on."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from helpers.kernels import (
    ECHO,
    RAISES,
    RUN_CODE,
    SLOW,
    WORKER,
    Recorder,
    allow,
    await_lock_waiters,
    function_span,
    in_threads,
    join_all,
    of_type,
    raw_request,
    run,
    set_limit,
    user_function,
)
from nacl.signing import SigningKey

from stage0.boot.loader import Loader
from stage0.errors import LoglineError
from stage0.ledger import manifest, store
from stage0.ledger.queries import q
from stage0.runtime.requests import schedule
from stage0.runtime.worker import KERNELS
from stage0.spans.canonical import normalise, now_at
from stage0.spans.proofs import check_proofs, public_key_hex, seal

OBSERVER = KERNELS["observer_bot"]

SQUARE = "def main(input):\n    return {'square': input['n'] * input['n']}\n"
LOOPS = "def main(input):\n    while True:\n        pass\n"


# --- fixtures and helpers --------------------------------------------------------------------


def execution_for(conn, request_id: str) -> dict:
    [row] = [e for e in of_type(conn, "execution") if request_id in e["related_to"]]
    return row


# --- run_code --------------------------------------------------------------------------------
def test_cli_boot_run_code_prints_the_signed_execution(cli, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, SQUARE)
    proc = cli("boot", RUN_CODE, "--input", json.dumps({"span_id": fn["id"], "input": {"n": 7}}),
               "--tenant", "acme", "--user", "alice")
    span = json.loads(proc.stdout)
    assert span["entity_type"] == "execution"
    assert span["status"] == "complete"
    assert span["output"] == {"square": 49}
    assert span["input"] == {"n": 7}
    assert span["parent_id"] == fn["id"]
    assert span["tenant_id"] == "acme" and span["owner_id"] == "alice"
    assert isinstance(span["duration_ms"], int) and span["duration_ms"] >= 0
    assert span["trace_id"]
    assert span["metadata"]["function_hash"] == fn["curr_hash"]
    assert check_proofs(span).ok
    assert store.head(kernel_conn, span["id"]) == span  # what was printed is what was stored
    assert len(of_type(kernel_conn, "execution")) == 1


def test_run_code_uses_the_functions_own_input_by_default(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, SQUARE, input={"n": 3})
    assert run(loader, fn["id"])["output"] == {"square": 9}
    assert run(loader, fn["id"], {"n": 5})["output"] == {"square": 25}


def test_function_that_raises_gives_an_error_execution(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, RAISES)
    span = run(loader, fn["id"], {"x": 1})
    assert span["entity_type"] == "execution" and span["status"] == "error"
    assert span["output"] is None
    assert span["error"]["code"] == "SANDBOX_RUNTIME_ERROR"
    assert "ValueError" in span["error"]["message"] and "boom" in span["error"]["message"]
    assert check_proofs(span).ok


def test_function_past_timeout_is_stopped_and_the_worker_recovers(loader, kernel_conn,
                                                                  operator, pool):
    manifest.amend(kernel_conn, operator, policy={"slow_ms": 5000, "timeout_ms": 300})
    looping = user_function(kernel_conn, operator, LOOPS)
    fine = user_function(kernel_conn, operator, SQUARE)
    started = time.monotonic()
    span = run(loader, looping["id"])
    assert time.monotonic() - started < 10, "the loop was not cut off at timeout_ms"
    assert span["status"] == "error"
    assert span["error"]["code"] in ("SANDBOX_TIMEOUT", "SANDBOX_CPU_LIMIT")
    assert "of 300 ms exceeded" in span["error"]["message"]  # timeout_ms, not slow_ms
    assert span["duration_ms"] >= 250
    for n in range(3):  # more runs than pool workers: every worker is usable again
        assert run(loader, fine["id"], {"n": n})["output"] == {"square": n * n}
    assert pool.wait_full(30)


def test_executions_carry_the_manifests_slow_threshold(loader, kernel_conn, operator):
    """One threshold: run_code writes policy.slow_ms into each execution, and the slow_exec
    policy labels by it (tests/integration/test_policies.py); run_code labels nothing itself."""
    slow = run(loader, user_function(kernel_conn, operator, SLOW)["id"])
    assert slow["metadata"]["slow_ms"] == 5000  # the manifest's default (ROW/manifest)
    manifest.amend(kernel_conn, operator, policy={"slow_ms": 100, "timeout_ms": 5000})
    slow = run(loader, user_function(kernel_conn, operator, SLOW)["id"])
    assert slow["status"] == "complete" and slow["duration_ms"] > 100
    assert slow["metadata"]["slow_ms"] == 100
    assert of_type(kernel_conn, "status_patch") == []


# --- tenants ---------------------------------------------------------------------------------
def test_private_function_is_not_run_for_another_tenant(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme", visibility="tenant")
    with pytest.raises(LoglineError) as refused:
        run(loader, fn["id"], {"x": 1}, tenant="globex", user="mallory")
    assert refused.value.code == "KERNEL_ERROR" and "another tenant" in refused.value.message
    with pytest.raises(LoglineError) as scheduled:
        schedule(kernel_conn, operator, fn["id"], {"x": 1}, tenant_id="globex")
    assert scheduled.value.code == "TENANT_MISMATCH"

    request = raw_request(kernel_conn, operator, fn["id"], "globex", {"x": 1})
    out = loader.boot(WORKER, {"batch": 8})
    assert out["claimed"] == 1 and out["executions"][0]["status"] == "error"
    done = store.head(kernel_conn, request["id"])
    assert (done["seq"], done["status"]) == (1, "error")
    assert "another tenant" in done["error"]["message"]
    assert of_type(kernel_conn, "execution") == []


def test_public_function_runs_for_any_tenant(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme", visibility="public")
    assert run(loader, fn["id"], {"x": 1}, tenant="globex")["tenant_id"] == "globex"
    request = schedule(kernel_conn, operator, fn["id"], {"x": 2}, user_id="bob",
                       tenant_id="globex")
    loader.boot(WORKER, {"batch": 8})
    assert store.head(kernel_conn, request["id"])["status"] == "complete"
    execution = execution_for(kernel_conn, request["id"])
    assert (execution["tenant_id"], execution["output"]) == ("globex", {"x": 2})


def test_user_code_runs_only_in_sandbox_workers_of_the_functions_tenant(
        seeded, home, pool, kernel_conn, operator):
    """The code is the function's: a public function of acme called by globex runs as acme's
    code, never in a process that runs globex's own functions (and the other way round)."""
    public = user_function(kernel_conn, operator, ECHO, tenant="acme", visibility="public")
    own = user_function(kernel_conn, operator, SQUARE, tenant="globex")
    recorder = Recorder(pool)
    with Loader(seeded, home, sandbox=recorder) as ld:
        for n in range(2):
            assert run(ld, public["id"], {"n": n}, tenant="globex")["output"] == {"n": n}
            assert run(ld, own["id"], {"n": n}, tenant="globex")["output"] == {"square": n * n}
    assert [t for _, t, _ in recorder.runs] == ["acme", "globex", "acme", "globex"]
    assert not recorder.pids("acme") & recorder.pids("globex")
    with pytest.raises(TypeError):  # kernels must say whose code it is
        loader_without_tenant = Loader(seeded, home, sandbox=pool)
        try:
            loader_without_tenant.run_untrusted(ECHO, 1, None)
        finally:
            loader_without_tenant.close()


def test_bad_request_in_a_batch_does_not_sink_the_others(loader, kernel_conn, operator):
    private = user_function(kernel_conn, operator, ECHO, tenant="acme")
    bad = raw_request(kernel_conn, operator, private["id"], "globex", {"x": 1})
    good = schedule(kernel_conn, operator, private["id"], {"x": 2})
    out = loader.boot(WORKER, {"batch": 8})
    assert out["claimed"] == 2
    assert store.head(kernel_conn, bad["id"])["status"] == "error"
    assert store.head(kernel_conn, good["id"])["status"] == "complete"
    assert execution_for(kernel_conn, good["id"])["output"] == {"x": 2}


# --- quota -----------------------------------------------------------------------------------
def test_daily_quota_denies_the_rest_and_spares_other_tenants(loader, kernel_conn, operator):
    set_limit(kernel_conn, operator, 3)
    acme = user_function(kernel_conn, operator, ECHO, tenant="acme")
    globex = user_function(kernel_conn, operator, ECHO, tenant="globex")
    acme_requests = [schedule(kernel_conn, operator, acme["id"], {"i": i}) for i in range(5)]
    globex_requests = [schedule(kernel_conn, operator, globex["id"], {"i": i}) for i in range(2)]
    assert loader.boot(WORKER, {"batch": 8})["claimed"] == 7

    assert [e["output"] for e in of_type(kernel_conn, "execution", "acme")] == [
        {"i": 0}, {"i": 1}, {"i": 2}]
    assert len(of_type(kernel_conn, "execution", "globex")) == 2
    heads = [store.head(kernel_conn, r["id"]) for r in acme_requests]
    assert [h["status"] for h in heads] == ["complete"] * 3 + ["denied"] * 2
    assert all(h["metadata"]["reason"] == "QUOTA_EXCEEDED" for h in heads[3:])
    violations = of_type(kernel_conn, "policy_violation")
    assert [v["status"] for v in violations] == ["over_quota"] * 2
    assert sorted(v["related_to"][0] for v in violations) == sorted(r["id"] for r in
                                                                   acme_requests[3:])
    assert all(v["tenant_id"] == "acme" and v["metadata"]["limit"] == 3 for v in violations)
    assert [store.head(kernel_conn, r["id"])["status"] for r in globex_requests] == [
        "complete", "complete"]
    # Direct runs count against the same quota.
    assert run(loader, acme["id"], {"i": 9})["entity_type"] == "policy_violation"
    assert run(loader, globex["id"], {"i": 9}, tenant="globex")["entity_type"] == "execution"


@pytest.mark.parametrize("round_", range(3))
def test_two_workers_racing_never_exceed_the_quota(seeded, home, pool, kernel_conn, operator,
                                                   round_):
    limit = 2
    set_limit(kernel_conn, operator, limit)
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    requests = [schedule(kernel_conn, operator, fn["id"], {"i": i}) for i in range(7)]
    with Loader(seeded, home, sandbox=pool) as a, Loader(seeded, home, sandbox=pool) as b:
        threads, results = in_threads(lambda: a.boot(WORKER, {"batch": 4}),
                                      lambda: b.boot(WORKER, {"batch": 4}))
        for t in threads:
            t.start()
        out = join_all(threads, results)
        while True:  # a worker that ran first may leave some for a second pass
            more = a.boot(WORKER, {"batch": 4})
            if not more["claimed"]:
                break
            out.append(more)
    assert len(of_type(kernel_conn, "execution", "acme")) == limit
    statuses = sorted(store.head(kernel_conn, r["id"])["status"] for r in requests)
    assert statuses == ["complete"] * limit + ["denied"] * (len(requests) - limit)
    assert sum(o["claimed"] for o in out) == len(requests)


def test_workers_that_both_passed_the_precheck_still_take_one_slot_each(seeded, home, pool,
                                                                        kernel_conn, operator):
    """The worst interleaving, forced: both workers have claimed, run the function and are
    about to record while the append lock is held elsewhere; only `limit` may be recorded."""
    limit = 2
    set_limit(kernel_conn, operator, limit)
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    with Loader(seeded, home, sandbox=pool) as a, Loader(seeded, home, sandbox=pool) as b:
        for ld in (a, b):  # warm: later boots append nothing before recording
            ld.boot(WORKER, {"batch": 1})
            ld.load(RUN_CODE)
        requests = [schedule(kernel_conn, operator, fn["id"], {"i": i}) for i in range(4)]
        with seeded.connect("admin") as holder:
            with holder.transaction():  # the append lock, released at the block's end
                holder.execute("SELECT ledger.append_lock()")
                threads, results = in_threads(lambda: a.boot(WORKER, {"batch": 2}),
                                              lambda: b.boot(WORKER, {"batch": 2}))
                for t in threads:
                    t.start()
                await_lock_waiters(kernel_conn, 2)
            out = join_all(threads, results)
    assert [o["claimed"] for o in out] == [2, 2]
    assert len(of_type(kernel_conn, "execution", "acme")) == limit
    statuses = sorted(store.head(kernel_conn, r["id"])["status"] for r in requests)
    assert statuses == ["complete", "complete", "denied", "denied"]


def test_force_by_the_override_key_bypasses_the_quota(loader, kernel_conn, operator):
    override = SigningKey.generate()
    manifest.set_trust(kernel_conn, operator, public_key_hex(override), "override", True,
                       role="platform")
    manifest.amend(kernel_conn, operator, override_pubkey_hex=public_key_hex(override))
    set_limit(kernel_conn, operator, 1)
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    assert run(loader, fn["id"], {"quota": "used"})["entity_type"] == "execution"

    def request(key, force):
        span = normalise({
            "id": str(uuid.uuid4()), "seq": 0, "at": now_at(), "entity_type": "request",
            "who": "ops", "did": "scheduled", "this": "forced run", "parent_id": fn["id"],
            "owner_id": "ops", "tenant_id": "acme", "visibility": "tenant",
            "status": "scheduled", "input": {"force": force}, "trace_id": str(uuid.uuid4()),
            "metadata": {"force": force}})
        return store.append(kernel_conn, [seal(span, key)], operator)[0]

    forced = request(override, True)
    operator_forced = request(operator, True)  # not the override key
    unforced = request(override, False)  # override key, but no force flag
    loader.boot(WORKER, {"batch": 8})
    assert store.head(kernel_conn, forced["id"])["status"] == "complete"
    assert execution_for(kernel_conn, forced["id"])["output"] == {"force": True}
    assert store.head(kernel_conn, operator_forced["id"])["status"] == "denied"
    assert store.head(kernel_conn, unforced["id"])["status"] == "denied"
    assert len(of_type(kernel_conn, "execution", "acme")) == 2


# --- observer_bot ----------------------------------------------------------------------------
def requests_for(conn, function_id: str) -> list[dict]:
    return [r for r in of_type(conn, "request") if r["parent_id"] == function_id
            and r["seq"] == 0]


def test_observer_schedules_each_function_version_once(loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO, status="scheduled", input={"v": 0})
    idle = user_function(kernel_conn, operator, ECHO, status="active")
    first = loader.boot(OBSERVER)
    assert len(first["scheduled"]) == 1
    for _ in range(2):
        assert loader.boot(OBSERVER)["scheduled"] == []
    [req] = requests_for(kernel_conn, fn["id"])
    assert req["id"] == first["scheduled"][0]
    assert (req["status"], req["tenant_id"], req["input"]) == ("scheduled", "acme", {"v": 0})
    assert req["metadata"]["function_seq"] == 0
    assert requests_for(kernel_conn, idle["id"]) == []

    store.append(kernel_conn, [{**{k: fn[k] for k in ("id", "entity_type", "who", "this",
                                                      "name", "owner_id", "tenant_id",
                                                      "visibility", "code")},
                                 "status": "scheduled", "input": {"v": 1}}], operator)
    assert len(loader.boot(OBSERVER)["scheduled"]) == 1
    assert loader.boot(OBSERVER)["scheduled"] == []
    reqs = requests_for(kernel_conn, fn["id"])
    assert [(r["metadata"]["function_seq"], r["input"]) for r in reqs] == [(0, {"v": 0}),
                                                                           (1, {"v": 1})]


def test_observer_every_s_schedules_once_per_window(loader, kernel_conn, operator):
    yearly = user_function(kernel_conn, operator, ECHO, status="scheduled",
                           metadata={"every_s": 10**9})
    for _ in range(3):
        loader.boot(OBSERVER)
    assert len(requests_for(kernel_conn, yearly["id"])) == 1

    each_second = user_function(kernel_conn, operator, ECHO, status="scheduled",
                                metadata={"every_s": 1})
    loader.boot(OBSERVER)
    [first] = requests_for(kernel_conn, each_second["id"])
    window = int(first["metadata"]["idempotency_key"].rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while kernel_conn.execute("SELECT floor(extract(epoch FROM now()))::bigint AS s"
                              ).fetchone()["s"] <= window:  # await the database clock
        assert time.monotonic() < deadline
        time.sleep(0.02)
    loader.boot(OBSERVER)
    loader.boot(OBSERVER)
    windows = [int(r["metadata"]["idempotency_key"].rsplit(":", 1)[1])
               for r in requests_for(kernel_conn, each_second["id"])]
    assert len(windows) == 2 and windows[1] > windows[0]
    assert len(requests_for(kernel_conn, yearly["id"])) == 1


def test_observer_says_once_a_day_why_it_skips_functions_over_quota(cli, loader, kernel_conn,
                                                                      operator):
    """A tenant over its quota gets nothing scheduled, and each of its functions says why,
    where a user looks: a request denied with QUOTA_EXCEEDED (and a policy_violation, as
    run_code records a refusal). Once per function and UTC day, not once per round."""
    set_limit(kernel_conn, operator, 1)
    spent = user_function(kernel_conn, operator, ECHO, tenant="acme")
    run(loader, spent["id"], {"x": 1})
    acme = user_function(kernel_conn, operator, ECHO, tenant="acme", status="scheduled",
                         input={"v": 1})
    each_second = user_function(kernel_conn, operator, ECHO, tenant="acme",
                                status="scheduled", metadata={"every_s": 1})
    globex = user_function(kernel_conn, operator, ECHO, tenant="globex", status="scheduled")
    out = loader.boot(OBSERVER)
    assert out["skipped"] == 2
    assert [r["id"] for r in requests_for(kernel_conn, globex["id"])] == out["scheduled"]
    [denied] = requests_for(kernel_conn, acme["id"])
    [each] = requests_for(kernel_conn, each_second["id"])
    assert sorted(out["denied"]) == sorted([denied["id"], each["id"]])
    assert (denied["status"], denied["error"]["code"], denied["metadata"]["reason"]) == (
        "denied", "QUOTA_EXCEEDED", "QUOTA_EXCEEDED")
    assert "tenant acme has used 1 of its 1 executions" in denied["error"]["message"]
    assert denied["input"] == {"v": 1} and denied["owner_id"] == "alice"
    [violation] = [v for v in of_type(kernel_conn, "policy_violation", "acme")
                   if v["parent_id"] == acme["id"]]
    assert violation["status"] == "over_quota" and violation["related_to"] == [denied["id"]]
    assert violation["error"] == denied["error"]

    for _ in range(3):  # later rounds the same day add nothing (every_s windows included)
        again = loader.boot(OBSERVER)
        assert (again["scheduled"], again["denied"], again["skipped"]) == ([], [], 3)
    assert len(requests_for(kernel_conn, acme["id"])) == 1
    assert len(requests_for(kernel_conn, each_second["id"])) == 1
    assert len(of_type(kernel_conn, "policy_violation", "acme")) == 2

    listed = cli("spans", "--entity-type", "request", "--tenant", "acme").stdout
    assert listed.count("denied QUOTA_EXCEEDED") == 2, listed
    assert "does not schedule this function until the quota resets" in \
        cli("show", denied["id"]).stdout

    set_limit(kernel_conn, operator, 100)  # a higher limit: scheduled again at once
    assert len(loader.boot(OBSERVER)["scheduled"]) == 2
    assert [r["status"] for r in requests_for(kernel_conn, acme["id"])] == [
        "denied", "scheduled"]


# --- request_worker --------------------------------------------------------------------------
def test_request_worker_is_fifo_batched_and_completes_each_request(loader, kernel_conn,
                                                                    operator):
    fns = [user_function(kernel_conn, operator, ECHO) for _ in range(2)]
    reqs = [schedule(kernel_conn, operator, fns[i % 2]["id"], {"i": i}) for i in range(5)]
    first = loader.boot(WORKER, {"batch": 2})
    assert first["claimed"] == 2
    assert [e["request_id"] for e in first["executions"]] == [reqs[0]["id"], reqs[1]["id"]]
    assert [store.head(kernel_conn, r["id"])["seq"] for r in reqs] == [1, 1, 0, 0, 0]
    assert loader.boot(WORKER, {"batch": 2})["claimed"] == 2
    assert loader.boot(WORKER, {"batch": 2})["claimed"] == 1
    assert loader.boot(WORKER, {"batch": 2}) == {"claimed": 0, "executions": []}

    executions = [execution_for(kernel_conn, r["id"]) for r in reqs]
    positions = [e["position"] for e in executions]
    assert positions == sorted(positions)  # executed in scheduling order
    assert [e["output"] for e in executions] == [{"i": i} for i in range(5)]
    for req, execution in zip(reqs, executions, strict=True):
        done = store.head(kernel_conn, req["id"])
        assert (done["seq"], done["status"]) == (1, "complete")
        assert done["prev_hash"] == req["curr_hash"]
        assert done["metadata"]["execution_id"] == execution["id"]
        assert execution["parent_id"] == req["parent_id"]
    assert len(of_type(kernel_conn, "execution")) == 5


def test_a_tenants_flood_of_requests_does_not_push_another_tenants_behind_it(
        loader, kernel_conn, operator):
    flood_fn = user_function(kernel_conn, operator, ECHO, tenant="flood")
    flood = [raw_request(kernel_conn, operator, flood_fn["id"], "flood", {"i": i})
             for i in range(40)]
    quiet_fn = user_function(kernel_conn, operator, ECHO, tenant="quiet")
    [mine] = [raw_request(kernel_conn, operator, quiet_fn["id"], "quiet", {"me": 1})]
    first = loader.boot(WORKER, {"batch": 8})
    # quiet's one request is in the first batch, run right after flood's oldest (FIFO put
    # it behind all 40)
    assert [e["request_id"] for e in first["executions"]][:2] == [flood[0]["id"], mine["id"]]
    assert first["claimed"] == 8
    assert store.head(kernel_conn, mine["id"])["status"] == "complete"
    assert [e["request_id"] for e in first["executions"]][2:] == [r["id"] for r in flood[1:7]]


def test_claims_take_each_tenants_oldest_in_turn_and_skip_what_others_hold(
        seeded, kernel_conn, operator):
    fns = {t: user_function(kernel_conn, operator, ECHO, tenant=t) for t in "abc"}
    ids = {t: [raw_request(kernel_conn, operator, fns[t]["id"], t)["id"]
               for _ in range(n)] for t, n in (("a", 5), ("b", 5), ("c", 1))}

    def claimed(conn, batch):
        return [(r["tenant_id"], str(r["id"])) for r in conn.execute(q("claim_requests"),
                                                                 {"batch": batch})]

    with seeded.connect("kernel") as other, kernel_conn.transaction(), other.transaction():
        got = claimed(kernel_conn, 6)
        assert got == [("a", ids["a"][0]), ("b", ids["b"][0]), ("c", ids["c"][0]),
                       ("a", ids["a"][1]), ("b", ids["b"][1]), ("a", ids["a"][2])]
        # A second worker meanwhile takes what is left, round-robin again, nothing twice.
        assert claimed(other, 10) == [("a", ids["a"][3]), ("b", ids["b"][2]),
                                      ("a", ids["a"][4]), ("b", ids["b"][3]),
                                      ("b", ids["b"][4])]


def test_cli_schedule_prints_the_request_id_and_is_idempotent(cli, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO)
    plain = cli("schedule", fn["id"], "--input", '{"n": 1}').stdout.strip()
    request = store.head(kernel_conn, plain)
    assert (request["entity_type"], request["status"], request["parent_id"],
            request["input"]) == ("request", "scheduled", fn["id"], {"n": 1})
    keyed = [cli("schedule", fn["id"], "--idempotency-key", "nightly-1").stdout.strip()
             for _ in range(2)]
    assert keyed[0] == keyed[1] != plain
    other = cli("schedule", fn["id"], "--idempotency-key", "nightly-2").stdout.strip()
    assert other not in (plain, keyed[0])
    assert len(requests_for(kernel_conn, fn["id"])) == 3


def _missing(conn, operator):
    return "00000000-0000-4000-8000-00000000dead"


def _untrusted(conn, operator):
    span = seal(normalise({"id": str(uuid.uuid4()), "seq": 0, "at": now_at(),
                           "entity_type": "function", "who": "mallory", "this": "fn",
                           "code": ECHO, "owner_id": "alice", "tenant_id": "acme",
                           "visibility": "tenant", "status": "active"}), SigningKey.generate())
    store.insert(conn, [span])
    return span["id"]


def _not_a_function(conn, operator):
    return store.append(conn, [{"entity_type": "note", "who": "alice", "this": "a note",
                                 "owner_id": "alice", "tenant_id": "acme",
                                 "visibility": "tenant"}], operator)[0]["id"]


@pytest.mark.parametrize("target, reason", [(_missing, "FUNCTION_NOT_FOUND"),
                                            (_untrusted, "KEY_UNTRUSTED"),
                                            (_not_a_function, "not a function")])
def test_request_for_an_unusable_function_completes_with_error(loader, kernel_conn, operator,
                                                               target, reason):
    request = raw_request(kernel_conn, operator, target(kernel_conn, operator), "acme")
    assert loader.boot(WORKER, {"batch": 8})["claimed"] == 1
    done = store.head(kernel_conn, request["id"])
    assert (done["seq"], done["status"]) == (1, "error")
    assert reason in done["error"]["message"]
    assert of_type(kernel_conn, "execution") == []
    assert loader.boot(WORKER, {"batch": 8})["claimed"] == 0  # never retried forever


def test_function_edited_behind_the_back_is_not_run(loader, seeded, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO)
    assert run(loader, fn["id"], {"x": 1})["output"] == {"x": 1}
    with seeded.connect("admin") as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE ledger.universal_registry SET code = %s WHERE id = %s",
                      ("def main(input):\n    return 'evil'\n", fn["id"]))
    request = schedule(kernel_conn, operator, fn["id"], {"x": 2})
    loader.boot(WORKER, {"batch": 8})
    done = store.head(kernel_conn, request["id"])
    assert done["status"] == "error" and "HASH_MISMATCH" in done["error"]["message"]
    assert [e["output"] for e in of_type(kernel_conn, "execution")] == [{"x": 1}]


# --- capabilities ----------------------------------------------------------------------------
def boot_kernel(loader, conn, operator, body: str):
    [fn] = store.append(conn, [function_span(code=f"def main(ctx):\n    {body}\n")], operator)
    allow(conn, operator, fn["id"])
    return loader.boot(fn["id"])


@pytest.mark.parametrize("body, code", [
    ("import os\n    return os.getcwd()", "KERNEL_ERROR"),
    ("from stage0 import db\n    return 1", "KERNEL_ERROR"),
    ("return ctx._loader.key", "KERNEL_COMPILE_ERROR"),
    ("return getattr(ctx, '_conn')", "KERNEL_ERROR"),
    ("return ctx.sql.__func__", "KERNEL_COMPILE_ERROR"),
    ("return ctx.sql('SELECT count(*) AS n FROM ledger.' + 'universal_registry')",
     "KERNEL_SQL_NOT_LITERAL"),
    ("return ctx.sql('SELECT %s AS n'.replace('%s', '1'))", "KERNEL_SQL_NOT_LITERAL"),
    ("return ctx.sql(\"UPDATE ledger.universal_registry SET status = 'x'\")",
     "LEDGER_FORBIDDEN"),
    ("return ctx.sql('DELETE FROM ledger.universal_registry')", "LEDGER_FORBIDDEN"),
    ("return ctx.sql('UPDATE ledger.span_heads SET status = NULL')", "LEDGER_FORBIDDEN"),
])
def test_kernel_cannot_reach_past_its_capabilities(loader, kernel_conn, operator, body, code):
    before = kernel_conn.execute(q("count_spans")).fetchone()["n"]
    with pytest.raises(LoglineError) as refused:
        boot_kernel(loader, kernel_conn, operator, body)
    assert refused.value.code == code
    # Only the function, its manifest entry and its boot_event were appended.
    assert kernel_conn.execute(q("count_spans")).fetchone()["n"] == before + 3
    assert loader.boot(OBSERVER) == {  # the loader still works
        "scheduled": [], "skipped": 0, "denied": []}


def test_kernel_sql_refusal_is_a_reason_code_not_a_traceback(cli, kernel_conn, operator):
    [fn] = store.append(kernel_conn, [function_span(
        code="def main(ctx):\n    return ctx.sql('UPDATE ledger.universal_registry "
             "SET status = NULL')\n")], operator)
    allow(kernel_conn, operator, fn["id"])
    proc = cli("boot", fn["id"], check=False)
    assert proc.returncode != 0
    assert "LEDGER_FORBIDDEN" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        kernel_conn.execute("UPDATE ledger.universal_registry SET status = NULL")


def test_kernel_cannot_change_the_manifest_other_kernels_see(loader, kernel_conn, operator):
    set_limit(kernel_conn, operator, 1)
    fn = user_function(kernel_conn, operator, ECHO, tenant="system")
    assert run(loader, fn["id"], {"x": 0}, tenant="system")["entity_type"] == "execution"
    body = ("ctx.manifest['throttle']['per_tenant_daily_exec_limit'] = 1000\n"
            f"    return ctx.call('{RUN_CODE}', {{'span_id': '{fn['id']}'}})")
    assert boot_kernel(loader, kernel_conn, operator, body)["entity_type"] == "policy_violation"
