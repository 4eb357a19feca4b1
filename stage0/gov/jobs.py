"""Jobs for governed agents: claim (exactly once, by id derivation), and report a result."""

from __future__ import annotations

import uuid
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.approvals import decide_with_approvals
from stage0.gov.contract_store import load_contract
from stage0.gov.proposals import decision_span, span_of
from stage0.gov.routes_gate import now
from stage0.ledger import manifest, records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.ids import derive_id, legacy_id

RESULT_STATUSES = ("done", "failed", "interrupted")


def claim(conn: Connection, key: SigningKey, root: str, principal: Principal,
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
    conn.execute(q("jobs_lock"), {"name": f"jobs:{principal.tenant_id}"})
    platform = records.platform(conn, root)  # only jobs the platform queued are handed out
    keys = sorted(platform.keys)
    handed = [_handed(store.span_from_row(r)) for r in conn.execute(q("jobs_unreported"), {
        "tenant": principal.tenant_id, "key_id": principal.key_id, "keys": keys,
        "limit": limit})]
    trusted = manifest.trust_set(conn, root)
    picked: list[tuple[dict[str, Any], list[dict[str, Any]], bool]] = []
    for row in conn.execute(q("jobs_queued"), {"tenant": principal.tenant_id, "actions": actions,
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


def _claim_spans(conn: Connection, trusted: frozenset[str],
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
            decision = decide_with_approvals(
                conn, found[0], terms, request, now(), platform) if found else \
                gate.Decision("DENY", "G_NO_CONTRACT", "contract gone", terms["action"])
            spans.append(decision_span(principal, decision, job["trace_id"], job["id"],
                                        terms["args"], found[1] if found else None))
    refused = decision is not None and decision.outcome != "ALLOW"
    spans.append(span_of(principal, "job_claim", "refused" if refused else "claimed",
                       job["this"], job["trace_id"], id=claim_id(secret, job["id"]), seq=0,
                       parent_id=job["id"], status="refused" if refused else "claimed",
                       content={"key_id": principal.key_id,
                                "reason": decision.reason if decision else "G_OK"}))
    return spans, not refused


def _claim_alone(conn: Connection, key: SigningKey, principal: Principal,
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
        store.append(conn, [span_of(
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


def report(conn: Connection, key: SigningKey, principal: Principal, job_id: str,
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
    [span] = store.append(conn, [span_of(
        principal, "job_result", status, job["this"], job["trace_id"], id=result_id, seq=0,
        parent_id=job_id, status=status, output=output)], key)
    return span, True
