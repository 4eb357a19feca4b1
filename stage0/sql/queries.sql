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

-- name: stream_all_for_verify
SELECT {columns}, position FROM ledger.universal_registry ORDER BY id, seq

-- name: heads_summary
SELECT id::text AS id, seq, curr_hash FROM ledger.span_heads ORDER BY id

-- name: count_spans
SELECT count(*) AS n FROM ledger.universal_registry

-- name: list_spans
SELECT {columns}, position FROM ledger.latest_spans
WHERE (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
ORDER BY position DESC
LIMIT %(limit)s

-- name: heads_inconsistent
-- Heads whose row is missing, whose hash or position differs, or that are not the last version;
-- and ids that have rows but no head. Either means someone wrote around the append trigger.
SELECT h.id::text AS id, h.seq, 'HEAD_MISMATCH' AS reason FROM ledger.span_heads h
WHERE NOT EXISTS (SELECT 1 FROM ledger.universal_registry r WHERE r.id = h.id AND r.seq = h.seq
                  AND r.curr_hash IS NOT DISTINCT FROM h.curr_hash AND r.position = h.position
                  AND r.entity_type = h.entity_type
                  AND r.status IS NOT DISTINCT FROM h.status
                  AND r.owner_id IS NOT DISTINCT FROM h.owner_id
                  AND r.tenant_id IS NOT DISTINCT FROM h.tenant_id
                  AND r.visibility = h.visibility AND r.is_deleted = h.is_deleted
                  AND r.at = h.at)
   OR EXISTS (SELECT 1 FROM ledger.universal_registry r WHERE r.id = h.id AND r.seq > h.seq)
UNION ALL
SELECT r.id::text, max(r.seq), 'HEAD_MISSING' FROM ledger.universal_registry r
WHERE NOT EXISTS (SELECT 1 FROM ledger.span_heads h WHERE h.id = r.id) GROUP BY r.id

-- name: position_high_water
SELECT last_value AS high FROM ledger.position_seq

-- name: stream_ledger_chain
SELECT position, id::text AS id, seq, curr_hash, chain_hash FROM ledger.universal_registry
ORDER BY position

-- name: claim_requests
SELECT {columns}, position FROM ledger.claim_requests_v1(%(batch)s)
