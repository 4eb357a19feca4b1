-- A tenant's executions today, for the API (which runs as logline_app under row-level
-- security and may not read ledger.tenant_exec_counts, whose rows span every tenant).
-- SECURITY DEFINER, and it takes no argument: it answers for the caller's own tenant only
-- (app.tenant_id, set per transaction by the API), 0 when none is set. POST /api/execute
-- refuses at once (429 QUOTA_EXCEEDED) when this has reached the tenant's daily limit, and
-- GET /api/metrics shows it. Suffixed _v1 so old and new servers can coexist.
SET LOCAL ROLE logline_owner;

CREATE FUNCTION ledger.my_exec_count_today_v1()
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
  SELECT coalesce((SELECT c.n FROM ledger.tenant_exec_counts c
                   WHERE c.tenant_id = nullif(current_setting('app.tenant_id', true), '')
                     AND c.day = (now() AT TIME ZONE 'UTC')::date), 0)
$$;
REVOKE ALL ON FUNCTION ledger.my_exec_count_today_v1() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.my_exec_count_today_v1() TO logline_app, logline_kernel;
