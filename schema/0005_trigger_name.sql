-- The statement trigger that 0003 added to count executions has, since 0004, maintained the
-- heads, the NOTIFY envelopes and the chain tip as well (ledger.after_append). Its name now
-- says so.
SET LOCAL ROLE logline_owner;

ALTER TRIGGER ur_count_executions ON ledger.universal_registry RENAME TO ur_after_append;
