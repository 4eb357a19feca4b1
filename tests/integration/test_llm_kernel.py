"""provider_exec and ctx.llm on a real ledger against the loopback model model_server: the call is
made by stage 0, recorded as a provider_execution span (hashes, never text or credential),
bounded by the tenant's daily token budget, breaker changes recorded; only platform-signed
provider rows of the caller's tenant (or the system's) are ever called."""

from __future__ import annotations

import uuid

import pytest
from helpers.llm_server import ANSWER, ANSWER_TOKENS, PROMPT_TOKENS, LlmServer
from nacl.signing import SigningKey

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.ledger import store
from stage0.llm import admin, host, providers

PROVIDER_EXEC = "00000000-0000-4000-8000-000000000005"
SECRET = "sk-kernel-test-secret-42"
PROMPT = "What is the colour of the loopback sky? zebra-unique-prompt"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


@pytest.fixture
def loader(seeded, home, model_server):
    model_server.plan()
    model_server.requests.clear()
    with Loader(seeded, home) as ld:
        host.attach(ld, credentials=lambda tenant, name: SECRET
                    if (tenant, name) == ("acme", "local-key") else None)
        yield ld


def add(loader, model_server, name="local", tenant="acme", **limits):
    p = providers.parse({
        "name": name, "kind": "openai", "base_url": model_server.url + "/v1", "model": "tiny",
        "credential": "local-key", "tenant_id": tenant,
        "egress": {"addresses": ["127.0.0.1"]},
        "prices": {"input_per_1k": 0.5, "output_per_1k": 1.5},
        "limits": {"backoff_base_s": 0.01, "backoff_max_s": 0.02, **limits}})
    secret = keys.id_secret(loader.home, loader.key)
    return admin.add(loader.conn, loader.key, loader.root, secret, p)


def run(loader, args, tenant="acme", trace=None):
    return loader.boot(PROVIDER_EXEC, args, user_id="alice", tenant_id=tenant,
                       trace_id=trace or str(uuid.uuid4()))


def executions(loader):
    host.for_loader(loader).flush()  # records are appended in batches, a few ms later
    rows = loader.conn.execute(
        "SELECT * FROM ledger.universal_registry WHERE entity_type = 'provider_execution' "
        "ORDER BY position").fetchall()
    return [store.span_from_row(r) for r in rows]


def test_provider_exec_calls_and_records_without_the_text(loader, model_server):
    add(loader, model_server)
    trace = str(uuid.uuid4())
    out = run(loader, {"provider": "local", "messages": MESSAGES}, trace=trace)
    assert out["ok"] and out["text"] == ANSWER
    assert (out["tokens_in"], out["tokens_out"]) == (PROMPT_TOKENS, ANSWER_TOKENS)
    assert model_server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    [span] = executions(loader)
    assert span["id"] == out["execution_id"] and span["trace_id"] == trace
    assert span["status"] == "complete" and span["owner_id"] == "alice"
    assert span["tenant_id"] == "acme" and span["public_key"] == keys.public_key_hex(loader.key)
    meta = span["metadata"]
    assert (meta["model"], meta["tokens_in"], meta["tokens_out"]) == ("tiny", 11, 7)
    assert meta["cost"] == round(11 / 1000 * 0.5 + 7 / 1000 * 1.5, 6)
    assert meta["input"]["length"] > len(PROMPT) and len(meta["input"]["blake3"]) == 64
    assert meta["output"]["length"] == len(ANSWER)
    assert meta["caller"]["name"] == "provider_exec"
    host.for_loader(loader).flush()
    dump = loader.conn.execute(
        "SELECT string_agg(u::text, '') AS t FROM ledger.universal_registry u").fetchone()["t"]
    assert "zebra-unique-prompt" not in dump and ANSWER not in dump and SECRET not in dump


def test_embeddings_through_the_kernel(loader, model_server):
    add(loader, model_server)
    out = run(loader, {"provider": "local", "operation": "embed", "input": ["a", "b"]})
    assert out["ok"] and len(out["embeddings"]) == 2


def test_the_daily_token_budget_refuses_and_records_it(loader, model_server):
    add(loader, model_server, daily_token_budget=30)
    assert run(loader, {"provider": "local", "messages": MESSAGES})["ok"]   # 18 used
    assert run(loader, {"provider": "local", "messages": MESSAGES})["ok"]   # 36 used
    refused = run(loader, {"provider": "local", "messages": MESSAGES})
    assert refused["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"
    assert len(model_server.requests) == 2
    assert [s["status"] for s in executions(loader)] == ["complete", "complete", "denied"]
    assert run(loader, {"provider": "local", "messages": MESSAGES}, tenant="acme")[
        "error"]["code"] == "TOKEN_BUDGET_EXCEEDED"


def test_failures_are_recorded_with_their_code_and_the_breaker_changes(loader, model_server):
    add(loader, model_server, max_attempts=1, breaker_failures=2)
    model_server.plan("500", "500")
    codes = [run(loader, {"provider": "local", "messages": MESSAGES})["error"]["code"]
             for _ in range(3)]
    assert codes == ["PROVIDER_UNAVAILABLE", "PROVIDER_UNAVAILABLE", "BREAKER_OPEN"]
    assert [(s["status"], s["error"]["code"]) for s in executions(loader)] == [
        ("error", "PROVIDER_UNAVAILABLE"), ("error", "PROVIDER_UNAVAILABLE"),
        ("denied", "BREAKER_OPEN")]
    host.for_loader(loader).flush()
    [change] = loader.conn.execute(
        "SELECT status, metadata FROM ledger.universal_registry "
        "WHERE entity_type = 'provider_breaker'").fetchall()
    assert change["status"] == "open" and change["metadata"]["before"] == "closed"


def test_a_missing_credential_is_refused(loader, model_server):
    add(loader, model_server, name="other", tenant="globex")
    out = run(loader, {"provider": "other", "messages": MESSAGES}, tenant="globex")
    assert out["error"]["code"] == "CREDENTIAL_MISSING" and not model_server.requests


def test_another_tenants_provider_is_not_found(loader, model_server):
    add(loader, model_server, tenant="acme")
    out = run(loader, {"provider": "local", "messages": MESSAGES}, tenant="globex")
    assert out["error"]["code"] == "PROVIDER_NOT_FOUND" and not model_server.requests


def test_a_look_alike_provider_row_is_never_called(loader, model_server):
    """A provider span signed by a key that is not a platform key (a tenant posting one
    through the API) names the loopback model_server with every address allowed: not found."""
    p = providers.parse({"name": "evil", "kind": "openai", "base_url": model_server.url + "/v1",
                         "model": "m", "tenant_id": "acme",
                         "egress": {"addresses": ["127.0.0.1"]}})
    store.append(loader.conn, [providers.to_span_fields(p)], SigningKey.generate())
    out = run(loader, {"provider": "evil", "messages": MESSAGES})
    assert out["error"]["code"] == "PROVIDER_NOT_FOUND" and not model_server.requests


def test_the_seeded_examples_are_disabled(loader):
    for name in ("openai", "ollama"):
        out = run(loader, {"provider": name, "messages": MESSAGES})
        assert out["error"]["code"] == "PROVIDER_DISABLED"


def test_bad_input_is_a_recorded_refusal(loader, model_server):
    add(loader, model_server)
    out = run(loader, {"provider": "local", "messages": "hello"})
    assert out["error"]["code"] == "LLM_REQUEST_INVALID"
    out = run(loader, {"provider": "local", "messages": MESSAGES, "params": {"model": "x"}})
    assert out["error"]["code"] == "LLM_REQUEST_INVALID" and not model_server.requests


def test_disable_and_enable(loader, model_server):
    add(loader, model_server)
    admin.set_enabled(loader.conn, loader.key, loader.root, "local", "acme", False)
    assert run(loader, {"provider": "local", "messages": MESSAGES})["error"]["code"] == \
        "PROVIDER_DISABLED"
    admin.set_enabled(loader.conn, loader.key, loader.root, "local", "acme", True)
    assert run(loader, {"provider": "local", "messages": MESSAGES})["ok"]
    [row] = [r for r in admin.listed(loader.conn, loader.root, "acme") if r["name"] == "local"]
    assert row["seq"] == 2 and row["status"] == "active"


@pytest.mark.parametrize("tokens", [-10**6, "many", 1.5e300, None])
def test_a_look_alike_record_cannot_lower_the_days_count(loader, model_server, tokens):
    add(loader, model_server, daily_token_budget=30)
    run(loader, {"provider": "local", "messages": MESSAGES})
    run(loader, {"provider": "local", "messages": MESSAGES})
    forged = {"entity_type": "provider_execution", "who": "mallory", "this": "local",
              "owner_id": "mallory", "tenant_id": "acme", "visibility": "tenant",
              "metadata": {"tokens_in": tokens, "tokens_out": tokens}}
    store.append(loader.conn, [forged], SigningKey.generate())
    out = run(loader, {"provider": "local", "messages": MESSAGES})
    assert out["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"


@pytest.mark.parametrize("name", ["x" * 100_000, 42, None, "UPPER", "../etc"])
def test_a_bad_provider_name_is_a_small_refusal(loader, name):
    out = run(loader, {"provider": name, "messages": MESSAGES})
    assert out["error"]["code"] == "PROVIDER_NOT_FOUND"
    [span] = executions(loader)
    assert len(span["this"]) <= 63


def test_logs_carry_neither_the_prompt_nor_the_secret(loader, model_server, capfd):
    add(loader, model_server, max_attempts=1)
    model_server.plan("500", "echo-error")
    for _ in range(2):
        assert not run(loader, {"provider": "local", "messages": MESSAGES})["ok"]
    err = capfd.readouterr().err
    assert "provider_call_failed" in err
    assert "zebra-unique-prompt" not in err and SECRET not in err


def test_the_credential_comes_from_the_vault(seeded, home, model_server):
    """No callable given: stage 0 reads the tenant's secret from the vault (encrypted in the
    ledger); a revoked secret refuses the call; the value is never in a record."""
    from stage0.vault import credentials

    model_server.plan()
    model_server.requests.clear()
    with Loader(seeded, home) as ld:
        host.attach(ld)
        add(ld, model_server)
        credentials.put(ld.conn, ld.key, home, "acme", "local-key", SECRET,
                        id_secret=keys.id_secret(home, ld.key))
        out = run(ld, {"provider": "local", "messages": MESSAGES})
        assert out["ok"], out
        assert model_server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
        credentials.revoke(ld.conn, ld.key, "acme", "local-key")
        refused = run(ld, {"provider": "local", "messages": MESSAGES})
        assert refused["error"]["code"] == "SECRET_REVOKED" and len(model_server.requests) == 1
        assert [s["status"] for s in executions(ld)] == ["complete", "denied"]
        dump = ld.conn.execute("SELECT string_agg(u::text, '') AS t "
                               "FROM ledger.universal_registry u").fetchone()["t"]
        assert SECRET not in dump
