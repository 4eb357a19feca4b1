"""prompt_confidence_escalation: a run answered with low confidence asks a human to review it.

A completed prompt_run whose confidence is below MIN_CONFIDENCE (its variant's
metadata.min_confidence when the run carries one) emits a `prompt_escalation` span (status
open) into the run's tenant, naming the run, its family, variant and confidence, and where
to escalate: the variant's metadata.escalate_to if the runner recorded it (a stronger variant
or provider), else a human. The runner itself already retried once with escalate_to when the
variant declares one (docs/prompts.md); this is what is left for people.
"""

POLICY_ID = "00000000-0000-4000-8000-000000000142"
NAME = "prompt_confidence_escalation"
ON_ENTITY_TYPES = ["prompt_run"]
SCOPE = "all_tenants"
MIN_CONFIDENCE = 0.5


def main(span):
    meta = span.get("metadata") or {}
    confidence = meta.get("confidence")
    if span.get("status") != "complete" or not isinstance(confidence, (int, float)) or \
            isinstance(confidence, bool):
        return []
    floor = meta.get("min_confidence")
    if not isinstance(floor, (int, float)) or isinstance(floor, bool):
        floor = MIN_CONFIDENCE
    if confidence >= floor:
        return []
    return [{"emit_span": {
        "entity_type": "prompt_escalation", "did": "escalated", "this": "low_confidence",
        "status": "open", "parent_id": span["id"],
        "metadata": {"run_id": span["id"], "family": meta.get("family"),
                     "variant_id": meta.get("variant_id"), "confidence": confidence,
                     "min_confidence": floor, "to": "human",
                     "escalated_from": meta.get("escalated_from")},
    }}]
