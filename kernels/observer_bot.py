"""observer_bot: turn scheduled functions into request spans, idempotently.

A function whose latest version has status "scheduled" gets one request per version; with
metadata.every_s = N it gets one request per N-second window instead. The idempotency key
(tenant, key) is unique in the ledger, so two observers never schedule the same run twice.

A function whose tenant has already used its daily quota is not scheduled (its runs wait
for 00:00 UTC, or a higher limit), and that says so once per function and UTC day: a
request at once `denied`, with QUOTA_EXCEEDED in its error and metadata.reason, beside a
policy_violation (status over_quota), as run_code records a refused request. Once a day,
not once a round (every 2 s) nor once per every_s window: the quota is per day, so the first
record already says everything until it resets, and the ledger is not flooded. Its own
idempotency key (observer:<function>:quota:<day>) makes it once even across observers.

Input: {"limit": 100}. Output: {"scheduled": [request ids], "skipped": n,
"denied": [ids of the requests recorded as denied for the quota this round]}.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000002"
NAME = "observer_bot"

SCHEDULED = (
    "SELECT r.id::text AS id, r.seq, r.name, r.owner_id, r.tenant_id, r.visibility, r.input, "
    "r.metadata FROM ledger.span_heads h "
    "JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'function' AND h.status = 'scheduled' AND NOT h.is_deleted "
    "ORDER BY h.position LIMIT %(limit)s"
)
EXISTS = (
    "SELECT 1 AS found FROM ledger.universal_registry WHERE entity_type = 'request' "
    "AND seq = 0 AND metadata ? 'idempotency_key' AND tenant_id = %(tenant)s "
    "AND metadata ->> 'idempotency_key' = %(key)s"
)
COUNT_TODAY = (
    "SELECT coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s "
    "AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n, "
    "((now() AT TIME ZONE 'UTC')::date)::text AS day"
)
EPOCH_S = "SELECT floor(extract(epoch FROM now()))::bigint AS s"


def idempotency_key(ctx, function):
    every = (function.get("metadata") or {}).get("every_s")
    if every:
        window = ctx.sql_one(EPOCH_S)["s"] // int(every)
        return "observer:" + function["id"] + ":every:" + str(window)
    return "observer:" + function["id"] + ":" + str(function["seq"])


def daily_limit(ctx, tenant):
    """The tenant's executions per UTC day, as run_code reads it (fail closed: 0)."""
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


def spent_quota(ctx, tenant):
    """{"used", "limit", "day"} when the tenant has no execution left today, else None."""
    today = ctx.sql_one(COUNT_TODAY, {"tenant": tenant})
    limit = daily_limit(ctx, tenant)
    if today["n"] < limit:
        return None
    return {"used": today["n"], "limit": limit, "day": today["day"]}


def deny_over_quota(ctx, function, quota):
    """Say, once per function and UTC day, that it was not scheduled for its tenant's
    quota: a denied request and a policy_violation. Returns the request's id, or None
    when today's is already recorded."""
    tenant = function["tenant_id"]
    key = "observer:" + function["id"] + ":quota:" + quota["day"]
    if ctx.sql_one(EXISTS, {"tenant": tenant, "key": key}):
        return None
    error = {"code": "QUOTA_EXCEEDED", "message": "tenant " + str(tenant) + " has used "
             + str(quota["used"]) + " of its " + str(quota["limit"]) + " executions for "
             + quota["day"] + " (UTC), so " + NAME + " does not schedule this function "
             "until the quota resets at 00:00 UTC (said once per function and day; "
             "`logline quota show --tenant " + str(tenant) + "`)"}
    request_id, trace_id = ctx.new_id(), ctx.new_id()
    spans = [{
        "id": ctx.new_id(), "seq": 0, "entity_type": "policy_violation", "who": NAME,
        "did": "refused", "this": "per_tenant_daily_exec_limit",
        "parent_id": function["id"], "related_to": [request_id],
        "owner_id": function["owner_id"], "tenant_id": tenant, "visibility": "tenant",
        "status": "over_quota", "trace_id": trace_id, "error": error,
        "metadata": {"limit": quota["limit"], "function_id": function["id"]},
    }, {
        "id": request_id, "seq": 0, "entity_type": "request", "who": NAME, "did": "denied",
        "this": function.get("name") or function["id"], "parent_id": function["id"],
        "owner_id": function["owner_id"], "tenant_id": tenant,
        "visibility": function["visibility"], "status": "denied", "trace_id": trace_id,
        "input": function.get("input"), "error": error,
        "metadata": {"idempotency_key": key, "function_seq": function["seq"],
                     "reason": "QUOTA_EXCEEDED", "limit": quota["limit"]},
    }]
    try:
        with ctx.transaction():
            ctx.append(spans)
    except Exception as exc:  # another observer said it first
        ctx.log("schedule_skipped", function_id=function["id"], reason=str(exc)[:200])
        return None
    ctx.log("request_denied", request_id=request_id, function_id=function["id"],
            tenant_id=tenant, reason="QUOTA_EXCEEDED")
    return request_id


def main(ctx):
    scheduled, skipped, denied, over = [], 0, [], {}
    for function in ctx.sql(SCHEDULED, {"limit": int((ctx.input or {}).get("limit", 100))}):
        tenant = function["tenant_id"]
        if tenant not in over:
            over[tenant] = spent_quota(ctx, tenant)
        if over[tenant]:
            skipped += 1
            request_id = deny_over_quota(ctx, function, over[tenant])
            if request_id:
                denied.append(request_id)
            continue
        key = idempotency_key(ctx, function)
        if ctx.sql_one(EXISTS, {"tenant": tenant, "key": key}):
            skipped += 1
            continue
        request = {
            "entity_type": "request", "who": NAME, "did": "scheduled",
            "this": function.get("name") or function["id"], "parent_id": function["id"],
            "owner_id": function["owner_id"], "tenant_id": tenant,
            "visibility": function["visibility"], "status": "scheduled",
            "input": function.get("input"),
            "metadata": {"idempotency_key": key, "function_seq": function["seq"]},
        }
        try:
            with ctx.transaction():
                scheduled.append(ctx.append([request])[0]["id"])
        except Exception as exc:  # another observer scheduled it first
            ctx.log("schedule_skipped", function_id=function["id"], reason=str(exc)[:200])
            skipped += 1
    return {"scheduled": scheduled, "skipped": skipped, "denied": denied}
