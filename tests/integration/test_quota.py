"""Daily execution quotas that say why, on a real ledger: the refusal on the request itself,
per-tenant overrides that survive reseeding, what the app role may read, and `logline quota
show|set`. (The limits themselves: tests/unit/test_quota_limits.py; the API refusing at once:
tests/acceptance/test_quota_api.py.)"""

from __future__ import annotations

import json

import pytest
from helpers.kernels import ECHO, WORKER, of_type, run, user_function

from stage0.config import row_dir
from stage0.ledger import db, manifest, quota, seed, store
from stage0.runtime.requests import schedule

# --- the kernels --------------------------------------------------------------------------


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
