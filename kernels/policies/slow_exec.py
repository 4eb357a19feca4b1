"""slow_exec: label executions slower than policy.slow_ms with a `slow` status_patch.

There is one threshold: run_code writes the manifest's policy.slow_ms in force into every
execution it records (metadata.slow_ms), and this policy compares the execution's duration
with that number. Change it with a manifest version (`manifest.amend(policy={"slow_ms": N,
...})`); executions recorded before run_code wrote it are held to DEFAULT_SLOW_MS, the
manifest's default.
"""

POLICY_ID = "00000000-0000-4000-8000-000000000101"
NAME = "slow_exec"
ON_ENTITY_TYPES = ["execution"]
SCOPE = "all_tenants"
DEFAULT_SLOW_MS = 5000


def threshold(span):
    slow_ms = (span.get("metadata") or {}).get("slow_ms")
    if isinstance(slow_ms, int) and not isinstance(slow_ms, bool) and slow_ms >= 0:
        return slow_ms
    return DEFAULT_SLOW_MS


def main(span):
    duration = span.get("duration_ms") or 0
    slow_ms = threshold(span)
    if duration <= slow_ms:
        return []
    return [{"emit_span": {
        "entity_type": "status_patch", "this": "slow", "did": "labelled", "status": "slow",
        "parent_id": span["id"],
        "metadata": {"duration_ms": duration, "slow_ms": slow_ms},
    }}]
