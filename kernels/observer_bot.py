"""observer_bot: turn scheduled functions into request spans, idempotently.

A function whose latest version has status "scheduled" gets one request per version; with
metadata.every_s = N it gets one request per N-second window instead. The idempotency key
(tenant, key) is unique in the ledger, so two observers never schedule the same run twice.
Tenants already over their daily quota are skipped.

Input: {"limit": 100}. Output: {"scheduled": [request ids], "skipped": n}.
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
    "AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n"
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


def main(ctx):
    scheduled, skipped, over = [], 0, {}
    for function in ctx.sql(SCHEDULED, {"limit": int((ctx.input or {}).get("limit", 100))}):
        tenant = function["tenant_id"]
        if tenant not in over:
            over[tenant] = ctx.sql_one(COUNT_TODAY, {"tenant": tenant})["n"] >= \
                daily_limit(ctx, tenant)
        key = idempotency_key(ctx, function)
        if over[tenant] or ctx.sql_one(EXISTS, {"tenant": tenant, "key": key}):
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
    return {"scheduled": scheduled, "skipped": skipped}
