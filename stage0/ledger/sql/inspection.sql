-- What the operator's CLI reads to show the ledger (`logline spans`, `trace`, `demo`), on the
-- kernel role.

-- name: list_spans
-- The latest version of each span, newest first, with optional filters (`logline spans`).
-- Filters on the head projection (indexed, one row per id), then reads those rows.
SELECT {columns:r}, r.position FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE (%(entity_type)s::text IS NULL OR h.entity_type = %(entity_type)s)
  AND (%(status)s::text IS NULL OR h.status = %(status)s)
  AND (%(tenant_id)s::text IS NULL OR h.tenant_id = %(tenant_id)s)
ORDER BY h.position DESC
LIMIT %(limit)s

-- name: trace_spans
-- Every version of every span of one trace, in ledger order (`logline trace`).
SELECT {columns}, position FROM ledger.universal_registry
WHERE trace_id = %(trace_id)s ORDER BY position LIMIT %(limit)s

-- name: demo_boot_events
-- The boot events after a position, in ledger order (`logline demo`).
SELECT position, this, metadata FROM ledger.universal_registry
WHERE entity_type = 'boot_event' AND position > %(after)s ORDER BY position

-- name: demo_trace
-- What `logline demo` prints of each span of a trace, in ledger order.
SELECT position, entity_type, seq, status, who, this, duration_ms, output
FROM ledger.universal_registry WHERE trace_id = %(trace_id)s ORDER BY position
