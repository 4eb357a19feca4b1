"""throttle: label a tenant `throttled` when run_code refuses it for its daily quota."""

POLICY_ID = "00000000-0000-4000-8000-000000000105"
NAME = "throttle"
ON_ENTITY_TYPES = ["policy_violation"]
SCOPE = "all_tenants"


def main(span):
    if span.get("status") != "over_quota":
        return []
    meta = span.get("metadata") or {}
    return [{"emit_span": {
        "entity_type": "status_patch", "this": "throttled", "did": "labelled",
        "status": "throttled", "parent_id": span["id"],
        "metadata": {"tenant_id": span.get("tenant_id"), "limit": meta.get("limit"),
                     "function_id": meta.get("function_id")},
    }}]
