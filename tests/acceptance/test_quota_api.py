"""Daily execution quotas over HTTP: a real `logline serve` refuses an execution at once
(429 QUOTA_EXCEEDED, Retry-After) when the tenant's day is spent, and GET /api/metrics says
how much is left. (The limits: tests/unit/test_quota_limits.py; on a ledger and through
`logline quota`: tests/integration/test_quota.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.api import Api, assert_error, post, start_api
from helpers.kernels import ECHO, WORKER

from stage0.boot.loader import Loader


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
