-- The secret that keys every id the platform derives (stage0/ids.py): policy cursors and
-- emissions, rollups, job claims, contract and api-key span ids. Derived from public inputs
-- alone (uuid5), such an id could be taken by any writer before the platform appended it,
-- wedging a policy or an agent for good. 256 bits from PostgreSQL's strong random source
-- (gen_random_uuid), made once per ledger, readable by the kernel role only: every worker
-- machine and API server of one ledger derives the same ids, whatever key it signs with.
SET LOCAL ROLE logline_owner;

CREATE TABLE ledger.platform_secret (
  only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  derivation bytea NOT NULL CHECK (length(derivation) = 32)
);

INSERT INTO ledger.platform_secret (derivation)
SELECT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                         || gen_random_uuid()::text, 'UTF8'));

REVOKE ALL ON ledger.platform_secret FROM PUBLIC;
GRANT SELECT ON ledger.platform_secret TO logline_kernel;

-- verify compares the newest row with the tip every append writes (ledger.chain_tip, 0004):
-- rows deleted from the end by a superuser who left the tip alone show up as
-- CHAIN_TRUNCATED. (A tip rewritten as well is caught by a checkpoint file: stage0/checkpoint.py.)
GRANT SELECT ON ledger.chain_tip TO logline_kernel;
