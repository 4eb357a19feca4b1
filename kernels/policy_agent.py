"""policy_agent: evaluate active policies on new spans and carry out what they ask.

Each active `policy` span holds sandboxed code whose main(span) returns a list of actions:
  {"run": "run_code", "span_id": F}   -> a scheduled request for function F
  {"emit_span": {...}}                -> that span, owned by the policy, in the span's tenant
  {"count": {"name": N, "labels": {...}}} -> +1 on the rollup span for (policy, N, labels)
A policy sees the new spans of its own tenant (a policy of the system tenant with
metadata.scope = "all_tenants" sees every tenant's), filtered by metadata.on_entity_types.
Progress is a `policy_cursor` span per policy holding the last global append position seen,
appended in the same transaction as the actions: a crash repeats nothing and skips nothing.
Positions become visible in commit order, so a late-committing writer is never jumped over.
Failures become `policy_error` spans; the cursor still moves past the span that failed.

Input: {"batch": 200}. Output: {"policies": n, "evaluated": n, "actions": n, "errors": n}.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000004"
NAME = "policy_agent"

POLICIES = (
    "SELECT r.id::text AS id, r.seq, r.name, r.code, r.owner_id, r.tenant_id, r.metadata "
    "FROM ledger.span_heads h JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'policy' AND h.status = 'active' AND NOT h.is_deleted "
    "ORDER BY h.position"
)
NEW_IN_TENANT = (
    "SELECT id::text AS id, seq, entity_type, who, did, this, at, parent_id::text AS parent_id, "
    "owner_id, tenant_id, visibility, status, name, input, output, error, duration_ms, "
    "trace_id, metadata, position FROM ledger.universal_registry "
    "WHERE tenant_id = %(tenant)s AND position > %(after)s "
    "AND (%(types)s::text[] IS NULL OR entity_type = ANY(%(types)s::text[])) "
    "ORDER BY position LIMIT %(limit)s"
)
NEW_IN_ALL = (
    "SELECT id::text AS id, seq, entity_type, who, did, this, at, parent_id::text AS parent_id, "
    "owner_id, tenant_id, visibility, status, name, input, output, error, duration_ms, "
    "trace_id, metadata, position FROM ledger.universal_registry "
    "WHERE position > %(after)s "
    "AND (%(types)s::text[] IS NULL OR entity_type = ANY(%(types)s::text[])) "
    "ORDER BY position LIMIT %(limit)s"
)
SWEEP_EXPIRED = (
    "SELECT r.id::text AS id, r.seq, r.entity_type, r.who, r.this, r.at, r.owner_id, "
    "r.tenant_id, r.visibility, r.status, r.name, r.trace_id, r.metadata, h.position "
    "FROM ledger.span_heads h JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = ANY(%(types)s::text[]) AND NOT h.is_deleted "
    "AND (%(tenant)s::text IS NULL OR h.tenant_id = %(tenant)s) "
    "AND r.metadata ->> 'ttl_at' <= %(now)s "
    "AND NOT EXISTS (SELECT 1 FROM ledger.universal_registry p WHERE p.parent_id = r.id "
    "AND p.entity_type = 'status_patch' AND p.status = 'archived') "
    "ORDER BY h.position LIMIT %(limit)s"
)
#: What an emit_span may set; ownership, tenant, identity and proofs are the agent's.
EMIT_FIELDS = ("entity_type", "who", "did", "this", "status", "parent_id", "related_to",
               "visibility", "name", "description", "input", "output", "error",
               "duration_ms", "trace_id", "metadata", "content")
#: Kinds a policy may not mint: code, trust, scheduling (use the `run` action) and the
#: kernels' own records. Emitted spans are signed by the operator key, so this matters.
EMIT_FORBIDDEN = ("manifest", "function", "policy", "request", "execution", "policy_cursor",
                  "rollup", "boot_event", "boot_refused", "api_key")
OWN_OUTPUT = ("policy_cursor", "policy_error", "rollup")
DRIVER = """

def logline_policy_batch(spans):
    results = []
    for span in spans:
        try:
            actions = main(span)
            results.append({"ok": True, "actions": actions or []})
        except Exception as exc:
            results.append({"ok": False, "error": repr(exc)[:1000]})
    return results
"""


def cursor_of(ctx, policy):
    cursor_id = ctx.stable_id("policy_cursor", policy["id"])
    head = ctx.head(cursor_id)
    after = (head["metadata"] or {}).get("position", 0) if head else 0
    return cursor_id, head, after


def new_spans(ctx, policy, after, limit):
    meta = policy.get("metadata") or {}
    if meta.get("sweep_entity_types"):
        # Sweep policies look at what is current and expired, not at what is new; the
        # archived status_patch they emit keeps a span from being swept twice.
        global_scope = meta.get("scope") == "all_tenants" and policy["tenant_id"] == "system"
        rows = ctx.sql(SWEEP_EXPIRED, {"types": meta["sweep_entity_types"], "now": ctx.now(),
                                       "tenant": None if global_scope else policy["tenant_id"],
                                       "limit": limit})
        return after, rows, False
    params = {"after": after, "limit": limit, "types": meta.get("on_entity_types"),
              "tenant": policy["tenant_id"]}
    global_scope = meta.get("scope") == "all_tenants" and policy["tenant_id"] == "system"
    rows = ctx.sql(NEW_IN_ALL if global_scope else NEW_IN_TENANT, params)
    # The cursor moves past everything read, including what the policy does not look at, so a
    # page full of the agent's own output can never stall it.
    last = rows[-1]["position"] if rows else after
    return last, [r for r in rows if r["entity_type"] not in OWN_OUTPUT
                  and (r.get("metadata") or {}).get("policy_id") != policy["id"]], \
        len(rows) >= limit


def emitted(ctx, policy, span, spec, index):
    """The span an emit_span action asks for, or None with the reason it is refused.
    Its id is derived from (policy, span version, action index) at seq 0, so the same action
    can never be applied twice, even by two agents racing on a sweep."""
    unknown = [k for k in spec if k not in EMIT_FIELDS]
    if unknown:
        return None, "emit_span may not set " + ", ".join(sorted(unknown))
    if not isinstance(spec.get("entity_type"), str) or spec["entity_type"] in EMIT_FORBIDDEN:
        return None, "emit_span needs an entity_type other than " + ", ".join(EMIT_FORBIDDEN)
    out = dict(spec)
    out["id"] = ctx.stable_id("emit", policy["id"], span["id"], span["seq"], index)
    out["seq"] = 0
    out["who"] = out.get("who") or policy.get("name") or "policy"
    out["this"] = out.get("this") or span["id"]
    out["did"] = out.get("did") or "emitted"
    out["owner_id"] = "policy:" + (policy.get("name") or policy["id"])
    out["tenant_id"] = span["tenant_id"]
    out["visibility"] = out.get("visibility") or "tenant"
    out["trace_id"] = out.get("trace_id") or span.get("trace_id")
    out["parent_id"] = out.get("parent_id") or span["id"]
    out["metadata"] = dict(out.get("metadata") or {}, policy_id=policy["id"])
    problem = ctx.check_span(out)
    if problem:
        return None, problem
    return out, None


def scheduled_request(policy, span, action):
    return {
        "entity_type": "request", "who": policy.get("name") or "policy", "did": "scheduled",
        "this": action["span_id"], "parent_id": action["span_id"],
        "owner_id": "policy:" + (policy.get("name") or policy["id"]),
        "tenant_id": span["tenant_id"], "visibility": "tenant", "status": "scheduled",
        "input": action.get("input"), "trace_id": span.get("trace_id"),
        "metadata": {"policy_id": policy["id"], "caused_by": span["id"],
                     "idempotency_key": "policy:" + policy["id"] + ":" + span["id"] + ":"
                     + action["span_id"]},
    }


def rollups(ctx, policy, counts):
    """One next version per rollup key, carrying the running count."""
    out = []
    for key in sorted(counts):
        name, tenant, labels, n = counts[key]
        rollup_id = ctx.stable_id("rollup", policy["id"], key)
        head = ctx.head(rollup_id)
        total = ((head or {}).get("metadata") or {}).get("count", 0) + n
        out.append(chained(head, {
            "id": rollup_id, "entity_type": "rollup", "who": policy.get("name") or "policy",
            "did": "counted", "this": name, "owner_id": "policy:" + (policy.get("name") or
                                                                      policy["id"]),
            "tenant_id": tenant, "visibility": "tenant", "status": "open",
            "metadata": {"policy_id": policy["id"], "name": name, "labels": labels,
                         "count": total},
        }))
    return out


def chained(head, span):
    """Pin `span` as the next version of `head`: a concurrent agent's append then conflicts
    and its whole transaction (actions included) rolls back, instead of both succeeding."""
    span["seq"] = head["seq"] + 1 if head else 0
    if head:
        span["prev_hash"] = head["curr_hash"]
    return span


def error_span(policy, span, message, cause="POLICY_ERROR"):
    return {
        "entity_type": "policy_error", "who": NAME, "did": "failed",
        "this": policy.get("name") or policy["id"], "parent_id": policy["id"],
        "related_to": [span["id"]], "owner_id": "policy:" + (policy.get("name") or policy["id"]),
        "tenant_id": span["tenant_id"], "visibility": "tenant", "status": "error",
        "error": {"code": "POLICY_ERROR", "message": message[:2000]},
        "metadata": {"policy_id": policy["id"], "cause": cause},
    }


def one_by_one(ctx, policy, span, timeout):
    run = ctx.sandbox(policy["code"] or "", span, timeout, tenant=policy["tenant_id"])
    if run["ok"]:
        return {"ok": True, "actions": run["output"] or []}
    error = run.get("error") or {}
    return {"ok": False, "code": error.get("code"), "error": str(error.get("message"))}


def actions_for(ctx, policy, span, actions, counts):
    spans = []
    if not isinstance(actions, list):
        return [error_span(policy, span, "policy returned " + repr(actions)[:200]
                           + ", not a list of actions")]
    for action in actions:
        if not isinstance(action, dict):
            spans.append(error_span(policy, span, "action is not an object: "
                                    + repr(action)[:200]))
        elif action.get("run") == "run_code" and action.get("span_id"):
            spans.append(scheduled_request(policy, span, action))
        elif isinstance(action.get("emit_span"), dict):
            out, problem = emitted(ctx, policy, span, action["emit_span"], len(spans))
            spans.append(out or error_span(policy, span, problem))
        elif isinstance(action.get("count"), dict) and action["count"].get("name"):
            labels = action["count"].get("labels") or {}
            key = action["count"]["name"] + "|" + span["tenant_id"] + "|" + ctx.json_dumps(labels)
            prev = counts.get(key)
            counts[key] = (action["count"]["name"], span["tenant_id"], labels,
                           (prev[3] if prev else 0) + 1)
        else:
            spans.append(error_span(policy, span, "unknown action " + repr(action)[:200]))
    return spans


def evaluate(ctx, policy, batch, cap_ms):
    """Run the policy on its new spans and return (evaluated, spans to append, errors).
    Appends nothing: see main()."""
    cursor_id, cursor, after = cursor_of(ctx, policy)
    last, spans, full = new_spans(ctx, policy, after, batch)
    timeout = min(int((policy.get("metadata") or {}).get("timeout_ms", 3000)), cap_ms)
    results = []
    if spans:
        run = ctx.sandbox((policy["code"] or "") + DRIVER, spans, timeout,
                          "logline_policy_batch", tenant=policy["tenant_id"])
        if run["ok"] and isinstance(run["output"], list) and len(run["output"]) == len(spans):
            results = run["output"]
        else:
            # One span hit a limit or a refusal: evaluate one by one so only it fails.
            results = [one_by_one(ctx, policy, span, timeout) for span in spans]
    out, counts, errors = [], {}, 0
    for span, result in zip(spans, results, strict=True):
        if result.get("ok"):
            out.extend(actions_for(ctx, policy, span, result.get("actions"), counts))
        else:
            errors += 1
            out.append(error_span(policy, span, str(result.get("error")),
                                  result.get("code") or "POLICY_RAISED"))
    out.extend(rollups(ctx, policy, counts))
    if last != after:
        out.append(chained(cursor, {
            "id": cursor_id, "entity_type": "policy_cursor", "who": NAME, "did": "advanced",
            "this": policy.get("name") or policy["id"], "parent_id": policy["id"],
            "owner_id": policy["owner_id"], "tenant_id": policy["tenant_id"],
            "visibility": "private", "status": "active",
            "metadata": {"policy_id": policy["id"], "position": last},
        }))
    return len(spans), out, errors, full


def main(ctx):
    """Evaluate every policy first, then record each policy's output in its own savepoint.
    Recording takes the ledger's append lock until this boot commits; doing it after all the
    sandboxed policy code has run means no policy's code ever runs while writers wait."""
    batch = int((ctx.input or {}).get("batch", 200))
    cap_ms = int((ctx.manifest.get("policy") or {}).get("timeout_ms", 30000))
    plans = []
    for policy in ctx.sql(POLICIES):
        try:
            ctx.verified(policy["id"])  # hash, signature, trusted key: else it does not run
            plans.append((policy, evaluate(ctx, policy, batch, cap_ms)))
        except Exception as exc:
            ctx.log("policy_unverified", policy_id=policy["id"], reason=str(exc)[:300])
    policies = evaluated_total = actions_total = errors_total = 0
    more = False
    for policy, (evaluated, out, errors, full) in plans:
        try:
            if out:
                with ctx.transaction():
                    ctx.append(out)
        except Exception as exc:  # e.g. another agent advanced this cursor first: retry later
            ctx.log("policy_skipped", policy_id=policy["id"], reason=str(exc)[:300])
            continue
        actions = len(out)
        more = more or full
        policies += 1
        evaluated_total += evaluated
        actions_total += actions
        errors_total += errors
    return {"policies": policies, "evaluated": evaluated_total, "actions": actions_total,
            "errors": errors_total, "more": more}
