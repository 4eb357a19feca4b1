-- A cheaper append path with the same rules, and the ledger chain safe in REPEATABLE READ.
--
-- 0002's ledger.on_append ran, per row, the append lock, a head SELECT ... FOR UPDATE, a head
-- INSERT or UPDATE, a chain-tip SELECT and a pg_notify: five SQL statements, ~70 us of
-- backend CPU per row. Now, per row: the lock (an assignment, not a statement), ONE query
-- that reads the id's latest stored version and the ledger's tip, the same checks in the
-- same order with the same messages, the position and the chain hash. Per statement (the
-- AFTER trigger with the transition table, which 0003 added to count executions): the heads
-- of all appended ids in one upsert, the NOTIFY envelopes in position order (unchanged), the
-- execution counts (unchanged) and the chain tip below. docs/benchmarks.md has the figures.
--
-- What the checks read: the id's latest stored version, which is what its head projects
-- (every later version must keep the first one's owner, tenant and kind) and, unlike the head
-- table, already holds the rows appended earlier in the same statement. Under READ COMMITTED
-- a trigger's queries see every committed row and the statement's own earlier rows.
--
-- REPEATABLE READ / SERIALIZABLE: 0002 chained a row to the newest row its *snapshot* showed,
-- so an append from a transaction whose snapshot predates another append's commit forked the
-- ledger chain (verify: LEDGER_CHAIN_BROKEN on an honest row). ledger.chain_tip is updated by
-- every appending statement; in those isolation levels PostgreSQL refuses to update a row
-- that changed after the snapshot (SQLSTATE 40001, "could not serialize access"), so such an
-- append now fails and can be retried instead of forking the chain. (The version chain was
-- already safe there: a stale head meets the primary key or a serialization failure.)
--
-- INSERT ... ON CONFLICT DO NOTHING: a row skipped by the idempotency index had already run
-- 0002's row trigger, which wrote its head (a head without a row) and notified it. Heads and
-- notifications now come from the transition table, which holds only rows actually stored.
SET LOCAL ROLE logline_owner;

CREATE TABLE ledger.chain_tip (
  one        boolean PRIMARY KEY DEFAULT true CHECK (one),
  position   bigint,
  chain_hash text
);
INSERT INTO ledger.chain_tip (position, chain_hash)
SELECT t.position, t.chain_hash FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT r.position, r.chain_hash FROM ledger.universal_registry r
                   ORDER BY r.position DESC LIMIT 1) t ON true;
REVOKE ALL ON ledger.chain_tip FROM PUBLIC;

CREATE OR REPLACE FUNCTION ledger.on_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
  head_seq integer;
  head_hash text;
  head_owner text;
  head_tenant text;
  head_type text;
  prev_chain text;
  done text;
BEGIN
  -- Held to commit; re-entrant within the transaction. Key: 'LogLine' as an int8. Written
  -- as an assignment, which PL/pgSQL evaluates without a full SQL statement (PERFORM is one).
  done := pg_advisory_xact_lock(5514346441049466213)::text;
  -- Under the lock: the id's latest stored version, and the row with the highest position,
  -- which is this row's predecessor in the ledger chain.
  SELECT v.seq, v.curr_hash, v.owner_id, v.tenant_id, v.entity_type, t.chain_hash
    INTO head_seq, head_hash, head_owner, head_tenant, head_type, prev_chain
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (SELECT r.seq, r.curr_hash, r.owner_id, r.tenant_id, r.entity_type
                     FROM ledger.universal_registry r WHERE r.id = NEW.id
                     ORDER BY r.seq DESC LIMIT 1) v ON true
  LEFT JOIN LATERAL (SELECT r.chain_hash FROM ledger.universal_registry r
                     ORDER BY r.position DESC LIMIT 1) t ON true;
  IF head_seq IS NULL THEN
    IF NEW.seq <> 0 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_GAP: span % seq % has no previous version (expected seq 0)',
        NEW.id, NEW.seq USING ERRCODE = 'LL001';
    END IF;
  ELSE
    -- An id names one thing with one owner forever: a new version may not move it to another
    -- owner, tenant or kind (else anyone could append a version of a public span they read).
    -- Checked first, and without echoing the head: whoever fails it may not read that span,
    -- so it must not learn how many versions it has.
    IF NEW.owner_id IS DISTINCT FROM head_owner OR NEW.tenant_id IS DISTINCT FROM head_tenant
       OR NEW.entity_type <> head_type THEN
      RAISE EXCEPTION 'LEDGER_OWNERSHIP_CHANGE: span % belongs to another owner, tenant or kind',
        NEW.id USING ERRCODE = 'LL001';
    END IF;
    IF NEW.seq > head_seq + 1 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_GAP: span % seq % skips versions: the head is seq % (expected %)',
        NEW.id, NEW.seq, head_seq, head_seq + 1 USING ERRCODE = 'LL001';
    END IF;
    IF NEW.seq <> head_seq + 1 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_CONFLICT: span % seq % already exists: the head is seq % (expected %)',
        NEW.id, NEW.seq, head_seq, head_seq + 1 USING ERRCODE = 'LL001';
    END IF;
    -- The head's hash is not echoed: the appender may not be allowed to read that span.
    IF NEW.prev_hash IS DISTINCT FROM head_hash THEN
      RAISE EXCEPTION 'LEDGER_PREV_HASH_MISMATCH: span % seq % prev_hash is not the curr_hash of seq %',
        NEW.id, NEW.seq, head_seq USING ERRCODE = 'LL001';
    END IF;
  END IF;
  NEW.position := nextval('ledger.position_seq');
  NEW.chain_hash := encode(sha256(convert_to(
    coalesce(prev_chain, '') || ':' || NEW.position || ':' || coalesce(NEW.curr_hash, ''),
    'UTF8')), 'hex');
  RETURN NEW;
END
$$;

-- Once per statement, over the rows it stored (in position order where order matters).
CREATE FUNCTION ledger.after_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
  sent bigint;
BEGIN
  -- Heads: each appended id's last version (its first one's owner, tenant and kind, which
  -- the row trigger kept equal to every version's), in the appending transaction.
  INSERT INTO ledger.span_heads
  SELECT DISTINCT ON (a.id) a.id, a.seq, a.curr_hash, a.position, a.entity_type, a.status,
    a.owner_id, a.tenant_id, a.visibility, a.is_deleted, a.at
  FROM appended a ORDER BY a.id, a.position DESC
  ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, curr_hash = EXCLUDED.curr_hash,
    position = EXCLUDED.position, status = EXCLUDED.status, visibility = EXCLUDED.visibility,
    is_deleted = EXCLUDED.is_deleted, at = EXCLUDED.at;
  -- Only a small envelope: the row itself may be megabytes (NOTIFY caps payloads at 8000 bytes)
  -- and listeners must re-read through row-level security anyway. Sent at commit.
  SELECT count(pg_notify('timeline_updates', json_build_object(
    'position', s.position, 'id', s.id, 'seq', s.seq, 'tenant_id', s.tenant_id,
    'visibility', s.visibility, 'entity_type', s.entity_type)::text)) INTO sent
  FROM (SELECT a.position, a.id, a.seq, a.tenant_id, a.visibility, a.entity_type
        FROM appended a ORDER BY a.position OFFSET 0) s;
  -- The tip, written by every appending statement (see the top of this file).
  UPDATE ledger.chain_tip SET position = t.position, chain_hash = t.chain_hash
  FROM (SELECT a.position, a.chain_hash FROM appended a ORDER BY a.position DESC LIMIT 1) t;
  -- Executions per tenant per UTC day (0003), one upsert per statement.
  INSERT INTO ledger.tenant_exec_counts (tenant_id, day, n)
  SELECT coalesce(tenant_id, ''), (at AT TIME ZONE 'UTC')::date, count(*)
  FROM appended WHERE entity_type = 'execution' GROUP BY 1, 2
  ON CONFLICT (tenant_id, day) DO UPDATE SET n = tenant_exec_counts.n + EXCLUDED.n;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ledger.after_append() FROM PUBLIC;

-- The statement trigger keeps its 0003 name (tests and tools know the ledger's triggers by
-- name); it now runs everything above, counting executions included.
CREATE OR REPLACE TRIGGER ur_count_executions AFTER INSERT ON ledger.universal_registry
  REFERENCING NEW TABLE AS appended FOR EACH STATEMENT
  EXECUTE FUNCTION ledger.after_append();
DROP FUNCTION ledger.count_executions();
