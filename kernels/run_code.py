"""run_code: run user function spans in the sandbox and record their executions.

Input, one run:   {"span_id": "<function id>", "input": <optional JSON>}
Input, a batch:   {"requests": [<request spans claimed by request_worker>]}
Output: the execution span (or policy_violation span) of a single run; for a batch,
{"results": [{"request_id", "span_id", "entity_type", "status", "reason"}]} (reason: the
error code of a failed run or a refusal, e.g. QUOTA_EXCEEDED).

Each execution carries the manifest's policy.slow_ms in force (metadata.slow_ms): the slow_exec
policy labels the ones that took longer, so there is one threshold.

Each function must verify (hash, signature, trusted key) and belong to the caller's tenant (or
be public). The per-tenant daily quota (the manifest's throttle.tenant_limits[tenant], else
throttle.per_tenant_daily_exec_limit) is checked before running and again, under the ledger's
append lock, right before anything is recorded, so two workers can never both take the last
slot. A request signed by the manifest's override key with metadata.force = true bypasses the
quota. Each request is completed (its next seq: complete | error | denied) in the same
transaction as its execution; a batch is recorded in one append.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000001"
NAME = "run_code"

COUNT_TODAY = (
    "SELECT coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s "
    "AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n"
)
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")


def next_version(span, status, changes):
    """The next seq of `span`, chained explicitly to the version we hold."""
    out = {k: v for k, v in span.items() if k not in CHAIN_FIELDS}
    out["seq"] = span["seq"] + 1
    out["prev_hash"] = span["curr_hash"]
    out["status"] = status
    out["metadata"] = dict(span.get("metadata") or {}, **changes)
    return out


def is_forced(ctx, request):
    """Only a request signed by the override key itself; never by the key that signs on
    behalf of users and policies, even if a deployment configured it as the override."""
    override = ctx.manifest.get("override_pubkey_hex")
    return bool(request and override and override != ctx.signer_public_key
                and request.get("public_key") == override
                and (request.get("metadata") or {}).get("force") is True)


def daily_limit(ctx, tenant):
    """The tenant's executions per UTC day: throttle.tenant_limits[tenant], else
    throttle.per_tenant_daily_exec_limit (100). Anything but a whole number >= 0 (or a
    tenant_limits that is not an object) is 0: fail closed (stage0/quota.py, same rules)."""
    throttle = ctx.manifest.get("throttle") or {}
    overrides = throttle.get("tenant_limits") or {}
    if not isinstance(overrides, dict):
        return 0
    value = overrides[tenant] if tenant in overrides else \
        throttle.get("per_tenant_daily_exec_limit", 100)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
            or value > 2147483647:
        return 0
    return value


def quota_take(ctx, quota, tenant, forced):
    """Take one of the tenant's executions for today; False when none is left.
    `quota` holds {"used": {tenant: count}}; counts are read once per tenant."""
    used = quota["used"]
    if tenant not in used:
        used[tenant] = ctx.sql_one(COUNT_TODAY, {"tenant": tenant})["n"]
    if forced:
        return True
    if used[tenant] >= daily_limit(ctx, tenant):
        return False
    used[tenant] = used[tenant] + 1
    return True


def violation(ctx, job):
    """The refusal, said where it is looked for: a policy_violation, and the request's
    next version `denied` with the reason in `error` (and metadata.reason)."""
    request = job["request"]
    limit = daily_limit(ctx, job["tenant"])
    error = {"code": "QUOTA_EXCEEDED", "message": "tenant " + str(job["tenant"])
             + " has used its " + str(limit) + " executions for today (UTC); the quota "
             "resets at 00:00 UTC (`logline quota show --tenant " + str(job["tenant"]) + "`)"}
    spans = [{
        "id": ctx.new_id(), "seq": 0, "entity_type": "policy_violation", "who": NAME,
        "did": "refused", "this": "per_tenant_daily_exec_limit",
        "parent_id": job["function"]["id"], "related_to": [request["id"]] if request else None,
        "owner_id": job["user"], "tenant_id": job["tenant"], "visibility": "tenant",
        "status": "over_quota", "trace_id": job["trace_id"], "error": error,
        "metadata": {"limit": limit, "function_id": job["function"]["id"]},
    }]
    if request:
        denied = next_version(request, "denied", {"reason": "QUOTA_EXCEEDED", "limit": limit})
        denied["error"] = error
        spans.append(denied)
    return spans


def execution(ctx, job, result, slow_ms):
    request, function = job["request"], job["function"]
    span = {
        "id": ctx.new_id(), "seq": 0, "entity_type": "execution", "who": NAME,
        "did": "executed", "this": function.get("name") or function["id"],
        "parent_id": function["id"], "related_to": [request["id"]] if request else None,
        "owner_id": job["user"], "tenant_id": job["tenant"],
        "visibility": (request or {}).get("visibility") or "tenant",
        "status": "complete" if result["ok"] else "error", "input": job["input"],
        "output": result["output"] if result["ok"] else None, "error": result["error"],
        "duration_ms": result["duration_ms"], "trace_id": job["trace_id"],
        "metadata": {"function_seq": function["seq"], "function_hash": function["curr_hash"],
                     "cpu_ms": result.get("cpu_ms"), "stdout": result.get("stdout") or None,
                     "kernel": ctx.kernel, "slow_ms": slow_ms},
    }
    spans = [span]
    if request:
        spans.append(next_version(request, span["status"], {"execution_id": span["id"]}))
    return spans


def prepare(ctx, span_id, request, payload, verified):
    """Everything needed to run one function for one caller, after the trust checks."""
    user = request["owner_id"] if request else ctx.identity["user_id"]
    tenant = request["tenant_id"] if request else ctx.identity["tenant_id"]
    if span_id not in verified:
        verified[span_id] = ctx.verified(span_id)
    function = verified[span_id]
    if function["entity_type"] != "function":
        raise ValueError("span " + function["id"] + " is not a function")
    if function["tenant_id"] != tenant and function["visibility"] != "public":
        raise ValueError("function " + function["id"] + " belongs to another tenant")
    if payload is None:
        payload = (request or {}).get("input")
    if payload is None:
        payload = function.get("input")
    trace_id = (request or {}).get("trace_id") or ctx.trace_id
    return {"function": function, "request": request, "user": user, "tenant": tenant,
            "input": payload, "trace_id": trace_id, "forced": is_forced(ctx, request)}


def run_jobs(ctx, jobs):
    """Run, then record every job in one append under the append lock. Returns span lists."""
    policy = ctx.manifest.get("policy") or {}
    slow_ms = policy.get("slow_ms", 5000)  # recorded on each execution; slow_exec labels by it
    timeout_ms = policy.get("timeout_ms", 30000)  # the sandbox's wall-clock and CPU limit
    quota = {"used": {}}
    results = []
    for job in jobs:
        if quota_take(ctx, quota, job["tenant"], job["forced"]):
            # The code is the function's, so it runs as code of the function's tenant (a
            # public function called by another tenant too): see docs/sandbox.md.
            results.append(ctx.sandbox(job["function"]["code"] or "", job["input"],
                                       timeout_ms, tenant=job["function"]["tenant_id"]))
        else:
            results.append(None)
    ctx.lock_appends()
    quota = {"used": {}}  # recount now that nobody else can append
    recorded = []
    for job, result in zip(jobs, results, strict=True):
        if result is None or not quota_take(ctx, quota, job["tenant"], job["forced"]):
            recorded.append(violation(ctx, job))
        else:
            recorded.append(execution(ctx, job, result, slow_ms))
    everything = []
    for spans in recorded:
        everything.extend(spans)
    ctx.append(everything)
    return recorded


def main(ctx):
    args = ctx.input or {}
    verified = {}
    if "requests" in args:
        jobs = [prepare(ctx, r["parent_id"], r, None, verified) for r in args["requests"]]
        results = []
        for job, spans in zip(jobs, run_jobs(ctx, jobs), strict=True):
            results.append({"request_id": job["request"]["id"], "span_id": spans[0]["id"],
                            "entity_type": spans[0]["entity_type"],
                            "status": spans[0]["status"],
                            "reason": (spans[0].get("error") or {}).get("code")})
        return {"results": results}
    job = prepare(ctx, args["span_id"], None, args.get("input"), verified)
    return ctx.head(run_jobs(ctx, [job])[0][0]["id"])
