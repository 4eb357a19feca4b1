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
