-- Verification and checkpoints (stage0/ledger/verify.py, checkpoint.py): read the whole
-- ledger, on the kernel role, in one REPEATABLE READ snapshot.

-- name: count_spans
-- How many rows the ledger holds.
SELECT count(*) AS n FROM ledger.universal_registry

-- name: position_high_water
-- The last position handed out (a row appended after it has a higher one).
SELECT last_value AS high FROM ledger.position_seq

-- name: export_snapshot
-- This transaction's snapshot, for verify's worker processes to read in as well.
SELECT pg_export_snapshot() AS s

-- name: set_snapshot
-- Read in the snapshot another transaction exported ({} is filled in as a literal).
SET TRANSACTION SNAPSHOT {}

-- name: stream_range_for_verify
-- The versions of the ids in one range, in chain order, as the text a span holds.
SELECT {text_columns}, position FROM ledger.universal_registry
WHERE id BETWEEN %(lo)s::uuid AND %(hi)s::uuid ORDER BY id, seq

-- name: heads_inconsistent
-- Heads that disagree with their row, heads that are not the last version, ids without a head.
-- A head disagrees when its row is missing or any projected column differs. Either means
-- someone wrote around the append trigger. Joins and one aggregate: linear in the ledger's
-- size.
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

-- name: ledger_chain_breaks
-- The rows whose chain_hash does not extend the row before them in ledger order, computed
-- where the rows are so that only breaks come back: the formula of ledger.on_append and of
-- verify.chain_link (sha256 of "prev_chain:position:curr_hash", '' for a missing part).
SELECT c.position, c.id::text AS id, c.seq FROM (
  SELECT r.position, r.id, r.seq, r.chain_hash,
         encode(sha256(convert_to(coalesce(lag(r.chain_hash) OVER (ORDER BY r.position), '')
                                  || ':' || r.position || ':' || coalesce(r.curr_hash, ''),
                                  'UTF8')), 'hex') AS expected
  FROM ledger.universal_registry r
) c
WHERE c.chain_hash IS DISTINCT FROM c.expected ORDER BY c.position

-- name: newest_row
-- The row with the highest position: the tip of the ledger chain as stored.
SELECT position, chain_hash FROM ledger.universal_registry ORDER BY position DESC LIMIT 1

-- name: chain_tip
-- The tip the last append recorded (schema/0004).
SELECT position, chain_hash FROM ledger.chain_tip

-- name: checkpoint_tip
-- The newest row's position and chain hash, and how many rows the ledger holds.
SELECT r.position, r.chain_hash, (SELECT count(*) FROM ledger.universal_registry) AS spans
FROM ledger.universal_registry r ORDER BY r.position DESC LIMIT 1

-- name: chain_hash_at
-- The chain hash of the row at one position.
SELECT chain_hash FROM ledger.universal_registry WHERE position = %(position)s

-- name: newest_position
-- The highest position a row holds.
SELECT max(position) AS p FROM ledger.universal_registry
