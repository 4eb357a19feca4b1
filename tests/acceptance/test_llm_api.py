"""The providers' admin API on a real `logline serve`, against the loopback model server:
the operator manages rows, a tenant's admin reads its own and the system's and tests them as
its tenant, nobody else gets in."""

from __future__ import annotations

import time

import pytest
from helpers.api import start_api
from helpers.llm_server import LlmServer


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory):
    yield from start_api(server, template, tmp_path_factory.mktemp("llm-api"))


@pytest.fixture(scope="module")
def operator(api):
    return api.client(api.operator())


@pytest.fixture(scope="module")
def ada(api):
    return api.client(api.key("ada", "acme", "admin"))


@pytest.fixture(scope="module")
def gus(api):
    return api.client(api.key("gus", "globex", "admin"))


def row(model_server, name, tenant="system", **extra):
    return {"name": name, "kind": "openai", "base_url": model_server.url + "/v1",
            "model": "tiny", "tenant_id": tenant, "egress": {"addresses": ["127.0.0.1"]},
            **extra}


def test_the_operator_adds_and_a_tenant_admin_tests(operator, ada, model_server):
    r = operator.post("/api/admin/providers", json=row(model_server, "shared"))
    assert r.status_code == 201, r.text
    assert (r.json()["seq"], r.json()["status"]) == (0, "active")
    names = {p["name"] for p in ada.get("/api/admin/providers").json()["providers"]}
    assert {"shared", "openai", "ollama"} <= names
    shown = ada.get("/api/admin/providers/shared").json()
    assert shown["egress"]["addresses"] == ["127.0.0.1"] and shown["kind"] == "openai"
    tested = ada.post("/api/admin/providers/shared/test", json={})
    assert tested.status_code == 200 and tested.json()["ok"], tested.text
    assert tested.json()["tokens_out"] > 0
    assert model_server.requests[-1].body["messages"][0]["role"] == "user"
    off = operator.post("/api/admin/providers/shared/disable")
    assert off.json()["status"] == "disabled" and off.json()["seq"] == 1
    again = ada.post("/api/admin/providers/shared/test", json={}).json()
    assert again["error"]["code"] == "PROVIDER_DISABLED"


def test_a_tenant_admin_cannot_change_rows(ada, model_server):
    r = ada.post("/api/admin/providers", json=row(model_server, "mine", tenant="acme"))
    assert r.status_code == 403
    assert ada.post("/api/admin/providers/openai/enable").status_code == 403


def test_tenants_do_not_see_or_use_each_others_rows(operator, ada, gus, model_server):
    assert operator.post("/api/admin/providers",
                         json=row(model_server, "acme-only", tenant="acme")).status_code == 201
    assert "acme-only" not in {p["name"] for p in
                               gus.get("/api/admin/providers").json()["providers"]}
    assert gus.get("/api/admin/providers/acme-only").status_code == 404
    assert gus.post("/api/admin/providers/acme-only/test", json={}).json()["error"][
        "code"] == "PROVIDER_NOT_FOUND"
    assert gus.post("/api/admin/providers/acme-only/test",
                    json={"tenant_id": "acme"}).status_code == 403
    assert gus.get("/api/admin/providers?tenant=acme").status_code == 403
    assert ada.post("/api/admin/providers/acme-only/test", json={}).json()["ok"]


def test_bad_rows_are_refused_with_their_code(operator, model_server):
    r = operator.post("/api/admin/providers", json={**row(model_server, "x"), "kind": "gemini"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "PROVIDER_KIND_UNKNOWN"
    r = operator.post("/api/admin/providers",
                      json={**row(model_server, "x"), "limits": {"rps": -1}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "PROVIDER_INVALID"


def test_readers_are_refused(api):
    reader = api.client(api.key("rita", "acme", "reader"))
    assert reader.get("/api/admin/providers").status_code == 403
    assert reader.post("/api/admin/providers/openai/test", json={}).status_code == 403


def test_metrics_show_calls_tokens_latency_breaker_and_budget(api, operator, ada,
                                                              model_server):
    for name, limits in (("metered", {}), ("fragile", {"max_attempts": 1,
                                                        "breaker_failures": 1}),
                         ("broke", {"daily_token_budget": 0})):
        assert operator.post("/api/admin/providers", json=row(
            model_server, name, limits=limits)).status_code == 201
    assert ada.post("/api/admin/providers/metered/test", json={}).json()["ok"]
    model_server.plan("500")
    assert ada.post("/api/admin/providers/fragile/test", json={}).json()["error"][
        "code"] == "PROVIDER_UNAVAILABLE"
    assert ada.post("/api/admin/providers/broke/test", json={}).json()["error"][
        "code"] == "TOKEN_BUDGET_EXCEEDED"
    text = api.scrape().text
    assert 'logline_provider_calls_total{outcome="ok",provider="metered"} 1.0' in text
    assert 'logline_provider_calls_total{outcome="PROVIDER_UNAVAILABLE",provider="fragile"} ' \
        '1.0' in text
    assert 'logline_provider_tokens_total{direction="out",provider="metered"} 7.0' in text
    assert 'logline_provider_latency_seconds_count{provider="metered"} 1.0' in text
    assert 'logline_provider_latency_seconds_bucket{le="+Inf",provider="metered"} 1.0' in text
    assert 'logline_provider_budget_refusals_total{provider="broke"} 1.0' in text
    assert 'logline_provider_breaker_state{provider="fragile",worker="api"} 2.0' in text
    assert "Reply with the single word" not in text
    # the next scrape adds what was appended since the last one (the totals are kept)
    assert ada.post("/api/admin/providers/metered/test", json={}).json()["ok"]
    text = api.scrape().text
    assert 'logline_provider_calls_total{outcome="ok",provider="metered"} 2.0' in text
    assert 'logline_provider_tokens_total{direction="out",provider="metered"} 14.0' in text
    assert 'logline_provider_calls_total{outcome="PROVIDER_UNAVAILABLE",provider="fragile"} ' \
        '1.0' in text
    assert 'logline_provider_breaker_state{provider="fragile",worker="api"} 2.0' in text
    assert 'logline_provider_calls_total{outcome="ok",provider="metered"} 2.0' in \
        api.scrape().text  # a scrape with nothing new adds nothing


def test_a_misspelt_field_is_refused_not_dropped(operator, model_server):
    r = operator.post("/api/admin/providers", json={**row(model_server, "typo"),
                                                     "egres": {"addresses": ["10.0.0.1"]}})
    assert r.status_code in (400, 422) and "typo" not in {
        p["name"] for p in operator.get("/api/admin/providers").json()["providers"]}


@pytest.fixture(scope="module")
def impatient(server, template, tmp_path_factory):
    """A server whose requests may take one second."""
    yield from start_api(server, template, tmp_path_factory.mktemp("llm-api-1s"),
                         ("--request-timeout", "1"))


def test_a_call_is_cancelled_when_the_request_ends(impatient, model_server):
    operator = impatient.client(impatient.operator())
    assert operator.post("/api/admin/providers", json=row(model_server, "slow", limits={
        "read_timeout_s": 60, "total_timeout_s": 120})).status_code == 201
    model_server.plan("latency=30")
    r = operator.post("/api/admin/providers/slow/test", json={})
    assert r.status_code == 504 and r.json()["error"]["code"] == "REQUEST_TIMEOUT"
    with impatient.kernel() as conn:
        def recorded():
            return conn.execute(
                "SELECT status, error FROM ledger.universal_registry "
                "WHERE entity_type = 'provider_execution' AND \"this\" = 'slow'").fetchone()
        deadline = time.monotonic() + 10
        while recorded() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the record is written by the server's thread, after the 504
        span = recorded()
    assert span["status"] == "cancelled" and span["error"]["code"] == "PROVIDER_CANCELLED"


def test_a_tenant_admin_keeps_and_reads_its_transcripts(api, operator, ada, gus,
                                                        model_server):
    assert operator.post("/api/admin/providers", json=row(model_server, "scribe")
                         ).status_code == 201
    assert ada.get("/api/admin/llm-transcripts").json() == {"tenant_id": "acme",
                                                            "keep": False}
    on = ada.post("/api/admin/llm-transcripts", json={"keep": True})
    assert on.status_code == 200 and on.json() == {"tenant_id": "acme", "keep": True}
    tested = ada.post("/api/admin/providers/scribe/test", json={}).json()
    assert tested["ok"], tested
    got = ada.get(f"/api/admin/llm-transcripts/{tested['execution_id']}")
    assert got.status_code == 200, got.text
    assert got.json()["output"] == "Hello from the loopback model."
    assert got.json()["input"][0]["content"] == "Reply with the single word: pong"
    # another tenant's admin: not its call, and it cannot ask as acme
    assert gus.get(f"/api/admin/llm-transcripts/{tested['execution_id']}").status_code == 404
    assert gus.get(f"/api/admin/llm-transcripts/{tested['execution_id']}",
                   params={"tenant": "acme"}).status_code == 403
    assert gus.post("/api/admin/llm-transcripts",
                    json={"keep": True, "tenant_id": "acme"}).status_code == 403
    reader = api.client(api.key("rio", "acme", "reader"))
    assert reader.get(f"/api/admin/llm-transcripts/{tested['execution_id']}"
                      ).status_code == 403
    # the operator reads any tenant's; even the ciphertext is hidden from /api/spans
    assert operator.get(f"/api/admin/llm-transcripts/{tested['execution_id']}",
                        params={"tenant": "acme"}).status_code == 200
    listed = ada.get("/api/spans", params={"entity_type": "provider_transcript"})
    assert listed.status_code == 200 and "ciphertext" not in listed.text
    assert ada.post("/api/admin/llm-transcripts", json={"keep": False}).json()["keep"] is False
    assert ada.post("/api/admin/llm-transcripts", json={"keep": "yes"}).status_code == 422
