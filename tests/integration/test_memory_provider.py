"""The memory kernels with a provider's embeddings instead of the local model: the kernel asks
stage 0 for them (ctx.embed, the provider's egress and hardening, a provider_execution span),
the vectors are stored under the model `provider:NAME` and searched exactly."""

from __future__ import annotations

import pytest
from helpers.llm_server import EMBEDDING, LlmServer

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.llm import admin, host, providers
from stage0.vault import crypto
from stage0.vault import master as masters

UPSERT = "00000000-0000-4000-8000-000000000009"
SEARCH = "00000000-0000-4000-8000-000000000010"


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


@pytest.fixture
def loader(seeded, home, model_server, monkeypatch):
    monkeypatch.setenv(masters.ENV, crypto.new_key().hex())
    model_server.plan()
    with Loader(seeded, home) as ld:
        host.attach(ld, credentials=lambda tenant, name: "sk-test"
                    if (tenant, name) == ("acme", "local-key") else None)
        p = providers.parse({
            "name": "local", "kind": "openai", "base_url": model_server.url + "/v1",
            "model": "tiny", "credential": "local-key", "tenant_id": "acme",
            "egress": {"addresses": ["127.0.0.1"]}})
        admin.add(ld.conn, ld.key, ld.root, keys.id_secret(ld.home, ld.key), p)
        yield ld


def test_memories_embedded_by_a_provider_are_found_with_it(loader, has_pgvector):
    written = loader.boot(UPSERT, {"provider": "local", "memories": [
        {"text": "the lighthouse keeper's log"}]}, user_id="ana", tenant_id="acme")
    [one] = written["written"]
    assert one["vector"] == ("provider:local" if has_pgvector else None)
    host.for_loader(loader).flush()  # provider records are appended in batches
    calls = loader.conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                                "entity_type = 'provider_execution'").fetchone()["n"]
    assert calls == 1
    found = loader.boot(SEARCH, {"provider": "local", "query": "unrelated words"},
                        user_id="ana", tenant_id="acme")
    if has_pgvector:  # the loopback server answers one vector for every text: a match
        assert [h["span_id"] for h in found["hits"]] == [one["span_id"]]
        dims = loader.conn.execute("SELECT vector_dims(embedding) AS d FROM "
                                   "ledger.memory_embeddings").fetchone()["d"]
        assert dims == len(EMBEDDING)
    else:
        assert found["hits"] == [] and found["mode"] == "text"
    assert loader.boot(SEARCH, {"provider": "local", "query": "lighthouse"}, user_id="bo",
                       tenant_id="acme")["hits"] == []


def test_a_provider_that_fails_writes_nothing(loader, model_server):
    out = loader.boot(UPSERT, {"provider": "missing", "memories": [{"text": "x"}]},
                      user_id="ana", tenant_id="acme")
    assert out["written"] == [] and out["error"]["code"] == "PROVIDER_NOT_FOUND"
    assert loader.conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                               "entity_type = 'memory'").fetchone()["n"] == 0


def _provider_calls(loader) -> int:
    host.for_loader(loader).flush()
    return loader.conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                               "entity_type = 'provider_execution'").fetchone()["n"]


def test_the_tenants_default_embedder_is_used_when_the_call_names_none(loader, has_pgvector):
    from stage0.errors import LoglineError
    from stage0.memory import settings

    secret = keys.id_secret(loader.home, loader.key)
    with pytest.raises(LoglineError) as caught:
        settings.set_embedder(loader.conn, loader.key, loader.root, secret, "acme", "nowhere")
    assert (caught.value.code, caught.value.where) == ("MEMORY_INVALID", "embedder")
    settings.set_embedder(loader.conn, loader.key, loader.root, secret, "acme", "local")
    [one] = loader.boot(UPSERT, {"memories": [{"text": "the ferry leaves at nine"}]},
                        user_id="ana", tenant_id="acme")["written"]
    assert one["vector"] == ("provider:local" if has_pgvector else None)
    assert _provider_calls(loader) == 1
    found = loader.boot(SEARCH, {"query": "unrelated words"}, user_id="ana", tenant_id="acme")
    assert _provider_calls(loader) == 2
    if has_pgvector:  # embedded by the same provider: the loopback vector matches
        assert [h["span_id"] for h in found["hits"]] == [one["span_id"]]
    # another tenant keeps the local model; back to wordllama, no provider is called
    [other] = loader.boot(UPSERT, {"memories": [{"text": "the ferry leaves at ten"}]},
                          user_id="ana", tenant_id="globex")["written"]
    assert other["vector"] == ("wordllama-l2_supercat-256" if has_pgvector else None)
    settings.set_embedder(loader.conn, loader.key, loader.root, secret, "acme", "wordllama")
    loader.boot(UPSERT, {"memories": [{"text": "the ferry is late"}]}, user_id="ana",
                tenant_id="acme")
    assert _provider_calls(loader) == 2
