"""The three wire protocols: how a call becomes an HTTP request, and a response an Answer.

- openai: OpenAI-compatible chat completions (`POST {base}/chat/completions`) and embeddings
  (`POST {base}/embeddings`); base_url ends with the API version (`https://api.openai.com/v1`,
  `http://127.0.0.1:8080/v1` for llama.cpp's server). Streaming: SSE `data:` chunks ending
  with `data: [DONE]` (usage asked for with stream_options.include_usage).
- ollama: native `POST {base}/api/chat` and `POST {base}/api/embed`; streaming is NDJSON, one
  object per line, the last with `"done": true` and the token counts.
- anthropic: Messages API `POST {base}/v1/messages` with `x-api-key` and `anthropic-version`;
  system messages go to the top-level `system`; streaming is SSE events (message_start,
  content_block_delta, message_delta, message_stop, error).
Anything that does not look like the protocol is PROVIDER_BAD_RESPONSE: a half-understood
answer is never passed on as if it were whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from stage0.errors import LoglineError
from stage0.llm.providers import Provider

ANTHROPIC_VERSION = "2023-06-01"
ROLES = ("system", "user", "assistant")
#: Keys the platform sets itself; a caller's params cannot replace them.
RESERVED_PARAMS = frozenset({"model", "messages", "input", "system",
                             "stream_options", "prompt", "n"})
#: The parameters that bound an answer's length, whatever the protocol calls them.
OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "num_predict")
OLLAMA_TOP_LEVEL = frozenset({"format", "keep_alive", "think", "tools"})


@dataclass
class WireRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Answer:
    text: str | None = None
    embeddings: list[list[float]] | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    finish: str | None = None
    model: str | None = None
    usage_estimated: bool = False
    parts: list[str] = field(default_factory=list, repr=False)


def bad(message: str) -> LoglineError:
    return LoglineError("PROVIDER_BAD_RESPONSE", message)


def error_kind(error: Any) -> str:
    """What may be said of an error object a server sent: its type, if it is a short
    identifier. Never its message: a server may quote the prompt back, and what we say is
    recorded in the ledger."""
    kind = error.get("type") or error.get("code") if isinstance(error, dict) else None
    if isinstance(kind, str) and kind.replace("_", "").isalnum() and len(kind) <= 40:
        return kind
    return "unspecified"


def check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise LoglineError("LLM_REQUEST_INVALID", "messages is a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or \
                not isinstance(m.get("content"), str) or set(m) - {"role", "content"}:
            raise LoglineError("LLM_REQUEST_INVALID", "each message is {role: system|user|"
                               "assistant, content: text}", f"messages[{i}]")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def check_inputs(inputs: Any) -> list[str]:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or \
            not all(isinstance(t, str) for t in inputs):
        raise LoglineError("LLM_REQUEST_INVALID", "input is a text or a non-empty list of texts")
    return inputs


def merged_params(provider: Provider, params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise LoglineError("LLM_REQUEST_INVALID", "params is an object")
    reserved = sorted(RESERVED_PARAMS & set(params))
    if reserved:
        raise LoglineError("LLM_REQUEST_INVALID", f"params may not set {', '.join(reserved)}")
    return {**provider.params, **params}


def cap_output(params: dict[str, Any], cap: int) -> None:
    """Bound the answer's length to `cap` tokens (the row's max_output_tokens, or what is left
    of the tenant's budget if less): a caller may ask for less, never for more."""
    cap = max(1, cap)
    asked = [params[k] for k in OUTPUT_LIMITS if k in params]
    for value in asked:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LoglineError("LLM_REQUEST_INVALID", "max_tokens is a whole number >= 1")
    limit = min([cap, *asked])
    for key in OUTPUT_LIMITS:
        params.pop(key, None)
    params["max_tokens"] = limit


def estimate_tokens(texts: list[str]) -> int:
    """About four characters a token: used only when a provider reports no usage."""
    return sum(math.ceil(len(t) / 4) for t in texts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# --- building requests ----------------------------------------------------------------------
def build(provider: Provider, operation: str, payload: Any, params: dict[str, Any],
          credential: str | None, stream: bool) -> WireRequest:
    if operation == "chat":
        return _CHAT[provider.kind](provider, check_messages(payload), params, credential,
                                    stream)
    if operation == "embed":
        if provider.kind == "anthropic":
            raise LoglineError("LLM_OPERATION_UNSUPPORTED", "the Anthropic Messages API has "
                               "no embeddings", provider.name)
        return _EMBED[provider.kind](provider, check_inputs(payload), params, credential)
    raise LoglineError("LLM_OPERATION_UNSUPPORTED", f"operation {operation!r} is not chat or "
                       "embed", provider.name)


def _bearer(credential: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"} if credential else {}


def _openai_chat(p: Provider, messages: list[dict[str, str]], params: dict[str, Any],
                 credential: str | None, stream: bool) -> WireRequest:
    body = {**params, "model": p.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return WireRequest("/chat/completions", _bearer(credential), body)


def _openai_embed(p: Provider, inputs: list[str], params: dict[str, Any],
                  credential: str | None) -> WireRequest:
    return WireRequest("/embeddings", _bearer(credential),
                       {**params, "model": p.model, "input": inputs})


def _ollama_options(params: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in params.items() if k in OLLAMA_TOP_LEVEL}
    options = {k: v for k, v in params.items() if k not in OLLAMA_TOP_LEVEL}
    if "max_tokens" in options:
        options["num_predict"] = options.pop("max_tokens")
    if options:
        body["options"] = options
    return body


def _ollama_chat(p: Provider, messages: list[dict[str, str]], params: dict[str, Any],
                 credential: str | None, stream: bool) -> WireRequest:
    body = {**_ollama_options(params), "model": p.model, "messages": messages,
            "stream": stream}
    return WireRequest("/api/chat", _bearer(credential), body)


def _ollama_embed(p: Provider, inputs: list[str], params: dict[str, Any],
                  credential: str | None) -> WireRequest:
    return WireRequest("/api/embed", _bearer(credential),
                       {**_ollama_options(params), "model": p.model, "input": inputs})


def _anthropic_chat(p: Provider, messages: list[dict[str, str]], params: dict[str, Any],
                    credential: str | None, stream: bool) -> WireRequest:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if not rest:
        raise LoglineError("LLM_REQUEST_INVALID", "the Messages API needs a user message")
    body: dict[str, Any] = {"max_tokens": 1024, **params, "model": p.model,
                            "messages": rest, "stream": stream}
    if system:
        body["system"] = system
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if credential:
        headers["x-api-key"] = credential
    return WireRequest("/v1/messages", headers, body)


_CHAT = {"openai": _openai_chat, "ollama": _ollama_chat, "anthropic": _anthropic_chat}
_EMBED = {"openai": _openai_embed, "ollama": _ollama_embed}


# --- whole responses ------------------------------------------------------------------------
def parse(provider: Provider, operation: str, body: Any) -> Answer:
    """The Answer in a whole (non-streamed) JSON body."""
    if not isinstance(body, dict):
        raise bad("the body is not a JSON object")
    if "error" in body:
        raise bad(f"the server answered with an error ({error_kind(body['error'])})")
    try:
        if operation == "embed":
            return _EMBED_PARSE[provider.kind](body)
        return _CHAT_PARSE[provider.kind](body)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise bad(f"not a {provider.kind} answer ({type(exc).__name__})") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise bad("the answer's text is not a string")
    return value


def _openai_chat_parse(body: dict[str, Any]) -> Answer:
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return Answer(text=_text(choice["message"].get("content") or ""),
                  tokens_in=_int(usage.get("prompt_tokens")),
                  tokens_out=_int(usage.get("completion_tokens")),
                  finish=choice.get("finish_reason"), model=body.get("model"),
                  usage_estimated=not usage)


def _vectors(items: Any) -> list[list[float]]:
    if not isinstance(items, list) or not all(
            isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in items):
        raise bad("embeddings are not lists of numbers")
    return items


def _openai_embed_parse(body: dict[str, Any]) -> Answer:
    data = sorted(body["data"], key=lambda d: d.get("index", 0))
    usage = body.get("usage") or {}
    return Answer(embeddings=_vectors([d["embedding"] for d in data]),
                  tokens_in=_int(usage.get("prompt_tokens")), model=body.get("model"),
                  usage_estimated=not usage)


def _ollama_chat_parse(body: dict[str, Any]) -> Answer:
    if "error" in body:
        raise bad(f"the server answered with an error ({error_kind(body['error'])})")
    return Answer(text=_text(body["message"]["content"]),
                  tokens_in=_int(body.get("prompt_eval_count")),
                  tokens_out=_int(body.get("eval_count")), finish=body.get("done_reason"),
                  model=body.get("model"), usage_estimated="eval_count" not in body)


def _ollama_embed_parse(body: dict[str, Any]) -> Answer:
    return Answer(embeddings=_vectors(body["embeddings"]),
                  tokens_in=_int(body.get("prompt_eval_count")), model=body.get("model"),
                  usage_estimated="prompt_eval_count" not in body)


def _anthropic_parse(body: dict[str, Any]) -> Answer:
    if body.get("type") == "error":
        raise bad(f"the server answered with an error ({error_kind(body.get('error'))})")
    text = "".join(_text(b["text"]) for b in body["content"] if b.get("type") == "text")
    usage = body.get("usage") or {}
    return Answer(text=text, tokens_in=_int(usage.get("input_tokens")),
                  tokens_out=_int(usage.get("output_tokens")), finish=body.get("stop_reason"),
                  model=body.get("model"), usage_estimated=not usage)


_CHAT_PARSE = {"openai": _openai_chat_parse, "ollama": _ollama_chat_parse,
               "anthropic": _anthropic_parse}
_EMBED_PARSE = {"openai": _openai_embed_parse, "ollama": _ollama_embed_parse}


# --- streams ----------------------------------------------------------------------------------
class StreamDecoder:
    """Fed one line at a time (without its newline); `done` once the protocol says the answer
    is complete. A stream that ends before that is truncated: PROVIDER_BAD_RESPONSE."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.done = False

    def feed(self, line: str) -> None:
        raise NotImplementedError

    def result(self) -> Answer:
        if not self.done:
            raise bad("the stream ended before the answer was complete (truncated)")
        self.answer.text = "".join(self.answer.parts)
        return self.answer

    @staticmethod
    def _json(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            raise bad("a stream chunk is not JSON") from None
        if not isinstance(value, dict):
            raise bad("a stream chunk is not a JSON object")
        return value


class _SSE(StreamDecoder):
    """Server-sent events: `event:` and `data:` lines, dispatched on a blank line."""

    def __init__(self) -> None:
        super().__init__()
        self.event: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> None:
        if self.done:
            return
        if line == "":
            if self.data:
                self.dispatch(self.event, "\n".join(self.data))
            self.event, self.data = None, []
        elif line.startswith(":"):
            return
        elif line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))

    def dispatch(self, event: str | None, data: str) -> None:
        raise NotImplementedError


class OpenAIStream(_SSE):
    def dispatch(self, event: str | None, data: str) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        chunk = self._json(data)
        if "error" in chunk:
            raise bad(f"the stream carried an error ({error_kind(chunk['error'])})")
        self.answer.model = chunk.get("model") or self.answer.model
        for choice in chunk.get("choices") or []:
            delta = (choice or {}).get("delta") or {}
            if delta.get("content"):
                self.answer.parts.append(_text(delta["content"]))
            if choice.get("finish_reason"):
                self.answer.finish = choice["finish_reason"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.answer.tokens_in = _int(usage.get("prompt_tokens"))
            self.answer.tokens_out = _int(usage.get("completion_tokens"))

    def result(self) -> Answer:
        answer = super().result()
        answer.usage_estimated = not (answer.tokens_in or answer.tokens_out)
        return answer


class AnthropicStream(_SSE):
    def dispatch(self, event: str | None, data: str) -> None:
        payload = self._json(data)
        kind = event or payload.get("type")
        if kind == "error":
            error = payload.get("error") or {}
            if error.get("type") in ("overloaded_error", "api_error"):
                raise LoglineError("PROVIDER_UNAVAILABLE",
                                   f"the stream carried an error ({error_kind(error)})")
            raise bad(f"the stream carried an error ({error_kind(error)})")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.answer.model = message.get("model")
            self.answer.tokens_in = _int((message.get("usage") or {}).get("input_tokens"))
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.answer.parts.append(_text(delta.get("text")))
        elif kind == "message_delta":
            self.answer.tokens_out = _int((payload.get("usage") or {}).get("output_tokens"))
            self.answer.finish = (payload.get("delta") or {}).get("stop_reason")
        elif kind == "message_stop":
            self.done = True


class OllamaStream(StreamDecoder):
    def feed(self, line: str) -> None:
        if self.done or not line.strip():
            return
        chunk = self._json(line)
        if "error" in chunk:
            raise bad(f"the stream carried an error ({error_kind(chunk['error'])})")
        content = (chunk.get("message") or {}).get("content")
        if content:
            self.answer.parts.append(_text(content))
        if chunk.get("done") is True:
            self.answer.tokens_in = _int(chunk.get("prompt_eval_count"))
            self.answer.tokens_out = _int(chunk.get("eval_count"))
            self.answer.finish = chunk.get("done_reason")
            self.answer.model = chunk.get("model")
            self.answer.usage_estimated = "eval_count" not in chunk
            self.done = True


def decoder(provider: Provider) -> StreamDecoder:
    return {"openai": OpenAIStream, "ollama": OllamaStream,
            "anthropic": AnthropicStream}[provider.kind]()
