-- Named queries. Loaded by stage0/ledger/queries.py; the Python code holds no SQL of its own beyond
-- what is built from the column list in ledger.py.

-- name: append_lock
-- The lock the append trigger takes; held to commit.
SELECT pg_advisory_xact_lock(5514346441049466213)

-- name: heads_for
SELECT id::text AS id, seq, curr_hash FROM ledger.span_heads WHERE id = ANY(%(ids)s::uuid[])

-- name: head_lookup
SELECT {columns}, position FROM ledger.latest_spans WHERE id = %(id)s

-- name: heads_of
SELECT {columns}, position FROM ledger.latest_spans WHERE id = ANY(%(ids)s::uuid[])

-- name: terminate_backends
-- The database sessions of a process that was killed (an API boot that timed out), found by
-- the application_name it was started with: ended now, so their transactions roll back.
SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity
WHERE application_name = %(name)s AND pid <> pg_backend_pid()

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
-- Round-robin across tenants, in the order to run them (schema/0006).
SELECT {columns}, position FROM ledger.claim_requests_v2(%(batch)s)

-- name: chain_tip
SELECT position, chain_hash FROM ledger.chain_tip

-- name: exec_count_today
-- A tenant's executions so far this UTC day (ledger.tenant_exec_counts, kept by the append
-- trigger); the kernel role.
SELECT coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s
                 AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n

-- name: exec_counts_today
SELECT tenant_id, n FROM ledger.tenant_exec_counts
WHERE day = (now() AT TIME ZONE 'UTC')::date ORDER BY tenant_id

-- name: my_exec_count_today
-- The caller's tenant's executions today, as the app role under RLS (schema 0008).
SELECT ledger.my_exec_count_today_v1() AS n

-- name: utc_day
SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
       ceil(extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
                    - (now() AT TIME ZONE 'UTC')))::integer AS resets_in_s

-- name: trace_spans
-- Every version of every span of one trace, in ledger order (`logline trace`).
SELECT {columns}, position FROM ledger.universal_registry
WHERE trace_id = %(trace_id)s ORDER BY position LIMIT %(limit)s

-- name: allow_idle
-- This transaction may sit idle (while the sandbox runs what it claimed) this long: longer
-- than the role's idle_in_transaction_session_timeout when it legitimately needs to be,
-- never shorter (0, no limit, stays).
SELECT set_config('idle_in_transaction_session_timeout',
                  CASE WHEN s.setting::bigint = 0 OR s.setting::bigint >= %(ms)s::bigint
                       THEN s.setting ELSE (%(ms)s::bigint)::text END, true) AS ms
FROM pg_settings s WHERE s.name = 'idle_in_transaction_session_timeout'

-- name: unbounded_transaction
-- No statement or idle timeout for the rest of this transaction (verify).
SELECT set_config('statement_timeout', '0', true),
       set_config('idle_in_transaction_session_timeout', '0', true)

-- name: unbounded_session
-- No statement or idle timeout on this session until bounded_session (seed).
SELECT set_config('statement_timeout', '0', false),
       set_config('idle_in_transaction_session_timeout', '0', false)

-- name: bounded_session
-- The role's own timeouts again.
RESET statement_timeout; RESET idle_in_transaction_session_timeout

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

-- name: vault_heads
-- A tenant's vault spans as the kernel reads them (stage0/vault): its tenant_key and its
-- secrets (only the one named, when name is given). The vault checks who signed them.
SELECT {r_columns} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.tenant_id = %(tenant_id)s
  AND (h.entity_type = 'tenant_key'
       OR (h.entity_type = 'secret' AND (%(name)s::text IS NULL OR r.name = %(name)s)))
ORDER BY h.position

-- name: vault_tenant_keys
-- Every tenant's data key span (a master key rotation re-wraps them all).
SELECT {r_columns} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'tenant_key'
ORDER BY h.position

-- name: vault_first_at
-- When each of these spans was first appended (a secret's creation time).
SELECT id::text AS id, min(at) AS first_at FROM ledger.universal_registry
WHERE id = ANY(%(ids)s::uuid[]) GROUP BY id
