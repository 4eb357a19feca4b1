"""Governed execution over HTTP: contracts, proposals and intents, approvals, agent jobs and
the audit export. The rules live in stage0/gov/ (contract_store, proposals, approvals,
jobs); these handlers only translate.

A refusal by the gate is recorded (a gate_decision span) in the request's transaction and
only then answered with its reason code as the error code, so a denial always leaves its
trail and is never recorded twice.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from stage0.api.endpoint import Call, Endpoint
from stage0.api.errors import ApiError
from stage0.api.models import Flag
from stage0.api.routes import _uuid
from stage0.gov import apikeys, approvals, audit, contract_store, intents, jobs, proposals
from stage0.gov.contracts import parse as parse_contract
from stage0.ledger import records
from stage0.ledger.db import Connection
from stage0.spans.clip import clip_fields

JSON = Any
#: Refusal codes -> HTTP status (everything else the gate refuses with is a 403).
REFUSAL_STATUS = {"G_BAD_ARGUMENTS": 422, "G_UNKNOWN_ACTION": 422, "G_AMBIGUOUS_ACTION": 422,
                  "G_APPROVAL_REPLAYED": 409, "G_PLAN_PENDING": 409, "G_NOT_PENDING": 409}
CLAIM_WAIT_MAX_S = 10  # under the request timeout


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContractIn(_In):
    contract: dict[str, JSON] = Field(description="the contract (the YAML's content as JSON)")


class ActivateIn(_In):
    ref: str = Field(min_length=3, max_length=200, description="NAME@VERSION")


class ContractItem(BaseModel):
    id: str
    ref: str
    tenant_id: str
    active: bool
    actions: dict[str, JSON]


class ContractList(BaseModel):
    items: list[ContractItem]
    flags: list[Flag] = Field(default_factory=list, description="contract spans left out: "
                              "not signed by the platform, or not readable as a contract")


class Activated(BaseModel):
    ref: str
    activation_id: str


class ProposalIn(_In):
    action: str = Field(min_length=1, max_length=200,
                        description="CONTRACT.ACTION or an action of one active contract")
    args: dict[str, JSON] = Field(default_factory=dict)


class IntentIn(_In):
    text: str = Field(min_length=1, max_length=2000, pattern=r"^[^\x00]+$")


class Decision(BaseModel):
    outcome: Literal["ALLOW", "PENDING_APPROVAL", "DENY"]
    reason: str
    message: str
    action: str
    contract: str | None
    approvals: int
    required: int
    decision_id: str
    proposal_id: str | None
    job_id: str | None
    trace_id: str


class IntentOut(Decision):
    parsed: dict[str, JSON]


class ApprovalIn(_In):
    decision: Literal["approve", "reject"]
    reason: str = Field(min_length=1, max_length=2000, pattern=r"^[^\x00]+$")


class Proposal(BaseModel):
    id: str
    trace_id: str | None
    state: str
    action: str
    contract: str
    args: JSON
    destructive: bool
    required: int
    approval_ttl_s: int = Field(description="an approval is valid this long: the job must "
                                "be claimed by then")
    requester: str
    at: str
    plan: list[dict[str, JSON]] | None
    approvals: list[dict[str, JSON]]
    jobs: dict[str, JSON]
    flags: list[Flag] = Field(default_factory=list, description="spans of this request left "
                              "out of its state (not signed by the platform, a malformed "
                              "plan)")


class ProposalList(BaseModel):
    items: list[Proposal]
    flags: list[Flag] = Field(default_factory=list, description="requests left out because "
                              "their state cannot be read")


class ClaimIn(_In):
    limit: int = Field(default=1, ge=1, le=50)
    wait_s: float = Field(default=0, ge=0, le=CLAIM_WAIT_MAX_S,
                          description="wait this long for a job when none is queued")
    actions: list[Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+$")]] \
        | None = Field(default=None, max_length=100,
                       description="only jobs of these actions (the ones this agent performs)")


class Job(BaseModel):
    id: str
    kind: Literal["plan", "execute"]
    action: str
    args: JSON
    contract: str
    plan: list[dict[str, JSON]] | None
    proposal_id: str
    trace_id: str | None


class JobList(BaseModel):
    jobs: list[Job]


class ResultIn(_In):
    status: Literal["done", "failed", "interrupted"]
    output: dict[str, JSON] = Field(default_factory=dict)


class ResultOut(BaseModel):
    acknowledged: bool
    result_id: str
    new: bool


def _refused(outcome: proposals.Outcome) -> ApiError:
    d = outcome.decision
    return ApiError(REFUSAL_STATUS.get(d.reason, 403), d.reason,
                    f"{d.message} (decision {outcome.decision_id})", audited=True)


# --- contracts ----------------------------------------------------------------------------
async def list_contracts(call: Call) -> ContractList:
    p = call.principal
    assert p is not None

    items, flags = await call.db(contract_store.contracts, call.state.root, p.tenant_id)
    return ContractList(items=[ContractItem(**c) for c in items], flags=flags)


async def publish_contract(call: Call) -> ContractItem:
    p = call.principal
    assert p is not None
    contract = parse_contract(call.body.contract, "body.contract")

    def run(conn: Connection) -> ContractItem:
        span = contract_store.publish(conn, call.state.key, p, contract,
                                  secret=call.state.id_secret)
        return ContractItem(id=span["id"], ref=contract.ref, tenant_id=p.tenant_id,
                            active=False, actions=span["content"]["actions"])

    return await call.db(run)


async def activate_contract(call: Call) -> Activated:
    p = call.principal
    assert p is not None

    def run(conn: Connection) -> Activated:
        span = contract_store.activate(conn, call.state.key, call.state.root, p, call.body.ref,
                                   call.request_id, secret=call.state.id_secret)
        return Activated(ref=span["this"], activation_id=span["id"])

    return await call.db(run)


# --- proposals and intents ----------------------------------------------------------------
async def propose(call: Call) -> Decision:
    p = call.principal
    assert p is not None
    outcome = await call.db(lambda conn: proposals.propose(
        conn, call.state.key, call.state.root, p, call.body.action, call.body.args,
        call.request_id, secret=call.state.id_secret))
    if outcome.decision.outcome == "DENY":
        raise _refused(outcome)
    return Decision(**outcome.as_dict())


async def intent(call: Call) -> IntentOut:
    p = call.principal
    assert p is not None
    text = call.body.text

    def run(conn: Connection) -> tuple[intents.Intent, proposals.Outcome]:
        contracts = [c for c, _ in contract_store.active_contracts(conn, call.state.root,
                                                                p.tenant_id)]
        if not contracts:
            raise ApiError(422, "INTENT_NOT_UNDERSTOOD", f"tenant {p.tenant_id} has no active "
                           "contract, so no sentence can be understood yet: an operator "
                           "activates one, e.g. `logline contract activate personal_ops@1.0.0 "
                           f"--tenant {p.tenant_id}` (`logline contract list` shows them)")
        parsed = intents.parse(text, contracts)
        if parsed is None:
            hints = "; ".join(f'"{e}"' for e in intents.examples(contracts)) or \
                "none: their actions declare no phrases (`logline propose ACTION` asks by name)"
            raise ApiError(422, "INTENT_NOT_UNDERSTOOD", f"no action of your active contracts "
                           f"reads like that; try for example {hints}")
        outcome = proposals.propose(conn, call.state.key, call.state.root, p,
                                     parsed.qualified, parsed.args, call.request_id,
                                     source=clip_fields({"via": "intent", "text": text,
                                                         "phrase": parsed.phrase}),
                                     secret=call.state.id_secret)
        return parsed, outcome

    parsed, outcome = await call.db(run)
    if outcome.decision.outcome == "DENY":
        raise _refused(outcome)
    return IntentOut(**outcome.as_dict(), parsed={"action": parsed.qualified,
                                                  "args": parsed.args})


def _proposal(state: dict[str, Any], flags: list[dict[str, str]]) -> Proposal | None:
    """The answer's shape for one request; None (and a flag) when it cannot take it."""
    try:
        return Proposal(**state)
    except ValidationError as exc:
        flags.append(records.flag(state.get("id"), records.MALFORMED, str(exc)))
        return None


async def get_proposal(call: Call) -> Proposal:
    p = call.principal
    assert p is not None
    proposal_id = _uuid(call.request.path_params["id"])
    state = await call.db(proposals.proposal_state, call.state.root, p.tenant_id,
                          proposal_id)
    if state is None:
        raise ApiError(404, "NOT_FOUND", "no proposal with this id is visible to you")
    flags: list[dict[str, str]] = []
    proposal = _proposal(state, flags)
    if proposal is None:
        raise ApiError(422, records.MALFORMED, flags[0]["detail"])
    return proposal


async def list_approvals(call: Call) -> ProposalList:
    """One request that cannot be read is skipped and flagged, never failing the inbox."""
    p = call.principal
    assert p is not None
    wanted = call.query("state")
    limit = call.int_query("limit", 50, 1, 200)
    states = tuple(wanted.split(",")) if wanted else None
    items, flags = await call.db(proposals.approvals_inbox, call.state.root, p.tenant_id,
                                 limit, states)
    shown = [_proposal(i, flags) for i in items]
    return ProposalList(items=[x for x in shown if x is not None], flags=flags)


async def decide_approval(call: Call) -> Decision:
    p = call.principal
    assert p is not None
    proposal_id = _uuid(call.request.path_params["id"])
    body: ApprovalIn = call.body

    def agents(role: str) -> set[str]:
        return call.state.in_transaction("kernel", None, apikeys.holders, p.tenant_id, role)

    outcome = await call.db(lambda conn: approvals.approve(
        conn, call.state.key, call.state.root, p, proposal_id, body.decision == "approve",
        body.reason, call.request_id, agents, secret=call.state.id_secret))
    if outcome.refused:
        raise _refused(outcome)
    return Decision(**outcome.as_dict())


# --- agent jobs ---------------------------------------------------------------------------
async def claim_jobs(call: Call) -> JobList:
    """Long-poll: with wait_s, an empty queue waits for the tenant's next append."""
    p = call.principal
    assert p is not None
    body: ClaimIn = call.body

    def claim(conn: Connection) -> list[dict[str, Any]]:
        return jobs.claim(conn, call.state.key, call.state.root, p, body.limit, body.actions,
                          secret=call.state.id_secret)

    subscription = call.state.broadcaster.subscribe(p.tenant_id)
    deadline = anyio.current_time() + body.wait_s
    try:
        while True:
            subscription.event.clear()
            handed = await call.db(claim)  # never cancelled midway: a claim commits whole
            if handed or anyio.current_time() >= deadline:
                return JobList(jobs=handed)
            with anyio.move_on_at(deadline):
                await subscription.event.wait()
    finally:
        call.state.broadcaster.unsubscribe(subscription)


async def report_result(call: Call) -> ResultOut:
    p = call.principal
    assert p is not None
    job_id = _uuid(call.request.path_params["id"])
    body: ResultIn = call.body
    span, new = await call.db(lambda conn: jobs.report(
        conn, call.state.key, p, job_id, body.status, body.output,
        secret=call.state.id_secret))
    return ResultOut(acknowledged=True, result_id=span["id"], new=new)


# --- audit --------------------------------------------------------------------------------
async def audit_export(call: Call) -> Response:
    """Your tenant's trail as JSON lines (every field: each line verifies on its own) or
    CSV, oldest first, each span marked `record` (platform, tenant or forged); page with
    ?since=. Another tenant's spans are never in it, public ones included."""
    p = call.principal
    assert p is not None
    fmt = call.query("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise ApiError(400, "BAD_QUERY", "format is jsonl or csv")
    types = call.query("entity_type")
    spans = await call.db(lambda conn: audit.rows(
        conn, call.state.root, trace_id=call.uuid_query("trace_id"), tenant=p.tenant_id,
        types=types.split(",") if types else None,
        after=call.int_query("since", None, 0, 2**62),
        limit=call.int_query("limit", audit.EXPORT_MAX, 1, audit.EXPORT_MAX)))
    return Response(audit.render(spans, fmt), media_type="application/x-ndjson"
                    if fmt == "jsonl" else "text/csv")


ID = {"id": ("path", "id (UUID)")}
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/contracts", list_contracts, "Contracts you can see, and which are "
             "active for your tenant", "api.contracts_list", response=ContractList),
    Endpoint("POST", "/api/contracts", publish_contract, "Publish a contract for your tenant "
             "(admin)", "api.contract_publish", limit="admin", body=ContractIn,
             response=ContractItem, status=201),
    Endpoint("POST", "/api/contracts/activate", activate_contract, "Make NAME@VERSION your "
             "tenant's active version of NAME (admin)", "api.contract_activate",
             limit="admin", body=ActivateIn, response=Activated),
    Endpoint("POST", "/api/proposals", propose, "Ask for a governed action: allowed (a job), "
             "pending approval, or denied with the gate's reason code", "api.proposal_create",
             limit="write", body=ProposalIn, response=Decision, status=201),
    Endpoint("POST", "/api/intents", intent, "A short sentence ('delete duplicates in "
             "photos/') parsed against your active contracts, then proposed",
             "api.intent_create", limit="write", body=IntentIn, response=IntentOut,
             status=201),
    Endpoint("GET", "/api/proposals/{id}", get_proposal, "A proposal: terms, plan, approvals, "
             "jobs and state", "api.proposal_read", response=Proposal, query=ID),
    Endpoint("GET", "/api/approvals", list_approvals, "Approval requests of your tenant, "
             "newest first, with what each would do", "api.approvals_list",
             response=ProposalList,
             query={"state": ("string", "comma-separated states, e.g. pending"),
                    "limit": ("integer", "1-200, default 50")}),
    Endpoint("POST", "/api/approvals/{id}", decide_approval, "Approve or reject, with a "
             "reason (never your own request)", "api.approval_decide", limit="write",
             body=ApprovalIn, response=Decision, query=ID),
    Endpoint("POST", "/api/jobs/claim", claim_jobs, "Claim queued jobs of your tenant (agent)",
             "api.jobs_claim", limit="write", body=ClaimIn, response=JobList),
    Endpoint("POST", "/api/jobs/{id}/result", report_result, "Report a claimed job's result "
             "(idempotent: a retry is acknowledged again)", "api.job_report", limit="write",
             body=ResultIn, response=ResultOut, query=ID),
    Endpoint("GET", "/api/audit/export", audit_export, "The audit trail as JSON lines or CSV",
             "api.audit_export", text=True, media=("application/x-ndjson", "text/csv"),
             query={"trace_id": ("string", "one governed request (UUID)"),
                    "entity_type": ("string", "comma-separated types"),
                    "format": ("string", "jsonl (default) or csv"),
                    "since": ("integer", "position: only after this"),
                    "limit": ("integer", f"1-{audit.EXPORT_MAX}")}),
]
