-- Fair claims and bounded sessions.
--
-- 1. Statement and idle-in-transaction timeouts for the roles that serve requests (values
--    and the paths that set longer ones locally: docs/workers.md). Role settings are
--    cluster-wide, like the roles themselves (0001), and apply to sessions started after this.
ALTER ROLE logline_app SET statement_timeout = '30s';
ALTER ROLE logline_app SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE logline_kernel SET statement_timeout = '5min';
ALTER ROLE logline_kernel SET idle_in_transaction_session_timeout = '5min';

SET LOCAL ROLE logline_owner;

-- 2. Scheduled requests per tenant, oldest first: the claim below walks the tenants and
--    their queues with it, whatever one tenant's backlog.
CREATE INDEX sh_scheduled_requests ON ledger.span_heads (coalesce(tenant_id, ''), position)
  WHERE entity_type = 'request' AND status = 'scheduled';

-- Claim up to `batch` scheduled requests round-robin across tenants: each tenant's oldest
-- request first (the tenant whose oldest has waited longest leading), then each tenant's
-- second, and so on, skipping rows another worker holds. v1 took the oldest `batch`
-- requests of the whole ledger, so one tenant's flood put every other tenant's request
-- behind all of it; here a tenant waits behind at most one request of each other tenant
-- per round. Rows come back in the order they were taken (the order to run them in). The
-- row locks are the claim, as in v1 (which stays, for workers of the previous release).
CREATE FUNCTION ledger.claim_requests_v2(batch integer)
RETURNS SETOF ledger.universal_registry
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
  tenants text[];
  after bigint[];
  n integer;
  taken integer := 0;
  progressed boolean;
  got record;
BEGIN
  -- Every tenant with scheduled requests and its oldest one: a skip scan over the partial
  -- index, one probe per tenant.
  WITH RECURSIVE t(tenant, oldest) AS (
    (SELECT coalesce(h.tenant_id, ''), h.position FROM ledger.span_heads h
     WHERE h.entity_type = 'request' AND h.status = 'scheduled'
     ORDER BY coalesce(h.tenant_id, ''), h.position LIMIT 1)
    UNION ALL
    SELECT nxt.tenant, nxt.position FROM t CROSS JOIN LATERAL (
      SELECT coalesce(h.tenant_id, '') AS tenant, h.position FROM ledger.span_heads h
      WHERE h.entity_type = 'request' AND h.status = 'scheduled'
        AND coalesce(h.tenant_id, '') > t.tenant
      ORDER BY coalesce(h.tenant_id, ''), h.position LIMIT 1) nxt
  )
  SELECT array_agg(tenant ORDER BY oldest) INTO tenants FROM t;
  n := coalesce(cardinality(tenants), 0);
  IF n = 0 OR batch < 1 THEN
    RETURN;
  END IF;
  after := array_fill(0::bigint, ARRAY[n]);
  LOOP
    progressed := false;
    FOR i IN 1..n LOOP
      EXIT WHEN taken >= batch;
      CONTINUE WHEN after[i] < 0;  -- nothing more of this tenant's is free
      SELECT h.id, h.seq, h.position INTO got FROM ledger.span_heads h
      WHERE h.entity_type = 'request' AND h.status = 'scheduled'
        AND coalesce(h.tenant_id, '') = tenants[i] AND h.position > after[i]
      ORDER BY h.position LIMIT 1
      FOR UPDATE SKIP LOCKED;
      IF FOUND THEN
        after[i] := got.position;
        taken := taken + 1;
        progressed := true;
        RETURN QUERY SELECT r.* FROM ledger.universal_registry r
                     WHERE r.id = got.id AND r.seq = got.seq;
      ELSE
        after[i] := -1;
      END IF;
    END LOOP;
    EXIT WHEN taken >= batch OR NOT progressed;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ledger.claim_requests_v2(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.claim_requests_v2(integer) TO logline_kernel;
