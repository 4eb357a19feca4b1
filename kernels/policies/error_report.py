"""error_report: open an `error_report` for every failed execution."""

POLICY_ID = "00000000-0000-4000-8000-000000000104"
NAME = "error_report"
ON_ENTITY_TYPES = ["execution"]
SCOPE = "all_tenants"


def main(span):
    if span.get("status") != "error":
        return []
    error = span.get("error") or {}
    return [{"emit_span": {
        "entity_type": "error_report", "this": "execution failed", "did": "reported",
        "status": "open", "parent_id": span["id"], "error": error,
        "metadata": {"function_id": span.get("parent_id"), "code": error.get("code")},
    }}]
