-- The daily execution quota (stage0/ledger/quota.py): ledger.tenant_exec_counts, kept by the
-- append trigger (schema/0003, 0004).

-- name: utc_day
-- Today's UTC date and the seconds until the quota resets (00:00 UTC).
SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
       ceil(extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
                    - (now() AT TIME ZONE 'UTC')))::integer AS resets_in_s

-- name: exec_count_today
-- A tenant's executions so far this UTC day (the kernel role).
SELECT coalesce((SELECT n FROM ledger.tenant_exec_counts WHERE tenant_id = %(tenant)s
                 AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS n

-- name: exec_counts_today
-- Every tenant's executions so far this UTC day (the kernel role).
SELECT tenant_id, n FROM ledger.tenant_exec_counts
WHERE day = (now() AT TIME ZONE 'UTC')::date ORDER BY tenant_id

-- name: my_exec_count_today
-- The caller's tenant's executions today, as the app role under RLS (schema/0008).
SELECT ledger.my_exec_count_today_v1() AS n
