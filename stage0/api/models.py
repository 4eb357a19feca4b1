"""Pydantic models of the API: the handlers validate with them and /openapi.json is made
from them, so the document cannot drift from what the server accepts."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stage0.errors import LoglineError
from stage0.spans.canonical import JSON
from stage0.spans.kinds import PLATFORM_KINDS, check_kind

Visibility = Literal["private", "tenant", "public"]
TRACE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Content(BaseModel):
    """The optional columns of a span, shared by what we return and what we accept."""

    model_config = ConfigDict(extra="forbid")
    did: str | None = None
    parent_id: str | None = None
    related_to: list[str] | None = None
    owner_id: str | None = None
    tenant_id: str | None = None
    status: str | None = None
    name: str | None = None
    description: str | None = None
    code: str | None = None
    language: str | None = None
    runtime: str | None = None
    input: JSON = None
    output: JSON = None
    error: JSON = None
    trace_id: str | None = None
    prev_hash: str | None = None
    curr_hash: str | None = None
    signature: str | None = None
    public_key: str | None = None
    metadata: JSON = None
    content: JSON = None


class Span(_Content):
    """A span as stored (latest version unless stated), with its ledger position."""

    id: str
    seq: int
    entity_type: str
    who: str
    this: str
    at: str
    visibility: Visibility
    is_deleted: bool = False
    duration_ms: int | None = None
    position: int | None = None


class SpanIn(_Content):
    """A span to append. owner_id and tenant_id default to the caller's (and must be them).
    Without a signature the server chains, hashes and signs it; with one, it must verify
    under a key the manifest trusts and is stored exactly as signed."""

    entity_type: str = Field(min_length=1, max_length=100,
                             description="a lowercase kind (^[a-z][a-z0-9_]{0,63}$), any "
                             "but the ones only the platform writes: "
                             + ", ".join(sorted(PLATFORM_KINDS)))
    who: str
    this: str
    id: str | None = None
    seq: int | None = Field(default=None, ge=0)
    at: str | None = None
    visibility: Visibility | None = None
    is_deleted: bool | None = None
    duration_ms: int | None = Field(default=None, ge=0)

    @field_validator("trace_id")
    @classmethod
    def _trace_is_a_uuid(cls, value: str | None) -> str | None:
        if value is not None and not TRACE_ID.fullmatch(value):
            raise ValueError("must be a UUID in lowercase 8-4-4-4-12 form (trace ids are "
                             "UUIDs: the server's request ids, and every filter on them)")
        return value

    @field_validator("entity_type")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.strip().lower() in PLATFORM_KINDS:
            raise ValueError(reserved_message(value))
        try:
            return check_kind(value)
        except LoglineError as exc:
            raise ValueError(exc.message) from None


def reserved_message(kind: str) -> str:
    return (f"{kind!r} is written by the platform only (keys, contracts, gate decisions, "
            "approvals, jobs, executions, requests, policy records): use its own endpoint")


class SpanList(BaseModel):
    items: list[Span]
    next_before: int | None = Field(None, description="pass as ?before= for the next page")


class Flag(BaseModel):
    """A span a view left out, and why (docs/errors.md: KIND_NOT_PLATFORM_SIGNED,
    RECORD_MALFORMED, PLAN_MALFORMED)."""

    id: str
    reason: str
    detail: str = ""


class ExecutionList(SpanList):
    flags: list[Flag] = Field(default_factory=list, description="execution spans of your "
                              "tenant not signed by the platform (left out)")


class Function(Span):
    kernel: bool = Field(description="a stage-0 kernel: a function of tenant system, signed "
                         "by the platform and marked metadata.kernel")


class FunctionList(BaseModel):
    items: list[Function]


class ExecuteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    span_id: str = Field(description="the function to run")
    input: JSON = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200,
                                        pattern=r"^[^\x00]+$")


class ExecuteOut(BaseModel):
    request_id: str
    status: str
    trace_id: str | None


class BootIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: JSON = None


class BootOut(BaseModel):
    output: JSON


class Verification(BaseModel):
    id: str
    seq: int
    ok: bool
    checks: dict[str, bool]
    reason: str | None
    detail: str
    versions: int


class MetricRow(BaseModel):
    day: str
    status: str
    count: int
    avg_ms: float | None
    p95_ms: float | None


class QuotaOut(BaseModel):
    tenant_id: str
    day: str = Field(description="the UTC day counted (YYYY-MM-DD)")
    limit: int = Field(description="executions a day for this tenant")
    used: int
    remaining: int
    source: str = Field(description="the manifest key the limit comes from")
    resets_in_s: int = Field(description="seconds until 00:00 UTC")


class Metrics(BaseModel):
    executions: list[MetricRow] = Field(description="per day and status")
    days: list[MetricRow] = Field(description="per day, all statuses (status '*')")
    quota: QuotaOut = Field(description="your tenant's daily execution quota, today")


class Me(BaseModel):
    key_id: str
    user_id: str
    tenant_id: str
    roles: list[str]
    platform_keys: list[str] = Field(description="the keys whose signature makes a span a "
                                     "platform record (the root key and the manifest's "
                                     "platform keys): a span with another public_key was "
                                     "written by a tenant")
    platform_kinds: list[str] = Field(description="the kinds only the platform signs")


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
