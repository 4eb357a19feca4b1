-- Roles. Cluster-wide objects, so every statement tolerates a role that already exists
-- (several LogLine databases may share one server, e.g. the test suite's clones).
--
--   logline_owner  NOLOGIN. Owns every ledger object. Migrations run as (a member of) it.
--   logline_app    LOGIN. What the API and CLI read/write through. Not the owner, not a
--                  superuser, no BYPASSRLS: row-level security decides what it sees.
--   logline_kernel LOGIN, BYPASSRLS. The privileged identity of the stage-0 loader, the seed
--                  and the workers: reads across tenants, appends for them. It still cannot
--                  UPDATE, DELETE, TRUNCATE or ALTER anything (no such privileges, not owner).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'logline_owner') THEN
    CREATE ROLE logline_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'logline_app') THEN
    CREATE ROLE logline_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'logline_kernel') THEN
    CREATE ROLE logline_kernel LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS ledger AUTHORIZATION logline_owner;
REVOKE ALL ON SCHEMA ledger FROM PUBLIC;
GRANT USAGE ON SCHEMA ledger TO logline_app, logline_kernel;
