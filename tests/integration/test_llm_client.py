"""The LLM client against a real model server on loopback (tests/helpers/llm_server.py): the
three wire protocols, the egress policy and every hardening behaviour, each refusal by its
reason code."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import pytest
from helpers.llm_server import (
    ANSWER,
    ANSWER_TOKENS,
    EMBEDDING,
    PROMPT_TOKENS,
    LlmServer,
    make_certificates,
)

from stage0.errors import LoglineError
from stage0.llm import providers
from stage0.llm.client import LlmClient

SECRET = "sk-test-0123456789abcdef"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
BASE = {"openai": "/v1", "ollama": "", "anthropic": ""}


@pytest.fixture(scope="module")
def server():
    with LlmServer() as s:
        yield s


@pytest.fixture(autouse=True)
def fresh(server):
    server.plan()
    server.requests.clear()


class Clock:
    """Real time plus what a test skips ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def make(server: LlmServer, kind: str = "openai", **limits: Any) -> providers.Provider:
    data = {"name": f"test-{kind}", "kind": kind, "base_url": server.url + BASE[kind],
            "model": "tiny", "credential": "api", "egress": {"addresses": ["127.0.0.1"]},
            "limits": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "rps": 1000,
                       "burst": 1000, "tenant_rps": 1000, "tenant_burst": 1000, **limits}}
    return providers.parse(data)


def client(**kw: Any) -> LlmClient:
    slept: list[float] = []
    kw.setdefault("credentials", lambda tenant, name: SECRET if name == "api" else None)
    c = LlmClient(sleep=slept.append, **kw)
    c.slept = slept  # type: ignore[attr-defined]
    return c


# --- the protocols ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["openai", "ollama", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_speaks_each_protocol(server, kind, stream):
    r = client().call(make(server, kind), "acme", "chat", MESSAGES, {"stream": stream})
    assert r.ok, r.message
    assert (r.answer.text, r.tokens_in, r.tokens_out) == (ANSWER, PROMPT_TOKENS, ANSWER_TOKENS)
    assert r.streamed is stream and r.attempts == 1
    seen = server.requests[-1]
    assert seen.body["model"] == "tiny" and seen.body["stream"] is stream
    if kind == "anthropic":
        assert seen.path == "/v1/messages"
        assert seen.headers["x-api-key"] == SECRET
        assert seen.headers["anthropic-version"] == "2023-06-01"
        assert seen.body["system"] == "Be brief." and seen.body["max_tokens"] == 4096
        assert [m["role"] for m in seen.body["messages"]] == ["user"]
    else:
        assert seen.path == {"openai": "/v1/chat/completions", "ollama": "/api/chat"}[kind]
        assert seen.headers["authorization"] == f"Bearer {SECRET}"
        assert seen.body["messages"] == MESSAGES


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_embeddings(server, kind):
    r = client().call(make(server, kind), "acme", "embed", ["a", "b"])
    assert r.ok and r.answer.embeddings == [EMBEDDING, EMBEDDING]
    assert r.tokens_in == PROMPT_TOKENS
    assert server.requests[-1].path == {"openai": "/v1/embeddings", "ollama": "/api/embed"}[kind]


def test_anthropic_has_no_embeddings(server):
    r = client().call(make(server, "anthropic"), "acme", "embed", ["a"])
    assert r.outcome == "LLM_OPERATION_UNSUPPORTED" and not server.requests


def test_ollama_params_go_to_options(server):
    client().call(make(server, "ollama"), "acme", "chat", MESSAGES,
                  {"temperature": 0.2, "max_tokens": 5, "keep_alive": "1m"})
    body = server.requests[-1].body
    assert body["options"] == {"temperature": 0.2, "num_predict": 5}
    assert body["keep_alive"] == "1m"


@pytest.mark.parametrize("kind,field", [("openai", "max_tokens"), ("anthropic", "max_tokens"),
                                        ("ollama", "num_predict")])
def test_the_answer_length_is_bounded_by_the_row_and_the_budget(server, kind, field):
    def sent(p, params=None, used=0):
        c = client(usage=lambda tenant, provider: used)
        assert c.call(p, "acme", "chat", MESSAGES, params).ok
        body = server.requests[-1].body
        return (body.get("options") or {}).get(field) if kind == "ollama" else body[field]
    p = make(server, kind, max_output_tokens=500, daily_token_budget=10_000)
    assert sent(p) == 500
    assert sent(p, {"max_tokens": 10_000}) == 500
    assert sent(p, {"max_tokens": 20}) == 20
    assert sent(p, {"max_completion_tokens": 30}) == 30
    assert sent(p, used=9_900) == 100  # what is left of the day's budget


@pytest.mark.parametrize("params", [{"n": 5}, {"max_tokens": 0}, {"max_tokens": "lots"}])
def test_more_answers_or_a_bad_length_are_refused(server, params):
    r = client().call(make(server), "acme", "chat", MESSAGES, params)
    assert r.outcome == "LLM_REQUEST_INVALID" and not server.requests


def test_callers_cannot_replace_the_model_or_messages(server):
    r = client().call(make(server), "acme", "chat", MESSAGES, {"model": "gpt-expensive"})
    assert r.outcome == "LLM_REQUEST_INVALID" and not server.requests
    bad = client().call(make(server), "acme", "chat", [{"role": "root", "content": "x"}])
    assert bad.outcome == "LLM_REQUEST_INVALID"


def test_prices_give_a_cost_estimate(server):
    p = make(server).model_copy(update={"prices": providers.Prices(
        input_per_1k=1.0, output_per_1k=2.0)})
    r = client().call(p, "acme", "chat", MESSAGES)
    assert r.cost == round(PROMPT_TOKENS / 1000 + 2 * ANSWER_TOKENS / 1000, 6)
    assert r.currency == "USD"


# --- provider rows ---------------------------------------------------------------------------
def test_an_unknown_kind_is_refused():
    with pytest.raises(LoglineError) as e:
        providers.parse({"name": "x", "kind": "gemini", "base_url": "https://a.b",
                         "model": "m"})
    assert e.value.code == "PROVIDER_KIND_UNKNOWN"


@pytest.mark.parametrize("change", [
    {"base_url": "ftp://a.b"}, {"base_url": "https://user:pw@a.b"},
    {"limits": {"rps": -1}}, {"surprise": 1}, {"egress": {"hosts": ["other.host"]}},
    {"egress": {"addresses": ["not-an-ip"]}}, {"name": "Bad Name"},
])
def test_malformed_rows_are_refused(change):
    data = {"name": "x", "kind": "openai", "base_url": "https://a.b", "model": "m", **change}
    with pytest.raises(LoglineError) as e:
        providers.parse(data)
    assert e.value.code == "PROVIDER_INVALID"


def test_a_span_round_trips():
    p = providers.parse({"name": "x", "kind": "ollama", "base_url": "http://127.0.0.1:1",
                         "model": "m", "egress": {"addresses": ["127.0.0.1"]}})
    span = {"id": "i", **providers.to_span_fields(p)}
    assert providers.from_span(span) == p
    span["metadata"]["kind"] = "nope"
    with pytest.raises(LoglineError) as e:
        providers.from_span(span)
    assert e.value.code == "PROVIDER_KIND_UNKNOWN"


# --- egress ------------------------------------------------------------------------------------
def test_loopback_is_refused_unless_the_row_names_the_address(server):
    p = make(server).model_copy(update={"egress": providers.Egress()})
    r = client().call(p, "acme", "chat", MESSAGES)
    assert r.outcome == "EGRESS_DENIED" and "127.0.0.1" in r.message
    assert not server.requests


def test_hosts_outside_the_allowlist_are_refused(server):
    p = providers.parse({"name": "x", "kind": "openai", "base_url": "http://llm.test:1/v1",
                         "model": "m", "egress": {"hosts": ["llm.test"],
                                                  "addresses": ["127.0.0.1"]}})
    c = client(resolver=lambda host, port: ["127.0.0.1"])
    p2 = p.model_copy(update={"base_url": f"http://elsewhere.test:{server.port}/v1"})
    assert c.call(p2, "acme", "chat", MESSAGES).outcome == "EGRESS_DENIED"
    assert not server.requests


def test_the_checked_address_is_the_one_connected_to(server):
    """llm.test exists only in this resolver: the request reaches the server, so the
    connection used the checked address, while the Host header keeps the name."""
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]
    p = providers.parse({"name": "x", "kind": "openai", "model": "m",
                         "base_url": f"http://llm.test:{server.port}/v1",
                         "egress": {"addresses": ["127.0.0.1"]}})
    r = client(resolver=resolver, credentials=lambda t, n: None).call(p, "acme", "chat",
                                                                      MESSAGES)
    assert r.ok, r.message
    assert calls == ["llm.test"]
    assert server.requests[-1].headers["host"] == f"llm.test:{server.port}"


def test_a_cached_name_is_still_judged_for_each_request_and_expires(server):
    """The host keeps a name's addresses for a while (egress.CachedResolver): one lookup for
    many calls, but each request still judges the address it connects to (a row that does
    not name 127.0.0.1 is refused from the cached answer too), and the answer expires."""
    from stage0.llm.egress import CachedResolver

    calls, clock = [], Clock()

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]
    cached = CachedResolver(resolver, ttl_s=10, clock=clock)
    allowed = providers.parse({"name": "x", "kind": "openai", "model": "m",
                               "base_url": f"http://llm.test:{server.port}/v1",
                               "egress": {"addresses": ["127.0.0.1"]}})
    other = providers.parse({"name": "y", "kind": "openai", "model": "m",
                             "base_url": f"http://llm.test:{server.port}/v1"})
    c = client(resolver=cached, credentials=lambda t, n: None)
    assert c.call(allowed, "acme", "chat", MESSAGES).ok
    assert c.call(allowed, "acme", "chat", MESSAGES).ok
    assert c.call(other, "acme", "chat", MESSAGES).outcome == "EGRESS_DENIED"
    assert calls == ["llm.test"] and len(server.requests) == 2
    clock.offset += 11
    assert c.call(allowed, "acme", "chat", MESSAGES).ok
    assert calls == ["llm.test", "llm.test"]


def test_a_failed_lookup_is_not_kept():
    from stage0.llm.egress import CachedResolver

    answers = [LoglineError("PROVIDER_UNAVAILABLE", "cannot resolve"), ["127.0.0.1"]]

    def resolver(host, port):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    cached = CachedResolver(resolver)
    with pytest.raises(LoglineError):
        cached("llm.test", 443)
    assert cached("llm.test", 443) == ["127.0.0.1"]


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.1", "169.254.10.10",
                                     "100.64.0.1", "::1", "fd00::1", "fe80::1",
                                     "::ffff:127.0.0.1", "0.0.0.0"])
def test_private_addresses_behind_a_public_name_are_refused(address):
    p = providers.parse({"name": "x", "kind": "openai", "base_url": "https://api.test/v1",
                         "model": "m"})
    r = client(resolver=lambda h, port: [address],
               credentials=lambda t, n: None).call(p, "acme", "chat", MESSAGES)
    assert r.outcome == "EGRESS_DENIED"


def test_metadata_addresses_are_refused_even_when_listed():
    p = providers.parse({"name": "x", "kind": "openai", "base_url": "http://169.254.169.254/",
                         "model": "m", "egress": {"addresses": ["169.254.169.254"]}})
    r = client(credentials=lambda t, n: None).call(p, "acme", "chat", MESSAGES)
    assert r.outcome == "EGRESS_DENIED" and "metadata" in r.message


def test_public_addresses_need_https():
    p = providers.parse({"name": "x", "kind": "openai", "base_url": "http://api.test/v1",
                         "model": "m"})
    r = client(resolver=lambda h, port: ["93.184.216.34"],
               credentials=lambda t, n: None).call(p, "acme", "chat", MESSAGES)
    assert r.outcome == "EGRESS_DENIED" and "https" in r.message


def test_a_redirect_is_refused_not_followed(server):
    server.plan("redirect=http://169.254.169.254/latest/meta-data/")
    r = client().call(make(server), "acme", "chat", MESSAGES)
    assert (r.outcome, r.status, r.attempts) == ("PROVIDER_REDIRECT", 307, 1)
    assert len(server.requests) == 1


# --- retries -------------------------------------------------------------------------------
def test_429_is_retried_after_retry_after(server):
    server.plan("429:retry-after=2")
    c = client()
    r = c.call(make(server), "acme", "chat", MESSAGES)
    assert r.ok and r.attempts == 2
    assert c.slept == [2.0]


def test_5xx_is_retried_with_jittered_backoff_then_given_up(server):
    server.plan("500", "502", "503")
    c = client(rng=lambda lo, hi: hi)
    r = c.call(make(server, max_attempts=3), "acme", "chat", MESSAGES)
    assert (r.outcome, r.attempts, r.status) == ("PROVIDER_UNAVAILABLE", 3, 503)
    assert c.slept == [0.01, 0.02]
    assert len(server.requests) == 3


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(server):
    server.plan("429:retry-after=600")
    c = client()
    r = c.call(make(server, total_timeout_s=5), "acme", "chat", MESSAGES)
    assert (r.outcome, r.attempts) == ("PROVIDER_RATE_LIMITED", 1) and c.slept == []


@pytest.mark.parametrize("status,code", [(400, "PROVIDER_REJECTED"),
                                         (401, "PROVIDER_AUTH_FAILED"),
                                         (404, "PROVIDER_REJECTED")])
def test_client_errors_are_not_retried(server, status, code):
    server.plan(str(status))
    r = client().call(make(server), "acme", "chat", MESSAGES)
    assert (r.outcome, r.attempts) == (code, 1)


@pytest.mark.parametrize("behaviour", ["malformed", "wrong-shape"])
def test_malformed_answers_are_bad_responses(server, behaviour):
    server.plan(behaviour)
    r = client().call(make(server), "acme", "chat", MESSAGES)
    assert (r.outcome, r.attempts) == ("PROVIDER_BAD_RESPONSE", 1)


@pytest.mark.parametrize("kind", ["openai", "ollama", "anthropic"])
def test_a_truncated_stream_is_never_an_answer(server, kind):
    server.plan("truncated", "truncated")
    r = client().call(make(server, kind, max_attempts=2), "acme", "chat", MESSAGES,
                      {"stream": True})
    assert (r.outcome, r.attempts, r.answer) == ("PROVIDER_STREAM_TRUNCATED", 2, None)


def test_a_truncated_stream_is_retried(server):
    server.plan("truncated")
    r = client().call(make(server, "ollama"), "acme", "chat", MESSAGES, {"stream": True})
    assert r.ok and r.attempts == 2 and r.answer.text == ANSWER


def test_a_body_cut_short_is_unavailable(server):
    server.plan("cut")
    r = client().call(make(server, max_attempts=1), "acme", "chat", MESSAGES)
    assert r.outcome == "PROVIDER_UNAVAILABLE"


# --- timeouts and size -------------------------------------------------------------------------
def test_read_timeout(server):
    server.plan("latency=5")
    r = client().call(make(server, read_timeout_s=0.3, max_attempts=1), "acme", "chat",
                      MESSAGES)
    assert r.outcome == "PROVIDER_TIMEOUT" and r.latency_ms < 3000


def test_stream_idle_timeout(server):
    server.plan("stall")
    r = client().call(make(server, stream_idle_timeout_s=0.3, max_attempts=1), "acme", "chat",
                      MESSAGES, {"stream": True})
    assert r.outcome == "PROVIDER_STREAM_IDLE" and r.latency_ms < 3000


def test_a_slow_drip_hits_the_total_timeout(server):
    server.plan("drip=0.05")
    r = client().call(make(server, read_timeout_s=1, total_timeout_s=0.5, max_attempts=1),
                      "acme", "chat", MESSAGES)
    assert r.outcome == "PROVIDER_TIMEOUT" and r.latency_ms < 3000


@pytest.mark.parametrize("stream", [False, True])
def test_oversized_bodies_are_cut_off(server, stream):
    server.plan("big=300000")
    r = client().call(make(server, max_response_bytes=100_000, max_attempts=1), "acme",
                      "chat", MESSAGES, {"stream": stream})
    assert r.outcome == "PROVIDER_RESPONSE_TOO_LARGE"


def test_cancellation_stops_a_streaming_call(server):
    server.plan("drip=0.2")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    r = client().call(make(server, "ollama"), "acme", "chat", MESSAGES, {"stream": True},
                      cancel=cancel)
    assert r.outcome == "PROVIDER_CANCELLED" and r.latency_ms < 3000


def test_cancellation_stops_a_call_blocked_waiting_for_the_answer(server):
    server.plan("latency=30")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    r = client().call(make(server, read_timeout_s=60), "acme", "chat", MESSAGES,
                      cancel=cancel)
    assert r.outcome == "PROVIDER_CANCELLED" and r.latency_ms < 3000


def test_a_cancellable_call_that_is_not_cancelled_answers(server):
    r = client().call(make(server), "acme", "chat", MESSAGES, cancel=threading.Event())
    assert r.ok, r.message


# --- breaker, buckets, budget, credentials --------------------------------------------------
def test_the_breaker_opens_sheds_and_recovers_through_a_probe(server):
    clock, changes = Clock(), []
    c = client(clock=clock, on_breaker=changes.append)
    p = make(server, max_attempts=1, breaker_failures=3, breaker_open_s=30)
    server.plan("500", "500", "500")
    assert [c.call(p, "acme", "chat", MESSAGES).outcome for _ in range(3)] == \
        ["PROVIDER_UNAVAILABLE"] * 3
    shed = c.call(p, "acme", "chat", MESSAGES)
    assert shed.outcome == "BREAKER_OPEN" and shed.retry_in_s > 29
    assert len(server.requests) == 3
    clock.offset += 31
    server.plan("500")
    assert c.call(p, "acme", "chat", MESSAGES).outcome == "PROVIDER_UNAVAILABLE"  # the probe
    assert c.call(p, "acme", "chat", MESSAGES).outcome == "BREAKER_OPEN"
    clock.offset += 31
    assert c.call(p, "acme", "chat", MESSAGES).ok
    assert [(ch.before, ch.after) for ch in changes] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"),
        ("open", "half_open"), ("half_open", "closed")]
    assert "3 consecutive failures" in changes[0].reason


def test_the_breaker_opens_on_an_error_rate(server):
    changes = []
    c = client(on_breaker=changes.append)
    p = make(server, max_attempts=1, breaker_failures=100, breaker_window=4,
             breaker_error_rate=0.5)
    server.plan("ok", "500", "ok", "500")
    for _ in range(4):
        c.call(p, "acme", "chat", MESSAGES)
    assert [ch.after for ch in changes] == ["open"] and "error rate" in changes[0].reason


def test_rate_limits_per_provider_and_per_tenant(server):
    clock = Clock()
    c = client(clock=clock)
    p = make(server, tenant_rps=0.001, tenant_burst=2)
    assert [c.call(p, "acme", "chat", MESSAGES).outcome for _ in range(3)] == \
        ["ok", "ok", "TENANT_THROTTLED"]
    assert c.call(p, "globex", "chat", MESSAGES).ok
    q = make(server, rps=0.001, burst=1)
    c2 = client(clock=clock)
    assert [c2.call(q, t, "chat", MESSAGES).outcome for t in ("a", "b")] == \
        ["ok", "PROVIDER_THROTTLED"]


def test_the_daily_token_budget(server):
    used = {"acme": 999}
    c = client(usage=lambda tenant, provider: used.get(tenant, 0))
    p = make(server, daily_token_budget=1000)
    assert c.call(p, "acme", "chat", MESSAGES).ok
    used["acme"] = 1000
    r = c.call(p, "acme", "chat", MESSAGES)
    assert r.outcome == "TOKEN_BUDGET_EXCEEDED" and "1000" in r.message
    assert len(server.requests) == 1


def test_a_missing_credential_is_refused_before_any_call(server):
    r = client(credentials=lambda t, n: None).call(make(server), "acme", "chat", MESSAGES)
    assert r.outcome == "CREDENTIAL_MISSING" and not server.requests


def test_a_system_row_falls_back_to_the_system_tenants_credential(server):
    asked = []

    def source(tenant, name):
        asked.append(tenant)
        return {"system": "sk-platform", "acme": "sk-acme"}.get(tenant)
    p = make(server)
    assert client(credentials=source).call(p, "acme", "chat", MESSAGES).ok
    assert server.requests[-1].headers["authorization"] == "Bearer sk-acme"
    assert client(credentials=source).call(p, "globex", "chat", MESSAGES).ok
    assert server.requests[-1].headers["authorization"] == "Bearer sk-platform"
    own = p.model_copy(update={"tenant_id": "globex"})
    assert client(credentials=source).call(own, "globex", "chat", MESSAGES).outcome == \
        "CREDENTIAL_MISSING"


def test_the_credential_never_appears_in_what_is_returned(server):
    for plan in ("401", "malformed", "ok"):
        server.plan(plan)
        r = client().call(make(server), "acme", "chat", MESSAGES)
        assert SECRET not in repr(r)


@pytest.mark.parametrize("kind", ["openai", "ollama", "anthropic"])
def test_an_error_quoting_the_prompt_is_not_repeated(server, kind):
    server.plan("echo-error")
    secret_prompt = [{"role": "user", "content": "my-private-diagnosis"}]
    r = client().call(make(server, kind), "acme", "chat", secret_prompt)
    assert r.outcome == "PROVIDER_BAD_RESPONSE"
    assert "my-private-diagnosis" not in repr(r) and "invalid_request_error" in r.message


def test_a_disabled_provider_is_refused(server):
    p = make(server).model_copy(update={"enabled": False})
    assert client().call(p, "acme", "chat", MESSAGES).outcome == "PROVIDER_DISABLED"


# --- TLS: the pinned address, the name's certificate ---------------------------------------
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    made = make_certificates(tmp_path_factory.mktemp("tls"), "llm.test")
    if made is None:
        pytest.skip("needs openssl to make a certificate")
    ca, context = made
    with LlmServer(tls=context) as s:
        yield s, ca


def tls_provider(server: LlmServer, host: str) -> providers.Provider:
    return providers.parse({"name": "tls", "kind": "openai", "model": "m",
                            "base_url": f"https://{host}:{server.port}/v1",
                            "egress": {"addresses": ["127.0.0.1"]}})


def test_tls_is_verified_against_the_name_while_connecting_to_the_checked_address(tls_server):
    server, ca = tls_server
    trusted = ssl.create_default_context(cafile=str(ca))
    resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731
    c = client(resolver=resolver, verify=trusted, credentials=lambda t, n: None)
    r = c.call(tls_provider(server, "llm.test"), "acme", "chat", MESSAGES)
    assert r.ok, r.message
    assert server.requests[-1].headers["host"] == f"llm.test:{server.port}"


def test_a_certificate_for_another_name_is_refused(tls_server):
    server, ca = tls_server
    trusted = ssl.create_default_context(cafile=str(ca))
    c = client(resolver=lambda host, port: ["127.0.0.1"], verify=trusted,
               credentials=lambda t, n: None)
    r = c.call(tls_provider(server, "other.test"), "acme", "chat", MESSAGES)
    assert (r.outcome, r.attempts) == ("PROVIDER_TLS_FAILED", 1)


def test_an_untrusted_certificate_is_refused(tls_server):
    server, _ = tls_server
    c = client(resolver=lambda host, port: ["127.0.0.1"], credentials=lambda t, n: None)
    r = c.call(tls_provider(server, "llm.test"), "acme", "chat", MESSAGES)
    assert r.outcome == "PROVIDER_TLS_FAILED"


def test_retry_after_as_seconds_or_an_http_date():
    from stage0.llm.hardening import parse_retry_after
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
