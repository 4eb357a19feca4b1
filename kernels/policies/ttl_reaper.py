"""ttl_reaper: archive prompt blocks and memories whose metadata.ttl_at has passed.

A sweep policy: the agent hands it the current versions of SWEEP_ENTITY_TYPES whose ttl_at is
in the past and that carry no `archived` status_patch yet, instead of new spans.
"""

POLICY_ID = "00000000-0000-4000-8000-000000000106"
NAME = "ttl_reaper"
SWEEP_ENTITY_TYPES = ["prompt_block", "memory"]
SCOPE = "all_tenants"


def main(span):
    ttl_at = (span.get("metadata") or {}).get("ttl_at")
    return [{"emit_span": {
        "entity_type": "status_patch", "this": "archived", "did": "expired",
        "status": "archived", "parent_id": span["id"],
        "metadata": {"ttl_at": ttl_at, "reason": "ttl"},
    }}]
