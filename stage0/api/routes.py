"""The API's routes. Each is one Endpoint (see endpoint.py; app.py serves them); handlers
are small and do their database work in one transaction as the caller, under row-level
security."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
from starlette.responses import Response

from stage0.api.endpoint import Call, Endpoint, parse_uuid
from stage0.api.errors import ApiError
from stage0.api.models import (
    BootIn,
    BootOut,
    ExecuteIn,
    ExecuteOut,
    ExecutionList,
    FunctionList,
    Health,
    Me,
    Metrics,
    QuotaOut,
    Span,
    SpanIn,
    SpanList,
    Verification,
    reserved_message,
)
from stage0.api.stream import stream
from stage0.errors import LoglineError
from stage0.gov import apikeys
from stage0.ledger import manifest, quota, records, store
from stage0.ledger.db import Connection, one
from stage0.ledger.queries import q
from stage0.spans.canonical import format_at, parse_at
from stage0.spans.proofs import check_proofs

PAGE_MAX = 500


def _span_out(row: dict[str, Any]) -> dict[str, Any]:
    span = store.span_from_row(row)
    span["position"] = row["position"]
    return span


def _visible_head(conn: Connection, span_id: str) -> dict[str, Any]:
    span = store.head(conn, span_id)
    if span is None:  # absent and invisible look the same: nothing leaks
        raise ApiError.of("NOT_FOUND", "no span with this id is visible to you")
    return span


def _uuid(value: str) -> str:
    return parse_uuid(value, "id")


def _operator_only(call: Call) -> apikeys.Principal:
    """The operator's routes check the role themselves too: a ledger still holding an
    earlier api contract (one that let `admin` boot, before `logline init` re-seeds it)
    must not let a tenant's admin through."""
    principal = call.principal
    if principal is None or apikeys.OPERATOR_ROLE not in principal.roles:
        raise ApiError.of("OPERATOR_ONLY", "only the platform operator's key may do this "
                          "(it acts for every tenant)")
    return principal


# --- spans --------------------------------------------------------------------------------
async def list_spans(call: Call) -> SpanList:
    limit = call.int_query("limit", 50, 1, PAGE_MAX)
    before = call.int_query("before", None, 1, 2**62)
    params = {"entity_type": call.query("entity_type"), "status": call.query("status"),
              "before": before, "limit": limit}

    def run(conn: Connection) -> list[dict]:
        return [_span_out(r) for r in conn.execute(q("spans_page"), params)]

    items = await call.db(run)
    return SpanList(items=items, next_before=items[-1]["position"] if len(items) == limit
                    else None)



async def get_span(call: Call) -> Any:
    span_id = _uuid(call.request.path_params["id"])
    every = call.query("all") in ("1", "true")

    def run(conn: Connection) -> Any:
        if every:
            rows = conn.execute(q("all_versions"), {"id": span_id}).fetchall()
            if not rows:
                raise ApiError.of("NOT_FOUND", "no span with this id is visible to you")
            return {"items": [_span_out(r) for r in rows], "next_before": None}
        row = conn.execute(q("head_lookup"), {"id": span_id}).fetchone()
        if row is None:
            raise ApiError.of("NOT_FOUND", "no span with this id is visible to you")
        return _span_out(row)

    return await call.db(run)


async def post_span(call: Call) -> Any:
    """Append what a client wrote. The server signs it with the edge key (or stores it as
    the client signed it), so it can never pass for a platform record; it sets `at` itself
    (the client's value is kept as metadata.client_at). A next version without a pinned seq
    is re-chained and retried when another writer moved the head first."""
    body: SpanIn = call.body
    principal = call.principal
    assert principal is not None
    draft = body.model_dump(exclude_unset=True)
    for field, mine in (("owner_id", principal.user_id), ("tenant_id", principal.tenant_id)):
        if draft.setdefault(field, mine) != mine:
            raise ApiError.of("LEDGER_FORBIDDEN", f"{field} must be your own ({mine})")
    signed = bool(draft.get("signature"))
    if not signed:  # a client-signed span is stored exactly as signed
        draft.setdefault("trace_id", call.request_id)
        _server_time(draft)

    def run(conn: Connection) -> dict[str, Any]:
        signers = manifest.signers(conn, call.state.root)
        if draft["entity_type"] in signers.platform_kinds:
            raise ApiError.of("BAD_FIELD", "entity_type: "
                              + reserved_message(draft["entity_type"]))
        [span] = store.append(conn, [draft], call.state.edge_key, signers.trusted)
        row = one(conn.execute(q("version_position"), {"id": span["id"], "seq": span["seq"]}))
        return {**span, "position": row["position"]}

    pinned = signed or draft.get("seq") is not None
    for attempt in range(CHAIN_RETRIES):
        try:
            return await call.db(run)
        except LoglineError as exc:
            if pinned or exc.code not in store.CHAIN_CODES or attempt == CHAIN_RETRIES - 1:
                raise


CHAIN_RETRIES = 5
CLIENT_AT = "client_at"


def _server_time(draft: dict[str, Any]) -> None:
    """`at` of a span the server signs is the server's clock; a client's is kept apart."""
    given = draft.pop("at", None)
    if given is None:
        return
    given = format_at(parse_at(given))  # a malformed time is still named as one
    metadata = draft.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError.of("BAD_FIELD", "at: the server sets `at`; a client's time is kept "
                          "as metadata.client_at, which needs metadata to be an object")
    draft["metadata"] = {**(metadata or {}), CLIENT_AT: given}


# --- timeline -----------------------------------------------------------------------------

def _time_query(call: Call, name: str) -> datetime | None:
    """An ISO 8601 time with a zone from the query string (`from`, `until`), or None."""
    raw = call.query(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_at(raw, name)
    except LoglineError:
        raise ApiError.of("BAD_QUERY", f"{name} must be an ISO 8601 time with a zone, "
                          "e.g. 2026-11-25T12:00:00Z") from None


async def timeline(call: Call) -> SpanList:
    limit = call.int_query("limit", 50, 1, PAGE_MAX)
    start, end = _time_query(call, "from"), _time_query(call, "until")
    if start is not None and end is not None and start >= end:
        raise ApiError.of("BAD_QUERY", "from must be before until")
    params = {"entity_type": call.query("entity_type"), "trace_id": call.uuid_query("trace_id"),
              "status": call.query("status"), "owner_id": call.query("owner_id"),
              "from": start, "until": end,
              "before": call.int_query("before", None, 1, 2**62),
              "after": call.int_query("since", None, 0, 2**62), "limit": limit}

    def run(conn: Connection) -> list[dict]:
        return [_span_out(r) for r in conn.execute(q("timeline"), params)]

    items = await call.db(run)
    return SpanList(items=items, next_before=items[-1]["position"] if len(items) == limit
                    else None)


# --- execution and boot -------------------------------------------------------------------
async def execute(call: Call) -> ExecuteOut:
    body: ExecuteIn = call.body
    principal = call.principal
    assert principal is not None
    function_id = parse_uuid(body.span_id, "span_id")

    def run(conn: Connection) -> ExecuteOut:
        function = _visible_head(conn, function_id)
        if function["entity_type"] != "function":
            raise ApiError.of("FUNCTION_NOT_FOUND", "that span is not a function")
        metadata: dict[str, Any] = {"function_seq": function["seq"]}
        if body.idempotency_key:
            metadata["idempotency_key"] = body.idempotency_key
            existing = conn.execute(q("request_by_idempotency_key"), {
                "tenant": principal.tenant_id, "key": body.idempotency_key}).fetchone()
            if existing:
                head = store.head(conn, existing["id"])
                return ExecuteOut(request_id=existing["id"], status=head["status"] if head
                                  else "scheduled", trace_id=existing["trace_id"])
        _quota_left(conn, call)
        [request] = store.append(conn, [{
            "entity_type": "request", "who": principal.user_id, "did": "scheduled",
            "this": function.get("name") or function_id, "parent_id": function_id,
            "owner_id": principal.user_id, "tenant_id": principal.tenant_id,
            "visibility": "tenant", "status": "scheduled", "input": body.input,
            "trace_id": call.request_id, "metadata": metadata}], call.state.key)
        return ExecuteOut(request_id=request["id"], status="scheduled",
                          trace_id=request["trace_id"])

    return await call.db(run)


def _quota_left(conn: Connection, call: Call) -> None:
    """Refuse at once (429 QUOTA_EXCEEDED) what the workers would refuse anyway: a run for a
    tenant whose executions today have reached its daily limit. (One accepted while the last
    slots go can still end `denied`, with the reason on the request.)"""
    assert call.principal is not None
    spent = _caller_quota(conn, call)
    if spent.spent:
        refusal = spent.refusal()
        raise ApiError.of(refusal.code, refusal.message,
                          {"Retry-After": str(max(1, spent.resets_in_s))})


def _caller_quota(conn: Connection, call: Call) -> quota.Quota:
    assert call.principal is not None
    metadata = manifest.latest(conn, call.state.root).get("metadata") or {}
    return quota.of_caller(conn, metadata, call.principal.tenant_id)


async def boot(call: Call) -> BootOut:
    """Operator only: kernels act for every tenant. The boot runs in a child process that
    is stopped, its transaction rolled back, if the request ends first (stage0/api/boot.py)."""
    from stage0.api import boot as child

    principal = _operator_only(call)
    function_id = _uuid(call.request.path_params["id"])
    body: BootIn = call.body
    return BootOut(output=await child.run(call.state, function_id, body.input,
                                          principal.user_id, principal.tenant_id,
                                          call.request_id))


# --- views of platform records: executions, functions -------------------------------------


async def executions(call: Call) -> ExecutionList:
    """The caller's tenant's executions, as the platform recorded them; look-alikes (an
    execution span of the tenant signed by another key) are left out and flagged."""
    p = call.principal
    assert p is not None
    limit = call.int_query("limit", 50, 1, PAGE_MAX)
    params: dict[str, Any] = {
        "tenant": p.tenant_id, "status": call.query("status"), "limit": limit,
        "before": call.int_query("before", None, 1, 2**62)}

    def run(conn: Connection) -> ExecutionList:
        params["keys"] = _platform_keys(call, conn)
        items = [_span_out(r) for r in conn.execute(q("platform_executions"), params)]
        flags = [records.flag(r["id"], records.NOT_PLATFORM_SIGNED, "an execution span "
                              f"signed by {r['public_key']}, not by the platform")
                 for r in conn.execute(q("lookalike_executions"), params)]
        return ExecutionList(items=items, flags=flags, next_before=items[-1]["position"]
                             if len(items) == limit else None)

    return await call.db(run)


async def functions(call: Call) -> FunctionList:
    """The caller's tenant's functions and the system's kernels (tenant system, signed by
    the platform, metadata.kernel true); no other tenant's, whatever their visibility."""
    p = call.principal
    assert p is not None
    limit = call.int_query("limit", 200, 1, PAGE_MAX)

    def run(conn: Connection) -> FunctionList:
        keys = _platform_keys(call, conn)
        rows = conn.execute(q("tenant_functions"), {"tenant": p.tenant_id, "keys": keys,
                                                    "limit": limit})
        return FunctionList(items=[{**span, "kernel": span["tenant_id"] == "system"}
                                   for span in map(_span_out, rows)])

    return await call.db(run)


# --- verification and metrics -------------------------------------------------------------
async def verify_span(call: Call) -> Verification:
    span_id = _uuid(call.request.path_params["id"])
    root = call.state.root

    # Visibility is the caller's (RLS); the chain is checked over every version, including
    # ones the caller may not read (a span made public at seq 1 after a private seq 0), and
    # only booleans about them come back.
    await call.db(_visible_head, span_id)

    def run(conn: Connection) -> Verification:
        versions = store.versions(conn, span_id)
        head = versions[-1]
        proofs = check_proofs(head)
        trusted = head.get("public_key") in manifest.trust_set(conn, root)
        chain = all(v["seq"] == i and (i == 0 or v["prev_hash"] == versions[i - 1]["curr_hash"])
                    for i, v in enumerate(versions))
        reason = proofs.reason or (None if trusted else "KEY_UNTRUSTED") or \
            (None if chain else "CHAIN_BROKEN")
        return Verification(
            id=span_id, seq=head["seq"], ok=reason is None,
            checks={"hash": proofs.reason not in ("HASH_MISMATCH", "HASH_MISSING"),
                    "signature": proofs.ok, "trusted_key": trusted, "chain": chain},
            reason=reason, detail=proofs.detail, versions=len(versions))

    return await call.db(run, role="kernel")


def _platform_keys(call: Call, conn: Connection) -> list[str]:
    return sorted(records.platform(conn, call.state.root).keys)


async def metrics(call: Call) -> Metrics:
    days = call.int_query("days", 14, 1, 366)
    p = call.principal
    assert p is not None

    def run(conn: Connection) -> tuple[list[dict[str, Any]], quota.Quota]:
        # Executions count only when the platform signed them, and only the caller's
        # tenant's: another tenant's public spans and a writer's look-alikes are never yours.
        rows = conn.execute(q("execution_metrics"), {"days": days, "tenant": p.tenant_id,
                                                     "keys": _platform_keys(call, conn)}
                            ).fetchall()
        return rows, _caller_quota(conn, call)

    rows, today = await call.db(run)
    # GROUPING SETS: the per-day totals come back with a NULL status, shown as '*'.
    return Metrics(executions=[r for r in rows if r["status"] is not None],
                   days=[{**r, "status": "*"} for r in rows if r["status"] is None],
                   quota=QuotaOut(**today.as_dict()))


async def prometheus(call: Call) -> Response:
    _operator_only(call)
    body, content_type = await anyio.to_thread.run_sync(call.state.metrics.render)
    return Response(body, media_type=content_type)


async def me(call: Call) -> Me:
    p = call.principal
    assert p is not None
    platform = await call.db(records.platform, call.state.root)
    return Me(key_id=p.key_id, user_id=p.user_id, tenant_id=p.tenant_id, roles=list(p.roles),
              platform_keys=sorted(platform.keys), platform_kinds=sorted(platform.kinds))


async def health(call: Call) -> Health:
    await call.db(lambda conn: conn.execute(q("health_check")).fetchone(), role="kernel")
    return Health(status="ok", database="ok")


ID = {"id": ("path", "span id (UUID)")}
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/healthz", health, "Liveness and database check", "api.health_read",
             public=True, response=Health),
    Endpoint("GET", "/metrics", prometheus, "Prometheus text: requests and latency per route, "
             "SSE clients, denials, executions by status (operator: counts span every tenant)",
             "api.metrics_scrape", text=True),
    Endpoint("GET", "/api/me", me, "Who this API key is: user, tenant, roles", "api.me_read",
             response=Me),
    Endpoint("GET", "/api/spans", list_spans, "Latest version of the spans you can see",
             "api.spans_list", response=SpanList,
             query={"entity_type": ("string", "filter"), "status": ("string", "filter"),
                    "limit": ("integer", "1-500, default 50"),
                    "before": ("integer", "position: page before this")}),
    Endpoint("POST", "/api/spans", post_span, "Append a span (signed by the server unless "
             "you signed it)", "api.span_append", limit="write", body=SpanIn,
             response=Span, status=201),
    Endpoint("GET", "/api/spans/{id}", get_span, "A span's latest version (?all=1: every "
             "version)", "api.span_read", response=Span,
             query={**ID, "all": ("string", "1 for every version")}),
    Endpoint("GET", "/api/timeline", timeline, "The visible timeline, newest first; filter by "
             "kind, trace, status, owner and time",
             "api.timeline_read", response=SpanList,
             query={"entity_type": ("string", "filter"), "trace_id": ("string", "filter (UUID)"),
                    "status": ("string", "filter: this status"),
                    "owner_id": ("string", "filter: this owner (user)"),
                    "from": ("string", "ISO 8601 time with a zone: at or after it"),
                    "until": ("string", "ISO 8601 time with a zone: before it"),
                    "limit": ("integer", "1-500"), "before": ("integer", "position"),
                    "since": ("integer", "position: only after this")}),
    Endpoint("GET", "/api/timeline/stream", stream, "Server-sent events of new visible spans "
             "(resume with Last-Event-ID)", "api.timeline_stream", limit="stream", stream=True,
             query={"entity_type": ("string", "filter"), "trace_id": ("string", "filter (UUID)"),
                    "since": ("integer", "start after this position")}),
    Endpoint("POST", "/api/execute", execute, "Schedule a function to run (a request span)",
             "api.function_execute", limit="write", body=ExecuteIn,
             response=ExecuteOut, status=202),
    Endpoint("GET", "/api/executions", executions, "Your tenant's executions as the platform "
             "recorded them, newest first (look-alikes left out and flagged)",
             "api.executions_list", response=ExecutionList,
             query={"status": ("string", "filter"), "limit": ("integer", "1-500, default 50"),
                    "before": ("integer", "position: page before this")}),
    Endpoint("GET", "/api/functions", functions, "Your tenant's functions and the system's "
             "kernels, newest first", "api.functions_list", response=FunctionList,
             query={"limit": ("integer", "1-500, default 200")}),
    Endpoint("POST", "/api/boot/{id}", boot, "Boot a kernel through stage 0 (operator)",
             "api.kernel_boot", limit="admin", body=BootIn, response=BootOut,
             query=ID),
    Endpoint("GET", "/api/verify/{id}", verify_span, "Hash, signature, key trust and chain of "
             "a span you can see", "api.span_verify", response=Verification, query=ID),
    Endpoint("GET", "/api/metrics", metrics, "Executions per day and status, average and p95 "
             "duration; your tenant's execution quota today", "api.metrics_read",
             response=Metrics,
             query={"days": ("integer", "1-366, default 14")}),
]
