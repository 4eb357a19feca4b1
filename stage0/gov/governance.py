"""Governed execution on the ledger: contracts per tenant, proposals through the gate,
approvals with separation of duties, and jobs for governed agents.

Every step is a span of the caller's tenant (visibility `tenant`), owned by whoever took it,
appended in the caller's transaction under row-level security, and sharing the proposal's
trace_id, so GET /api/timeline?trace_id= is the request's whole audit trail:

    gate_decision -> approval_request -> job(plan) -> job_claim -> job_result (the preview)
                  -> approval(s) -> job(execute) -> job_claim -> job_result

Uniqueness comes from the ledger itself: an approval, a claim and a result have ids derived
from what they belong to, so a second one is a seq-0 conflict the append trigger refuses.
The derivation is keyed with the platform's id secret (stage0.spans.ids, keys.id_secret: the
`secret` every function here takes), so no client can compute such an id and take it first.
The spans are never versioned by another party (the ledger keeps an id's owner fixed), so a
request's state is derived from which spans exist, not from a mutable status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import blake3
import psycopg
import rfc8785
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import Contract, contract_id, parse
from stage0.ledger import manifest, records, store
from stage0.ledger.queries import SPAN_COLUMNS
from stage0.spans.canonical import FIELDS, parse_at
from stage0.spans.clip import clip_fields, clip_json
from stage0.spans.ids import derive_id, legacy_id
from stage0.spans.proofs import check_proofs

PLATFORM = ("api", "1.0.0")
#: Roles every caller has: `anyone`, and `member` for a caller with a valid key.
IMPLICIT_ROLES = ("anyone", "member")
RESULT_STATUSES = ("done", "failed", "interrupted")


def roles_of(principal: Principal | None) -> tuple[str, ...]:
    if principal is None:
        return ("anyone",)
    return (*principal.roles, *IMPLICIT_ROLES)


def now() -> datetime:
    return datetime.now(UTC)


# --- contracts ----------------------------------------------------------------------------
def tenant_contract_id(secret: bytes, tenant_id: str, name: str, version: str) -> str:
    return derive_id(secret, "contract", tenant_id, f"{name}@{version}")


def contract_span(conn: psycopg.Connection, secret: bytes, tenant_id: str, name: str,
                   version: str) -> dict[str, Any] | None:
    """The contract NAME@VERSION of a tenant (`system`: the system's) the caller can see:
    under its keyed id, or (published before ids were keyed) under the old one. Only a
    contract span of that tenant counts, a kind no client can append."""
    ref = f"{name}@{version}"
    keyed, old = (contract_id(secret, name, version), legacy_id("contract", ref)) \
        if tenant_id == "system" else \
        (tenant_contract_id(secret, tenant_id, name, version),
         legacy_id("contract", tenant_id, ref))
    for span_id in (keyed, old):
        span = store.head(conn, span_id)
        if span is not None and span["entity_type"] == "contract" \
                and span["tenant_id"] == tenant_id:
            return span
    return None


def load_contract(conn: psycopg.Connection, span_id: str, trusted: frozenset[str],
                  expected_hash: str | None = None) -> tuple[Contract, dict[str, Any]] | None:
    """A contract span the caller can see, checked (hash, signature, trusted key, and the
    exact version when `expected_hash` is given). None when absent or not visible."""
    span = store.head(conn, span_id)
    if span is None or span["entity_type"] != "contract":
        return None
    if expected_hash is not None and span["curr_hash"] != expected_hash:
        version = conn.execute(f"SELECT {SPAN_COLUMNS} FROM ledger.universal_registry "
                               "WHERE id = %s AND curr_hash = %s",
                               (span_id, expected_hash)).fetchone()
        if version is None:
            raise LoglineError("CONTRACT_CHANGED", "the contract version this was decided "
                               "under is gone", span_id)
        span = store.span_from_row(version)
    proofs = check_proofs(span)
    if not proofs.ok or span["public_key"] not in trusted:
        raise LoglineError("CONTRACT_UNTRUSTED", proofs.detail or "signed by a key the "
                           "manifest does not trust", span_id)
    return parse(span["content"], span_id), span


def publish(conn: psycopg.Connection, key: SigningKey, principal: Principal,
            contract: Contract, *, secret: bytes) -> dict[str, Any]:
    """Store a tenant's own contract (visible to that tenant only)."""
    span_id = tenant_contract_id(secret, principal.tenant_id, contract.name, contract.version)
    if contract.name == PLATFORM[0] or contract_span(
            conn, secret, "system", contract.name, contract.version):
        raise LoglineError("CONTRACT_EXISTS", f"{contract.ref} is a system contract")
    if store.head(conn, span_id) is not None or contract_span(
            conn, secret, principal.tenant_id, contract.name, contract.version):
        raise LoglineError("CONTRACT_EXISTS", f"{contract.ref} is already published; "
                           "publish a new version instead")
    [span] = store.append(conn, [{
        "id": span_id, "seq": 0, "entity_type": "contract", "who": principal.user_id,
        "did": "published", "this": contract.ref, "name": contract.name,
        "description": contract.description, "owner_id": principal.user_id,
        "tenant_id": principal.tenant_id, "visibility": "tenant", "status": "published",
        "content": contract.model_dump(mode="json"), "metadata": {"version": contract.version},
    }], key)
    return span


def activate(conn: psycopg.Connection, key: SigningKey, root: str, principal: Principal,
             ref: str, trace_id: str, *, secret: bytes) -> dict[str, Any]:
    """Make NAME@VERSION the tenant's active version of NAME (a span, like everything)."""
    name, _, version = ref.partition("@")
    if not name or not version:
        raise LoglineError("CONTRACT_NOT_FOUND", "name a contract as NAME@VERSION", ref)
    trusted = manifest.trust_set(conn, root)
    for tenant in (principal.tenant_id, "system"):
        span = contract_span(conn, secret, tenant, name, version)
        found = load_contract(conn, span["id"], trusted) if span else None
        if found:
            break
    else:
        raise LoglineError("CONTRACT_NOT_FOUND", "no such contract is visible to you", ref)
    contract, span = found
    if contract.name == PLATFORM[0]:
        raise LoglineError("CONTRACT_NOT_FOUND", "the api contract is always active", ref)
    [activation] = store.append(conn, [{
        "entity_type": "contract_activation", "who": principal.user_id, "did": "activated",
        "this": contract.ref, "parent_id": span["id"], "owner_id": principal.user_id,
        "tenant_id": principal.tenant_id, "visibility": "tenant", "status": "active",
        "trace_id": trace_id,
        "content": {"contract_id": span["id"], "contract_hash": span["curr_hash"],
                    "name": contract.name, "version": contract.version},
    }], key)
    return activation


ACTIVE = (
    "SELECT DISTINCT ON (content ->> 'name') content FROM ledger.universal_registry "
    "WHERE entity_type = 'contract_activation' AND tenant_id = %s AND status = 'active' "
    "AND public_key = ANY(%s) ORDER BY content ->> 'name', position DESC"
)


def active_contracts(conn: psycopg.Connection, root: str,
                     tenant_id: str) -> list[tuple[Contract, dict[str, Any]]]:
    """The tenant's active contracts: activations count only when the platform signed them."""
    trusted = manifest.trust_set(conn, root)
    keys = sorted(records.platform(conn, root).keys)
    out = []
    for row in conn.execute(ACTIVE, (tenant_id, keys)):
        found = load_contract(conn, row["content"]["contract_id"], trusted,
                              row["content"]["contract_hash"])
        if found:
            out.append(found)
    return out


CONTRACTS = (
    "SELECT id::text AS id, tenant_id, public_key, content FROM ledger.latest_spans "
    "WHERE entity_type = 'contract' AND tenant_id IN ('system', %s) ORDER BY position"
)


def contracts(conn: psycopg.Connection, root: str, tenant_id: str
              ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The contracts a tenant can use (the system's and its own, signed by the platform),
    marked active or not; and the flags of the contract spans left out (not signed by the
    platform, or not readable as a contract). A contract seeded both before and after ids
    were keyed is listed once (the newer span), active if either is."""
    keys = records.platform(conn, root).keys
    active = {s["id"] for _, s in active_contracts(conn, root, tenant_id)}
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    flags = []
    for r in conn.execute(CONTRACTS, (tenant_id,)):
        if r["public_key"] not in keys:
            flags.append(records.flag(r["id"], records.NOT_PLATFORM_SIGNED))
            continue
        try:
            content = r["content"]
            ref = f"{content['name']}@{content['version']}"
            actions = dict(content["actions"])
        except (KeyError, TypeError, ValueError) as exc:
            flags.append(records.flag(r["id"], records.MALFORMED, f"not a contract: {exc!r}"))
            continue
        before = listed.pop((r["tenant_id"], ref), None)
        listed[(r["tenant_id"], ref)] = {
            "id": r["id"], "ref": ref, "tenant_id": r["tenant_id"],
            "active": r["id"] in active or bool(before and before["active"]),
            "actions": actions}
    return list(listed.values()), flags


def resolve(action: str, contracts: list[tuple[Contract, dict[str, Any]]]
            ) -> tuple[Contract, dict[str, Any]] | gate.Decision | None:
    """Which active contract `action` belongs to: `domain.action` names it, a bare action
    must be in exactly one. A Decision (DENY) when that is impossible; None: no contract."""
    if not contracts:
        return None
    name = action.strip().lower()
    domain, dot, bare = name.rpartition(".")
    if dot:
        match = [c for c in contracts if c[0].name == domain]
        if not match:
            return gate.Decision("DENY", "G_NO_CONTRACT", f"no active contract {domain!r} "
                                 "for your tenant", action)
        return match[0]
    match = [c for c in contracts if name in c[0].actions]
    if len(match) > 1:
        return gate.Decision("DENY", "G_AMBIGUOUS_ACTION", f"{name!r} is an action of "
                             f"{', '.join(c[0].ref for c in match)}: name the domain", action)
    return match[0] if match else contracts[0]


# --- the route gate -----------------------------------------------------------------------
def route_decision(contract: Contract | None, action: str,
                   principal: Principal | None) -> gate.Decision:
    """The gate's answer for one HTTP route (arguments are the route's own business)."""
    if contract is not None and action.partition(".")[2] not in contract.actions:
        return gate.Decision("DENY", "G_NO_PROFILE", f"the route's action {action} has no "
                             "profile in the api contract", action, contract.ref)
    return gate.decide(action, {}, contract=contract,
                       requester=principal.user_id if principal else "anonymous",
                       roles=roles_of(principal), now=now())


# --- proposals ----------------------------------------------------------------------------
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


def _span(principal: Principal, entity_type: str, did: str, this: str, trace_id: str,
          **fields: Any) -> dict[str, Any]:
    return {"entity_type": entity_type, "who": principal.user_id, "did": did, "this": this,
            "owner_id": principal.user_id, "tenant_id": principal.tenant_id,
            "visibility": "tenant", "trace_id": trace_id, **fields}


def _decision_span(principal: Principal, decision: gate.Decision, trace_id: str,
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
    return _span(principal, "gate_decision", "decided", said["action"], trace_id,
                 id=str(uuid.uuid4()), parent_id=parent_id, status=decision.outcome.lower(),
                 input={"action": said["action"], "args": args_cut}, content=content)


def propose(conn: psycopg.Connection, key: SigningKey, root: str, principal: Principal,
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
    spans = [_decision_span(principal, decision, trace_id, proposal_id, args, contract_span)]
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
        spans.append(_span(principal, "approval_request" if profile.approvals else "proposal",
                           "proposed", qualified, trace_id, id=proposal_id,
                           status="pending" if profile.approvals else "allowed",
                           input={"action": decision.action, "args": args}, content=terms))
        # A destructive action is planned by the agent first (the approvers see the plan);
        # an allowed one runs; one that needs approval without destroying anything waits.
        kind = "plan" if profile.destructive else None if profile.approvals else "execute"
        if kind:
            job = _job(secret, principal, proposal_id, kind, terms, trace_id)
            spans.append(job)
            outcome.job_id = job["id"]
    store.append(conn, spans, key)
    return outcome


def _job(secret: bytes, principal: Principal, proposal_id: str, kind: str,
         terms: dict[str, Any], trace_id: str,
         plan: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = {"kind": kind, "proposal_id": proposal_id, "action": terms["action"],
               "args": terms["args"], "contract": terms["contract"]}
    if plan is not None:
        content["plan"] = plan
    return _span(principal, "job", "queued", f"{kind} {terms['contract']} {terms['action']}",
                 trace_id, id=derive_id(secret, "job", proposal_id, kind), seq=0,
                 parent_id=proposal_id, status="queued", content=content)


# --- reading a proposal's state -----------------------------------------------------------
def _children(conn: psycopg.Connection, parent_id: str) -> list[dict[str, Any]]:
    return _children_of(conn, [parent_id]).get(parent_id, [])


def _children_of(conn: psycopg.Connection, parent_ids: list[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """Every stored version of the spans whose parent is one of `parent_ids`, per parent, in
    position order: one query for any number of parents."""
    out: dict[str, list[dict[str, Any]]] = {}
    if parent_ids:
        for r in conn.execute(f"SELECT {SPAN_COLUMNS} FROM ledger.universal_registry "
                              "WHERE parent_id = ANY(%s::uuid[]) ORDER BY position",
                              (parent_ids,)):
            span = store.span_from_row(r)
            out.setdefault(span["parent_id"], []).append(span)
    return out


def proposal_state(conn: psycopg.Connection, root: str, tenant_id: str,
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
    [state], flags = _states(conn, [request], platform)
    if state is None:
        raise LoglineError(records.MALFORMED, flags[0]["detail"], proposal_id)
    return state


def _states(conn: psycopg.Connection, requests: list[dict[str, Any]],
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


PENDING = (
    f"SELECT {SPAN_COLUMNS} FROM ledger.latest_spans WHERE entity_type = 'approval_request' "
    "AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s) "
    "ORDER BY position DESC LIMIT %(limit)s"
)


def approvals_inbox(conn: psycopg.Connection, root: str, tenant_id: str, limit: int = 100,
                    states: tuple[str, ...] | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The tenant's approval requests (platform records only), newest first, and the flags
    of the ones whose state cannot be read (skipped, never failing the rest)."""
    platform = records.platform(conn, root)
    requests = [store.span_from_row(r) for r in conn.execute(PENDING, {
        "tenant": tenant_id, "keys": sorted(platform.keys), "limit": limit})]
    found, flags = _states(conn, requests, platform)
    return [state for state in found if state is not None and
            (states is None or state["state"] in states)], flags


# --- approvals ----------------------------------------------------------------------------
def plan_hash(plan: Any) -> str:
    """What an approver saw: the BLAKE3 of the plan's canonical JSON (RFC 8785)."""
    return blake3.blake3(rfc8785.dumps(plan)).hexdigest()


def approve(conn: psycopg.Connection, key: SigningKey, root: str, principal: Principal,
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
    [state], flags = _states(conn, [request], platform)
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
        span = _decision_span(principal, decision, trace, proposal_id, terms["args"],
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
    store.append(conn, [_span(
        principal, "approval", "approved" if approve else "rejected", action, trace,
        # One id per approver and round: a renewal after expiry is the next round, and two
        # answers racing for one round collide in the ledger.
        id=derive_id(secret, "approval", proposal_id, principal.user_id, len(mine)), seq=0,
        parent_id=proposal_id, status="approved" if approve else "rejected",
        content={**clip_fields({"reason": reason}), "plan_hash": plan_hash(state["plan"]),
                 "roles": sorted(principal.roles)})], key)
    decision = _decide_with_approvals(conn, contract, terms, request, at, platform, agents)
    spans = [_decision_span(principal, decision, trace, proposal_id, terms["args"],
                            contract_span)]
    outcome = Outcome(decision, spans[0]["id"], trace, proposal_id)
    if decision.outcome == "ALLOW":
        job = _job(secret, principal, proposal_id, "execute", terms, trace, plan=state["plan"])
        spans.append(job)
        outcome.job_id = job["id"]
    store.append(conn, spans, key)
    return outcome


def _claimers(conn: psycopg.Connection, proposal_id: str) -> set[str]:
    """Who claimed this proposal's jobs (the agents that planned or ran it)."""
    return {r["owner_id"] for r in conn.execute(
        "SELECT c.owner_id FROM ledger.universal_registry j JOIN ledger.universal_registry c "
        "ON c.parent_id = j.id AND c.entity_type = 'job_claim' "
        "WHERE j.parent_id = %s AND j.entity_type = 'job'", (proposal_id,))}


def _decide_with_approvals(conn: psycopg.Connection, contract: Contract,
                           terms: dict[str, Any], request: dict[str, Any], at: datetime,
                           platform: records.Platform,
                           agents: set[str] | None = None) -> gate.Decision:
    # Only approvals the platform signed, in the request's tenant, count.
    approvals = [gate.Approval(a["owner_id"], frozenset((a["content"] or {}).get("roles", ())),
                               a["status"] == "approved", parse_at(a["at"]))
                 for a in _children(conn, request["id"]) if a["entity_type"] == "approval"
                 and platform.counts(a, request["tenant_id"])]
    # The requester's roles were checked when they proposed; this decides the approvals.
    requester_roles = tuple(contract.actions[terms["action"]].requesters)
    return gate.decide(terms["action"], terms["args"], contract=contract,
                       requester=request["owner_id"], roles=requester_roles, now=at,
                       approvals=approvals,
                       agents=agents if agents is not None else _claimers(conn, request["id"]))


# --- jobs ---------------------------------------------------------------------------------
QUEUED = (
    f"SELECT {SPAN_COLUMNS} FROM ledger.latest_spans j WHERE j.entity_type = 'job' "
    "AND j.tenant_id = %(tenant)s AND j.public_key = ANY(%(keys)s) "
    "AND (%(actions)s::text[] IS NULL OR j.content ->> 'action' = ANY(%(actions)s)) "
    "AND NOT EXISTS (SELECT 1 FROM ledger.universal_registry c "
    "WHERE c.parent_id = j.id AND c.entity_type = 'job_claim') ORDER BY j.position "
    "LIMIT %(limit)s"
)


UNREPORTED = (
    f"SELECT {', '.join(f'j.{chr(34)}{f}{chr(34)}' for f in FIELDS)} "
    "FROM ledger.latest_spans j JOIN ledger.universal_registry c ON c.parent_id = j.id "
    "AND c.entity_type = 'job_claim' AND c.status = 'claimed' "
    "AND c.content ->> 'key_id' = %(key_id)s AND c.public_key = ANY(%(keys)s) "
    "WHERE j.entity_type = 'job' AND j.tenant_id = %(tenant)s "
    "AND j.public_key = ANY(%(keys)s) AND NOT EXISTS ("
    "SELECT 1 FROM ledger.universal_registry r WHERE r.parent_id = j.id "
    "AND r.entity_type = 'job_result') ORDER BY j.position LIMIT %(limit)s"
)


def claim(conn: psycopg.Connection, key: SigningKey, root: str, principal: Principal,
          limit: int, actions: list[str] | None = None, *,
          secret: bytes) -> list[dict[str, Any]]:
    """Hand the agent up to `limit` jobs of its tenant (of the `actions` it performs, when
    it says), oldest first: first the ones this key claimed earlier and has not reported
    (a claim whose answer was lost in transit is delivered again; the agent's journal makes
    sure none runs twice), then queued ones. An execute job passes the gate again here
    (approvals may have expired since): a job that no longer may run is refused for good,
    with the gate's reason, and never handed out. A job whose claim cannot be recorded
    (its claim id is taken) is skipped, refused for good with JOB_CLAIM_FAILED, and the
    other jobs are still handed out."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))",
                 (f"jobs:{principal.tenant_id}",))
    platform = records.platform(conn, root)  # only jobs the platform queued are handed out
    keys = sorted(platform.keys)
    handed = [_handed(store.span_from_row(r)) for r in conn.execute(UNREPORTED, {
        "tenant": principal.tenant_id, "key_id": principal.key_id, "keys": keys,
        "limit": limit})]
    trusted = manifest.trust_set(conn, root)
    picked: list[tuple[dict[str, Any], list[dict[str, Any]], bool]] = []
    for row in conn.execute(QUEUED, {"tenant": principal.tenant_id, "actions": actions,
                                     "keys": keys, "limit": limit * 4}).fetchall():
        if len(handed) + sum(ok for *_, ok in picked) == limit:
            break
        job = store.span_from_row(row)
        spans, ok = _claim_spans(conn, trusted, platform, principal, job, secret)
        picked.append((job, spans, ok))
    if picked:
        try:
            with conn.transaction():
                store.append(conn, [s for _, spans, _ in picked for s in spans], key)
        except LoglineError:  # one of them cannot be recorded: each on its own, then
            picked = [(job, spans, _claim_alone(conn, key, principal, job, spans) and ok)
                      for job, spans, ok in picked]
    return handed + [_handed(job) for job, _, ok in picked if ok]


#: Refusals of a claim span that no retry can cure: its id is taken, or it is invalid.
_CLAIM_FOR_GOOD = ("LEDGER_SEQ_CONFLICT", "LEDGER_DUPLICATE", "LEDGER_OWNERSHIP_CHANGE",
                   "LEDGER_PREV_HASH_MISMATCH", "LEDGER_SEQ_GAP")


def _claim_spans(conn: psycopg.Connection, trusted: frozenset[str],
                 platform: records.Platform, principal: Principal, job: dict[str, Any],
                 secret: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The spans claiming `job` (the gate's decision first, for an execute job) and whether
    the job may be handed out."""
    content = job["content"]
    decision, spans = None, []
    if content["kind"] == "execute":
        request = store.head(conn, content["proposal_id"])
        if request is not None and request["entity_type"] == "approval_request":
            terms = request["content"]
            found = load_contract(conn, terms["contract_id"], trusted, terms["contract_hash"])
            decision = _decide_with_approvals(
                conn, found[0], terms, request, now(), platform) if found else \
                gate.Decision("DENY", "G_NO_CONTRACT", "contract gone", terms["action"])
            spans.append(_decision_span(principal, decision, job["trace_id"], job["id"],
                                        terms["args"], found[1] if found else None))
    refused = decision is not None and decision.outcome != "ALLOW"
    spans.append(_span(principal, "job_claim", "refused" if refused else "claimed",
                       job["this"], job["trace_id"], id=claim_id(secret, job["id"]), seq=0,
                       parent_id=job["id"], status="refused" if refused else "claimed",
                       content={"key_id": principal.key_id,
                                "reason": decision.reason if decision else "G_OK"}))
    return spans, not refused


def _claim_alone(conn: psycopg.Connection, key: SigningKey, principal: Principal,
                 job: dict[str, Any], spans: list[dict[str, Any]]) -> bool:
    """Record one job's claim in a savepoint. When the ledger refuses it for good, the job
    is skipped and refused with JOB_CLAIM_FAILED under an id of its own, so it is never
    offered again and the agent's other jobs are not held up. False: not handed out."""
    try:
        with conn.transaction():
            store.append(conn, spans, key)
        return True
    except LoglineError as exc:
        if exc.code not in _CLAIM_FOR_GOOD and not exc.code.startswith("SPAN_"):
            raise
        store.append(conn, [_span(
            principal, "job_claim", "refused", job["this"], job["trace_id"],
            id=str(uuid.uuid4()), seq=0, parent_id=job["id"], status="refused",
            content={"key_id": principal.key_id, "reason": "JOB_CLAIM_FAILED",
                     "detail": f"{exc.code}: {exc.message}"[:500]})], key)
        return False


def claim_id(secret: bytes, job_id: str) -> str:
    return derive_id(secret, "claim", job_id)


def _handed(job: dict[str, Any]) -> dict[str, Any]:
    content = job["content"]
    return {"id": job["id"], "kind": content["kind"], "action": content["action"],
            "args": content["args"], "contract": content["contract"],
            "plan": content.get("plan"), "proposal_id": content["proposal_id"],
            "trace_id": job["trace_id"]}


def report(conn: psycopg.Connection, key: SigningKey, principal: Principal, job_id: str,
           status: str, output: Any, *, secret: bytes) -> tuple[dict[str, Any], bool]:
    """Record a job's result (once). A retry of the same result is acknowledged again;
    a different one is refused. Returns (the result span, whether it is new)."""
    if status not in RESULT_STATUSES:
        raise LoglineError("JOB_BAD_STATUS", f"status is one of {', '.join(RESULT_STATUSES)}")
    job = store.head(conn, job_id)
    if job is None or job["entity_type"] != "job":
        raise LoglineError("NOT_FOUND", "no job with this id is visible to you")
    claim_span = store.head(conn, claim_id(secret, job_id))
    if claim_span is None:  # claimed before ids were keyed?
        claim_span = store.head(conn, legacy_id("claim", job_id))
    if claim_span is None or claim_span["entity_type"] != "job_claim" or \
            claim_span["status"] != "claimed" or claim_span["owner_id"] != principal.user_id:
        raise LoglineError("JOB_NOT_CLAIMED", "this job is not claimed by you")
    result_id = derive_id(secret, "result", job_id)
    existing = store.head(conn, result_id)
    if existing is None:  # reported before ids were keyed?
        legacy = store.head(conn, legacy_id("result", job_id))
        existing = legacy if legacy and legacy["entity_type"] == "job_result" else None
    if existing is not None:
        if existing["status"] == status and existing["output"] == output:
            return existing, False
        raise LoglineError("JOB_RESULT_CONFLICT", "a different result is already recorded")
    [span] = store.append(conn, [_span(
        principal, "job_result", status, job["this"], job["trace_id"], id=result_id, seq=0,
        parent_id=job_id, status=status, output=output)], key)
    return span, True
