"""Proposals through the gate: the decision record, the approval request and the plan job it
leaves, and the state of a proposal read back from which spans exist."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contract_store import active_contracts, resolve
from stage0.gov.routes_gate import now, roles_of
from stage0.ledger import records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.clip import clip_fields, clip_json
from stage0.spans.ids import derive_id


@dataclass
class Outcome:
    """What a proposal (or an approval) came to, and the spans it left."""

    decision: gate.Decision
    decision_id: str
    trace_id: str
    proposal_id: str | None = None
    job_id: str | None = None
    refused: bool = False  # an approval that was not recorded (SoD, role, replay, ...)

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        return {"outcome": d.outcome, "reason": d.reason, "message": d.message,
                "action": d.action, "contract": d.contract, "approvals": d.approvals,
                "required": d.required, "decision_id": self.decision_id,
                "proposal_id": self.proposal_id, "job_id": self.job_id,
                "trace_id": self.trace_id}


def span_of(principal: Principal, entity_type: str, did: str, this: str, trace_id: str,
          **fields: Any) -> dict[str, Any]:
    return {"entity_type": entity_type, "who": principal.user_id, "did": did, "this": this,
            "owner_id": principal.user_id, "tenant_id": principal.tenant_id,
            "visibility": "tenant", "trace_id": trace_id, **fields}


def decision_span(principal: Principal, decision: gate.Decision, trace_id: str,
                   parent_id: str | None, args: Any,
                   contract_span: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a decision. What the client wrote in it (the action, the arguments, a
    message naming them) is bounded (stage0/spans/clip.py): a denied request of 1 MiB leaves a
    small record. The proposal and job spans carry the arguments whole, once allowed."""
    said = clip_fields({"action": decision.action, "message": decision.message})
    args_cut, args_cuts = clip_json(args)
    clipped = {**said.pop("clipped", {}),
               **{"args" + path[1:]: note for path, note in args_cuts.items()}}
    content = {**decision.as_dict(), "action": said["action"], "message": said["message"],
               "roles": sorted(principal.roles),
               "contract_id": contract_span["id"] if contract_span else None,
               "contract_hash": contract_span["curr_hash"] if contract_span else None}
    if clipped:
        content["clipped"] = clipped
    return span_of(principal, "gate_decision", "decided", said["action"], trace_id,
                 id=str(uuid.uuid4()), parent_id=parent_id, status=decision.outcome.lower(),
                 input={"action": said["action"], "args": args_cut}, content=content)


def propose(conn: Connection, key: SigningKey, root: str, principal: Principal,
            action: str, args: Any, trace_id: str,
            source: dict[str, Any] | None = None, *, secret: bytes) -> Outcome:
    """Ask the gate; record its decision and, unless denied, what follows from it: a job
    (allowed) or an approval request plus a plan job for the agent (pending approval)."""
    found = resolve(action, active_contracts(conn, root, principal.tenant_id))
    if isinstance(found, gate.Decision):
        contract, contract_span, decision = None, None, found
    else:
        contract, contract_span = found if found else (None, None)
        decision = gate.decide(action, args, contract=contract, requester=principal.user_id,
                               roles=roles_of(principal), now=now())
    proposal_id = str(uuid.uuid4()) if decision.outcome != "DENY" else None
    spans = [decision_span(principal, decision, trace_id, proposal_id, args, contract_span)]
    outcome = Outcome(decision, spans[0]["id"], trace_id, proposal_id)
    if decision.outcome != "DENY":
        assert contract is not None and contract_span is not None and proposal_id
        profile = contract.actions[decision.action]
        qualified = f"{contract.name}.{decision.action}"
        terms = {"action": decision.action, "args": args, "contract": contract.ref,
                 "contract_id": contract_span["id"], "contract_hash": contract_span["curr_hash"],
                 "destructive": profile.destructive, "required": profile.approvals,
                 "approvers": profile.approvers, "approval_ttl_s": profile.approval_ttl_s,
                 "requester": principal.user_id, "source": source or {"via": "api"}}
        spans.append(span_of(principal, "approval_request" if profile.approvals else "proposal",
                           "proposed", qualified, trace_id, id=proposal_id,
                           status="pending" if profile.approvals else "allowed",
                           input={"action": decision.action, "args": args}, content=terms))
        # A destructive action is planned by the agent first (the approvers see the plan);
        # an allowed one runs; one that needs approval without destroying anything waits.
        kind = "plan" if profile.destructive else None if profile.approvals else "execute"
        if kind:
            job = job_span(secret, principal, proposal_id, kind, terms, trace_id)
            spans.append(job)
            outcome.job_id = job["id"]
    store.append(conn, spans, key)
    return outcome


def job_span(secret: bytes, principal: Principal, proposal_id: str, kind: str,
         terms: dict[str, Any], trace_id: str,
         plan: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = {"kind": kind, "proposal_id": proposal_id, "action": terms["action"],
               "args": terms["args"], "contract": terms["contract"]}
    if plan is not None:
        content["plan"] = plan
    return span_of(principal, "job", "queued", f"{kind} {terms['contract']} {terms['action']}",
                 trace_id, id=derive_id(secret, "job", proposal_id, kind), seq=0,
                 parent_id=proposal_id, status="queued", content=content)


def children(conn: Connection, parent_id: str) -> list[dict[str, Any]]:
    return _children_of(conn, [parent_id]).get(parent_id, [])


def _children_of(conn: Connection, parent_ids: list[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """Every stored version of the spans whose parent is one of `parent_ids`, per parent, in
    position order: one query for any number of parents."""
    out: dict[str, list[dict[str, Any]]] = {}
    if parent_ids:
        for r in conn.execute(q("children_of"), {"parents": parent_ids}):
            span = store.span_from_row(r)
            out.setdefault(span["parent_id"], []).append(span)
    return out


def proposal_state(conn: Connection, root: str, tenant_id: str,
                   proposal_id: str) -> dict[str, Any] | None:
    """A proposal as the caller may see it: terms, plan (the agent's preview), approvals,
    jobs and their results, a state (planning, plan_failed, pending, approved, rejected,
    running, done, failed, interrupted, refused) and flags. None unless it is a platform
    record of `tenant_id`; RECORD_MALFORMED when its state cannot be read."""
    request = store.head(conn, proposal_id)
    if request is None or request["entity_type"] not in ("approval_request", "proposal"):
        return None
    platform = records.platform(conn, root)
    if not platform.counts(request, tenant_id):
        return None
    [state], flags = states_of(conn, [request], platform)
    if state is None:
        raise LoglineError(records.MALFORMED, flags[0]["detail"], proposal_id)
    return state


def states_of(conn: Connection, requests: list[dict[str, Any]],
            platform: records.Platform) -> tuple[list[dict[str, Any] | None], list[dict]]:
    """proposal_state for each of `requests` (their head spans), in three queries in all:
    the requests' children (approvals, jobs), then the jobs' children (claims, results).
    A request whose state cannot be read is None, and flagged instead of failing the rest."""
    children = _children_of(conn, [r["id"] for r in requests])
    job_ids = {c["id"] for kids in children.values() for c in kids
               if c["entity_type"] == "job" and platform.counts(c, None)}
    job_children = _children_of(conn, sorted(job_ids))
    states: list[dict[str, Any] | None] = []
    flags = []
    for request in requests:
        try:
            states.append(_state(request, children.get(request["id"], []), job_children,
                                 platform))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            states.append(None)
            flags.append(records.flag(request["id"], records.MALFORMED,
                                      f"the request's terms cannot be read: {exc!r}"))
    return states, flags


def _state(request: dict[str, Any], children: list[dict[str, Any]],
           job_children: dict[str, list[dict[str, Any]]],
           platform: records.Platform) -> dict[str, Any]:
    flags: list[dict[str, str]] = []
    tenant = request["tenant_id"]
    children = records.counted(children, platform, tenant, flags)
    approvals = [c for c in children if c["entity_type"] == "approval"]
    jobs = {c["content"]["kind"]: _job_view(c, records.counted(
        job_children.get(c["id"], []), platform, tenant, flags))
        for c in children if c["entity_type"] == "job"}
    terms = request["content"]
    plan_job = jobs.get("plan")
    execute_job = jobs.get("execute")
    plan, bad_plan = None, False
    if plan_job and plan_job["result"] and plan_job["result"]["status"] == "done":
        output = plan_job["result"]["output"]
        ops = output.get("ops") if isinstance(output, dict) else None
        problem = records.plan_problem(ops)
        if problem:  # never shown, never approvable: the request ends as plan_failed
            bad_plan = True
            flags.append(records.flag(plan_job["result"]["id"], records.PLAN_MALFORMED,
                                      problem))
        else:
            plan = ops
    if any(a["status"] == "rejected" for a in approvals):
        state = "rejected"
    elif execute_job:
        state = execute_job["state"]
        state = {"queued": "approved", "claimed": "running"}.get(state, state)
    elif plan_job and (bad_plan or plan_job["state"] in ("failed", "interrupted", "refused")):
        state = "plan_failed"
    elif plan_job and plan is None:
        state = "planning"
    else:
        state = "pending"
    return {"id": request["id"], "trace_id": request["trace_id"], "state": state,
            "action": terms["action"], "contract": terms["contract"], "args": terms["args"],
            "destructive": terms["destructive"], "required": terms["required"],
            "approval_ttl_s": terms["approval_ttl_s"],
            "requester": request["owner_id"], "at": request["at"], "plan": plan,
            "approvals": [{"approver": a["owner_id"], "status": a["status"], "at": a["at"],
                           "reason": (a["content"] or {}).get("reason")} for a in approvals],
            "jobs": jobs, "flags": flags}


def _job_view(job: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
    claim = next((c for c in children if c["entity_type"] == "job_claim"), None)
    result = next((c for c in children if c["entity_type"] == "job_result"), None)
    state = result["status"] if result else (claim["status"] if claim else "queued")
    return {"id": job["id"], "kind": job["content"]["kind"], "state": state,
            "agent": claim["owner_id"] if claim else None,
            "result": {"id": result["id"], "status": result["status"],
                       "output": result["output"]} if result else None}


def approvals_inbox(conn: Connection, root: str, tenant_id: str, limit: int = 100,
                    states: tuple[str, ...] | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The tenant's approval requests (platform records only), newest first, and the flags
    of the ones whose state cannot be read (skipped, never failing the rest)."""
    platform = records.platform(conn, root)
    requests = [store.span_from_row(r) for r in conn.execute(q("approval_requests"), {
        "tenant": tenant_id, "keys": sorted(platform.keys), "limit": limit})]
    found, flags = states_of(conn, requests, platform)
    return [state for state in found if state is not None and
            (states is None or state["state"] in states)], flags
