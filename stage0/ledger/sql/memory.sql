-- Memory (stage0/memory, stage0/ledger/memory_index.py): the destroyable content keys and the
-- derived search indexes of schema/0012_memory.sql, read and written as the kernel role with
-- the caller's tenant and user passed explicitly (no row-level security on these tables).

-- name: memory_has_vectors
-- Whether this database has pgvector and the vector index (false on a server without it).
SELECT to_regclass('ledger.memory_embeddings') IS NOT NULL AS vectors,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS version

-- name: memory_key_insert
-- A memory's content key, wrapped by its tenant's data key.
INSERT INTO ledger.memory_keys (span_id, tenant_id, owner_id, session_id, wrapped)
VALUES (%(span_id)s, %(tenant_id)s, %(owner_id)s, %(session_id)s, %(wrapped)s)

-- name: memory_keys_of
-- The wrapped content keys of some memories of one tenant.
SELECT span_id::text AS span_id, owner_id, session_id, wrapped FROM ledger.memory_keys
WHERE tenant_id = %(tenant_id)s AND span_id = ANY(%(ids)s::uuid[])

-- name: memory_forget_keys
-- Destroy the content keys of a user's memories: one span, one session, or all of them.
DELETE FROM ledger.memory_keys
WHERE tenant_id = %(tenant_id)s AND owner_id = %(owner_id)s
  AND (%(span_id)s::uuid IS NULL OR span_id = %(span_id)s::uuid)
  AND (%(session_id)s::text IS NULL OR session_id = %(session_id)s)
RETURNING span_id::text AS span_id

-- name: memory_last_of
-- The user's most recent live memory (in one session when given): what "forget last" forgets.
SELECT span_id::text AS span_id FROM ledger.memory_index
WHERE tenant_id = %(tenant_id)s AND owner_id = %(owner_id)s
  AND (%(session_id)s::text IS NULL OR session_id = %(session_id)s)
ORDER BY at DESC, span_id DESC LIMIT 1

-- name: memory_index_upsert
-- The text index row of a memory's head (terms: keyed hashes of its words, never the words).
INSERT INTO ledger.memory_index (span_id, seq, tenant_id, owner_id, session_id, layer,
  visibility, sensitivity, kind, tags, ttl_at, at, tokens, terms)
VALUES (%(span_id)s, %(seq)s, %(tenant_id)s, %(owner_id)s, %(session_id)s, %(layer)s,
  %(visibility)s, %(sensitivity)s, %(kind)s, %(tags)s, %(ttl_at)s, %(at)s, %(tokens)s,
  to_tsvector('simple', %(terms)s))
ON CONFLICT (span_id) DO UPDATE SET seq = EXCLUDED.seq, layer = EXCLUDED.layer,
  visibility = EXCLUDED.visibility, sensitivity = EXCLUDED.sensitivity, kind = EXCLUDED.kind,
  tags = EXCLUDED.tags, ttl_at = EXCLUDED.ttl_at, at = EXCLUDED.at, tokens = EXCLUDED.tokens,
  terms = EXCLUDED.terms, session_id = EXCLUDED.session_id

-- name: memory_index_delete
-- Drop the derived text index rows of some memories (forgotten, expired, reindexed).
DELETE FROM ledger.memory_index WHERE span_id = ANY(%(ids)s::uuid[])

-- name: memory_embedding_upsert
-- The vector of a memory's head (only with pgvector).
INSERT INTO ledger.memory_embeddings (span_id, tenant_id, owner_id, session_id, visibility,
  model, embedding)
VALUES (%(span_id)s, %(tenant_id)s, %(owner_id)s, %(session_id)s, %(visibility)s, %(model)s,
  %(embedding)s)
ON CONFLICT (span_id) DO UPDATE SET visibility = EXCLUDED.visibility, model = EXCLUDED.model,
  embedding = EXCLUDED.embedding, session_id = EXCLUDED.session_id

-- name: memory_embedding_delete
-- Drop the vectors of some memories (forgotten, expired, sensitive, reindexed).
DELETE FROM ledger.memory_embeddings WHERE span_id = ANY(%(ids)s::uuid[])

-- name: memory_text_search
-- Full-text candidates the caller may see: their own memories, their tenant's shared ones,
-- public ones; live (not past ttl_at) and in the scopes asked for. scope: 0 this session,
-- 1 the caller's own, 2 the tenant's, 3 public.
SELECT * FROM (
  SELECT i.span_id::text AS span_id, i.layer, i.tokens, ts_rank(i.terms, query) AS rank,
    CASE WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s
              AND i.session_id IS NOT NULL AND i.session_id = %(session_id)s THEN 0
         WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s THEN 1
         WHEN i.tenant_id = %(tenant_id)s AND i.visibility = 'tenant' THEN 2
         ELSE 3 END AS scope
  FROM ledger.memory_index i, to_tsquery('simple', %(query)s) query
  WHERE i.terms @@ query
    AND ((i.tenant_id = %(tenant_id)s AND (i.owner_id = %(user_id)s OR i.visibility = 'tenant'))
         OR i.visibility = 'public')
    AND (i.ttl_at IS NULL OR i.ttl_at > now())
) hits WHERE scope = ANY(%(scopes)s::int[])
ORDER BY rank DESC, span_id LIMIT %(limit)s

-- name: memory_ef_search
-- How many candidates the HNSW scan keeps (recall against speed), for this transaction.
SELECT set_config('hnsw.ef_search', %(ef)s, true)

-- name: memory_vector_search
-- Nearest memories by cosine distance through the HNSW index (the default 256-dimension
-- model), over-fetched and then kept to what the caller may see, as memory_text_search.
WITH near AS (
  SELECT e.span_id, e.embedding::vector(256) <=> %(embedding)s::vector(256) AS distance
  FROM ledger.memory_embeddings e
  WHERE e.model = 'wordllama-l2_supercat-256'
  ORDER BY e.embedding::vector(256) <=> %(embedding)s::vector(256) LIMIT %(fetch)s
)
SELECT * FROM (
  SELECT i.span_id::text AS span_id, i.layer, i.tokens, 1 - near.distance AS similarity,
    CASE WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s
              AND i.session_id IS NOT NULL AND i.session_id = %(session_id)s THEN 0
         WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s THEN 1
         WHEN i.tenant_id = %(tenant_id)s AND i.visibility = 'tenant' THEN 2
         ELSE 3 END AS scope
  FROM near JOIN ledger.memory_index i ON i.span_id = near.span_id
  WHERE ((i.tenant_id = %(tenant_id)s AND (i.owner_id = %(user_id)s OR i.visibility = 'tenant'))
         OR i.visibility = 'public')
    AND (i.ttl_at IS NULL OR i.ttl_at > now())
) hits WHERE scope = ANY(%(scopes)s::int[])
ORDER BY similarity DESC, span_id LIMIT %(limit)s

-- name: memory_vector_exact
-- The same as memory_vector_search by an exact scan of the caller's visible vectors of one
-- model (any dimension): what other models use, and the baseline HNSW recall is measured by.
SELECT * FROM (
  SELECT i.span_id::text AS span_id, i.layer, i.tokens,
    1 - (e.embedding <=> %(embedding)s::vector) AS similarity,
    CASE WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s
              AND i.session_id IS NOT NULL AND i.session_id = %(session_id)s THEN 0
         WHEN i.tenant_id = %(tenant_id)s AND i.owner_id = %(user_id)s THEN 1
         WHEN i.tenant_id = %(tenant_id)s AND i.visibility = 'tenant' THEN 2
         ELSE 3 END AS scope
  FROM ledger.memory_embeddings e JOIN ledger.memory_index i ON i.span_id = e.span_id
  WHERE e.model = %(model)s
    AND ((e.tenant_id = %(tenant_id)s AND (e.owner_id = %(user_id)s OR e.visibility = 'tenant'))
         OR e.visibility = 'public')
    AND (i.ttl_at IS NULL OR i.ttl_at > now())
) hits WHERE scope = ANY(%(scopes)s::int[])
ORDER BY similarity DESC, span_id LIMIT %(limit)s

-- name: memory_heads
-- The latest versions of some memory spans of the caller's view (kernel role: filtered here).
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.id = ANY(%(ids)s::uuid[]) AND h.entity_type = 'memory'
  AND ((h.tenant_id = %(tenant_id)s AND (h.owner_id = %(user_id)s OR h.visibility = 'tenant'))
       OR h.visibility = 'public')

-- name: memory_heads_of_owner
-- Every memory span head of one user in one tenant (export, forget me), oldest first.
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.tenant_id = %(tenant_id)s AND h.owner_id = %(owner_id)s AND h.entity_type = 'memory'
ORDER BY (SELECT min(f.position) FROM ledger.universal_registry f WHERE f.id = h.id)

-- name: memory_all_heads
-- Every memory span head of one tenant, or of every tenant (reindex), in append order.
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.entity_type = 'memory' AND (%(tenant_id)s::text IS NULL OR h.tenant_id = %(tenant_id)s)
ORDER BY h.position

-- name: memory_index_clear
-- Empty the derived text index of one tenant, or of every tenant (before a reindex).
DELETE FROM ledger.memory_index WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s

-- name: memory_embeddings_clear
-- Empty the vector index of one tenant, or of every tenant (before a reindex).
DELETE FROM ledger.memory_embeddings
WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s

-- name: memory_expired
-- Memories whose ttl_at has passed and are still indexed (the TTL reaper's work).
SELECT span_id::text AS span_id, tenant_id, owner_id FROM ledger.memory_index
WHERE ttl_at IS NOT NULL AND ttl_at <= now() ORDER BY ttl_at LIMIT %(limit)s

-- name: memory_counts
-- How many memories, keys and vectors a tenant (or the whole ledger) has indexed.
SELECT (SELECT count(*) FROM ledger.memory_index
        WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s) AS indexed,
       (SELECT count(*) FROM ledger.memory_keys
        WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s) AS keys

-- name: memory_embedding_count
-- How many vectors a tenant (or the whole ledger) has (only with pgvector).
SELECT count(*) AS vectors FROM ledger.memory_embeddings
WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s

-- name: memory_contract_head
-- A memory contract (JSON Schema span) the caller's tenant may use: its own or a public one.
SELECT {columns:r} FROM ledger.span_heads h
JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq
WHERE h.id = %(id)s::uuid AND h.entity_type = 'memory_contract' AND NOT h.is_deleted
  AND (h.tenant_id = %(tenant_id)s OR h.visibility = 'public')

-- name: memory_list
-- The caller's browse view, newest first: their own memories and those shared in their tenant
-- (tenant or public visibility) that are live and unexpired, optionally of one layer or one of
-- their sessions, after the cursor (at, span_id) of the previous page's last memory.
SELECT i.span_id::text AS span_id, i.at, i.layer, i.tokens,
  CASE WHEN i.owner_id = %(user_id)s AND i.session_id IS NOT NULL
            AND i.session_id = %(caller_session)s THEN 0
       WHEN i.owner_id = %(user_id)s THEN 1
       WHEN i.visibility = 'tenant' THEN 2
       ELSE 3 END AS scope
FROM ledger.memory_index i
WHERE i.tenant_id = %(tenant_id)s
  AND (i.owner_id = %(user_id)s OR i.visibility IN ('tenant', 'public'))
  AND (i.ttl_at IS NULL OR i.ttl_at > now())
  AND (%(layer)s::text IS NULL OR i.layer = %(layer)s::text)
  AND (%(session_id)s::text IS NULL
       OR (i.owner_id = %(user_id)s AND i.session_id = %(session_id)s::text))
  AND (%(before_at)s::timestamptz IS NULL
       OR (i.at, i.span_id) < (%(before_at)s::timestamptz, %(before_id)s::uuid))
ORDER BY i.at DESC, i.span_id DESC
LIMIT %(limit)s

-- name: memory_list_cursor
-- Where a page of memory_list starts: the previous page's last memory, if the caller still
-- sees it in the index.
SELECT i.at FROM ledger.memory_index i
WHERE i.span_id = %(span_id)s::uuid AND i.tenant_id = %(tenant_id)s
  AND (i.owner_id = %(user_id)s OR i.visibility IN ('tenant', 'public'))
