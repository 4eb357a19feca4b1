"""Approvals with separation of duties: who may approve a plan, replay and role checks, and
the execute job once enough distinct approvers said yes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import blake3
import rfc8785
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contract_store import load_contract
from stage0.gov.contracts import Contract
from stage0.gov.proposals import Outcome, children, decision_span, job_span, span_of, states_of
from stage0.gov.routes_gate import now, roles_of
from stage0.ledger import manifest, records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.canonical import parse_at
from stage0.spans.clip import clip_fields
from stage0.spans.ids import derive_id


def plan_hash(plan: Any) -> str:
    """What an approver saw: the BLAKE3 of the plan's canonical JSON (RFC 8785)."""
    return blake3.blake3(rfc8785.dumps(plan)).hexdigest()


def approve(conn: Connection, key: SigningKey, root: str, principal: Principal,
            proposal_id: str, approve: bool, reason: str, trace_id: str,
            agent_identities: Callable[[str], set[str]] | None = None, *,
            secret: bytes) -> Outcome:
    """An approver's answer. Refusals (SoD, role, not ready, replay) are gate_decision spans
    too; they come back as a DENY Outcome so the caller can answer after the commit.
    `agent_identities(role)`: the users of the tenant holding a key with the contract's
    executor role; none of them approves, whatever other key they use."""
    request = store.head(conn, proposal_id)
    platform = records.platform(conn, root)
    if request is None or request["entity_type"] != "approval_request" or \
            not platform.counts(request, principal.tenant_id):
        raise LoglineError("NOT_FOUND", "no approval request with this id is visible to you")
    [state], flags = states_of(conn, [request], platform)
    if state is None:
        raise LoglineError(records.MALFORMED, flags[0]["detail"], proposal_id)
    terms = request["content"]
    found = load_contract(conn, terms["contract_id"], manifest.trust_set(conn, root),
                          terms["contract_hash"])
    if found is None:
        raise LoglineError("CONTRACT_CHANGED", "the contract is no longer visible")
    contract, contract_span = found
    profile = contract.actions[terms["action"]]
    trace = request["trace_id"] or trace_id
    action = f"{contract.name}.{terms['action']}"

    def refuse(code: str, message: str) -> Outcome:
        decision = gate.Decision("DENY", code, message, terms["action"], contract.ref)
        span = decision_span(principal, decision, trace, proposal_id, terms["args"],
                              contract_span)
        span["did"] = "refused approval"
        store.append(conn, [span], key)
        return Outcome(decision, span["id"], trace, proposal_id, refused=True)

    agents = _claimers(conn, proposal_id)
    if agent_identities is not None and contract.executor_role:
        agents |= agent_identities(contract.executor_role)
    refusal = gate.approver_refusal(principal.user_id, roles_of(principal),
                                    request["owner_id"], profile, agents,
                                    contract.executor_role)
    if refusal == "G_SOD_VIOLATION":
        return refuse(refusal, "nobody approves their own request, and no agent identity "
                      "approves")
    if refusal:
        return refuse(refusal, f"approving {action} needs the role "
                      f"{' or '.join(profile.approvers)}")
    at = now()
    ttl = timedelta(seconds=profile.approval_ttl_s)
    mine = [a for a in state["approvals"] if a["approver"] == principal.user_id]
    if any(a["status"] == "rejected" or parse_at(a["at"]) + ttl > at for a in mine):
        return refuse("G_APPROVAL_REPLAYED", "you have already answered this request (an "
                      "approval may be renewed only once it has expired)")
    if state["state"] == "planning" and approve:
        return refuse("G_PLAN_PENDING", "the agent has not yet reported what this would "
                      "do; approve once the plan is shown (rejecting is possible now)")
    if state["state"] not in ("pending", "planning"):
        return refuse("G_NOT_PENDING", f"this request is {state['state']}")
    store.append(conn, [span_of(
        principal, "approval", "approved" if approve else "rejected", action, trace,
        # One id per approver and round: a renewal after expiry is the next round, and two
        # answers racing for one round collide in the ledger.
        id=derive_id(secret, "approval", proposal_id, principal.user_id, len(mine)), seq=0,
        parent_id=proposal_id, status="approved" if approve else "rejected",
        content={**clip_fields({"reason": reason}), "plan_hash": plan_hash(state["plan"]),
                 "roles": sorted(principal.roles)})], key)
    decision = decide_with_approvals(conn, contract, terms, request, at, platform, agents)
    spans = [decision_span(principal, decision, trace, proposal_id, terms["args"],
                            contract_span)]
    outcome = Outcome(decision, spans[0]["id"], trace, proposal_id)
    if decision.outcome == "ALLOW":
        job = job_span(secret, principal, proposal_id, "execute", terms, trace, plan=state["plan"])
        spans.append(job)
        outcome.job_id = job["id"]
    store.append(conn, spans, key)
    return outcome


def _claimers(conn: Connection, proposal_id: str) -> set[str]:
    """Who claimed this proposal's jobs (the agents that planned or ran it)."""
    return {r["owner_id"] for r in conn.execute(q("job_claimers"), {"proposal": proposal_id})}


def decide_with_approvals(conn: Connection, contract: Contract,
                           terms: dict[str, Any], request: dict[str, Any], at: datetime,
                           platform: records.Platform,
                           agents: set[str] | None = None) -> gate.Decision:
    # Only approvals the platform signed, in the request's tenant, count.
    approvals = [gate.Approval(a["owner_id"], frozenset((a["content"] or {}).get("roles", ())),
                               a["status"] == "approved", parse_at(a["at"]))
                 for a in children(conn, request["id"]) if a["entity_type"] == "approval"
                 and platform.counts(a, request["tenant_id"])]
    # The requester's roles were checked when they proposed; this decides the approvals.
    requester_roles = tuple(contract.actions[terms["action"]].requesters)
    return gate.decide(terms["action"], terms["args"], contract=contract,
                       requester=request["owner_id"], roles=requester_roles, now=at,
                       approvals=approvals,
                       agents=agents if agents is not None else _claimers(conn, request["id"]))
