-- LLM providers (stage0/ledger/provider_rows.py): the provider rows stage 0 calls, the daily
-- token budget (ledger.provider_token_counts, kept by the append trigger: schema/0010) and
-- what /metrics reads of the calls.

-- name: provider_by_name
-- The provider row a tenant calls by name: its own first, else the platform-wide one
-- (tenant system); only rows a platform key signed.
SELECT {columns:r}, r.position FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'provider' AND h.tenant_id IN (%(tenant)s, 'system')
  AND r.name = %(name)s AND r.public_key = ANY(%(keys)s)
ORDER BY (h.tenant_id = %(tenant)s) DESC, h.position DESC LIMIT 1

-- name: providers_list
-- Every platform-signed provider row (or those a tenant may call: its own and the system's).
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = 'provider' AND public_key = ANY(%(keys)s)
  AND (%(tenant)s::text IS NULL OR tenant_id IN (%(tenant)s, 'system'))
ORDER BY name, tenant_id

-- name: provider_tokens_today
-- What the per-tenant daily token budget counts (schema/0010: kept by the append trigger),
-- and the UTC day it is for.
SELECT coalesce((SELECT c.tokens FROM ledger.provider_token_counts c
                 WHERE c.tenant_id = %(tenant)s AND c.provider = %(provider)s
                   AND c.day = (now() AT TIME ZONE 'UTC')::date), 0)::bigint AS n,
       to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS utc_day

-- name: provider_for_call
-- One call's look-up in one round trip: the provider row provider_by_name finds, the
-- tokens the tenant used with it today (provider_tokens_today), that UTC day, and whether
-- the tenant keeps transcripts (transcripts_on). Every part starts from an index of the
-- heads by kind (or the counter's key): its cost does not grow with the tenant's calls.
SELECT p.*,
       coalesce((SELECT c.tokens FROM ledger.provider_token_counts c
                 WHERE c.tenant_id = %(tenant)s AND c.provider = %(name)s
                   AND c.day = (now() AT TIME ZONE 'UTC')::date), 0)::bigint AS tokens_today,
       to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS utc_day,
       coalesce((SELECT h.status = 'active' FROM ledger.span_heads h
                 JOIN ledger.universal_registry s ON s.id = h.id AND s.seq = h.seq
                 WHERE h.tenant_id = %(tenant)s AND h.entity_type = 'tenant_setting'
                   AND s.name = 'llm_transcripts' AND s.public_key = ANY(%(keys)s)
                 ORDER BY h.position DESC LIMIT 1), false) AS keep_transcripts
FROM (SELECT {columns:r}, r.position FROM ledger.span_heads h
      JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
      WHERE h.entity_type = 'provider' AND h.tenant_id IN (%(tenant)s, 'system')
        AND r.name = %(name)s AND r.public_key = ANY(%(keys)s)
      ORDER BY (h.tenant_id = %(tenant)s) DESC, h.position DESC LIMIT 1) p

-- name: provider_execution_stats
-- For /metrics: calls, tokens and latency per provider, outcome and latency bucket
-- (width_bucket over the bounds given, in ms), the platform's records only, of the rows
-- appended after position `after` up to `upto` (the chain's tip when the scrape began: a
-- range of the ur_position index, so a scrape reads what was appended since the last one).
SELECT "this" AS provider, coalesce(metadata->>'outcome', '') AS outcome,
       width_bucket(coalesce(duration_ms, 0), %(bounds)s::int[]) AS bucket, count(*) AS calls,
       coalesce(sum((metadata->>'tokens_in')::bigint), 0)::bigint AS tokens_in,
       coalesce(sum((metadata->>'tokens_out')::bigint), 0)::bigint AS tokens_out,
       coalesce(sum(duration_ms), 0)::bigint AS ms
FROM ledger.universal_registry
WHERE position > %(after)s AND position <= %(upto)s
  AND entity_type = 'provider_execution' AND public_key = ANY(%(keys)s)
GROUP BY 1, 2, 3

-- name: provider_breaker_states
-- The last breaker change each provider's workers recorded among the rows appended after
-- position `after` up to `upto` (as provider_execution_stats).
SELECT DISTINCT ON ("this", metadata->>'worker') "this" AS provider,
       metadata->>'worker' AS worker, status AS state
FROM ledger.universal_registry
WHERE position > %(after)s AND position <= %(upto)s
  AND entity_type = 'provider_breaker' AND public_key = ANY(%(keys)s)
ORDER BY "this", metadata->>'worker', position DESC

-- name: transcripts_on
-- Whether a tenant keeps its calls' transcripts (stage0/llm/transcripts.py): its latest
-- platform-signed `tenant_setting` llm_transcripts is active. From the heads by tenant and
-- kind (index sh_tenant_entity), never a walk over the tenant's rows.
SELECT coalesce((SELECT h.status = 'active' FROM ledger.span_heads h
                 JOIN ledger.universal_registry s ON s.id = h.id AND s.seq = h.seq
                 WHERE h.tenant_id = %(tenant)s AND h.entity_type = 'tenant_setting'
                   AND s.name = 'llm_transcripts' AND s.public_key = ANY(%(keys)s)
                 ORDER BY h.position DESC LIMIT 1), false) AS keep

-- name: transcript_of
-- The sealed transcript of one call of a tenant (platform-signed).
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = 'provider_transcript' AND parent_id = %(execution_id)s::uuid
  AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s)
ORDER BY position DESC LIMIT 1
