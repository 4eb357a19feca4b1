"""run_code: run one user function span in the sandbox and record its execution.

Input: {"span_id": "<function id>", "input": <optional JSON, default the function's input>,
        "request": <optional request span claimed by request_worker>}
Output: the execution span (or the policy_violation span when the tenant is over its quota).

The function must verify (hash, signature, trusted key) and belong to the caller's tenant (or
be public). The per-tenant daily quota is checked before running and again, under the ledger's
append lock, right before the execution is recorded, so two workers can never both take the
last slot. A request signed by the manifest's override key with metadata.force = true bypasses
the quota. A request is completed (its next seq: complete | error | denied) in the same
transaction as its execution.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000001"
NAME = "run_code"

COUNT_TODAY = (
    "SELECT count(*) AS n FROM ledger.universal_registry "
    "WHERE entity_type = 'execution' AND tenant_id = %(tenant)s "
    "AND at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
)
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")


def next_version(span, status, metadata):
    """The next seq of `span`, chained explicitly to the version we hold."""
    out = {k: v for k, v in span.items() if k not in CHAIN_FIELDS}
    out["seq"] = span["seq"] + 1
    out["prev_hash"] = span["curr_hash"]
    out["status"] = status
    out["metadata"] = dict(span.get("metadata") or {}, **metadata)
    return out


def quota(ctx, tenant, request):
    throttle = ctx.manifest.get("throttle") or {}
    limit = throttle.get("per_tenant_daily_exec_limit", 100)
    override = ctx.manifest.get("override_pubkey_hex")
    forced = bool(request and override and request.get("public_key") == override
                  and (request.get("metadata") or {}).get("force") is True)
    return limit, forced


def over_quota(ctx, tenant, limit):
    return ctx.sql_one(COUNT_TODAY, {"tenant": tenant})["n"] >= limit


def violation(ctx, function, request, user, tenant, limit):
    span = {
        "entity_type": "policy_violation", "who": NAME, "did": "refused",
        "this": "per_tenant_daily_exec_limit", "parent_id": function["id"],
        "related_to": [request["id"]] if request else None, "owner_id": user,
        "tenant_id": tenant, "visibility": "tenant", "status": "over_quota",
        "trace_id": ctx.trace_id, "metadata": {"limit": limit, "function_id": function["id"]},
    }
    spans = [span]
    if request:
        spans.append(next_version(request, "denied", {"reason": "QUOTA_EXCEEDED"}))
    return ctx.append(spans)[0]


def main(ctx):
    args = ctx.input or {}
    request = args.get("request")
    user = request["owner_id"] if request else ctx.identity["user_id"]
    tenant = request["tenant_id"] if request else ctx.identity["tenant_id"]
    function = ctx.verified(args["span_id"])
    if function["entity_type"] != "function":
        raise ValueError("span " + function["id"] + " is not a function")
    if function["tenant_id"] != tenant and function["visibility"] != "public":
        raise ValueError("function " + function["id"] + " belongs to another tenant")
    trace_id = (request or {}).get("trace_id") or ctx.trace_id
    limit, forced = quota(ctx, tenant, request)
    if not forced and over_quota(ctx, tenant, limit):
        return violation(ctx, function, request, user, tenant, limit)

    payload = args.get("input")
    if payload is None:
        payload = (request or {}).get("input")
    if payload is None:
        payload = function.get("input")
    policy = ctx.manifest.get("policy") or {}
    slow_ms = policy.get("slow_ms", 5000)
    result = ctx.sandbox(function["code"] or "", payload, policy.get("timeout_ms", 30000))

    ctx.lock_appends()
    if not forced and over_quota(ctx, tenant, limit):
        return violation(ctx, function, request, user, tenant, limit)
    execution = {
        "id": ctx.new_id(), "entity_type": "execution", "who": NAME, "did": "executed",
        "this": function.get("name") or function["id"], "parent_id": function["id"],
        "related_to": [request["id"]] if request else None, "owner_id": user,
        "tenant_id": tenant, "visibility": (request or {}).get("visibility") or "tenant",
        "status": "complete" if result["ok"] else "error", "input": payload,
        "output": result["output"] if result["ok"] else None, "error": result["error"],
        "duration_ms": result["duration_ms"], "trace_id": trace_id,
        "metadata": {"function_seq": function["seq"], "function_hash": function["curr_hash"],
                     "cpu_ms": result.get("cpu_ms"), "stdout": result.get("stdout") or None,
                     "kernel": ctx.kernel},
    }
    spans = [execution]
    if result["duration_ms"] > slow_ms:
        spans.append({
            "entity_type": "status_patch", "who": NAME, "did": "labelled", "this": "slow",
            "parent_id": execution["id"], "owner_id": user, "tenant_id": tenant,
            "visibility": execution["visibility"], "status": "slow", "trace_id": trace_id,
            "metadata": {"duration_ms": result["duration_ms"], "slow_ms": slow_ms},
        })
    if request:
        spans.append(next_version(request, execution["status"],
                                  {"execution_id": execution["id"]}))
    return ctx.append(spans)[0]
