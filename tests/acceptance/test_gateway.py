"""The OpenAI-compatible gateway on a real `logline serve` (issue 14), driven by the official
`openai` Python package, a client nobody here wrote: models listed, a completion whole and
streamed, through the prompt runner and its records, with a LogLine API key; a bad key, an
unknown model and a broken answer are refused the way the client understands."""

from __future__ import annotations

import json

import openai
import pytest
from helpers.api import start_api
from helpers.llm_server import LlmServer
from helpers.prompts import contract, provider_row


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory, model_server):
    for api in start_api(server, template, tmp_path_factory.mktemp("gateway")):
        r = api.client(api.operator()).post("/api/admin/providers",
                                            json=provider_row(model_server.url))
        assert r.status_code == 201, r.text
        yield api


@pytest.fixture(scope="module")
def client(api):
    key = api.key("alice", "acme", "writer")
    return openai.OpenAI(api_key=key.token, base_url=api.url + "/v1", max_retries=0,
                         timeout=30)


@pytest.fixture(autouse=True)
def answer(model_server):
    model_server.plan()
    model_server.answer = contract("Every span is hashed and signed.", 0.9)


def code(error):
    """The LogLine reason code of an error the client raised (its parsed `error` body)."""
    body = error.body or {}
    return body.get("code") or (body.get("error") or {}).get("code")


def runs(api):
    with api.kernel() as conn:
        return conn.execute("SELECT id::text AS id, metadata FROM ledger.universal_registry "
                            "WHERE entity_type = 'prompt_run' ORDER BY position").fetchall()


def test_models_lists_prompt_families_and_providers(client):
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models["assistant"] == "logline-prompt-family"
    assert models["local"] == "logline-provider"


def test_a_completion_goes_through_the_runner_and_is_recorded(client, api, model_server):
    completion = client.chat.completions.create(
        model="local", temperature=0,
        messages=[{"role": "system", "content": "client instructions"},
                  {"role": "user", "content": "How are spans kept?"}])
    assert completion.choices[0].message.content == "Every span is hashed and signed."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 11 and completion.usage.completion_tokens == 7
    run_id = completion.id.removeprefix("chatcmpl-")
    assert runs(api)[-1]["id"] == run_id
    assert runs(api)[-1]["metadata"]["family"] == "assistant"
    sent = model_server.requests[-1].body
    assert sent["temperature"] == 0
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "user"]
    assert sent["messages"][1]["content"] == "client instructions"  # never in the system
    assert "client instructions" not in sent["messages"][0]["content"]


def test_a_streamed_completion_arrives_in_chunks(client, api):
    stream = client.chat.completions.create(
        model="local", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream it"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Every span is hashed and signed."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 18
    assert len({c.id for c in chunks}) == 1
    assert runs(api)[-1]["id"] == chunks[-1].model_extra["logline"]["run_id"]


def test_a_stream_reaches_the_client_while_the_model_is_still_writing(client, model_server):
    model_server.plan("hold=3")
    try:
        stream = client.chat.completions.create(
            model="local", stream=True, messages=[{"role": "user", "content": "go"}])
        chunks = iter(stream)
        assert next(chunks).choices[0].delta.role == "assistant"
        first = next(chunks).choices[0].delta.content
        assert first in ("Every", "Every span")  # the pieces the model had sent
        assert model_server.holding.is_set()  # the model has not finished its answer
        model_server.release.set()
        rest = list(chunks)
    finally:
        model_server.release.set()
    assert not model_server.held_too_long
    assert first + "".join(c.choices[0].delta.content or "" for c in rest) == \
        "Every span is hashed and signed."
    assert rest[-1].choices[0].finish_reason == "stop"
    model_server.release.clear()


def test_a_stream_that_breaks_the_contract_ends_with_an_error(client, model_server):
    bad = json.dumps({"text": "Not sure at all.", "confidence": 7})
    model_server.plan("say=" + bad, "say=" + bad)
    stream = client.chat.completions.create(
        model="local", stream=True, messages=[{"role": "user", "content": "go"}])
    seen = []
    with pytest.raises(openai.APIError) as failed:
        for c in stream:
            seen.append(c)
    assert "void" in str(failed.value)
    assert any(c.model_extra.get("logline", {}).get("void") for c in seen)


def test_refusals_reach_the_client_as_errors(client, api, model_server):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-nothing",
                                       messages=[{"role": "user", "content": "x"}])
    assert code(unknown.value) == "PROMPT_NOT_FOUND"
    bad = openai.OpenAI(api_key="llk_nope_nope", base_url=api.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    model_server.plan("say=not json", "say=still not json")
    with pytest.raises(openai.UnprocessableEntityError) as broken:
        client.chat.completions.create(model="local",
                                       messages=[{"role": "user", "content": "x"}])
    assert code(broken.value) == "PROMPT_OUTPUT_INVALID"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="local",
                                       messages=[{"role": "assistant", "content": "x"}])
