-- Memory (issue 12, stage0/memory): the memories themselves are `memory` spans in the ledger;
-- what is here is what an append-only table cannot be: the keys that must be destroyable
-- (crypto-shredding), and the derived search indexes that `logline memory reindex` rebuilds
-- from the ledger. Only the kernel role (stage 0) reads or writes them: the API acts through
-- stage 0 with the caller's tenant and user, never through row-level security here.
--
-- pgvector is optional: where the server ships the extension (the embedded PostgreSQL does)
-- it is created and ledger.memory_embeddings gets an HNSW index; where it does not (a plain
-- Debian PostgreSQL 15), memory works with text search alone and `logline memory status`
-- and every search response say so.
-- A server that ships pgvector but will not let the migrating role create it (not a
-- superuser, and pgvector 0.6 is not a trusted extension) is treated as one without it: a
-- superuser can `CREATE EXTENSION vector` later, and a new migration would add the table.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
    BEGIN
      CREATE EXTENSION IF NOT EXISTS vector;
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE NOTICE 'pgvector is available but this role may not create it: memory is text-only';
    END;
  END IF;
END
$$;

SET LOCAL ROLE logline_owner;

-- One content key per memory (all versions of a span share it), wrapped by the tenant's data
-- key (stage0/vault). Deleting a row makes that memory's ciphertext in the ledger unreadable
-- for good: forget last / session / me delete the rows of a span, a session or a user.
CREATE TABLE ledger.memory_keys (
  span_id     uuid        PRIMARY KEY,
  tenant_id   text        NOT NULL,
  owner_id    text        NOT NULL,
  session_id  text,
  wrapped     jsonb       NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mk_owner ON ledger.memory_keys (tenant_id, owner_id);
CREATE INDEX mk_session ON ledger.memory_keys (tenant_id, owner_id, session_id)
  WHERE session_id IS NOT NULL;

-- The text index: one row per live memory (its head). `terms` holds keyed hashes of the
-- words (a blind index), never the words: a dump of this table shows no plaintext, and
-- PostgreSQL's full-text machinery (GIN, ts_rank) still ranks the matches.
CREATE TABLE ledger.memory_index (
  span_id     uuid        PRIMARY KEY,
  seq         integer     NOT NULL,
  tenant_id   text        NOT NULL,
  owner_id    text        NOT NULL,
  session_id  text,
  layer       text        NOT NULL,
  visibility  text        NOT NULL,
  sensitivity text        NOT NULL,
  kind        text,
  tags        text[]      NOT NULL DEFAULT '{}',
  ttl_at      timestamptz,
  at          timestamptz NOT NULL,
  tokens      integer     NOT NULL,
  terms       tsvector    NOT NULL
);
CREATE INDEX mi_scope ON ledger.memory_index (tenant_id, owner_id, session_id);
CREATE INDEX mi_public ON ledger.memory_index (visibility) WHERE visibility = 'public';
CREATE INDEX mi_terms ON ledger.memory_index USING gin (terms);
CREATE INDEX mi_ttl ON ledger.memory_index (ttl_at) WHERE ttl_at IS NOT NULL;

REVOKE ALL ON ledger.memory_keys, ledger.memory_index FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.memory_keys, ledger.memory_index TO logline_kernel;

-- The vector index, only with pgvector. The column takes any dimension (a tenant may embed
-- with a provider's model); the HNSW index covers the default embedder's 256 dimensions
-- (wordllama l2_supercat), other models are searched exactly within their tenant.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_type WHERE typname = 'vector') THEN
    EXECUTE $sql$
      CREATE TABLE ledger.memory_embeddings (
        span_id    uuid    PRIMARY KEY,
        tenant_id  text    NOT NULL,
        owner_id   text    NOT NULL,
        session_id text,
        visibility text    NOT NULL,
        model      text    NOT NULL,
        embedding  vector  NOT NULL
      )$sql$;
    EXECUTE 'CREATE INDEX me_tenant ON ledger.memory_embeddings (tenant_id, model)';
    -- m = 8, ef_construction = 32 (pgvector's defaults are 16 and 64): inserting into the
    -- graph is most of a write's cost, several times less at these settings, and search
    -- (ef_search 400) still finds about 95% of the exact top 10 at 100,000 memories
    -- (tools/bench_memory.py; docs/benchmarks.md).
    EXECUTE 'CREATE INDEX me_hnsw ON ledger.memory_embeddings USING hnsw '
            '((embedding::vector(256)) vector_cosine_ops) WITH (m = 8, ef_construction = 32) '
            'WHERE model = ''wordllama-l2_supercat-256''';
    EXECUTE 'REVOKE ALL ON ledger.memory_embeddings FROM PUBLIC';
    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.memory_embeddings TO logline_kernel';
  END IF;
END
$$;
