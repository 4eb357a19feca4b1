-- Reading spans: one span, its versions, its children, and which of some ids the caller may
-- see. Under the app role row-level security decides what comes back; the kernel role sees
-- every row. Loaded by stage0/ledger/queries.py, like every file in this folder.

-- name: head_lookup
-- The latest version of one span, with its position.
SELECT {columns}, position FROM ledger.latest_spans WHERE id = %(id)s

-- name: two_heads
-- The latest versions of two spans (the manifest and a kernel, at each boot), from their
-- heads' primary key: `= ANY(array)` through latest_spans was planned as a scan of every head.
SELECT {columns:r}, r.position FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.id IN (%(a)s::uuid, %(b)s::uuid)

-- name: heads_of
-- The latest versions of several spans, with their positions.
SELECT {columns}, position FROM ledger.latest_spans WHERE id = ANY(%(ids)s::uuid[])

-- name: heads_for
-- The head (seq and hash) of each of these ids that has one: what the next version chains to.
SELECT id::text AS id, seq, curr_hash FROM ledger.span_heads WHERE id = ANY(%(ids)s::uuid[])

-- name: version_lookup
-- One stored version of a span, by id and seq.
SELECT {columns}, position FROM ledger.universal_registry WHERE id = %(id)s AND seq = %(seq)s

-- name: version_position
-- Where one stored version of a span sits in the ledger.
SELECT position FROM ledger.universal_registry WHERE id = %(id)s AND seq = %(seq)s

-- name: version_by_hash
-- The stored version of a span with this curr_hash (the exact version a decision names).
SELECT {columns} FROM ledger.universal_registry WHERE id = %(id)s AND curr_hash = %(hash)s

-- name: all_versions
-- Every stored version of a span, oldest first.
SELECT {columns}, position FROM ledger.universal_registry WHERE id = %(id)s ORDER BY seq

-- name: children_of
-- Every stored version of the spans whose parent is one of these ids, in ledger order.
SELECT {columns} FROM ledger.universal_registry
WHERE parent_id = ANY(%(parents)s::uuid[]) ORDER BY position

-- name: visible_ids
-- Which of these ids the caller may see (run as the caller, under row-level security).
SELECT DISTINCT id::text AS id FROM ledger.universal_registry WHERE id = ANY(%(ids)s::uuid[])

-- name: request_by_idempotency_key
-- The request a tenant scheduled earlier under this idempotency key (at most one: the
-- ur_request_idempotency index of schema/0002).
SELECT id::text AS id, trace_id FROM ledger.universal_registry
WHERE entity_type = 'request' AND seq = 0 AND tenant_id = %(tenant)s
  AND metadata ->> 'idempotency_key' = %(key)s

-- name: row_security_active
-- Whether row-level security applies to this session's reads and writes of the ledger.
SELECT row_security_active('ledger.universal_registry') AS on
