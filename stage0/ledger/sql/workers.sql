-- What the kernels and the workers run beyond reading spans (stage0/boot/capabilities.py,
-- stage0/runtime/, stage0/api/state.py), on the kernel role.

-- name: append_lock
-- Take the ledger's append lock now, held to commit (ledger.append_lock, schema/0009).
SELECT ledger.append_lock()

-- name: claim_requests
-- Lock up to `batch` scheduled requests, round-robin across tenants, in the order to run
-- them (schema/0006).
SELECT {columns}, position FROM ledger.claim_requests_v2(%(batch)s)

-- name: allow_idle
-- This transaction may sit idle (while the sandbox runs what it claimed) this long.
-- Longer than the role's idle_in_transaction_session_timeout when it legitimately needs to
-- be, never shorter (0, no limit, stays).
SELECT set_config('idle_in_transaction_session_timeout',
                  CASE WHEN s.setting::bigint = 0 OR s.setting::bigint >= %(ms)s::bigint
                       THEN s.setting ELSE (%(ms)s::bigint)::text END, true) AS ms
FROM pg_settings s WHERE s.name = 'idle_in_transaction_session_timeout'

-- name: listen_timeline
-- Be notified of every append (ledger.after_append sends a small envelope per row, at
-- commit: position, id, seq, tenant_id, visibility, entity_type).
LISTEN timeline_updates

-- name: terminate_backends
-- End the database sessions of a process that was killed (an API boot that timed out).
-- Found by the application_name it was started with: ended now, so their transactions roll
-- back.
SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity
WHERE application_name = %(name)s AND pid <> pg_backend_pid()
