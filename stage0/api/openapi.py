"""OpenAPI 3.1, generated from the Endpoint table and its pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stage0.api.models import ErrorBody

ERRORS = {
    "400": "malformed request (BAD_JSON, BAD_QUERY, BAD_ID)",
    "401": "no or invalid API key (AUTH_REQUIRED, AUTH_INVALID)",
    "403": "not allowed (G_ROLE_DENIED and the gate's other codes, LEDGER_FORBIDDEN, ...)",
    "404": "not found or not visible to you (NOT_FOUND)",
    "408": "the body was sent too slowly (BODY_TIMEOUT)",
    "409": "version conflict (LEDGER_SEQ_CONFLICT, ...)",
    "413": "body over 1 MiB (BODY_TOO_LARGE)",
    "415": "body not application/json (UNSUPPORTED_MEDIA_TYPE)",
    "422": "a field is invalid (BAD_FIELD, SPAN_*)",
    "429": "rate limited (RATE_LIMITED), or the tenant's daily execution quota is spent "
           "(QUOTA_EXCEEDED, POST /api/execute); see Retry-After",
    "500": "internal error (INTERNAL)",
    "503": "database unavailable",
    "504": "request timeout (REQUEST_TIMEOUT)",
}


#: One server-sent event (what a client reads from a text/event-stream answer).
SSE_EVENT: dict[str, Any] = {"type": "object", "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"},
    "retry": {"type": "integer"}}}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document(endpoints: list[Any]) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_ref = _schema(ErrorBody, components)
    paths: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {"summary": e.summary, "operationId": e.action,
                              "x-logline-action": e.action, "parameters": [], "responses": {}}
        for name, (kind, desc) in e.query.items():
            where = "path" if kind == "path" else "query"
            op["parameters"].append({
                "name": name, "in": where, "required": where == "path", "description": desc,
                "schema": {"type": "string" if where == "path" else kind}})
        if e.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _schema(e.body, components)}}}
        if e.stream:
            op["responses"][str(e.status)] = {"description": e.stream_about,
                                              "content": {"text/event-stream": {
                                                  "schema": SSE_EVENT}}}
            if e.response is not None:  # a route that answers JSON unless asked to stream
                op["responses"][str(e.status)]["content"]["application/json"] = {
                    "schema": _schema(e.response, components)}
        elif e.text:
            op["responses"][str(e.status)] = {"description": "success", "content": {
                media: {"schema": {"type": "string"}} for media in e.media}}
        else:
            content = {"application/json": {"schema": _schema(e.response, components)}} \
                if e.response else {}
            op["responses"][str(e.status)] = {"description": "success", "content": content}
        for code, desc in ERRORS.items():
            if e.public and code in ("401", "403", "429"):
                continue
            op["responses"][code] = {"description": desc,
                                     "content": {"application/json": {"schema": error_ref}}}
        if not e.public:
            op["security"] = [{"apiKey": []}]
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "LogLine API", "version": "0.1.0",
                 "description": "Signed, append-only spans; every request runs under the "
                                "caller's tenant with row-level security."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "`logline apikey create --user U --tenant T`"}}},
    }
