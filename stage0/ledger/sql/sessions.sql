-- Sessions and transactions: who the caller is, how long statements may run, and the
-- embedded server's database (stage0/ledger/db.py).

-- name: set_identity
-- The caller's user and tenant for the rest of this transaction (row-level security).
-- Never on the session: a pooled connection forgets them at commit or rollback.
SELECT set_config('app.user_id', %(user)s, true), set_config('app.tenant_id', %(tenant)s, true)

-- name: begin
-- Start a transaction (a pipeline that cannot wait for conn.transaction()'s round trips).
BEGIN

-- name: commit
-- Commit the transaction `begin` started.
COMMIT

-- name: unbounded_transaction
-- No statement or idle timeout for the rest of this transaction (verify).
SELECT set_config('statement_timeout', '0', true),
       set_config('idle_in_transaction_session_timeout', '0', true)

-- name: unbounded_session
-- No statement or idle timeout on this session until bounded_session (seed).
SELECT set_config('statement_timeout', '0', false),
       set_config('idle_in_transaction_session_timeout', '0', false)

-- name: bounded_session
-- The role's own timeouts again.
RESET statement_timeout; RESET idle_in_transaction_session_timeout

-- name: database_exists
-- Whether the server has a database of this name.
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: create_database
-- A new database ({} is filled in as an identifier).
CREATE DATABASE {}
