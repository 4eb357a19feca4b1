"""metrics_exec_duration: one `metric` span per execution with its duration and status."""

POLICY_ID = "00000000-0000-4000-8000-000000000102"
NAME = "metrics_exec_duration"
ON_ENTITY_TYPES = ["execution"]
SCOPE = "all_tenants"


def main(span):
    return [{"emit_span": {
        "entity_type": "metric", "this": "exec_duration_ms", "did": "measured",
        "status": span.get("status"), "parent_id": span["id"],
        "metadata": {"name": "exec_duration_ms", "value": span.get("duration_ms") or 0,
                     "status": span.get("status"), "function_id": span.get("parent_id")},
    }}]
