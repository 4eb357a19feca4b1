"""daily_exec_rollup: count executions per UTC day, owner and status in `rollup` spans."""

POLICY_ID = "00000000-0000-4000-8000-000000000103"
NAME = "daily_exec_rollup"
ON_ENTITY_TYPES = ["execution"]
SCOPE = "all_tenants"


def main(span):
    day = (span.get("at") or "")[:10]
    return [{"count": {"name": "daily_exec", "labels": {
        "day": day, "owner_id": span.get("owner_id"), "status": span.get("status")}}}]
