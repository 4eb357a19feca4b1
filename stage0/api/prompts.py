"""The prompt API (docs/prompts.md): the blocks and variants a tenant may use, a build
preview, recent runs, and `POST /api/chat`, a run streamed over SSE.

The prompt kernels run in this process, through stage-0 loaders kept for the server's
lifetime (a loader per concurrent call: a boot is one transaction on its own connection),
as the caller's user and tenant, with the request id as trace id. What a model proposes in
`actions` is sent through the contracts and the gate as the caller's own proposal
(stage0.gov.proposals): the gate decides, exactly as for `POST /api/proposals`.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import weakref
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, Field

from stage0.api.endpoint import Call, Endpoint
from stage0.api.errors import ApiError
from stage0.api.sse import SseResponse
from stage0.api.stream import SSE_SEND_TIMEOUT_S
from stage0.errors import LoglineError
from stage0.gov import apikeys, proposals
from stage0.ledger import prompt_rows, records
from stage0.llm import streaming
from stage0.llm.streaming import TextExtractor

BUILD_ID = "00000000-0000-4000-8000-000000000011"
RUN_ID = "00000000-0000-4000-8000-000000000012"
EVAL_ID = "00000000-0000-4000-8000-000000000013"
BANDIT_ID = "00000000-0000-4000-8000-000000000014"
MAX_LOADERS = 8  # concurrent prompt kernels per server (more callers wait for one)
#: X-LogLine-Session: a client's name for a conversation, recorded on each of its runs.
SESSION = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
TOKEN_CHARS = 24  # the streamed text comes in pieces of about this many characters


class Loaders:
    """Stage-0 loaders for the prompt kernels, reused across requests."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.slots = threading.BoundedSemaphore(MAX_LOADERS)

    @contextmanager
    def loader(self) -> Iterator[Any]:
        from stage0.boot.loader import Loader

        with self.slots:
            try:
                loader = self.idle.get_nowait()
            except queue.Empty:
                loader = Loader(self.state.database, self.state.home,
                                worker_id="api-prompts")
            try:
                yield loader
            except BaseException:
                loader.close()  # a loader whose boot failed midway is not reused
                raise
            self.idle.put(loader)

    def boot(self, kernel: str, input: Any, principal: apikeys.Principal,
             trace_id: str) -> Any:
        from stage0.llm.host import for_loader

        with self.loader() as loader:
            out = loader.boot(kernel, input, user_id=principal.user_id,
                              tenant_id=principal.tenant_id, trace_id=trace_id)
            # What the kernel recorded (prompt_run, provider records) is readable before we
            # answer: the client may look the run up at once.
            for_loader(loader).flush()
            return out


_LOADERS: weakref.WeakKeyDictionary[Any, Loaders] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def loaders(state: Any) -> Loaders:
    with _LOCK:
        found = _LOADERS.get(state)
        if found is None:
            found = _LOADERS[state] = Loaders(state)
        return found


class LiveRun:
    """A prompt kernel run in a thread of its own whose answer's text is heard while the
    model writes it (stage0.llm.streaming): `events()` gives ("attempt", n), ("token",
    text), then ("end", output) or ("failed", LoglineError). `stop()` (the client went
    away, or the response ended) sets the cancel event the provider call watches."""

    def __init__(self, call: Call, kernel: str, input: Any) -> None:
        self.call, self.kernel, self.input = call, kernel, input
        self.cancel = threading.Event()
        self._send, self._receive = anyio.create_memory_object_stream[Any](math.inf)
        self._token = anyio.lowlevel.current_token()
        self._text = TextExtractor()
        self.attempts = 0

    # --- the kernel's thread (stage0.llm.streaming.Listener) ---------------------------
    def attempt(self) -> None:
        self.attempts += 1
        self._text = TextExtractor()
        self._put(("attempt", self.attempts))

    def raw(self, text: str) -> None:
        delta = self._text.feed(text)
        if delta:
            self._put(("token", delta))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            anyio.from_thread.run_sync(self._send.send_nowait, item, token=self._token)
        except (RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.cancel.set()  # nobody listens any more (the loop or the response ended)

    def _run(self) -> None:
        p = self.call.principal
        assert p is not None
        try:
            with streaming.listening(self):
                out = loaders(self.call.state).boot(self.kernel, self.input, p,
                                                    self.call.request_id)
            self._put(("end", out))
        except LoglineError as exc:
            self._put(("failed", exc))
        except Exception as exc:  # never a silent end of the stream
            self._put(("failed", LoglineError("KERNEL_ERROR", type(exc).__name__)))

    # --- the response's side ---------------------------------------------------------
    def start(self) -> LiveRun:
        threading.Thread(target=self._run, name="prompt-run", daemon=True).start()
        return self

    async def events(self) -> AsyncGenerator[tuple[str, Any], None]:
        async for item in self._receive:
            yield item
            if item[0] in ("end", "failed"):
                return

    def stop(self) -> None:
        self.cancel.set()
        self._receive.close()


def refusal(error: dict[str, Any]) -> ApiError:
    """A kernel's {code, message, where} as the API's refusal (its registered status)."""
    return ApiError.from_ledger(LoglineError(str(error.get("code") or "KERNEL_ERROR"),
                                             str(error.get("message") or ""),
                                             error.get("where")))


async def run_kernel(call: Call, kernel: str, input: Any) -> Any:
    p = call.principal
    assert p is not None
    return await anyio.to_thread.run_sync(
        lambda: loaders(call.state).boot(kernel, input, p, call.request_id))


# --- models -------------------------------------------------------------------------------
class Block(BaseModel):
    id: str
    seq: int
    name: str | None
    tenant_id: str
    priority: Any = Field(description="metadata.priority: doctrine 120, product 100, app 90, "
                          "task 70")
    layer: str | None = None
    content: Any


class BlockList(BaseModel):
    blocks: list[Block]


class Variant(BaseModel):
    id: str
    seq: int
    name: str | None
    tenant_id: str
    family: Any
    block_ids: Any
    vars: Any
    provider: Any = None
    runs: int = 0
    errors: int = 0
    error_rate: float | None = None
    mean_confidence: float | None = None
    mean_latency_ms: float | None = None
    evals: int = 0
    eval_pass_rate: float | None = None
    chosen: int = Field(0, description="how many of the latest 1000 bandit choices chose it")
    bandit_share: float | None = None


class VariantList(BaseModel):
    variants: list[Variant]


class BuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant_id: str
    vars: dict[str, Any] = Field(default_factory=dict)


class BuildOut(BaseModel):
    variant_id: str
    variant_seq: int
    family: Any
    compiled: str
    compiled_hash: str
    build_id: str
    blocks: list[dict[str, Any]]


class Run(BaseModel):
    id: str
    at: str
    status: str | None
    family: Any = None
    variant_id: Any = None
    model: Any = None
    latency_ms: Any = None
    tokens_in: Any = None
    tokens_out: Any = None
    confidence: Any = None
    repaired: Any = None
    error: Any = None
    session: Any = None


class RunList(BaseModel):
    runs: list[Run]


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant_id: str
    fixtures: list[dict[str, Any]] = Field(description="{name, type, user, context?, vars?, "
                                           "context_chars?, must_contain?, must_not_contain?, "
                                           "must_error?, schema?} (docs/prompts.md)")
    provider: str | None = None
    suite: str = "default"
    params: dict[str, Any] = Field(default_factory=dict)


class EvalOut(BaseModel):
    eval_id: str
    variant_id: str
    family: Any
    suite: str
    total: int
    passed: int
    pass_rate: float
    results: list[dict[str, Any]]


class SelectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str
    seed: int | None = Field(None, ge=1, le=2 ** 52, description="replays a choice's "
                             "tie-break (default: fresh)")
    exploration: float = Field(0.5, ge=0, le=10, description="UCB1's exploration weight")


class Selection(BaseModel):
    selection_id: str
    family: str
    variant_id: str
    seed: int
    scores: list[dict[str, Any]]


class SelectionList(BaseModel):
    selections: list[Selection]


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="the user's text (never placed in a system message)")
    family: str | None = Field(None, description="a prompt family (the bandit's latest "
                               "choice, else its first variant)")
    variant_id: str | None = None
    context: list[dict[str, Any]] = Field(default_factory=list,
                                          description="earlier turns: {role: user | "
                                          "assistant, content}")
    vars: dict[str, Any] = Field(default_factory=dict)
    provider: str | None = Field(None, description="default: the variant's metadata.provider")
    params: dict[str, Any] = Field(default_factory=dict)


# --- handlers -----------------------------------------------------------------------------
async def list_blocks(call: Call) -> BlockList:
    p = call.principal
    assert p is not None
    spans = await call.db(lambda conn: prompt_rows.blocks(conn, p.tenant_id))
    return BlockList(blocks=[Block(
        id=s["id"], seq=s["seq"], name=s.get("name"), tenant_id=s["tenant_id"],
        priority=(s.get("metadata") or {}).get("priority"),
        layer=(s.get("metadata") or {}).get("layer"), content=s.get("content"))
        for s in spans])


def variant_rows(conn: Any, root: str, tenant: str, family: str | None
                 ) -> list[dict[str, Any]]:
    """The variants of `tenant` (one family or all) with their runs' figures."""
    keys = records.platform(conn, root).keys
    stats = prompt_rows.run_stats(conn, tenant, keys)
    evals = prompt_rows.eval_stats(conn, tenant, keys)
    share = prompt_rows.selection_share(conn, tenant, keys)
    out = []
    listed = prompt_rows.variants(conn, tenant, family)
    families: dict[Any, int] = {}
    for s in listed:
        family_of = (s.get("metadata") or {}).get("family")
        families[family_of] = families.get(family_of, 0) + share.get(s["id"], 0)
    for s in listed:
        meta = s.get("metadata") or {}
        figures = stats.get(s["id"], {})
        runs = int(figures.get("runs") or 0)
        errors = int(figures.get("errors") or 0)
        judged = evals.get(s["id"], {})
        evaluated = int(judged.get("evals") or 0)
        chosen = share.get(s["id"], 0)
        of_family = families.get(meta.get("family"), 0)
        out.append({"evals": evaluated, "chosen": chosen,
                    "eval_pass_rate": int(judged.get("passed") or 0) / evaluated
                    if evaluated else None,
                    "bandit_share": chosen / of_family if of_family else None,
                    "id": s["id"], "seq": s["seq"], "name": s.get("name"),
                    "tenant_id": s["tenant_id"], "family": meta.get("family"),
                    "block_ids": meta.get("block_ids"), "vars": meta.get("vars"),
                    "provider": meta.get("provider"), "runs": runs, "errors": errors,
                    "error_rate": errors / runs if runs else None,
                    "mean_confidence": figures.get("mean_confidence"),
                    "mean_latency_ms": figures.get("mean_latency_ms")})
    return out


async def list_variants(call: Call) -> VariantList:
    p = call.principal
    assert p is not None
    family = call.query("family")
    rows = await call.db(lambda conn: variant_rows(conn, call.state.root, p.tenant_id, family))
    return VariantList(variants=[Variant(**r) for r in rows])


async def build_preview(call: Call) -> BuildOut:
    out = await run_kernel(call, BUILD_ID, {"variant_id": call.body.variant_id,
                                            "vars": call.body.vars, "record": False})
    if not out.get("ok"):
        raise refusal(out["error"])
    return BuildOut(**{k: out[k] for k in BuildOut.model_fields})


def run_view(span: dict[str, Any]) -> dict[str, Any]:
    meta = span.get("metadata") or {}
    return {"id": span["id"], "at": span["at"], "status": span.get("status"),
            **{k: meta.get(k) for k in ("family", "variant_id", "model", "latency_ms",
                                        "tokens_in", "tokens_out", "confidence", "repaired",
                                        "session")},
            "error": (span.get("error") or {}).get("code")}


async def list_runs(call: Call) -> RunList:
    p = call.principal
    assert p is not None
    family = call.query("family")
    limit = call.int_query("limit", 50, 1, 500)

    def read(conn: Any) -> list[dict[str, Any]]:
        keys = records.platform(conn, call.state.root).keys
        return prompt_rows.recent_runs(conn, p.tenant_id, keys, family, limit)
    return RunList(runs=[Run(**run_view(s)) for s in await call.db(read)])


async def run_eval(call: Call) -> EvalOut:
    body = call.body
    input = {"variant_id": body.variant_id, "fixtures": body.fixtures, "suite": body.suite,
             "params": body.params, **({"provider": body.provider} if body.provider else {})}
    out = await run_kernel(call, EVAL_ID, input)
    if not out.get("ok"):
        raise refusal(out["error"])
    return EvalOut(**{k: out[k] for k in EvalOut.model_fields})


async def select_variant(call: Call) -> Selection:
    body = call.body
    input = {"family": body.family, "exploration": body.exploration,
             **({"seed": body.seed} if body.seed else {})}
    out = await run_kernel(call, BANDIT_ID, input)
    if not out.get("ok"):
        raise refusal(out["error"])
    return Selection(**{k: out[k] for k in Selection.model_fields})


async def list_selections(call: Call) -> SelectionList:
    p = call.principal
    assert p is not None
    family = call.query("family")
    limit = call.int_query("limit", 50, 1, 500)

    def read(conn: Any) -> list[dict[str, Any]]:
        keys = records.platform(conn, call.state.root).keys
        return prompt_rows.recent_selections(conn, p.tenant_id, keys, family, limit)
    return SelectionList(selections=[Selection(
        selection_id=s["id"], family=(s.get("metadata") or {}).get("family") or "",
        variant_id=(s.get("metadata") or {}).get("variant_id") or "",
        seed=(s.get("metadata") or {}).get("seed") or 0,
        scores=(s.get("metadata") or {}).get("scores") or []) for s in await call.db(read)])


def session_of(call: Call) -> str | None:
    value = call.request.headers.get("x-logline-session")
    if value is None:
        return None
    if not SESSION.fullmatch(value):
        raise ApiError.of("BAD_FIELD", "X-LogLine-Session: 1-200 letters, digits or ._:@-")
    return value


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def pieces(text: str) -> list[str]:
    """The text in pieces of about TOKEN_CHARS characters, cut after a space when possible."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + TOKEN_CHARS)
        space = text.rfind(" ", start + 1, end)
        if end < len(text) and space > start:
            end = space + 1
        out.append(text[start:end])
        start = end
    return out


async def propose_actions(call: Call, run_id: str, actions: list[dict[str, Any]]
                          ) -> list[dict[str, Any]]:
    """Each action the model proposed, through the gate as the caller's proposal."""
    p = call.principal
    assert p is not None
    out = []
    for action in actions:
        name, args = action["action"], action.get("args") or {}
        try:
            outcome = await call.db(lambda conn, n=name, a=args: proposals.propose(
                conn, call.state.key, call.state.root, p, n, a, call.request_id,
                source={"via": "prompt_run", "run_id": run_id}, secret=call.state.id_secret))
            d = outcome.as_dict()
            out.append({"action": name, "outcome": d["outcome"], "reason": d["reason"],
                        "decision_id": d["decision_id"], "proposal_id": d["proposal_id"],
                        "job_id": d["job_id"]})
        except LoglineError as exc:
            out.append({"action": name, "outcome": "DENY", "reason": exc.code,
                        "decision_id": None, "proposal_id": None, "job_id": None})
    return out


async def chat(call: Call) -> SseResponse:
    body = call.body
    session = session_of(call)
    if body.family is None and body.variant_id is None:
        body.family = "assistant"
    input = {"user": body.message, "context": body.context, "vars": body.vars,
             "params": body.params, "session": session,
             **({"variant_id": body.variant_id} if body.variant_id else {"family": body.family}),
             **({"provider": body.provider} if body.provider else {})}

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield event("start", {"request_id": call.request_id, "session": session})
        run = LiveRun(call, RUN_ID, input).start()
        sent: list[str] = []  # the text streamed in the current attempt
        streamed = False  # any text streamed at all
        out: Any = None
        try:
            async for kind, value in run.events():
                if kind == "attempt" and value > 1:
                    yield event("attempt", {"attempt": value, "void": streamed})
                    sent = []
                elif kind == "token":
                    sent.append(value)
                    streamed = True
                    yield event("token", {"text": value})
                elif kind == "failed":
                    yield event("error", {"code": value.code, "message": value.message,
                                          "run_id": None, "void": streamed})
                    return
                elif kind == "end":
                    out = value
        finally:
            run.stop()
        if out is None:
            return
        if out.get("run_id") is None:  # refused before anything ran (bad input)
            error = out.get("error") or {}
            yield event("error", {**error, "run_id": None, "void": streamed})
            return
        answer = out.get("answer")
        if answer is None:  # the model failed, or broke the contract after the repair
            yield event("error", {**(out.get("error") or {}), "run_id": out["run_id"],
                                  "ok": False, "void": streamed, "session": session,
                                  "variant_id": out.get("variant_id"),
                                  "model": out.get("model")})
            return
        text, already = answer["text"], "".join(sent)
        if text != already:  # the streamed text is not the checked answer's: correct it
            if already and not text.startswith(already):
                yield event("attempt", {"attempt": run.attempts + 1, "void": True})
                already = ""
            for piece in pieces(text[len(already):]):
                yield event("token", {"text": piece})
        actions = await propose_actions(call, out["run_id"], answer.get("actions") or [])
        final = {"run_id": out["run_id"], "ok": out["ok"], "error": out.get("error"),
                 "variant_id": out.get("variant_id"), "family": out.get("family"),
                 "compiled_hash": out.get("compiled_hash"), "model": out.get("model"),
                 "latency_ms": out.get("latency_ms"), "tokens_in": out.get("tokens_in"),
                 "tokens_out": out.get("tokens_out"), "session": session,
                 "confidence": answer.get("confidence"),
                 "follow_up_question": answer.get("follow_up_question"),
                 "citations": answer.get("citations") or [], "actions": actions,
                 "attempts": run.attempts}
        yield event("done", final)

    response = SseResponse(chunks(), SSE_SEND_TIMEOUT_S, call.state, call.request_id)
    if session:
        response.headers["X-LogLine-Session"] = session
    return response


FAMILY = {"family": ("string", "only this prompt family")}

ENDPOINTS = [
    Endpoint("GET", "/api/prompts/blocks", list_blocks, "Prompt blocks you may build with: "
             "your tenant's and the system's, highest priority first", "api.prompt_blocks_list",
             response=BlockList),
    Endpoint("GET", "/api/prompts/variants", list_variants, "Prompt variants (your tenant's "
             "and the system's) with their runs' error rate, confidence and latency",
             "api.prompt_variants_list", response=VariantList, query=FAMILY),
    Endpoint("POST", "/api/prompts/build", build_preview, "Compile a variant with vars, "
             "without recording it: the system prompt and its compiled_hash",
             "api.prompt_build_preview", limit="write", body=BuildIn, response=BuildOut),
    Endpoint("GET", "/api/prompts/runs", list_runs, "Your tenant's latest prompt runs: "
             "latency, tokens, confidence, error", "api.prompt_runs_list", response=RunList,
             query={**FAMILY, "limit": ("integer", "at most this many (1-500, default 50)")}),
    Endpoint("POST", "/api/prompts/evals", run_eval, "Run a variant against fixtures; each "
             "outcome is a prompt_eval_result span", "api.prompt_eval_run", limit="write",
             body=EvalIn, response=EvalOut),
    Endpoint("POST", "/api/prompts/selections", select_variant, "Let the bandit (UCB1) choose "
             "a family's variant; the choice is a prompt_variant_selection span",
             "api.prompt_select", limit="write", body=SelectIn, response=Selection),
    Endpoint("GET", "/api/prompts/selections", list_selections, "Your tenant's latest bandit "
             "choices with every variant's score", "api.prompt_selections_list",
             response=SelectionList,
             query={**FAMILY, "limit": ("integer", "at most this many (1-500, default 50)")}),
    Endpoint("POST", "/api/chat", chat, "Answer a message with a prompt family or variant, "
             "streamed over SSE (token events, then done with the prompt_run id)",
             "api.chat", limit="write", body=ChatIn, stream=True,
             stream_about="text/event-stream: `start`, `token` events ({text}) as the model "
             "writes, `attempt` ({attempt, void}: a retry or the repair request; the text "
             "before it is void), then `done` (the prompt_run id, the answer's other fields, "
             "the gate's decisions) or `error` ({code, message, run_id, void: the streamed "
             "text is void})"),
]
