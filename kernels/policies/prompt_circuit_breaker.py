"""prompt_circuit_breaker: over 5 tool uses puts a "synthesize now" block on the family (30 min).

A prompt_run whose telemetry.tool_use_count is above MAX_TOOL_USES emits, into the run's
tenant, a temporary prompt_block for the run's family (metadata.temporary, ttl_s 1800,
priority 115: below doctrine, above the product). prompt_build adds the latest unexpired
one of the family to every build of that tenant until it expires, so the next answers are
told to stop calling tools and answer with what they have (docs/prompts.md).
"""

POLICY_ID = "00000000-0000-4000-8000-000000000141"
NAME = "prompt_circuit_breaker"
ON_ENTITY_TYPES = ["prompt_run"]
SCOPE = "all_tenants"
MAX_TOOL_USES = 5
TTL_S = 1800
SYNTHESIZE = ("Synthesize now: earlier answers used too many tools. Do not propose or use "
              "any more tools; answer at once with what you already know, and say plainly "
              "what is still unknown.")


def main(span):
    meta = span.get("metadata") or {}
    count = meta.get("tool_use_count")
    family = meta.get("family")
    if not isinstance(count, int) or isinstance(count, bool) or count <= MAX_TOOL_USES \
            or not isinstance(family, str):
        return []
    return [{"emit_span": {
        "entity_type": "prompt_block", "did": "tripped", "this": "synthesize_now",
        "status": "active", "parent_id": span["id"], "content": SYNTHESIZE,
        "metadata": {"family": family, "priority": 115, "layer": "override",
                     "temporary": True, "ttl_s": TTL_S, "tool_use_count": count,
                     "run_id": span["id"]},
    }}]
