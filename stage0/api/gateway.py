"""An OpenAI-compatible gateway (docs/prompts.md): `POST /v1/chat/completions` (whole or
streamed) and `GET /v1/models`, for clients that speak OpenAI's API, unchanged.

The client's API key is a LogLine API key (Authorization: Bearer), so the call is the key's
user and tenant, gated like every route. `model` names a prompt family (its variant and
provider, as `POST /api/chat` runs it), or else a provider row the tenant may call (the
default family, `assistant`, through that provider). Every call goes through the prompt
runner: the same system prompt, output contract, budgets and records (`prompt_run`,
`provider_execution`); actions a model proposes go through the gate as the caller's
proposals. The client's last message is the user's text; earlier ones are the context, and a
`system` message of the client's is passed as a user turn, never into the system prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from stage0.api.endpoint import Call, Endpoint
from stage0.api.errors import ApiError
from stage0.api.prompts import (
    RUN_ID,
    LiveRun,
    pieces,
    propose_actions,
    refusal,
    run_kernel,
    session_of,
)
from stage0.api.sse import SseResponse
from stage0.api.stream import SSE_SEND_TIMEOUT_S
from stage0.ledger import prompt_rows
from stage0.llm import admin

DEFAULT_FAMILY = "assistant"
#: OpenAI parameters passed on to the model (max_completion_tokens as max_tokens); the rest
#: of what clients send (user, logprobs, ...) is accepted and ignored.
PASSED = ("temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
          "frequency_penalty")


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send many optional fields

    model: str = Field(description="a prompt family, or a provider row's name")
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="one answer per call")


class ChatCompletionOut(BaseModel):
    id: str = Field(description="chatcmpl-<prompt_run id>")
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any]
    logline: dict[str, Any] = Field(description="run_id, variant_id, compiled_hash, "
                                    "confidence, follow_up_question, citations, actions")


class ModelItem(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelItem]


def _text(content: Any, where: str) -> str:
    """A message's content as text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                         isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError.of("BAD_FIELD", f"{where}.content: text, or a list of text parts (this "
                      "gateway takes no images, audio or tool results)")


def split_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """(the user's text, the context) from an OpenAI message list."""
    if not messages or messages[-1].get("role") != "user":
        raise ApiError.of("BAD_FIELD", "messages: the last message must be the user's")
    context = []
    for n, message in enumerate(messages[:-1]):
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError.of("BAD_FIELD", f"messages[{n}].role: system, user or assistant")
        context.append({"role": "assistant" if role == "assistant" else "user",
                        "content": _text(message.get("content"), f"messages[{n}]")})
    return _text(messages[-1].get("content"), f"messages[{len(messages) - 1}]"), context


def params_of(body: ChatCompletionIn) -> dict[str, Any]:
    extra = body.model_extra or {}
    params = {k: extra[k] for k in PASSED if extra.get(k) is not None}
    if extra.get("max_completion_tokens") is not None and "max_tokens" not in params:
        params["max_tokens"] = extra["max_completion_tokens"]
    return params


def families_and_providers(conn: Any, root: str, tenant: str) -> tuple[list[str], list[str]]:
    named = ((v.get("metadata") or {}).get("family") for v in prompt_rows.variants(conn, tenant))
    families = sorted({f for f in named if isinstance(f, str)})
    providers = sorted({r["name"] for r in admin.listed(conn, root, tenant)
                        if not r.get("problem") and r.get("status") != "disabled"})
    return families, providers


async def list_models(call: Call) -> ModelList:
    p = call.principal
    assert p is not None
    families, providers = await call.db(
        lambda conn: families_and_providers(conn, call.state.root, p.tenant_id), role="kernel")
    return ModelList(data=[ModelItem(id=f, owned_by="logline-prompt-family") for f in families]
                     + [ModelItem(id=n, owned_by="logline-provider") for n in providers
                        if n not in families])


async def chat_completions(call: Call) -> Response | SseResponse:
    body: ChatCompletionIn = call.body
    p = call.principal
    assert p is not None
    user, context = split_messages(body.messages)
    families, providers = await call.db(
        lambda conn: families_and_providers(conn, call.state.root, p.tenant_id), role="kernel")
    if body.model in families:
        target: dict[str, Any] = {"family": body.model}
    elif body.model in providers:
        target = {"family": DEFAULT_FAMILY, "provider": body.model}
    else:
        raise ApiError.of("PROMPT_NOT_FOUND", f"model {body.model[:80]!r} is neither a prompt "
                          "family nor a provider of your tenant (GET /v1/models lists them)")
    input = {"user": user, "context": context, "params": params_of(body),
             "session": session_of(call), **target}
    created = int(time.time())
    if body.stream:
        return await streamed(call, body, input, created)
    out = await run_kernel(call, RUN_ID, input)
    if out.get("run_id") is None or not out.get("ok"):
        raise refusal(out.get("error") or {})
    answer = out["answer"]
    extension = await _extension(call, out)
    return JSONResponse({
        "id": f"chatcmpl-{out['run_id']}", "object": "chat.completion",
        "created": created, "model": body.model,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": answer["text"]}}],
        "usage": _usage(out), "logline": extension},
        headers={"X-LogLine-Run": out["run_id"]})


def _usage(out: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_tokens": out["tokens_in"], "completion_tokens": out["tokens_out"],
            "total_tokens": out["tokens_in"] + out["tokens_out"]}


async def _extension(call: Call, out: dict[str, Any]) -> dict[str, Any]:
    """The run's LogLine fields, with the gate's decision on each action proposed."""
    answer = out["answer"]
    actions = await propose_actions(call, out["run_id"], answer.get("actions") or [])
    return {"run_id": out["run_id"], "variant_id": out["variant_id"],
            "compiled_hash": out["compiled_hash"], "confidence": answer["confidence"],
            "follow_up_question": answer.get("follow_up_question"),
            "citations": answer.get("citations") or [], "actions": actions}


def _data(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, ensure_ascii=False).encode() + b"\n\n"


async def streamed(call: Call, body: ChatCompletionIn, input: dict[str, Any],
                   created: int) -> SseResponse:
    """The run streamed as the model writes (chunks `chatcmpl-<request id>`). The response
    starts with the first text: a run refused or failed before any text is an HTTP error,
    as without `stream`. A new attempt after text went out (a retry, the repair request)
    is a chunk whose `logline` says the text before it is void; a run that fails after
    text went out ends with an `error` chunk (the client raises it) saying the same."""
    chunk_id = call.request_id
    run = LiveRun(call, RUN_ID, input).start()
    events = run.events()
    first: list[tuple[str, Any]] = []
    try:
        async for kind, value in events:
            first.append((kind, value))
            if kind == "failed":
                raise ApiError.from_ledger(value)
            if kind == "end" and (value.get("run_id") is None or not value.get("ok")):
                raise refusal(value.get("error") or {})
            if kind in ("token", "end"):
                break
        if not first:
            raise refusal({"code": "KERNEL_ERROR", "message": "the run ended without a word"})
    except BaseException:
        run.stop()
        raise

    def chunk(delta: dict[str, Any], finish: str | None = None,
              **extra: Any) -> bytes:
        return _data({"id": f"chatcmpl-{chunk_id}", "object": "chat.completion.chunk",
                      "created": created, "model": body.model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                      **extra})

    async def items() -> AsyncGenerator[tuple[str, Any], None]:
        for item in first:
            yield item
        if first[-1][0] != "end":
            async for item in events:
                yield item

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield chunk({"role": "assistant", "content": ""})
        sent: list[str] = []
        streamed = False
        out: Any = None
        try:
            async for kind, value in items():
                if kind == "attempt" and value > 1 and streamed:
                    yield chunk({}, logline={"attempt": value, "void": True})
                    sent = []
                elif kind == "token":
                    sent.append(value)
                    streamed = True
                    yield chunk({"content": value})
                elif kind == "failed":
                    yield _data({"error": {"code": value.code, "message": value.message,
                                           "void": streamed}})
                    return
                elif kind == "end":
                    out = value
        finally:
            run.stop()
        if out is None:
            return
        if not out.get("ok") or out.get("answer") is None:
            error = out.get("error") or {}
            yield _data({"error": {**error, "run_id": out.get("run_id"), "void": streamed,
                                   "message": f"{error.get('message')} (the text streamed "
                                   "so far is void)"}})
            return
        text, already = out["answer"]["text"], "".join(sent)
        if text != already:  # the streamed text is not the checked answer's: correct it
            if already and not text.startswith(already):
                yield chunk({}, logline={"attempt": run.attempts + 1, "void": True})
                already = ""
            for piece in pieces(text[len(already):]):
                yield chunk({"content": piece})
        extension = await _extension(call, out)
        yield chunk({}, "stop", logline=extension)
        if (body.stream_options or {}).get("include_usage"):
            yield _data({"id": f"chatcmpl-{chunk_id}", "object": "chat.completion.chunk",
                         "created": created, "model": body.model, "choices": [],
                         "usage": _usage(out), "logline": extension})
        yield b"data: [DONE]\n\n"

    return SseResponse(chunks(), SSE_SEND_TIMEOUT_S, call.state, call.request_id)


ENDPOINTS = [
    Endpoint("GET", "/v1/models", list_models, "OpenAI-compatible: the models this key may "
             "name (prompt families, then provider rows)", "api.gateway_models",
             response=ModelList),
    Endpoint("POST", "/v1/chat/completions", chat_completions, "OpenAI-compatible chat "
             "completion through the prompt runner (stream: SSE chunks, then [DONE])",
             "api.gateway_chat", limit="write", body=ChatCompletionIn,
             response=ChatCompletionOut, stream=True,
             stream_about="a chat.completion object (application/json), or with stream: "
             "true, text/event-stream of chat.completion.chunk objects as the model writes, "
             "ending with [DONE] (or an {error} chunk: the streamed text is void)"),
]
