-- The ledger: one append-only table of signed spans, its head projection, and the rules that
-- keep both honest. Everything here runs as logline_owner so the application roles own nothing.
SET LOCAL ROLE logline_owner;

-- Global append position. Handed out under one transaction-scoped advisory lock (see
-- ledger.on_append), so positions become visible in commit order: a reader that has seen
-- position N will never later discover a committed row below N. Gaps (rollbacks) are normal.
CREATE SEQUENCE ledger.position_seq AS bigint;

CREATE TABLE ledger.universal_registry (
  position     bigint      NOT NULL,
  id           uuid        NOT NULL,
  seq          integer     NOT NULL CHECK (seq >= 0),
  entity_type  text        NOT NULL CHECK (length(entity_type) BETWEEN 1 AND 100),
  who          text        NOT NULL,
  did          text,
  "this"       text        NOT NULL,
  -- Millisecond precision, one-dimensional arrays from 1: what the canonical form can express.
  -- Anything else would read back differently from what was stored and hide an edit.
  at           timestamptz NOT NULL CHECK (at = date_trunc('milliseconds', at)),
  parent_id    uuid,
  related_to   uuid[] CHECK (array_ndims(related_to) = 1 AND array_lower(related_to, 1) = 1),
  owner_id     text        CHECK (length(owner_id) BETWEEN 1 AND 200),
  tenant_id    text        CHECK (length(tenant_id) BETWEEN 1 AND 200),
  visibility   text        NOT NULL DEFAULT 'private'
                           CHECK (visibility IN ('private', 'tenant', 'public')),
  status       text,
  is_deleted   boolean     NOT NULL DEFAULT false,
  name         text,
  description  text,
  code         text,
  language     text,
  runtime      text,
  input        jsonb,
  output       jsonb,
  error        jsonb,
  duration_ms  integer,
  trace_id     text,
  prev_hash    text        CHECK (length(prev_hash) = 64 AND prev_hash !~ '[^0-9a-f]'),
  -- Proof columns are nullable on purpose: the database cannot check Ed25519, so a missing
  -- proof is reported by `verify` and refused by the loader (SIGNATURE_MISSING) like a wrong
  -- one, instead of being a different kind of failure. The write path always fills them.
  -- Lowercase hex of a fixed length, written without regular expressions: an anchored
  -- regex costs ~6-17 us per value and these run for every appended row.
  curr_hash    text        CHECK (length(curr_hash) = 64 AND curr_hash !~ '[^0-9a-f]'),
  signature    text        CHECK (length(signature) = 128 AND signature !~ '[^0-9a-f]'),
  public_key   text        CHECK (length(public_key) = 64 AND public_key !~ '[^0-9a-f]'),
  metadata     jsonb,
  content      jsonb,
  -- Ledger-wide hash chain over append order: sha256 of the previous row's chain_hash, this
  -- row's position and curr_hash. Signatures cover a span's content; this covers the order and
  -- completeness of the ledger itself (positions, removed rows). Computed by ledger.on_append.
  chain_hash   text        NOT NULL CHECK (length(chain_hash) = 64),
  PRIMARY KEY (id, seq),
  CONSTRAINT first_version_has_no_prev CHECK ((seq = 0) = (prev_hash IS NULL))
);

-- Head projection: the current version of every id, written only by the append trigger in
-- the same transaction as the row, so "latest version of X" and "all scheduled requests" are
-- index lookups whatever the ledger's size.
CREATE TABLE ledger.span_heads (
  id           uuid        PRIMARY KEY,
  seq          integer     NOT NULL,
  curr_hash    text,
  position     bigint      NOT NULL,
  entity_type  text        NOT NULL,
  status       text,
  owner_id     text,
  tenant_id    text,
  visibility   text        NOT NULL,
  is_deleted   boolean     NOT NULL,
  at           timestamptz NOT NULL
);

CREATE UNIQUE INDEX ur_position ON ledger.universal_registry (position);
CREATE INDEX ur_at ON ledger.universal_registry (at DESC);
CREATE INDEX ur_entity_at ON ledger.universal_registry (entity_type, at DESC);
CREATE INDEX ur_owner_tenant ON ledger.universal_registry (owner_id, tenant_id);
CREATE INDEX ur_tenant_position ON ledger.universal_registry (tenant_id, position);
CREATE INDEX ur_trace ON ledger.universal_registry (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX ur_parent ON ledger.universal_registry (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX ur_related ON ledger.universal_registry USING gin (related_to);
CREATE INDEX ur_metadata ON ledger.universal_registry USING gin (metadata jsonb_path_ops);
-- Scheduling is idempotent: one request per (tenant, idempotency key), counted on the first
-- version only, because completing a request appends seq 1, 2, ... of the same id.
CREATE UNIQUE INDEX ur_request_idempotency
  ON ledger.universal_registry (tenant_id, (metadata ->> 'idempotency_key'))
  WHERE entity_type = 'request' AND seq = 0 AND metadata ? 'idempotency_key';

CREATE INDEX sh_entity_status ON ledger.span_heads (entity_type, status, position);
CREATE INDEX sh_tenant_entity ON ledger.span_heads (tenant_id, entity_type, position);

-- One function does everything an append needs, inside the inserting transaction:
-- serialise positions, enforce the version chain, maintain the head, notify listeners.
CREATE FUNCTION ledger.on_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
  head ledger.span_heads%ROWTYPE;
  prev_chain text;
BEGIN
  -- Held to commit; re-entrant within the transaction. Key: 'LogLine' as an int8.
  PERFORM pg_advisory_xact_lock(5514346441049466213);
  SELECT * INTO head FROM ledger.span_heads WHERE span_heads.id = NEW.id FOR UPDATE;
  IF NOT FOUND THEN
    IF NEW.seq <> 0 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_GAP: span % seq % has no previous version (expected seq 0)',
        NEW.id, NEW.seq USING ERRCODE = 'LL001';
    END IF;
  ELSE
    -- An id names one thing with one owner forever: a new version may not move it to another
    -- owner, tenant or kind (else anyone could append a version of a public span they read).
    -- Checked first, and without echoing the head: whoever fails it may not read that span,
    -- so it must not learn how many versions it has.
    IF NEW.owner_id IS DISTINCT FROM head.owner_id OR NEW.tenant_id IS DISTINCT FROM head.tenant_id
       OR NEW.entity_type <> head.entity_type THEN
      RAISE EXCEPTION 'LEDGER_OWNERSHIP_CHANGE: span % belongs to another owner, tenant or kind',
        NEW.id USING ERRCODE = 'LL001';
    END IF;
    IF NEW.seq > head.seq + 1 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_GAP: span % seq % skips versions: the head is seq % (expected %)',
        NEW.id, NEW.seq, head.seq, head.seq + 1 USING ERRCODE = 'LL001';
    END IF;
    IF NEW.seq <> head.seq + 1 THEN
      RAISE EXCEPTION 'LEDGER_SEQ_CONFLICT: span % seq % already exists: the head is seq % (expected %)',
        NEW.id, NEW.seq, head.seq, head.seq + 1 USING ERRCODE = 'LL001';
    END IF;
    -- The head's hash is not echoed: the appender may not be allowed to read that span.
    IF NEW.prev_hash IS DISTINCT FROM head.curr_hash THEN
      RAISE EXCEPTION 'LEDGER_PREV_HASH_MISMATCH: span % seq % prev_hash is not the curr_hash of seq %',
        NEW.id, NEW.seq, head.seq USING ERRCODE = 'LL001';
    END IF;
  END IF;
  NEW.position := nextval('ledger.position_seq');
  IF head.id IS NULL THEN
    INSERT INTO ledger.span_heads VALUES (NEW.id, NEW.seq, NEW.curr_hash, NEW.position,
      NEW.entity_type, NEW.status, NEW.owner_id, NEW.tenant_id, NEW.visibility, NEW.is_deleted,
      NEW.at);
  ELSE
    UPDATE ledger.span_heads SET seq = NEW.seq, curr_hash = NEW.curr_hash,
      position = NEW.position, status = NEW.status, visibility = NEW.visibility,
      is_deleted = NEW.is_deleted, at = NEW.at
    WHERE span_heads.id = NEW.id;
  END IF;
  -- Under the lock, the row with the highest position is this row's predecessor.
  SELECT r.chain_hash INTO prev_chain FROM ledger.universal_registry r
    ORDER BY r.position DESC LIMIT 1;
  NEW.chain_hash := encode(sha256(convert_to(
    coalesce(prev_chain, '') || ':' || NEW.position || ':' || coalesce(NEW.curr_hash, ''),
    'UTF8')), 'hex');
  -- Only a small envelope: the row itself may be megabytes (NOTIFY caps payloads at 8000 bytes)
  -- and listeners must re-read through row-level security anyway.
  PERFORM pg_notify('timeline_updates', json_build_object(
    'position', NEW.position, 'id', NEW.id, 'seq', NEW.seq, 'tenant_id', NEW.tenant_id,
    'visibility', NEW.visibility, 'entity_type', NEW.entity_type)::text);
  RETURN NEW;
END
$$;

CREATE FUNCTION ledger.reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'LEDGER_APPEND_ONLY: % on ledger.% is not allowed; append a new version instead',
    TG_OP, TG_TABLE_NAME USING ERRCODE = 'LL002';
END
$$;

CREATE TRIGGER ur_append BEFORE INSERT ON ledger.universal_registry
  FOR EACH ROW EXECUTE FUNCTION ledger.on_append();
CREATE TRIGGER ur_no_update_delete BEFORE UPDATE OR DELETE ON ledger.universal_registry
  FOR EACH ROW EXECUTE FUNCTION ledger.reject_mutation();
CREATE TRIGGER ur_no_truncate BEFORE TRUNCATE ON ledger.universal_registry
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.reject_mutation();

CREATE VIEW ledger.visible_timeline WITH (security_invoker = true) AS
  SELECT r.*, r.at AS "when" FROM ledger.universal_registry r WHERE NOT r.is_deleted;

CREATE VIEW ledger.latest_spans WITH (security_invoker = true) AS
  SELECT r.* FROM ledger.span_heads h
  JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq;

-- Row-level security, forced so that not even the owner reads around it. The kernel role
-- has BYPASSRLS by design (see 0001_roles.sql); superusers bypass RLS in PostgreSQL anyway.
-- A private span is visible to its owner only inside the owner's tenant: user names are not
-- unique across tenants, so matching the owner alone would leak between tenants.
ALTER TABLE ledger.universal_registry ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.universal_registry FORCE ROW LEVEL SECURITY;
ALTER TABLE ledger.span_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.span_heads FORCE ROW LEVEL SECURITY;

CREATE POLICY span_read ON ledger.universal_registry FOR SELECT TO logline_app USING (
  visibility = 'public'
  OR (tenant_id = current_setting('app.tenant_id', true)
      AND (visibility = 'tenant' OR owner_id = current_setting('app.user_id', true))));
CREATE POLICY span_append ON ledger.universal_registry FOR INSERT TO logline_app WITH CHECK (
  owner_id = current_setting('app.user_id', true)
  AND tenant_id = current_setting('app.tenant_id', true));
-- The append trigger (SECURITY DEFINER, so it runs as the owner) maintains the heads and
-- reads the chain tip.
CREATE POLICY owner_read ON ledger.universal_registry FOR SELECT TO logline_owner USING (true);
CREATE POLICY head_maintain ON ledger.span_heads TO logline_owner USING (true) WITH CHECK (true);
CREATE POLICY head_read ON ledger.span_heads FOR SELECT TO logline_app USING (
  visibility = 'public'
  OR (tenant_id = current_setting('app.tenant_id', true)
      AND (visibility = 'tenant' OR owner_id = current_setting('app.user_id', true))));

REVOKE ALL ON ALL TABLES IN SCHEMA ledger FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger.on_append() FROM PUBLIC;
GRANT SELECT, INSERT ON ledger.universal_registry TO logline_app, logline_kernel;
GRANT SELECT ON ledger.span_heads, ledger.visible_timeline, ledger.latest_spans
  TO logline_app, logline_kernel;
-- Reading the sequence's high-water mark lets `verify` spot positions never handed out.
GRANT SELECT ON SEQUENCE ledger.position_seq TO logline_kernel;
