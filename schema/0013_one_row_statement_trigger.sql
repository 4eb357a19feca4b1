-- The statement trigger of the append path (ledger.after_append, 0004 then 0010) for the
-- statements the API and the workers send most: one span, and none (issue 13).
--
-- 0010 ran five SQL statements over the transition table for every appending statement, each
-- paying PL/pgSQL's per-statement executor cost (~20-30 us) whatever the number of rows: the
-- heads upsert, the NOTIFY envelopes, the chain tip, the execution counts and the token counts.
-- A one-span append (the API's writes, one per commit) paid ~120-180 us of backend time for it,
-- and an INSERT that stored nothing (store.append's "insert if these ids are new", when one is
-- not) paid the same for no row.
--
-- Now ONE statement reads the first stored row and how many there are, and then:
-- * no row: nothing to do (no head, no notification, no tip: nothing was stored);
-- * one row: the same writes with the row's values: the heads upsert and the chain tip as
--   single-row statements, the NOTIFY envelope as an expression (no statement), and the
--   execution or token count only when the row is of that kind (a test of a variable);
-- * several rows: 0010's set-based statements, unchanged.
-- Same heads, same envelopes (json_build_object of the same columns, in position order: a
-- single row has one), same tip, same counts. The row trigger (ledger.on_append, every check
-- of the chain, ownership and kinds) is not touched.
SET LOCAL ROLE logline_owner;

CREATE OR REPLACE FUNCTION ledger.after_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
  sent bigint;
  one_row record;
  rows_stored bigint;
  done text;
BEGIN
  SELECT a.id, a.seq, a.curr_hash, a.position, a.entity_type, a.status, a.owner_id,
         a.tenant_id, a.visibility, a.is_deleted, a.at, a.chain_hash, a."this", a.metadata,
         (SELECT count(*) FROM appended) AS n
    INTO one_row FROM appended a LIMIT 1;
  IF NOT FOUND THEN
    RETURN NULL;  -- the statement stored no row
  END IF;
  rows_stored := one_row.n;
  IF rows_stored = 1 THEN
    INSERT INTO ledger.span_heads VALUES (one_row.id, one_row.seq, one_row.curr_hash,
      one_row.position, one_row.entity_type, one_row.status, one_row.owner_id,
      one_row.tenant_id, one_row.visibility, one_row.is_deleted, one_row.at)
    ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, curr_hash = EXCLUDED.curr_hash,
      position = EXCLUDED.position, status = EXCLUDED.status, visibility = EXCLUDED.visibility,
      is_deleted = EXCLUDED.is_deleted, at = EXCLUDED.at;
    -- An assignment: PL/pgSQL evaluates it without a full SQL statement.
    done := pg_notify('timeline_updates', json_build_object(
      'position', one_row.position, 'id', one_row.id, 'seq', one_row.seq,
      'tenant_id', one_row.tenant_id, 'visibility', one_row.visibility,
      'entity_type', one_row.entity_type)::text)::text;
    UPDATE ledger.chain_tip SET position = one_row.position, chain_hash = one_row.chain_hash;
    IF one_row.entity_type = 'execution' THEN
      INSERT INTO ledger.tenant_exec_counts (tenant_id, day, n)
      VALUES (coalesce(one_row.tenant_id, ''), (one_row.at AT TIME ZONE 'UTC')::date, 1)
      ON CONFLICT (tenant_id, day) DO UPDATE SET n = tenant_exec_counts.n + EXCLUDED.n;
    ELSIF one_row.entity_type = 'provider_execution' THEN
      INSERT INTO ledger.provider_token_counts (tenant_id, provider, day, tokens)
      VALUES (coalesce(one_row.tenant_id, ''), coalesce(one_row."this", ''),
              (one_row.at AT TIME ZONE 'UTC')::date,
              ledger.token_count(one_row.metadata->'tokens_in')
              + ledger.token_count(one_row.metadata->'tokens_out'))
      ON CONFLICT (tenant_id, provider, day)
      DO UPDATE SET tokens = provider_token_counts.tokens + EXCLUDED.tokens;
    END IF;
    RETURN NULL;
  END IF;
  -- Several rows: 0010's statements, unchanged.
  INSERT INTO ledger.span_heads
  SELECT DISTINCT ON (a.id) a.id, a.seq, a.curr_hash, a.position, a.entity_type, a.status,
    a.owner_id, a.tenant_id, a.visibility, a.is_deleted, a.at
  FROM appended a ORDER BY a.id, a.position DESC
  ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, curr_hash = EXCLUDED.curr_hash,
    position = EXCLUDED.position, status = EXCLUDED.status, visibility = EXCLUDED.visibility,
    is_deleted = EXCLUDED.is_deleted, at = EXCLUDED.at;
  SELECT count(pg_notify('timeline_updates', json_build_object(
    'position', s.position, 'id', s.id, 'seq', s.seq, 'tenant_id', s.tenant_id,
    'visibility', s.visibility, 'entity_type', s.entity_type)::text)) INTO sent
  FROM (SELECT a.position, a.id, a.seq, a.tenant_id, a.visibility, a.entity_type
        FROM appended a ORDER BY a.position OFFSET 0) s;
  UPDATE ledger.chain_tip SET position = t.position, chain_hash = t.chain_hash
  FROM (SELECT a.position, a.chain_hash FROM appended a ORDER BY a.position DESC LIMIT 1) t;
  INSERT INTO ledger.tenant_exec_counts (tenant_id, day, n)
  SELECT coalesce(tenant_id, ''), (at AT TIME ZONE 'UTC')::date, count(*)
  FROM appended WHERE entity_type = 'execution' GROUP BY 1, 2
  ON CONFLICT (tenant_id, day) DO UPDATE SET n = tenant_exec_counts.n + EXCLUDED.n;
  INSERT INTO ledger.provider_token_counts (tenant_id, provider, day, tokens)
  SELECT coalesce(tenant_id, ''), coalesce("this", ''), (at AT TIME ZONE 'UTC')::date,
         sum(ledger.token_count(metadata->'tokens_in')
             + ledger.token_count(metadata->'tokens_out'))
  FROM appended WHERE entity_type = 'provider_execution' GROUP BY 1, 2, 3
  ON CONFLICT (tenant_id, provider, day)
  DO UPDATE SET tokens = provider_token_counts.tokens + EXCLUDED.tokens;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION ledger.after_append() FROM PUBLIC;
