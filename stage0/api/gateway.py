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


def _chunk(run_id: str, created: int, model: str, delta: dict[str, Any],
           finish: str | None) -> bytes:
    data = {"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish}]}
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


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
    out = await run_kernel(call, RUN_ID, input)
    if out.get("run_id") is None or not out.get("ok"):
        raise refusal(out.get("error") or {})
    answer = out["answer"]
    actions = await propose_actions(call, out["run_id"], answer.get("actions") or [])
    extension = {"run_id": out["run_id"], "variant_id": out["variant_id"],
                 "compiled_hash": out["compiled_hash"], "confidence": answer["confidence"],
                 "follow_up_question": answer.get("follow_up_question"),
                 "citations": answer.get("citations") or [], "actions": actions}
    usage = {"prompt_tokens": out["tokens_in"], "completion_tokens": out["tokens_out"],
             "total_tokens": out["tokens_in"] + out["tokens_out"]}
    created = int(time.time())
    if not body.stream:
        return JSONResponse({
            "id": f"chatcmpl-{out['run_id']}", "object": "chat.completion",
            "created": created, "model": body.model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer["text"]}}],
            "usage": usage, "logline": extension},
            headers={"X-LogLine-Run": out["run_id"]})

    async def chunks() -> AsyncGenerator[bytes, None]:
        run_id = out["run_id"]
        yield _chunk(run_id, created, body.model, {"role": "assistant", "content": ""}, None)
        for piece in pieces(answer["text"]):
            yield _chunk(run_id, created, body.model, {"content": piece}, None)
        yield _chunk(run_id, created, body.model, {}, "stop")
        if (body.stream_options or {}).get("include_usage"):
            yield b"data: " + json.dumps({
                "id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk",
                "created": created, "model": body.model, "choices": [], "usage": usage,
                "logline": extension}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    response = SseResponse(chunks(), SSE_SEND_TIMEOUT_S, call.state, call.request_id)
    response.headers["X-LogLine-Run"] = out["run_id"]
    return response


ENDPOINTS = [
    Endpoint("GET", "/v1/models", list_models, "OpenAI-compatible: the models this key may "
             "name (prompt families, then provider rows)", "api.gateway_models",
             response=ModelList),
    Endpoint("POST", "/v1/chat/completions", chat_completions, "OpenAI-compatible chat "
             "completion through the prompt runner (stream: SSE chunks, then [DONE])",
             "api.gateway_chat", limit="write", body=ChatCompletionIn,
             response=ChatCompletionOut, stream=True,
             stream_about="a chat.completion object (application/json), or with stream: "
             "true, text/event-stream of chat.completion.chunk objects ending with [DONE]"),
]
