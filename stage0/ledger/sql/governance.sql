-- Governance (stage0/gov/): contracts, API keys, proposals and approvals, agents' jobs, the
-- audit trail. A record counts only when the platform signed it: the queries that list
-- records take the platform's keys (records.platform) as `keys`.

-- name: active_contract_activations
-- The newest platform-signed activation of each contract name of a tenant.
SELECT DISTINCT ON (content ->> 'name') content FROM ledger.universal_registry
WHERE entity_type = 'contract_activation' AND tenant_id = %(tenant)s AND status = 'active'
  AND public_key = ANY(%(keys)s)
ORDER BY content ->> 'name', position DESC

-- name: tenant_contracts
-- The contract spans of the system and of a tenant, oldest first (checked by the caller).
SELECT id::text AS id, tenant_id, public_key, content FROM ledger.latest_spans
WHERE entity_type = 'contract' AND tenant_id IN ('system', %(tenant)s) ORDER BY position

-- name: contract_roles
-- Every role a contract declares.
SELECT DISTINCT jsonb_object_keys(content -> 'roles') AS role FROM ledger.latest_spans
WHERE entity_type = 'contract' AND jsonb_typeof(content -> 'roles') = 'object'

-- name: role_holders
-- The users of a tenant with an active API key carrying a role (on the kernel role: keys
-- are private to their owners).
SELECT r.owner_id FROM ledger.span_heads h JOIN ledger.universal_registry r
  ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'api_key' AND h.tenant_id = %(tenant)s AND h.status = 'active'
  AND r.metadata -> 'roles' ? %(role)s

-- name: api_keys
-- Every API key (of one tenant, or all), oldest first: owner, tenant, status and metadata.
SELECT r.owner_id, r.tenant_id, r.status, r.metadata, r.at FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'api_key' AND (%(tenant)s::text IS NULL OR h.tenant_id = %(tenant)s)
ORDER BY h.position

-- name: approval_requests
-- A tenant's platform-signed approval requests, newest first (the approvals inbox).
SELECT {columns} FROM ledger.latest_spans WHERE entity_type = 'approval_request'
  AND tenant_id = %(tenant)s AND public_key = ANY(%(keys)s)
ORDER BY position DESC LIMIT %(limit)s

-- name: job_claimers
-- Who claimed the jobs of a proposal (the agents that planned or ran it).
SELECT c.owner_id FROM ledger.universal_registry j JOIN ledger.universal_registry c
  ON c.parent_id = j.id AND c.entity_type = 'job_claim'
WHERE j.parent_id = %(proposal)s AND j.entity_type = 'job'

-- name: jobs_lock
-- One tenant's job hand-out at a time: held to the end of the transaction.
SELECT pg_advisory_xact_lock(hashtextextended(%(name)s, 7))

-- name: jobs_queued
-- A tenant's platform-signed jobs nobody has claimed (of these actions, if given), oldest
-- first.
SELECT {columns} FROM ledger.latest_spans j WHERE j.entity_type = 'job'
  AND j.tenant_id = %(tenant)s AND j.public_key = ANY(%(keys)s)
  AND (%(actions)s::text[] IS NULL OR j.content ->> 'action' = ANY(%(actions)s))
  AND NOT EXISTS (SELECT 1 FROM ledger.universal_registry c
                  WHERE c.parent_id = j.id AND c.entity_type = 'job_claim')
ORDER BY j.position LIMIT %(limit)s

-- name: jobs_unreported
-- A tenant's platform-signed jobs this API key claimed and has not reported, oldest first
-- (a claim whose answer was lost in transit is handed out again).
SELECT {columns:j}
FROM ledger.latest_spans j JOIN ledger.universal_registry c ON c.parent_id = j.id
  AND c.entity_type = 'job_claim' AND c.status = 'claimed'
  AND c.content ->> 'key_id' = %(key_id)s AND c.public_key = ANY(%(keys)s)
WHERE j.entity_type = 'job' AND j.tenant_id = %(tenant)s
  AND j.public_key = ANY(%(keys)s) AND NOT EXISTS (
    SELECT 1 FROM ledger.universal_registry r WHERE r.parent_id = j.id
      AND r.entity_type = 'job_result')
ORDER BY j.position LIMIT %(limit)s

-- name: audit_trail
-- The visible spans of a trace, a tenant and/or some kinds, oldest first, from a position on
-- (`logline audit export`, GET /api/audit/export).
SELECT {columns}, position FROM ledger.visible_timeline
WHERE (%(trace_id)s::text IS NULL OR trace_id = %(trace_id)s)
  AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
  AND (%(types)s::text[] IS NULL OR entity_type = ANY(%(types)s))
  AND (%(after)s::bigint IS NULL OR position > %(after)s)
ORDER BY position LIMIT %(limit)s
