-- The vault (stage0/vault/): credentials and tenant data keys, read as the kernel role. The
-- vault checks who signed what it reads (stage0/ledger/records.py).

-- name: vault_heads
-- A tenant's vault spans: its tenant_key and its secrets (only the one named, when given).
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.tenant_id = %(tenant_id)s
  AND (h.entity_type = 'tenant_key'
       OR (h.entity_type = 'secret' AND (%(name)s::text IS NULL OR r.name = %(name)s)))
ORDER BY h.position

-- name: vault_tenant_keys
-- Every tenant's data key span (a master key rotation re-wraps them all).
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'tenant_key'
ORDER BY h.position

-- name: vault_first_at
-- When each of these spans was first appended (a secret's creation time).
SELECT id::text AS id, min(at) AS first_at FROM ledger.universal_registry
WHERE id = ANY(%(ids)s::uuid[]) GROUP BY id
