-- Migrations (stage0/ledger/migrate.py), on the administrative connection. The migrations
-- themselves are the files of schema/.

-- name: migrations_lock
-- One `logline migrate` at a time on this server (a session lock: released by
-- migrations_unlock; its key is the append lock's plus one).
SELECT pg_advisory_lock(5514346441049466214)

-- name: migrations_unlock
-- Release migrations_lock.
SELECT pg_advisory_unlock(5514346441049466214)

-- name: migrations_table
-- Where the applied migrations are recorded (made on first use).
CREATE SCHEMA IF NOT EXISTS logline_meta;
CREATE TABLE IF NOT EXISTS logline_meta.migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON SCHEMA logline_meta FROM PUBLIC;

-- name: migrations_done
-- The migrations applied, with their checksums.
SELECT version, name, checksum FROM logline_meta.migrations

-- name: reset_role
-- Back to the session's own role after a migration's SET LOCAL ROLE.
RESET ROLE

-- name: migration_record
-- Record one migration as applied (in its own transaction).
INSERT INTO logline_meta.migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s)

-- name: migrations_applied
-- The names of the migrations applied, in order.
SELECT name FROM logline_meta.migrations ORDER BY version
