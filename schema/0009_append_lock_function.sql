-- The ledger's append lock behind a name. ledger.on_append (0002, then 0004) takes
-- pg_advisory_xact_lock(5514346441049466213) ('LogLine' as an int8) for every row it
-- appends, held to commit; a kernel that must count before it appends (policy_agent,
-- run_code's quota: KernelContext.lock_appends) takes the same lock first. Until now the
-- Python code wrote the number too; from here on it calls this function, so the key lives
-- in the trigger (which migrations never edit: 0004 keeps its literal, written as an
-- assignment there for speed) and here, and nowhere else.
--
-- SECURITY INVOKER: it grants nothing the caller could not do (any role may take an
-- advisory lock); EXECUTE is only granted to the kernel role, whose kernels take it. No
-- version suffix: the key can never change while a trigger of 0004 takes it.
SET LOCAL ROLE logline_owner;

CREATE FUNCTION ledger.append_lock() RETURNS void
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog AS $$
  SELECT pg_advisory_xact_lock(5514346441049466213)
$$;
REVOKE ALL ON FUNCTION ledger.append_lock() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.append_lock() TO logline_kernel;
