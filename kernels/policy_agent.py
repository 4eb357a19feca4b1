"""policy_agent: evaluate active policies on new spans and carry out what they ask.

Each active `policy` span holds sandboxed code whose main(span) returns a list of actions:
  {"run": "run_code", "span_id": F}   -> a scheduled request for function F
  {"emit_span": {...}}                -> that span, owned by the policy, in the span's tenant
  {"count": {"name": N, "labels": {...}}} -> +1 on the rollup span for (policy, N, labels)
A policy sees the new spans of its own tenant (a platform policy with metadata.scope =
"all_tenants" sees every tenant's), filtered by metadata.on_entity_types.

Who may ask for what. A *platform policy* is one of tenant `system` signed by a platform key
(the root key, or a key the manifest trusts with role `platform`). Any other policy is a
tenant policy, and what it asks for stays in its tenant: it emits only kinds that are not
platform kinds (no job, approval, execution, ...: those are records of what the platform
decided), only into its own tenant and naming only its own tenant's spans, and runs only
its own tenant's functions. No policy at all emits the kinds the platform never takes from a
policy (code, trust, scheduling, authorisation). A refused action becomes a `policy_error`
whose metadata.cause names the reason; the policy's other actions are carried out.

Budget. Policy code runs inside this kernel's transaction and the worker's loop, so its time
is bounded per round (one boot): a policy runs once per round, on one batch of new spans,
with min(metadata.timeout_ms, manifest policy.timeout_ms) of sandbox time. A batch that fails
at a limit is split in halves run with what is left of that budget, never re-run span by span
at the full timeout; spans the budget no longer covers get a policy_error
(POLICY_BUDGET_EXHAUSTED). A tenant's policies share policy.tenant_round_ms per round and all
policies policy.round_ms; a policy that does not fit waits for the next round, and a round
starts with the policies whose cursors are oldest, so every policy runs within a few rounds.
Each cursor records the sandbox time its policy used (metadata.spent_ms).

Progress is a `policy_cursor` span per policy holding the last global append position seen,
appended in the same transaction as the actions: a crash repeats nothing and skips nothing.
Positions become visible in commit order, so a late-committing writer is never jumped over.
The ids of cursors, emitted spans and rollups are derived with the platform's id secret
(ctx.derived_id), so nobody can take one first; an action that still cannot be appended
becomes a policy_error (POLICY_APPEND_FAILED) and the others, and the cursor, go ahead.

Input: {"batch": 200}. Output: {"policies", "evaluated", "actions", "errors", "deferred",
"spent_ms": {tenant: ms}, "more"}.
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
    "AND p.entity_type = 'status_patch' AND p.status = 'archived' "
    "AND p.tenant_id = r.tenant_id AND p.public_key = ANY(%(keys)s::text[])) "
    "ORDER BY h.position LIMIT %(limit)s"
)
#: What an emit_span may set; ownership, tenant, identity and proofs are the agent's.
EMIT_FIELDS = ("entity_type", "who", "did", "this", "status", "parent_id", "related_to",
               "visibility", "name", "description", "input", "output", "error",
               "duration_ms", "trace_id", "metadata", "content")
OWN_OUTPUT = ("policy_cursor", "policy_error", "rollup")
#: Sandbox time per round: a policy's own default and the manifest's defaults (policy.*).
DEFAULT_TIMEOUT_MS = 3000
DEFAULT_CAP_MS = 30000
DEFAULT_TENANT_ROUND_MS = 10000
DEFAULT_ROUND_MS = 60000
#: Below this, what is left of a budget cannot run a batch (a run costs a few ms to start).
MIN_RUN_MS = 50
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


# --- reading: which policies, from where ---------------------------------------------------
def limits_of(manifest):
    policy = manifest.get("policy") or {}
    return {"cap": int(policy.get("timeout_ms", DEFAULT_CAP_MS)),
            "tenant": int(policy.get("tenant_round_ms", DEFAULT_TENANT_ROUND_MS)),
            "round": int(policy.get("round_ms", DEFAULT_ROUND_MS))}


def config_of(policy):
    """A policy's metadata as the agent uses it, or ValueError naming what is malformed: a
    writer's policy must never fail the round (a bad parameter would abort its transaction)
    for every other policy."""
    meta = policy.get("metadata")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    for key in ("on_entity_types", "sweep_entity_types"):
        kinds = meta.get(key)
        if kinds is not None and (not isinstance(kinds, list)
                                  or not all(isinstance(k, str) for k in kinds)):
            raise ValueError(key + " is not a list of kinds")
    timeout = meta.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise ValueError("timeout_ms is not an integer")
    return meta


def budget_of(policy, limits):
    """The sandbox time one round gives this policy (never more than its tenant's or the
    round's whole budget, so it always fits in a fresh one)."""
    own = policy["metadata"].get("timeout_ms", DEFAULT_TIMEOUT_MS)
    return max(1, min(own, limits["cap"], limits["tenant"], limits["round"]))


def legacy_cursor(ctx, policy):
    """The cursor an agent from before keyed ids kept under the public uuid5 id, when it is
    one: of this policy, in its tenant, owned by the policy's owner and verified. Only the
    owner can append as the owner, and they control the policy anyway, so nobody else can
    have put one there; a policy carries on from it instead of starting over."""
    legacy_id = ctx.stable_id("policy_cursor", policy["id"])
    head = ctx.head(legacy_id)
    if head is None or head["entity_type"] != "policy_cursor" \
            or head["tenant_id"] != policy["tenant_id"] \
            or head["owner_id"] != policy["owner_id"] or head["parent_id"] != policy["id"] \
            or (head.get("metadata") or {}).get("policy_id") != policy["id"]:
        return None
    try:
        ctx.verified(legacy_id)
    except Exception:
        return None
    return head


def cursor_of(ctx, policy):
    """(cursor id, its head or None, the position after which spans are new, when the cursor
    was last advanced: rounds start with the policies waiting longest)."""
    cursor_id = ctx.derived_id("policy_cursor", policy["id"])
    head = ctx.head(cursor_id)
    seen = head or legacy_cursor(ctx, policy)
    after = (seen["metadata"] or {}).get("position", 0) if seen else 0
    return {"id": cursor_id, "head": head, "after": after,
            "waited_since": seen["at"] if seen else ""}


def global_scope(policy):
    meta = policy.get("metadata") or {}
    return meta.get("scope") == "all_tenants" and policy["platform"]


def new_spans(ctx, policy, after, limit):
    meta = policy.get("metadata") or {}
    if meta.get("sweep_entity_types"):
        # Sweep policies look at what is current and expired, not at what is new; the
        # archived status_patch they emit keeps a span from being swept twice.
        # Only the platform's own archive marks count: a tenant's status_patch (or another
        # tenant's) pointing at a span cannot keep it from being swept.
        rows = ctx.sql(SWEEP_EXPIRED, {"types": meta["sweep_entity_types"], "now": ctx.now(),
                                       "keys": sorted(ctx.platform_keys),
                                       "tenant": None if global_scope(policy)
                                       else policy["tenant_id"], "limit": limit})
        return after, rows, False
    params = {"after": after, "limit": limit, "types": meta.get("on_entity_types"),
              "tenant": policy["tenant_id"]}
    rows = ctx.sql(NEW_IN_ALL if global_scope(policy) else NEW_IN_TENANT, params)
    # The cursor moves past everything read, including what the policy does not look at, so a
    # page full of the agent's own output can never stall it.
    last = rows[-1]["position"] if rows else after
    return last, [r for r in rows if r["entity_type"] not in OWN_OUTPUT
                  and (r.get("metadata") or {}).get("policy_id") != policy["id"]], \
        len(rows) >= limit


# --- running the policy's code within its budget -------------------------------------------
def run_batch(ctx, policy, spans, budget):
    """Evaluate `spans` with at most `budget` ms of sandbox time in all. Returns (one result
    per span, ms used). A batch that fails is split in halves, each run with what is left,
    until a failing span is alone; what the budget no longer covers fails as exhausted. Code
    that does not compile fails every span at once (no input can change that)."""
    results = [None] * len(spans)
    pending = [(0, len(spans), None)]
    used = 0
    while pending:
        lo, hi, failed = pending.pop()
        left = budget - used
        if used and left < MIN_RUN_MS:
            for i in range(lo, hi):
                results[i] = exhausted(budget, failed)
            continue
        run = ctx.sandbox((policy["code"] or "") + DRIVER, spans[lo:hi], left,
                          "logline_policy_batch", tenant=policy["tenant_id"])
        used = used + max(int(run.get("duration_ms") or 0), 1)
        output = run.get("output")
        error = run.get("error") or {"code": "POLICY_BAD_OUTPUT", "message": "the batch "
                                     "driver returned " + repr(output)[:200]}
        if run["ok"] and isinstance(output, list) and len(output) == hi - lo:
            for i in range(lo, hi):
                results[i] = output[i - lo]
        elif hi - lo == 1 or error.get("code") == "SANDBOX_COMPILE_ERROR":
            for i in range(lo, hi):
                results[i] = {"ok": False, "code": error.get("code"),
                              "error": str(error.get("message"))}
        else:
            mid = (lo + hi) // 2
            failed = {"size": hi - lo, "code": error.get("code"), "message": error.get("message")}
            pending.append((mid, hi, failed))
            pending.append((lo, mid, failed))
    return results, used


def exhausted(budget, failed):
    why = ""
    if failed:
        why = " (a batch of " + str(failed["size"]) + " spans it was in failed: " + \
            str(failed["code"]) + ": " + str(failed["message"])[:500] + ")"
    return {"ok": False, "code": "POLICY_BUDGET_EXHAUSTED",
            "error": "not evaluated: the policy's budget of " + str(budget) + " ms for this "
            "round was spent" + why}


# --- what the policy asked for ---------------------------------------------------------------
def refusal(cause, message):
    return {"cause": cause, "message": message}


def foreign_reference(ctx, policy, span, out):
    """A span id `out` names (parent_id, related_to) that is not a span of the policy's own
    tenant, or None. `out` has passed check_span, so these are well-formed ids."""
    for ref in [out.get("parent_id")] + list(out.get("related_to") or []):
        if ref is None or ref == span["id"]:
            continue
        head = ctx.head(ref)
        if head is None or head["tenant_id"] != policy["tenant_id"]:
            return ref
    return None


def kind_refusal(ctx, policy, span, spec):
    """Why this policy may not emit a span of this kind (a refusal), or None."""
    unknown = [k for k in spec if k not in EMIT_FIELDS]
    if unknown:
        return refusal("POLICY_ACTION_INVALID", "emit_span may not set " +
                       ", ".join(sorted(unknown)))
    kind = spec.get("entity_type")
    problem = ctx.kind_problem(kind)
    if problem:
        return refusal("POLICY_KIND_INVALID", "emit_span needs a well-formed entity_type: " +
                       problem)
    if kind in ctx.never_emitted:
        return refusal("POLICY_KIND_NEVER_EMITTED", "no policy emits '" + kind + "' (code, "
                       "trust, scheduling and authorisation are not a policy's to record)")
    if not policy["platform"] and kind in ctx.platform_kinds:
        return refusal("POLICY_KIND_RESERVED", "'" + kind + "' is a platform kind: only a "
                       "platform policy (tenant system, platform key) emits it")
    if not policy["platform"] and span["tenant_id"] != policy["tenant_id"]:
        return refusal("POLICY_CROSS_TENANT", "a policy of tenant " + policy["tenant_id"] +
                       " emits into its own tenant only, not " + str(span["tenant_id"]))
    return None


def emitted(ctx, policy, span, spec, index):
    """The span an emit_span action asks for, or None with the refusal.
    Its id is derived from (policy, span version, action index) at seq 0, so the same action
    can never be applied twice, even by two agents racing on a sweep."""
    refused = kind_refusal(ctx, policy, span, spec)
    if refused:
        return None, refused
    out = dict(spec)
    out["id"] = ctx.derived_id("emit", policy["id"], span["id"], span["seq"], index)
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
        return None, refusal("POLICY_ACTION_INVALID", problem)
    foreign = None if policy["platform"] else foreign_reference(ctx, policy, span, out)
    if foreign:
        return None, refusal("POLICY_CROSS_TENANT", "emit_span names " + foreign + ", which "
                             "is not a span of tenant " + policy["tenant_id"])
    return out, None


def requested(ctx, policy, span, action):
    """The scheduled request a run action asks for, or None with the refusal: a tenant
    policy runs its own tenant's functions only."""
    out = scheduled_request(ctx, policy, span, action)
    problem = ctx.check_span(dict(out, id=ctx.new_id()))
    if problem:
        return None, refusal("POLICY_ACTION_INVALID", problem)
    if policy["platform"]:
        return out, None
    fn = ctx.head(out["parent_id"])
    if fn is None or fn["entity_type"] != "function" or fn["tenant_id"] != policy["tenant_id"]:
        return None, refusal("POLICY_RUN_FOREIGN", "a policy of tenant " + policy["tenant_id"]
                             + " runs only its own tenant's functions, not " + out["parent_id"])
    return out, None


def scheduled_request(ctx, policy, span, action):
    return {
        "entity_type": "request", "who": policy.get("name") or "policy", "did": "scheduled",
        "this": str(action["span_id"]), "parent_id": str(action["span_id"]),
        "owner_id": "policy:" + (policy.get("name") or policy["id"]),
        "tenant_id": span["tenant_id"], "visibility": "tenant", "status": "scheduled",
        "input": action.get("input"), "trace_id": span.get("trace_id"),
        "metadata": {"policy_id": policy["id"], "caused_by": span["id"],
                     "idempotency_key": "policy:" + ctx.derived_id(
                         "run", policy["id"], span["id"], str(action["span_id"]))},
    }


def rollups(ctx, policy, counts):
    """One next version per rollup key, carrying the running count."""
    out = []
    for key in sorted(counts):
        name, tenant, labels, n = counts[key]
        rollup_id = ctx.derived_id("rollup", policy["id"], key)
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


def actions_for(ctx, policy, span, actions, counts):
    """(span that caused it, span to append) for each action; refusals are policy_errors."""
    spans = []

    def fail(cause, message):
        spans.append((span, error_span(policy, span, message, cause)))

    def keep(out, refused):
        if refused:
            fail(refused["cause"], refused["message"])
        else:
            spans.append((span, out))

    if not isinstance(actions, list):
        fail("POLICY_BAD_OUTPUT", "policy returned " + repr(actions)[:200] +
             ", not a list of actions")
        return spans
    for action in actions:
        if not isinstance(action, dict):
            fail("POLICY_BAD_OUTPUT", "action is not an object: " + repr(action)[:200])
        elif action.get("run") == "run_code" and action.get("span_id"):
            keep(*requested(ctx, policy, span, action))
        elif isinstance(action.get("emit_span"), dict):
            keep(*emitted(ctx, policy, span, action["emit_span"], len(spans)))
        elif isinstance(action.get("count"), dict) and action["count"].get("name"):
            labels = action["count"].get("labels") or {}
            if not isinstance(action["count"]["name"], str) or not isinstance(labels, dict):
                fail("POLICY_BAD_OUTPUT", "count needs a name (text) and labels (an object): "
                     + repr(action)[:200])
                continue
            key = action["count"]["name"] + "|" + str(span["tenant_id"]) + "|" + \
                ctx.json_dumps(labels)
            prev = counts.get(key)
            counts[key] = (action["count"]["name"], span["tenant_id"], labels,
                           (prev[3] if prev else 0) + 1)
        else:
            fail("POLICY_BAD_OUTPUT", "unknown action " + repr(action)[:200])
    return spans


def evaluate(ctx, policy, cursor, read, budget):
    """Run the policy on the spans `read` gave and return what to record: its actions as
    (cause, span) pairs, its bookkeeping (rollups, the cursor), errors and ms used.
    Appends nothing: see main()."""
    last, spans = read[0], read[1]
    results, used = run_batch(ctx, policy, spans, budget) if spans else ([], 0)
    out, counts, errors = [], {}, 0
    for span, result in zip(spans, results, strict=True):
        if result.get("ok"):
            out.extend(actions_for(ctx, policy, span, result.get("actions"), counts))
        else:
            errors += 1
            out.append((span, error_span(policy, span, str(result.get("error")),
                                         result.get("code") or "POLICY_RAISED")))
    bookkeeping = rollups(ctx, policy, counts)
    if last != cursor["after"]:
        bookkeeping.append(chained(cursor["head"], {
            "id": cursor["id"], "entity_type": "policy_cursor", "who": NAME, "did": "advanced",
            "this": policy.get("name") or policy["id"], "parent_id": policy["id"],
            "owner_id": policy["owner_id"], "tenant_id": policy["tenant_id"],
            "visibility": "private", "status": "active",
            "metadata": {"policy_id": policy["id"], "position": last, "spent_ms": used,
                         "evaluated": len(spans)},
        }))
    return {"evaluated": len(spans), "out": out, "bookkeeping": bookkeeping,
            "errors": errors, "spent": used}


# --- recording ---------------------------------------------------------------------------
def record(ctx, policy, plan):
    """Append a policy's output in one savepoint; when the ledger refuses it, each action
    alone, an action that cannot be appended (its id taken, say) replaced by a policy_error,
    then the bookkeeping. If the bookkeeping fails (another agent advanced this cursor
    first), nothing of this policy is recorded. Returns (spans appended, errors added)."""
    spans = [s for _, s in plan["out"]]
    with ctx.transaction():
        try:
            with ctx.transaction():
                ctx.append(spans + plan["bookkeeping"])
            return len(spans) + len(plan["bookkeeping"]), 0
        except Exception:
            pass  # one by one, below
        added = failed = 0
        for cause, span in plan["out"]:
            try:
                with ctx.transaction():
                    ctx.append([span])
                added += 1
            except Exception as exc:
                if applied_before(ctx, policy, span):
                    continue  # another agent applied this very action first (a sweep race)
                failed += 1
                ctx.append([error_span(policy, cause, "could not append the " +
                                       span["entity_type"] + " this policy asked for: " +
                                       str(exc)[:1000], "POLICY_APPEND_FAILED")])
                added += 1
        if plan["bookkeeping"]:
            ctx.append(plan["bookkeeping"])
        return added + len(plan["bookkeeping"]), failed


def applied_before(ctx, policy, span):
    """Whether the ledger already holds this action of this policy: its id is derived with
    the platform's secret, so a span there of this policy is the same action, applied by
    another agent."""
    if not span.get("id"):
        return False
    head = ctx.head(span["id"])
    return head is not None and head["entity_type"] == span["entity_type"] \
        and (head.get("metadata") or {}).get("policy_id") == policy["id"]


def candidates(ctx):
    """Every verified active policy with its cursor and new spans, the longest-waiting
    first."""
    found = []
    for policy in ctx.sql(POLICIES):
        try:
            head = ctx.verified(policy["id"])  # hash, signature, trusted key: else no run
        except Exception as exc:
            ctx.log("policy_unverified", policy_id=policy["id"], reason=str(exc)[:300])
            continue
        try:
            policy["metadata"] = config_of(policy)
        except ValueError as exc:
            ctx.log("policy_invalid", policy_id=policy["id"], reason=str(exc)[:300])
            continue
        policy["platform"] = policy["tenant_id"] == "system" \
            and head["public_key"] in ctx.platform_keys
        cursor = cursor_of(ctx, policy)
        found.append((cursor["waited_since"], policy, cursor))
    found.sort(key=lambda c: c[0])
    return [(policy, cursor) for _, policy, cursor in found]


def main(ctx):
    """Evaluate the policies within the round's budgets, then record each policy's output in
    its own savepoint. Recording takes the ledger's append lock until this boot commits;
    doing it after all the sandboxed policy code has run means no policy's code ever runs
    while writers wait."""
    batch = int((ctx.input or {}).get("batch", 200))
    limits = limits_of(ctx.manifest)
    # This transaction is idle while policy code runs: a whole round, plus one overrun.
    ctx.allow_idle_ms(limits["round"] + limits["cap"] + 60000)
    spent, round_used, deferred, more = {}, 0, 0, False
    plans = []
    for policy, cursor in candidates(ctx):
        tenant, budget = str(policy["tenant_id"]), budget_of(policy, limits)
        try:
            with ctx.transaction():  # whatever goes wrong, the round goes on without it
                read = new_spans(ctx, policy, cursor["after"], batch)
                if read[1] and (spent.get(tenant, 0) + budget > limits["tenant"]
                                or round_used + budget > limits["round"]):
                    deferred += 1  # its turn comes first next round: its cursor is oldest
                    continue
                plan = evaluate(ctx, policy, cursor, read, budget)
        except Exception as exc:
            ctx.log("policy_failed", policy_id=policy["id"], reason=str(exc)[:300])
            plan = {"spent": budget}  # as if it used all it may have (its code may have run)
            read = None
        spent[tenant] = spent.get(tenant, 0) + plan["spent"]
        round_used += plan["spent"]
        if read is not None:
            plans.append((policy, plan, read[2]))
    policies = evaluated_total = actions_total = errors_total = 0
    for policy, plan, full in plans:
        try:
            if plan["out"] or plan["bookkeeping"]:
                actions, failed = record(ctx, policy, plan)
            else:
                actions, failed = 0, 0
        except Exception as exc:  # e.g. another agent advanced this cursor first: retry later
            ctx.log("policy_skipped", policy_id=policy["id"], reason=str(exc)[:300])
            continue
        more = more or full
        policies += 1
        evaluated_total += plan["evaluated"]
        actions_total += actions
        errors_total += plan["errors"] + failed
    return {"policies": policies, "evaluated": evaluated_total, "actions": actions_total,
            "errors": errors_total, "deferred": deferred, "spent_ms": spent,
            "more": more or deferred > 0}
