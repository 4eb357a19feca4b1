-- Named queries. Loaded by stage0/queries.py; the Python code holds no SQL of its own beyond
-- what is built from the column list in ledger.py.

-- name: append_lock
-- The lock the append trigger takes; held to commit.
SELECT pg_advisory_xact_lock(5514346441049466213)

-- name: heads_for
SELECT id::text AS id, seq, curr_hash FROM ledger.span_heads WHERE id = ANY(%(ids)s::uuid[])

-- name: head_lookup
SELECT {columns}, position FROM ledger.latest_spans WHERE id = %(id)s

-- name: version_lookup
SELECT {columns}, position FROM ledger.universal_registry WHERE id = %(id)s AND seq = %(seq)s

-- name: all_versions
SELECT {columns}, position FROM ledger.universal_registry WHERE id = %(id)s ORDER BY seq

-- name: latest_of_type
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = %(entity_type)s ORDER BY position DESC LIMIT 1

-- name: stream_range_for_verify
-- The versions of the ids in one range, in chain order, as the text a span holds.
SELECT {text_columns}, position FROM ledger.universal_registry
WHERE id BETWEEN %(lo)s::uuid AND %(hi)s::uuid ORDER BY id, seq

-- name: heads_summary
SELECT id::text AS id, seq, curr_hash FROM ledger.span_heads ORDER BY id

-- name: count_spans
SELECT count(*) AS n FROM ledger.universal_registry

-- name: list_spans
-- Filters on the head projection (indexed, one row per id), then reads those rows.
SELECT {r_columns}, r.position FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE (%(entity_type)s::text IS NULL OR h.entity_type = %(entity_type)s)
  AND (%(status)s::text IS NULL OR h.status = %(status)s)
  AND (%(tenant_id)s::text IS NULL OR h.tenant_id = %(tenant_id)s)
ORDER BY h.position DESC
LIMIT %(limit)s

-- name: heads_inconsistent
-- Heads that disagree with their row (missing, or any projected column different), heads
-- that are not the last stored version, and ids with rows but no head. Either means someone
-- wrote around the append trigger. Joins and one aggregate: linear in the ledger's size.
WITH last AS (
  SELECT id, max(seq) AS seq FROM ledger.universal_registry GROUP BY id
)
SELECT h.id::text AS id, h.seq, 'HEAD_MISMATCH' AS reason
FROM ledger.span_heads h
LEFT JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE r.id IS NULL
   OR r.curr_hash IS DISTINCT FROM h.curr_hash OR r.position <> h.position
   OR r.entity_type <> h.entity_type OR r.status IS DISTINCT FROM h.status
   OR r.owner_id IS DISTINCT FROM h.owner_id OR r.tenant_id IS DISTINCT FROM h.tenant_id
   OR r.visibility <> h.visibility OR r.is_deleted <> h.is_deleted OR r.at <> h.at
UNION ALL
SELECT coalesce(h.id, l.id)::text, coalesce(l.seq, h.seq),
       CASE WHEN h.id IS NULL THEN 'HEAD_MISSING' ELSE 'HEAD_MISMATCH' END
FROM last l FULL JOIN ledger.span_heads h ON h.id = l.id
WHERE h.id IS NULL OR (l.id IS NOT NULL AND l.seq > h.seq)

-- name: position_high_water
SELECT last_value AS high FROM ledger.position_seq

-- name: stream_ledger_chain
SELECT position, id::text AS id, seq, curr_hash, chain_hash FROM ledger.universal_registry
ORDER BY position

-- name: claim_requests
SELECT {columns}, position FROM ledger.claim_requests_v1(%(batch)s)

-- name: chain_tip
SELECT position, chain_hash FROM ledger.chain_tip

-- name: queue_health
-- One tenant's requests waiting for a worker (the platform's only), split by whether a worker
-- is running them now. A worker's claim is a row lock on the request's head
-- (claim_requests_v1: FOR UPDATE SKIP LOCKED), held by its open transaction until the
-- execution is recorded, so the claiming transaction's id is the head row's xmax. `running`
-- is an xmax this snapshot sees as in progress: in its xip list, or at or after its xmax
-- (compared modulo 2^32, as PostgreSQL compares xids). Reading xmax takes no lock, so
-- counting never makes a worker skip a request.
WITH snap AS (
  SELECT pg_snapshot_xmax(s)::text::bigint %% 4294967296 AS xmax32,
         array(SELECT x::text::bigint %% 4294967296 FROM pg_snapshot_xip(s) x) AS xip
  FROM (SELECT pg_current_snapshot() AS s) c
), waiting AS (
  SELECT h.xmax::text::bigint AS locker, h.at
  FROM ledger.span_heads h JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
  WHERE h.tenant_id = %(tenant)s AND h.entity_type = 'request' AND h.status = 'scheduled'
    AND r.public_key = ANY(%(keys)s)
), marked AS (
  SELECT w.at, w.locker <> 0 AND (w.locker = ANY(snap.xip)
         OR (w.locker - snap.xmax32 + 4294967296) %% 4294967296 < 2147483648) AS running
  FROM waiting w, snap
)
SELECT count(*) FILTER (WHERE NOT running) AS queued,
       count(*) FILTER (WHERE running) AS running,
       min(at) FILTER (WHERE NOT running) AS oldest_queued_at
FROM marked

-- name: executions_today
-- What the daily quota counts (run_code reads the same row).
SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS day,
       coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s
                 AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n

-- name: last_execution
SELECT r.id::text AS id, r.at, r.status, r.duration_ms
FROM ledger.span_heads h JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.tenant_id = %(tenant)s AND h.entity_type = 'execution' AND r.public_key = ANY(%(keys)s)
ORDER BY h.position DESC LIMIT 1

-- name: visible_ids
-- Which of these ids the caller may see (run as the caller, under row-level security).
SELECT DISTINCT id::text AS id FROM ledger.universal_registry WHERE id = ANY(%(ids)s::uuid[])
