-- What the HTTP API and the console read (stage0/api/). Unless a query says otherwise it runs
-- as the caller on the app role, in a transaction with the caller's identity set
-- (set_identity, sessions.sql), so row-level security decides what comes back.

-- name: health_check
-- The database answers (GET /healthz).
SELECT 1

-- name: spans_page
-- The latest version of the spans the caller may see, newest first (GET /api/spans).
SELECT {columns}, position FROM ledger.latest_spans
WHERE (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(before)s::bigint IS NULL OR position < %(before)s)
ORDER BY position DESC LIMIT %(limit)s

-- name: timeline
-- The visible timeline, newest first, with optional filters (GET /api/timeline).
SELECT {columns}, position FROM ledger.visible_timeline
WHERE (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s)
  AND (%(trace_id)s::text IS NULL OR trace_id = %(trace_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s)
  AND (%(from)s::timestamptz IS NULL OR at >= %(from)s)
  AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
  AND (%(before)s::bigint IS NULL OR position < %(before)s)
  AND (%(after)s::bigint IS NULL OR position > %(after)s)
ORDER BY position DESC LIMIT %(limit)s

-- name: stream_events
-- Each new visible span as one server-sent event (GET /api/timeline/stream).
-- The event's data is the JSON text GET /api/spans/{id} returns (same fields, same `at`
-- format): PostgreSQL renders it, the server only joins bytes.
SELECT position, 'id: ' || position || E'\nevent: span\ndata: '
       || json_build_object({span_json}, 'position', position)::text || E'\n\n'
FROM ledger.visible_timeline
WHERE position > %(after)s
  AND (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s)
  AND (%(trace_id)s::text IS NULL OR trace_id = %(trace_id)s)
ORDER BY position LIMIT %(limit)s

-- name: visible_tip
-- The newest position the caller can see.
-- Read *before* stream_events in the same transaction, so the rows' (later) snapshot holds
-- every row up to it: positions become visible in order.
SELECT coalesce(max(position), 0) FROM ledger.visible_timeline

-- name: platform_executions
-- The tenant's executions as the platform recorded them (signed by one of `keys`), newest
-- first (GET /api/executions).
SELECT {columns}, position FROM ledger.latest_spans
WHERE entity_type = 'execution' AND tenant_id = %(tenant)s
  AND public_key = ANY(%(keys)s) AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(before)s::bigint IS NULL OR position < %(before)s)
ORDER BY position DESC LIMIT %(limit)s

-- name: lookalike_executions
-- The tenant's newest execution spans signed by a key that is not the platform's (flagged).
SELECT id::text AS id, public_key FROM ledger.latest_spans
WHERE entity_type = 'execution' AND tenant_id = %(tenant)s
  AND NOT public_key = ANY(%(keys)s) ORDER BY position DESC LIMIT 20

-- name: tenant_functions
-- The tenant's functions and the system's kernels (tenant system, signed by the platform,
-- metadata.kernel true), newest first (GET /api/functions).
SELECT {columns}, position FROM ledger.latest_spans WHERE entity_type = 'function'
  AND (tenant_id = %(tenant)s OR (tenant_id = 'system' AND public_key = ANY(%(keys)s)
       AND metadata @> '{"kernel": true}'::jsonb))
ORDER BY position DESC LIMIT %(limit)s

-- name: execution_metrics
-- The tenant's executions per UTC day and status, with average and p95 duration, and per
-- day (status NULL) (GET /api/metrics).
-- Executions count only when the platform signed them, and only the caller's tenant's:
-- another tenant's public spans and a writer's look-alikes are never yours.
SELECT to_char(date_trunc('day', at AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day,
       coalesce(status, '') AS status, count(*) AS count, avg(duration_ms)::float AS avg_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)::float AS p95_ms
FROM ledger.visible_timeline WHERE entity_type = 'execution'
  AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s)
  AND at >= now() - make_interval(days => %(days)s)
GROUP BY GROUPING SETS ((1, 2), (1)) ORDER BY 1, 2

-- name: executions_by_status
-- Every tenant's executions signed by the platform, counted by status (GET /metrics, on the
-- kernel role).
SELECT coalesce(status, '') AS status, count(*) AS n
FROM ledger.latest_spans WHERE entity_type = 'execution'
  AND public_key = ANY(%(keys)s) GROUP BY 1

-- name: queue_health
-- One tenant's requests waiting for a worker (the platform's only), split by whether a worker
-- is running them now (GET /api/queue, on the kernel role).
-- A worker's claim is a row lock on the request's head
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
-- A tenant's executions this UTC day, what the daily quota counts (run_code reads the same
-- row), with the day (GET /api/queue, on the kernel role).
SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS day,
       coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s
                 AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n

-- name: last_execution
-- A tenant's newest execution signed by the platform (GET /api/queue, on the kernel role).
SELECT r.id::text AS id, r.at, r.status, r.duration_ms
FROM ledger.span_heads h JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.tenant_id = %(tenant)s AND h.entity_type = 'execution' AND r.public_key = ANY(%(keys)s)
ORDER BY h.position DESC LIMIT 1
