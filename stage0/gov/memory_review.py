"""Promoting a memory to the permanent layer goes through review, decided by the gate
(issue 12; docs/memory.md).

The review is the action `promote` of a contract of its own (below: any member may ask for
their own memory, one approver or admin other than the requester must approve, within a
week). The owner's request is a `memory_promotion` span (one id per tenant and memory,
derived with the platform's id secret, status `pending`); each answer of a reviewer is its
next version, holding every answer so far; the gate's decision over those answers says
`pending`, `approved` (the memory's next version is written in the `permanent` layer
without ttl_at) or `rejected`. The requester never approves their own (G_SOD_VIOLATION), a
caller without the approver or admin role never does (G_ROLE_DENIED).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import ActionProfile, Contract
from stage0.gov.routes_gate import now, roles_of
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.memory.service import Caller, Memory
from stage0.spans.canonical import format_at, parse_at
from stage0.spans.ids import derive_id

KIND = "memory_promotion"
ACTION = "promote"
REVIEW = Contract(
    name="memory", version="1.0.0",
    description="Review of memories promoted to the permanent layer",
    roles={"member": "every caller with a valid API key", "approver": "reviews requests",
           "admin": "operates the tenant"},
    actions={ACTION: ActionProfile(
        description="make a memory permanent (it no longer expires)", destructive=False,
        requesters=["member"], approvers=["approver", "admin"], approvals=1,
        approval_ttl_s=7 * 86400, record="all")})


def _answers(head: dict[str, Any] | None) -> list[gate.Approval]:
    return [gate.Approval(a["by"], frozenset(a["roles"]), bool(a["approve"]), parse_at(a["at"]))
            for a in ((head or {}).get("content") or {}).get("answers", [])]


def _decide(requester: str, answers: list[gate.Approval], at: datetime) -> gate.Decision:
    return gate.decide(ACTION, {}, contract=REVIEW, requester=requester, roles=("member",),
                       now=at, approvals=answers)


def promote(conn: Connection, key: SigningKey, master: Any, id_secret: bytes, root: str,
            principal: Principal, span_id: str, approve: bool | None,
            trace_id: str) -> dict[str, Any]:
    """Ask for (approve None: the memory's owner) or answer (a reviewer) the promotion of
    memory `span_id`. {"promotion_id", "status", "reason", "message", "approvals",
    "required", "memory": {...} when approved}."""
    memory = Memory(conn, key, master, id_secret=id_secret, root_key=root)
    promotion_id = derive_id(id_secret, KIND, principal.tenant_id, span_id)
    with conn.transaction():
        head = store.head(conn, promotion_id)
        at = now()
        if approve is None:
            return _request(conn, key, memory, principal, span_id, promotion_id, head, at,
                            trace_id)
        if head is None or head["status"] != "pending":
            raise LoglineError("MEMORY_NOT_FOUND", "no pending promotion of this memory in "
                               "your tenant", span_id)
        content = head["content"]
        profile = REVIEW.actions[ACTION]
        refusal = gate.approver_refusal(principal.user_id, roles_of(principal),
                                        content["requester"], profile)
        if refusal is not None:
            raise LoglineError(refusal, "the requester never reviews their own promotion, and "
                               "only an approver or admin does", span_id)
        answers = [a for a in _answers(head) if a.approver != principal.user_id]
        answers.append(gate.Approval(principal.user_id, frozenset(roles_of(principal)),
                                     approve, at))
        decision = _decide(content["requester"], answers, at)
        status = {"ALLOW": "approved", "DENY": "rejected"}.get(decision.outcome, "pending")
        promoted = None
        if status == "approved":
            promoted = memory.promote(Caller(content["requester"], principal.tenant_id),
                                      span_id)
        _record(conn, key, head, principal.tenant_id, content["requester"], span_id, answers,
                decision, status, trace_id)
        return {"promotion_id": promotion_id, "status": status, **_shown(decision),
                **({"memory": promoted} if promoted else {})}


def _request(conn: Connection, key: SigningKey, memory: Memory, principal: Principal,
             span_id: str, promotion_id: str, head: dict[str, Any] | None, at: datetime,
             trace_id: str) -> dict[str, Any]:
    owner = Caller(principal.user_id, principal.tenant_id)
    current = memory.get(owner, span_id)  # MEMORY_NOT_FOUND / MEMORY_FORGOTTEN
    if current["owner_id"] != principal.user_id:
        raise LoglineError("MEMORY_NOT_FOUND", "only a memory's owner asks for its promotion",
                           span_id)
    if current["layer"] == "permanent":
        raise LoglineError("MEMORY_INVALID", "this memory is already permanent", "layer")
    if head is not None and head["status"] == "pending":
        decision = _decide(head["content"]["requester"], _answers(head), at)
        return {"promotion_id": promotion_id, "status": "pending", **_shown(decision)}
    decision = _decide(principal.user_id, [], at)
    _record(conn, key, head, principal.tenant_id, principal.user_id, span_id, [], decision,
            "pending", trace_id, promotion_id)
    return {"promotion_id": promotion_id, "status": "pending", **_shown(decision)}


def _shown(decision: gate.Decision) -> dict[str, Any]:
    return {"reason": decision.reason, "message": decision.message,
            "approvals": decision.approvals, "required": decision.required}


def _record(conn: Connection, key: SigningKey, head: dict[str, Any] | None, tenant_id: str,
            requester: str, span_id: str, answers: list[gate.Approval],
            decision: gate.Decision, status: str, trace_id: str,
            promotion_id: str | None = None) -> None:
    store.append(conn, [{
        **({"id": head["id"], "seq": head["seq"] + 1, "prev_hash": head["curr_hash"]}
           if head else {"id": promotion_id}),
        "entity_type": KIND, "who": "memory", "did": status,
        "this": f"promote memory {span_id}", "parent_id": span_id,
        "owner_id": "system", "tenant_id": tenant_id, "visibility": "tenant",
        "status": status, "trace_id": trace_id,
        "content": {"span_id": span_id, "requester": requester,
                    "answers": [{"by": a.approver, "roles": sorted(a.approver_roles),
                                 "approve": a.approve, "at": format_at(a.at)}
                                for a in answers],
                    "decision": decision.as_dict()}}], key)
