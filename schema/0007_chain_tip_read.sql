-- verify compares the newest row with the tip every append writes (ledger.chain_tip, 0004):
-- rows deleted from the end by a superuser who left the tip alone show up as
-- CHAIN_TRUNCATED. (A tip rewritten as well is caught by a checkpoint file: stage0/checkpoint.py.)
SET LOCAL ROLE logline_owner;

GRANT SELECT ON ledger.chain_tip TO logline_kernel;
