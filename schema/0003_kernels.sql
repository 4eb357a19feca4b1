-- What the kernels need from the database: a one-statement FIFO claim of scheduled requests,
-- and a cheap count of a tenant's executions for the daily quota.
SET LOCAL ROLE logline_owner;

CREATE INDEX ur_tenant_executions ON ledger.universal_registry (tenant_id, at)
  WHERE entity_type = 'execution';

-- Claim up to `batch` scheduled requests, oldest first, skipping ones another worker holds.
-- The row locks are the claim: they last until the claiming transaction ends, which is when
-- the request's completion (its next seq) is appended in the same transaction as the
-- execution. A worker that dies releases its locks with its connection, so the request is
-- claimed again by another worker: never lost, never completed twice (the chain refuses a
-- second seq+1). SECURITY DEFINER because FOR UPDATE needs a privilege the kernel role must
-- not have on the heads (UPDATE). Suffixed _v1 so old and new workers can coexist.
CREATE FUNCTION ledger.claim_requests_v1(batch integer)
RETURNS SETOF ledger.universal_registry
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
  WITH claimed AS (
    SELECT h.id, h.seq FROM ledger.span_heads h
    WHERE h.entity_type = 'request' AND h.status = 'scheduled'
    ORDER BY h.position
    LIMIT batch
    FOR UPDATE SKIP LOCKED
  )
  SELECT r.* FROM claimed c JOIN ledger.universal_registry r ON r.id = c.id AND r.seq = c.seq
  ORDER BY r.position
$$;
REVOKE ALL ON FUNCTION ledger.claim_requests_v1(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.claim_requests_v1(integer) TO logline_kernel;

-- Executions per tenant per UTC day, kept in the appending transaction, so the daily quota
-- is one index lookup instead of a count over every execution since midnight. One upsert per
-- statement (a transition table), not per row: a bulk append does not rewrite a hot row
-- thousands of times in one transaction.
CREATE TABLE ledger.tenant_exec_counts (
  tenant_id text   NOT NULL,
  day       date   NOT NULL,
  n         bigint NOT NULL,
  PRIMARY KEY (tenant_id, day)
);

CREATE FUNCTION ledger.count_executions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
BEGIN
  INSERT INTO ledger.tenant_exec_counts (tenant_id, day, n)
  SELECT coalesce(tenant_id, ''), (at AT TIME ZONE 'UTC')::date, count(*)
  FROM appended WHERE entity_type = 'execution' GROUP BY 1, 2
  ON CONFLICT (tenant_id, day) DO UPDATE SET n = tenant_exec_counts.n + EXCLUDED.n;
  RETURN NULL;
END
$$;

CREATE TRIGGER ur_count_executions AFTER INSERT ON ledger.universal_registry
  REFERENCING NEW TABLE AS appended FOR EACH STATEMENT
  EXECUTE FUNCTION ledger.count_executions();

REVOKE ALL ON ledger.tenant_exec_counts FROM PUBLIC;
GRANT SELECT ON ledger.tenant_exec_counts TO logline_kernel;
