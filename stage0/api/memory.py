"""The memory API (docs/memory.md, issue 12): write, read, search, forget and export the
caller's memories. Stage 0 does the work (stage0/memory) on the kernel role, as the caller's
user and tenant: what a caller may see is decided there, never by a client's word.

Headers:

- `X-LogLine-Memory: off | session-only | on` — memory is off by default: a write needs
  `on` (or `session-only`, which keeps everything in the session's layer and searches the
  session alone). Each new choice of a user (per session) is recorded as a `memory_consent`
  span before anything else happens.
- `X-LogLine-Session` — the session id (letters, digits, `.:@-_`, 1-200).
- `X-LogLine-Sensitivity: public | internal | secret | pii` — the default sensitivity of the
  memories this request writes.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stage0.api.endpoint import Call, Endpoint, parse_uuid
from stage0.api.errors import ApiError
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.memory import service
from stage0.spans.ids import derive_id

MODES = ("off", "session-only", "on")
_SESSION = re.compile(r"^[\w.:@-]{1,200}\Z")
CONSENT = "memory_consent"


class MemoryIn(BaseModel):
    """One memory (its fields), or several as `memories`; the fields are checked by the
    memory service, which names a bad one (`MEMORY_INVALID`, `memories[0].layer`)."""

    model_config = ConfigDict(extra="allow")

    text: str | None = Field(None, description="what to remember (1 byte to 64 KiB)")
    memories: list[dict[str, Any]] | None = Field(None, description="several at once "
                                                  "(all or nothing)")


class MemoryWritten(BaseModel):
    span_id: str
    seq: int
    layer: str
    sensitivity: str
    curr_hash: str
    vector: str | None


class MemoryWriteOut(BaseModel):
    written: list[MemoryWritten]
    consent: str


class MemoryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    span_id: str
    seq: int
    curr_hash: str
    text: str | None
    data: dict[str, Any] | None
    layer: str | None
    sensitivity: str | None


class Hit(BaseModel):
    span_id: str
    score: float
    preview: str
    layer: str
    scope: str
    tokens: int


class SearchOut(BaseModel):
    hits: list[Hit]
    mode: str = Field(description="text+vector, or text on a server without pgvector")
    vectors: bool
    note: str | None = None


class Listed(BaseModel):
    model_config = ConfigDict(extra="allow")

    span_id: str
    at: str
    owner_id: str
    layer: str | None
    scope: str = Field(description="session, private (your own), tenant or public")
    preview: str | None = Field(description="the first 280 characters; null when you may "
                                "not read it now (its key is gone)")


class ListOut(BaseModel):
    memories: list[Listed]
    next_before: str | None = Field(description="pass as `before` for the next page; null "
                                    "on the last one")


class ForgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: str = Field(description="last, session, me or span")
    span_id: str | None = None
    session_id: str | None = None


class ForgetOut(BaseModel):
    forgotten: int
    span_ids: list[str]
    redaction_id: str | None = Field(description="the memory_redaction span; none when "
                                     "there was nothing to forget")


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool | None = Field(None, description="absent: the owner asks for review; "
                                 "true or false: a reviewer's answer")


class PromoteOut(BaseModel):
    promotion_id: str
    status: str = Field(description="pending, approved or rejected")
    reason: str
    message: str
    approvals: int
    required: int
    memory: MemoryWritten | None = None


class ExportOut(BaseModel):
    tenant_id: str
    user_id: str
    memories: list[dict[str, Any]]
    export_id: str
    bundle_blake3: str
    exported_at: str


def _session(call: Call) -> str | None:
    value = call.request.headers.get("x-logline-session")
    if value is None or value == "":
        return None
    if not _SESSION.match(value):
        raise ApiError.of("MEMORY_INVALID", "X-LogLine-Session: 1-200 letters, digits or "
                          ". : @ - _")
    return value


def _mode(call: Call) -> str:
    value = (call.request.headers.get("x-logline-memory") or "off").strip().lower()
    if value not in MODES:
        raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: off, session-only or on")
    return value


def _caller(call: Call) -> service.Caller:
    assert call.principal is not None
    return service.Caller(call.principal.user_id, call.principal.tenant_id, _session(call))


def _memory(call: Call, conn: Connection) -> service.Memory:
    state = call.state
    return service.Memory(conn, state.key, state.home, id_secret=state.id_secret,
                          root_key=state.root)


def record_consent(call: Call, conn: Connection, caller: service.Caller, mode: str) -> None:
    """A `memory_consent` span when this user's choice for this session (or for no session)
    is new or changed: one id per (tenant, user, session), a version per change."""
    span_id = derive_id(call.state.id_secret, CONSENT, caller.tenant_id, caller.user_id,
                        caller.session_id or "")
    head = store.head(conn, span_id)
    if head is not None and (head.get("content") or {}).get("mode") == mode:
        return
    store.append(conn, [{
        "id": span_id, "entity_type": CONSENT, "who": "api", "did": "consented",
        "this": f"memory {mode}", "owner_id": caller.user_id, "tenant_id": caller.tenant_id,
        "visibility": "private", "status": mode, "trace_id": call.request_id,
        "content": {"mode": mode, "session_id": caller.session_id}}], call.state.key)


async def post_memory(call: Call) -> MemoryWriteOut:
    caller, mode = _caller(call), _mode(call)
    body: MemoryIn = call.body
    raw = body.model_dump(exclude_unset=True)
    items = raw.pop("memories") if "memories" in raw else [raw]
    if not isinstance(items, list) or not items:
        raise ApiError.of("MEMORY_INVALID", "memories: a list of 1 or more memories")
    if raw and "memories" in body.model_fields_set:
        raise ApiError.of("MEMORY_INVALID", "send one memory's fields or `memories`, not both")
    sensitivity = call.request.headers.get("x-logline-sensitivity")
    if sensitivity is not None and sensitivity not in service.SENSITIVITIES:
        raise ApiError.of("MEMORY_INVALID", "X-LogLine-Sensitivity: public, internal, secret "
                          "or pii")
    if mode == "session-only" and caller.session_id is None:
        raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: session-only needs "
                          "X-LogLine-Session")
    prepared = []
    for item in items:
        item = dict(item) if isinstance(item, dict) else item
        if isinstance(item, dict):
            if sensitivity is not None:
                item.setdefault("sensitivity", sensitivity)
            if mode == "session-only":
                if item.get("layer", "session") != "session":
                    raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: session-only "
                                      "keeps memories in the session layer")
                item["layer"] = "session"
        prepared.append(item)

    def run(conn: Connection) -> MemoryWriteOut:
        if call.request.headers.get("x-logline-memory") is not None:
            record_consent(call, conn, caller, mode)
        if mode == "off":
            raise ApiError.of("MEMORY_CONSENT_REQUIRED", "memory is off by default: send "
                              "X-LogLine-Memory: on (or session-only) to remember")
        written = _memory(call, conn).upsert(caller, prepared)
        return MemoryWriteOut(written=[MemoryWritten(**w) for w in written], consent=mode)

    try:
        return await call.db(run, role="kernel")
    except ApiError as exc:
        if exc.code != "MEMORY_CONSENT_REQUIRED" or call.request.headers.get(
                "x-logline-memory") is None:
            raise
        # the refusal rolled the consent span back with it: record the `off` on its own
        await call.db(lambda conn: record_consent(call, conn, caller, mode), role="kernel")
        raise


async def get_memory(call: Call) -> MemoryOut:
    span_id = parse_uuid(call.request.path_params["id"], "id")
    caller = _caller(call)
    found = await call.db(lambda conn: _memory(call, conn).get(caller, span_id),
                          role="kernel")
    return MemoryOut(**found)


async def search_memory(call: Call) -> SearchOut:
    caller, mode = _caller(call), _mode(call)
    query = call.query("q") or ""
    budget = call.int_query("budget", 1000, 1, 200_000)
    limit = call.int_query("limit", 10, 1, 100)
    scopes = call.request.query_params.getlist("scope") or list(service.mi.SCOPES)
    if mode == "session-only":
        if caller.session_id is None:
            raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: session-only needs "
                              "X-LogLine-Session")
        scopes = ["session"]
    found = await call.db(lambda conn: _memory(call, conn).search(
        caller, query, budget=budget, limit=limit, scopes=scopes), role="kernel")
    return SearchOut(**found)


async def list_memory(call: Call) -> ListOut:
    caller, mode = _caller(call), _mode(call)
    layer = call.query("layer") or None
    session_id = call.query("session") or None
    if session_id is not None and not _SESSION.match(session_id):
        raise ApiError.of("MEMORY_INVALID", "session: 1-200 letters, digits or . : @ - _")
    limit = call.int_query("limit", 20, 1, 100)
    before = call.uuid_query("before")
    if mode == "session-only":
        if caller.session_id is None:
            raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: session-only needs "
                              "X-LogLine-Session")
        if session_id not in (None, caller.session_id):
            raise ApiError.of("MEMORY_INVALID", "X-LogLine-Memory: session-only lists the "
                              "session of X-LogLine-Session alone")
        session_id = caller.session_id
    found = await call.db(lambda conn: _memory(call, conn).browse(
        caller, layer=layer, session_id=session_id, limit=limit, before=before),
        role="kernel")
    return ListOut(**found)


async def forget_memory(call: Call) -> ForgetOut:
    caller = _caller(call)
    body: ForgetIn = call.body
    span_id = parse_uuid(body.span_id, "span_id") if body.span_id is not None else None
    done = await call.db(lambda conn: _memory(call, conn).forget(
        caller, body.what, session_id=body.session_id, span_id=span_id), role="kernel")
    return ForgetOut(**done)


async def export_memory(call: Call) -> ExportOut:
    caller = _caller(call)
    bundle = await call.db(lambda conn: _memory(call, conn).export(caller), role="kernel")
    return ExportOut(**bundle)


async def promote_memory(call: Call) -> PromoteOut:
    from stage0.gov import memory_review

    span_id = parse_uuid(call.request.path_params["id"], "id")
    body: PromoteIn = call.body
    principal = call.principal
    assert principal is not None
    state = call.state
    done = await call.db(lambda conn: memory_review.promote(
        conn, state.key, state.home, state.id_secret, state.root, principal, span_id,
        body.approve, call.request_id), role="kernel")
    return PromoteOut(**done)


ID = {"id": ("path", "the memory's span id (UUID)")}
HEADERS = "Headers: X-LogLine-Session, X-LogLine-Memory (off | session-only | on)"
ENDPOINTS: list[Endpoint] = [
    Endpoint("POST", "/api/memory", post_memory, "Remember: one memory or `memories` (needs "
             "X-LogLine-Memory: on or session-only; X-LogLine-Sensitivity sets the default "
             "sensitivity)", "api.memory_write", limit="write", body=MemoryIn,
             response=MemoryWriteOut, status=201),
    Endpoint("GET", "/api/memory/search", search_memory, "Search the memories you may see: "
             "session, own, tenant, public; text and vector fused, within a token budget. "
             + HEADERS, "api.memory_search", response=SearchOut,
             query={"q": ("string", "what to look for"),
                    "budget": ("integer", "tokens, 1-200000, default 1000"),
                    "limit": ("integer", "1-100, default 10"),
                    "scope": ("string", "repeatable: session, private, tenant, public")}),
    Endpoint("GET", "/api/memory", list_memory, "Browse your memories newest first: your own "
             "and those shared in your tenant, live and unexpired, each with a preview when "
             "you may read it. " + HEADERS, "api.memory_list", response=ListOut,
             query={"layer": ("string", "only this layer: session, temporary, permanent, "
                              "shared, local"),
                    "session": ("string", "only your memories of this session"),
                    "limit": ("integer", "1-100, default 20"),
                    "before": ("string", "the previous page's next_before (a span id)")}),
    Endpoint("POST", "/api/memory/forget", forget_memory, "Forget for good (destroys the "
             "keys): last, session, me or one span", "api.memory_forget", limit="write",
             body=ForgetIn, response=ForgetOut),
    Endpoint("GET", "/api/memory/export", export_memory, "Your memories in your tenant, "
             "decrypted, with span ids and hashes (a data subject request)",
             "api.memory_export", response=ExportOut),
    Endpoint("POST", "/api/memory/{id}/promote", promote_memory, "Make a memory permanent "
             "through review: the owner asks (no body), an approver or admin other than "
             "the owner answers ({approve})", "api.memory_promote", limit="write",
             body=PromoteIn, response=PromoteOut, query=ID),
    Endpoint("GET", "/api/memory/{id}", get_memory, "One memory you may see, decrypted",
             "api.memory_read", response=MemoryOut, query=ID),
]
