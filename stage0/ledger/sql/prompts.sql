-- Prompts (stage0/ledger/prompt_rows.py; docs/prompts.md): the blocks and variants a tenant
-- may build with (its own and the system's) and what the prompt kernels recorded about them
-- (only records a platform key signed count).

-- name: prompt_blocks
-- The prompt_block heads a tenant may use: its own and the system's.
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = 'prompt_block' AND NOT is_deleted AND tenant_id IN (%(tenant)s, 'system')
ORDER BY (metadata->>'priority')::numeric DESC NULLS LAST, name, position

-- name: prompt_variants
-- The prompt_variant heads a tenant may use, of one family or all.
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = 'prompt_variant' AND NOT is_deleted AND tenant_id IN (%(tenant)s, 'system')
  AND (%(family)s::text IS NULL OR metadata->>'family' = %(family)s)
ORDER BY metadata->>'family', (tenant_id = %(tenant)s) DESC, position

-- name: prompt_runs_recent
-- A tenant's latest prompt_run records, of one family or all.
SELECT {columns}, position FROM ledger.universal_registry
WHERE entity_type = 'prompt_run' AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s)
  AND (%(family)s::text IS NULL OR metadata->>'family' = %(family)s)
ORDER BY position DESC LIMIT %(limit)s

-- name: prompt_run_stats
-- Per variant of a tenant: runs, errors, mean confidence and latency of its prompt_run records.
SELECT metadata->>'variant_id' AS variant_id, count(*) AS runs,
       count(*) FILTER (WHERE status = 'error') AS errors,
       avg((metadata->>'confidence')::float8) AS mean_confidence,
       avg(duration_ms)::float8 AS mean_latency_ms
FROM ledger.universal_registry
WHERE entity_type = 'prompt_run' AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s)
GROUP BY 1

-- name: prompt_eval_stats
-- Per variant of a tenant: evaluation results and how many passed.
SELECT metadata->>'variant_id' AS variant_id, count(*) AS evals,
       count(*) FILTER (WHERE status = 'passed') AS passed
FROM ledger.universal_registry
WHERE entity_type = 'prompt_eval_result' AND tenant_id = %(tenant)s
  AND public_key = ANY(%(keys)s)
GROUP BY 1

-- name: prompt_selection_share
-- Per variant of a tenant: how many of the latest (at most 1000) bandit choices chose it.
SELECT metadata->>'variant_id' AS variant_id, count(*) AS chosen
FROM (SELECT metadata FROM ledger.universal_registry
      WHERE entity_type = 'prompt_variant_selection' AND tenant_id = %(tenant)s
        AND public_key = ANY(%(keys)s)
      ORDER BY position DESC LIMIT 1000) latest
GROUP BY 1

-- name: prompt_selections_recent
-- A tenant's latest bandit choices, of one family or all.
SELECT {columns}, position FROM ledger.universal_registry
WHERE entity_type = 'prompt_variant_selection' AND tenant_id = %(tenant)s
  AND public_key = ANY(%(keys)s)
  AND (%(family)s::text IS NULL OR metadata->>'family' = %(family)s)
ORDER BY position DESC LIMIT %(limit)s
