-- LLM tokens per tenant, provider and UTC day (issue 11, stage0/llm): what the per-tenant daily
-- token budget counts, kept in the appending transaction like tenant_exec_counts (0003), so a
-- call's budget check is one index lookup instead of a sum over every provider_execution of
-- the day. ledger.after_append (0004) is re-created with the same body plus one upsert.
--
-- The count does not look at who signed the row (the trigger cannot check signatures): a
-- tenant that posts look-alike provider_execution spans can only raise its own count (its
-- tenant is its own under row-level security, and a value that is not a whole number from 0
-- to 10^12 counts as 0), so it can spend its own budget, never lower it.
SET LOCAL ROLE logline_owner;

CREATE TABLE ledger.provider_token_counts (
  tenant_id text   NOT NULL,
  provider  text   NOT NULL,
  day       date   NOT NULL,
  tokens    bigint NOT NULL,
  PRIMARY KEY (tenant_id, provider, day)
);
REVOKE ALL ON ledger.provider_token_counts FROM PUBLIC;
GRANT SELECT ON ledger.provider_token_counts TO logline_kernel;

CREATE FUNCTION ledger.token_count(value jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT CASE WHEN jsonb_typeof(value) = 'number' AND value::numeric >= 0
                   AND value::numeric <= 1000000000000
              THEN floor(value::numeric)::bigint ELSE 0 END
$$;
REVOKE ALL ON FUNCTION ledger.token_count(jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ledger.after_append() RETURNS trigger
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
  -- LLM tokens per tenant, provider and UTC day (0010), one upsert per statement.
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
