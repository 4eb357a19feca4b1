"""slow_exec: label executions slower than THRESHOLD_MS with a `slow` status_patch."""

POLICY_ID = "00000000-0000-4000-8000-000000000101"
NAME = "slow_exec"
ON_ENTITY_TYPES = ["execution"]
SCOPE = "all_tenants"
THRESHOLD_MS = 2000


def main(span):
    duration = span.get("duration_ms") or 0
    if duration <= THRESHOLD_MS:
        return []
    return [{"emit_span": {
        "entity_type": "status_patch", "this": "slow", "did": "labelled", "status": "slow",
        "parent_id": span["id"],
        "metadata": {"duration_ms": duration, "threshold_ms": THRESHOLD_MS},
    }}]
