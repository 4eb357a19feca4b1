"""Daily execution quotas that say why: the limits (manifest defaults, per-tenant overrides,
failing closed), the refusal on the request itself, the API refusing at once (429
QUOTA_EXCEEDED), GET /api/metrics and `logline quota show|set`."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api import Api, assert_error, post, start_api
from test_kernels import ECHO, WORKER, of_type, run, user_function

from stage0.boot.loader import Loader
from stage0.config import row_dir
from stage0.ledger import db, manifest, quota, seed, store
from stage0.runtime.requests import schedule

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"


def kernel_module(name: str):
    spec = importlib.util.spec_from_file_location(f"kernel_{name}", KERNELS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCtx:
    def __init__(self, metadata: dict) -> None:
        self.manifest = metadata


MANIFESTS = [
    {}, {"throttle": {}}, {"throttle": {"per_tenant_daily_exec_limit": 7}},
    {"throttle": {"per_tenant_daily_exec_limit": 7, "tenant_limits": {"acme": 1000}}},
    {"throttle": {"tenant_limits": {"acme": 0}}},
    {"throttle": {"per_tenant_daily_exec_limit": "lots"}},
    {"throttle": {"per_tenant_daily_exec_limit": -1}},
    {"throttle": {"per_tenant_daily_exec_limit": True}},
    {"throttle": {"per_tenant_daily_exec_limit": 2.5}},
    {"throttle": {"per_tenant_daily_exec_limit": 2**40}},
    {"throttle": {"tenant_limits": {"acme": None}}},
    {"throttle": {"tenant_limits": ["acme", 5]}},
    {"throttle": {"tenant_limits": "unlimited"}},
]


# --- the limits ---------------------------------------------------------------------------
@pytest.mark.parametrize("metadata", MANIFESTS, ids=lambda m: json.dumps(m))
@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_the_kernels_read_a_limit_exactly_like_stage0_quota(metadata, tenant):
    """run_code and observer_bot (sandboxed kernels, no imports) repeat quota.limit_for."""
    expected, _ = quota.limit_for(metadata, tenant)
    for name in ("run_code", "observer_bot"):
        assert kernel_module(name).daily_limit(FakeCtx(metadata), tenant) == expected, name


def test_limits_fail_closed():
    assert quota.limit_for({}, "acme") == (100, "throttle.per_tenant_daily_exec_limit")
    assert quota.limit_for({"throttle": {"tenant_limits": {"acme": 5}}}, "acme") == (
        5, "throttle.tenant_limits.acme")
    for metadata in MANIFESTS[5:]:
        limit, source = quota.limit_for(metadata, "acme")
        assert limit == 0 and "fail closed" in source, metadata


@pytest.mark.parametrize("text", ["-1", "1.5", "lots", "", str(2**31), "1e3"])
def test_a_limit_that_is_not_a_whole_number_is_refused(text):
    with pytest.raises(Exception) as refused:
        quota.parse_limit(text)
    assert getattr(refused.value, "code", None) == "QUOTA_INVALID"


# --- the kernels --------------------------------------------------------------------------
@pytest.fixture
def loader(seeded, home, pool) -> Iterator[Loader]:
    with Loader(seeded, home, sandbox=pool) as ld:
        yield ld


@pytest.fixture(scope="module")
def pool():
    from stage0.sandbox.pool import SandboxPool

    with SandboxPool(size=2) as p:
        yield p


def test_a_denied_request_carries_the_reason_and_other_tenants_keep_the_default(
        loader, kernel_conn, operator):
    quota.set_limit(kernel_conn, operator, "acme", 1)
    acme = user_function(kernel_conn, operator, ECHO, tenant="acme")
    globex = user_function(kernel_conn, operator, ECHO, tenant="globex")
    first, second = (schedule(kernel_conn, operator, acme["id"], {"i": i}) for i in range(2))
    others = [schedule(kernel_conn, operator, globex["id"], {"i": i}) for i in range(2)]
    out = loader.boot(WORKER, {"batch": 8})
    reasons = {e["request_id"]: e["reason"] for e in out["executions"]}
    assert reasons == {first["id"]: None, second["id"]: "QUOTA_EXCEEDED",
                       **{o["id"]: None for o in others}}

    denied = store.head(kernel_conn, second["id"])
    assert denied["status"] == "denied"
    assert denied["error"]["code"] == "QUOTA_EXCEEDED"
    assert "tenant acme has used its 1 executions" in denied["error"]["message"]
    assert "logline quota show --tenant acme" in denied["error"]["message"]
    assert denied["metadata"]["reason"] == "QUOTA_EXCEEDED" and denied["metadata"]["limit"] == 1
    [violation] = of_type(kernel_conn, "policy_violation")
    assert violation["error"] == denied["error"] and violation["metadata"]["limit"] == 1
    assert [store.head(kernel_conn, o["id"])["status"] for o in others] == ["complete"] * 2
    assert quota.of_tenant(kernel_conn, manifest_meta(kernel_conn, operator), "acme").spent


def manifest_meta(conn, operator) -> dict:
    from stage0.spans.proofs import public_key_hex

    return manifest.latest(conn, public_key_hex(operator))["metadata"]


@pytest.mark.parametrize("throttle", [{"per_tenant_daily_exec_limit": "lots"},
                                      {"tenant_limits": "unlimited"},
                                      {"per_tenant_daily_exec_limit": 100,
                                       "tenant_limits": {"acme": -5}}])
def test_a_malformed_limit_runs_nothing(loader, kernel_conn, operator, throttle):
    manifest.amend(kernel_conn, operator, throttle=throttle)
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    assert run(loader, fn["id"], {"x": 1})["entity_type"] == "policy_violation"
    assert of_type(kernel_conn, "execution") == []


def test_reseeding_the_manifest_keeps_the_overrides(kernel_conn, operator, tmp_path):
    quota.set_limit(kernel_conn, operator, "acme", 7)
    quota.set_limit(kernel_conn, operator, "globex", 9)
    seed.seed(kernel_conn, [row_dir()], operator)  # what `logline init` does on every start
    assert quota.limit_for(manifest_meta(kernel_conn, operator), "acme")[0] == 7

    # A manifest row that names a tenant itself wins for that tenant, and only for it.
    [row] = [json.loads(line) for line in (row_dir() / "manifest" / "manifest.ndjson")
             .read_text().splitlines()]
    row["metadata"]["throttle"]["tenant_limits"] = {"acme": 3}
    path = tmp_path / "manifest.ndjson"
    path.write_text(json.dumps(row) + "\n")
    seed.seed(kernel_conn, [path], operator)
    meta = manifest_meta(kernel_conn, operator)
    assert meta["throttle"]["tenant_limits"] == {"acme": 3, "globex": 9}

    quota.set_limit(kernel_conn, operator, "globex", None)  # back to the default
    assert quota.limit_for(manifest_meta(kernel_conn, operator), "globex") == (
        100, "throttle.per_tenant_daily_exec_limit")


def test_the_app_role_reads_its_own_tenants_count_only(seeded, kernel_conn, operator, loader):
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    for i in range(3):
        run(loader, fn["id"], {"i": i})
    with seeded.connect("app") as app:
        for tenant, expected in (("acme", 3), ("globex", 0), ("", 0)):
            with db.as_identity(app, "alice", tenant):
                assert quota.of_caller(app, {}, tenant).used == expected
        with db.as_identity(app, "alice", "acme"), pytest.raises(Exception) as denied:
            app.execute("SELECT * FROM ledger.tenant_exec_counts").fetchall()
        assert "permission denied" in str(denied.value)
    assert quota.used_today(kernel_conn) == {"acme": 3}


# --- the API ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("quota-api"))


def test_execute_refuses_at_once_when_the_days_quota_is_spent(api):
    api.cli("quota", "set", "1", "--tenant", "quota-a")
    a, b = api.client(api.key("alice", "quota-a")), api.client(api.key("bob", "quota-b"))
    fa = post(a, entity_type="function", name="echo", code=ECHO, visibility="tenant")
    fb = post(b, entity_type="function", name="echo", code=ECHO, visibility="tenant")
    first = a.post("/api/execute", json={"span_id": fa["id"], "idempotency_key": "once"})
    assert first.status_code == 202, first.text
    assert a.get("/api/metrics").json()["quota"] | {"resets_in_s": 0, "day": ""} == {
        "tenant_id": "quota-a", "limit": 1, "used": 0, "remaining": 1, "day": "",
        "source": "throttle.tenant_limits.quota-a", "resets_in_s": 0}
    with Loader(api.database, api.home) as loader:
        for _ in range(20):  # FIFO: requests of other tests may come first
            if not loader.boot(WORKER, {"batch": 32})["claimed"]:
                break

    refused = a.post("/api/execute", json={"span_id": fa["id"]})
    error = assert_error(refused, 429, "QUOTA_EXCEEDED")
    assert "tenant quota-a has used 1 of its 1 executions" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    again = a.post("/api/execute", json={"span_id": fa["id"], "idempotency_key": "once"})
    assert again.status_code == 202  # the same request, answered as before
    assert again.json()["request_id"] == first.json()["request_id"]
    quota_a = a.get("/api/metrics").json()["quota"]
    assert (quota_a["used"], quota_a["remaining"]) == (1, 0)

    assert b.post("/api/execute", json={"span_id": fb["id"]}).status_code == 202
    assert b.get("/api/metrics").json()["quota"]["limit"] == 100
    with api.kernel() as conn:
        [denial] = conn.execute(
            "SELECT metadata FROM ledger.universal_registry WHERE entity_type = "
            "'audit_denial' AND this = 'QUOTA_EXCEEDED'").fetchall()
    assert denial["metadata"]["path"] == "/api/execute"


# --- the CLI ------------------------------------------------------------------------------
def test_quota_show_and_set(cli, loader, kernel_conn, operator):
    fn = user_function(kernel_conn, operator, ECHO, tenant="acme")
    run(loader, fn["id"], {"x": 1})
    shown = cli("quota", "show").stdout
    assert "default: 100 executions per tenant per UTC day" in shown
    assert "tenant acme: 1 of 100 used" in shown and "99 left" in shown

    assert "tenant acme: 1 executions a day from now on" in \
        cli("quota", "set", "1", "--tenant", "acme").stdout
    [line] = cli("quota", "show", "--tenant", "acme", "--json").stdout.splitlines()
    acme = json.loads(line)
    assert (acme["limit"], acme["used"], acme["remaining"], acme["source"]) == (
        1, 1, 0, "throttle.tenant_limits.acme")
    assert "SPENT" in cli("quota", "show", "--tenant", "acme").stdout

    request = cli("schedule", fn["id"], "--input", '{"x": 2}').stdout.strip()
    loader.boot(WORKER, {"batch": 8})
    listed = cli("spans", "--entity-type", "request").stdout
    assert "denied QUOTA_EXCEEDED" in listed
    assert "QUOTA_EXCEEDED: tenant acme has used its 1" in cli("show", request).stdout
    assert "QUOTA_EXCEEDED" in cli("trace", request).stdout

    assert "back to the default, 100" in cli("quota", "set", "default", "--tenant",
                                             "acme").stdout
    bad = cli("quota", "set", "-3", "--tenant", "acme", check=False)
    assert bad.returncode == 2 and "QUOTA_INVALID" in bad.stderr
