"""Memory as ledger rows: what stage 0 does for the memory kernels, the API and the CLI.

A memory is a `memory` span owned by the user who wrote it in their tenant:

    metadata = {"layer", "type", "schema_id", "tags", "sensitivity", "ttl_at", "session_id",
                "tokens", "model"}
    content  = {"text", "data"}                                  (sensitivity public)
             = {"redacted": true, "sealed": {"alg", "nonce", "ciphertext"}}   (otherwise)

Non-public content is sealed (AES-256-GCM) with a content key of its own, bound to tenant,
span and version; that key is kept wrapped by the tenant's data key (stage0/vault) in
`ledger.memory_keys`, outside the append-only ledger, so that deleting it destroys the
content for good (crypto-shredding: forget last / session / me). No master key = no write
and no read of non-public memory (MASTER_KEY_MISSING: fail closed).

Every write also appends the next version of the tenant's `memory_audit` span (one id per
tenant, so the ledger's version chain is the rolling hash of every memory write) naming the
spans written with their hashes. Forgetting appends a `forgotten` version of each memory and
a `memory_redaction` span; exporting appends a `memory_export` span.

Search: the blind text index (text.py, PostgreSQL full text) and, with pgvector, the vector
index (HNSW) each rank candidates; reciprocal rank fusion joins them; hits come nearest scope
first (session > own > tenant > public), best score within a scope, and are kept while they
fit a budget of tokens.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.keys import derivation_secret
from stage0.ledger import memory_index as mi
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.memory import text as mtext
from stage0.spans.canonical import format_at, parse_at
from stage0.spans.ids import derive_id
from stage0.vault import at_rest, crypto
from stage0.vault.credentials import HomeOrMaster, tenant_heads

KIND = "memory"
AUDIT = "memory_audit"
REDACTION = "memory_redaction"
EXPORT = "memory_export"
CONTRACT = "memory_contract"
LAYERS = ("session", "temporary", "permanent", "shared", "local")
SENSITIVITIES = ("public", "internal", "secret", "pii")
VISIBILITIES = ("private", "tenant", "public")
RRF_K = 60
#: A vector neighbour below this cosine similarity is not a match (the nearest memories are
#: always "nearest", relevant or not); wordllama puts unrelated short texts under ~0.15.
MIN_SIMILARITY = 0.2
MAX_TEXT = 64 * 1024
MAX_BATCH = 5000
_TAG = re.compile(r"^[\w.:@/-]{1,64}\Z")
_SESSION = re.compile(r"^[\w.:@-]{1,200}\Z")
_FIELDS = {"id", "text", "data", "layer", "type", "schema_id", "tags", "sensitivity",
           "visibility", "ttl_at", "ttl_s", "session_id", "embedding", "model",
           "embed_sensitive"}


@dataclass(frozen=True)
class Caller:
    """Who a memory operation acts for: every read and write is limited to what they own in
    their tenant, what their tenant shares, and what is public."""

    user_id: str
    tenant_id: str
    session_id: str | None = None


def _bad(message: str, where: str) -> LoglineError:
    return LoglineError("MEMORY_INVALID", message, where)


# --- input --------------------------------------------------------------------------------
def check_item(raw: Any, where: str = "memory", session_id: str | None = None
               ) -> dict[str, Any]:
    """One memory to write, checked field by field (MEMORY_INVALID naming the field);
    `session_id` is the caller's session, the default of the memory's."""
    if not isinstance(raw, Mapping):
        raise _bad("a memory is an object with at least `text`", where)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})",
                   f"{where}.{unknown[0]}")
    item: dict[str, Any] = {}
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _bad("text must be a non-empty string", f"{where}.text")
    if len(text.encode("utf-8")) > MAX_TEXT:
        raise _bad(f"text is over {MAX_TEXT} bytes", f"{where}.text")
    item["text"] = text
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise _bad("data must be an object", f"{where}.data")
    item["data"] = data
    for name, allowed, default in (("layer", LAYERS, None),
                                   ("sensitivity", SENSITIVITIES, "internal"),
                                   ("visibility", VISIBILITIES, None)):
        value = raw.get(name, default)
        if value is not None and value not in allowed:
            raise _bad(f"{name} must be one of {', '.join(allowed)}", f"{where}.{name}")
        item[name] = value
    session = raw.get("session_id", session_id)
    if session is not None and (not isinstance(session, str) or not _SESSION.match(session)):
        raise _bad("session_id: 1-200 letters, digits or . : @ - _", f"{where}.session_id")
    item["session_id"] = session
    item["layer"] = item["layer"] or ("session" if session else "temporary")
    if item["layer"] == "session" and not session:
        raise _bad("a session memory needs a session_id (X-LogLine-Session)",
                   f"{where}.session_id")
    item["visibility"] = item["visibility"] or ("tenant" if item["layer"] == "shared"
                                                else "private")
    if item["visibility"] == "public" and item["sensitivity"] != "public":
        raise _bad("only a memory of sensitivity public may be public", f"{where}.visibility")
    kind = raw.get("type", "note")
    if not isinstance(kind, str) or not _TAG.match(kind):
        raise _bad("type: 1-64 letters, digits or . : @ / - _", f"{where}.type")
    item["type"] = kind
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or len(tags) > 32 or \
            not all(isinstance(t, str) and _TAG.match(t) for t in tags):
        raise _bad("tags: a list of at most 32 tags of 1-64 letters, digits or . : @ / - _",
                   f"{where}.tags")
    item["tags"] = sorted(set(tags))
    item["ttl_at"] = _ttl(raw, where)
    for name in ("id", "schema_id"):
        value = raw.get(name)
        if value is not None:
            try:
                value = str(uuid.UUID(str(value)))
            except ValueError:
                raise _bad(f"{name} must be a UUID", f"{where}.{name}") from None
        item[name] = value
    embedding, model = raw.get("embedding"), raw.get("model")
    if embedding is not None:
        if not isinstance(embedding, list) or not 1 <= len(embedding) <= 4096 or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in embedding):
            raise _bad("embedding must be a list of 1-4096 numbers", f"{where}.embedding")
        if not isinstance(model, str) or not _TAG.match(model):
            raise _bad("an embedding needs the name of its model", f"{where}.model")
    item["embedding"], item["model"] = embedding, model
    item["embed_sensitive"] = raw.get("embed_sensitive") is True
    return item


def _ttl(raw: Mapping[str, Any], where: str) -> str | None:
    if raw.get("ttl_s") is not None:
        ttl = raw["ttl_s"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 10 * 365 * 86400:
            raise _bad("ttl_s must be a whole number of seconds (1 to ten years)",
                       f"{where}.ttl_s")
        return format_at(datetime.now(UTC) + timedelta(seconds=ttl))
    if raw.get("ttl_at") is None:
        return None
    try:
        return format_at(parse_at(raw["ttl_at"], f"{where}.ttl_at"))
    except LoglineError:
        raise _bad("ttl_at must be an ISO 8601 time with a zone", f"{where}.ttl_at") from None


def _check_contract(conn: Connection, caller: Caller, item: dict[str, Any],
                    where: str, cache: dict[str, Any]) -> None:
    """Validate `data` against the memory contract `schema_id` names (a JSON Schema span of
    the caller's tenant, or a public one): errors name the field."""
    schema_id = item["schema_id"]
    if schema_id is None:
        return
    if schema_id not in cache:
        span = mi.contract(conn, schema_id, caller.tenant_id)
        schema = ((span or {}).get("content") or {}).get("schema")
        if not isinstance(schema, dict):
            raise LoglineError("MEMORY_CONTRACT_NOT_FOUND", "schema_id names no memory_contract "
                               "span (with content.schema, a JSON Schema) of your tenant or "
                               "public", f"{where}.schema_id")
        import jsonschema
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise LoglineError("MEMORY_CONTRACT_NOT_FOUND", f"the contract's schema is not a "
                               f"valid JSON Schema: {exc.message}", f"{where}.schema_id") from None
        cache[schema_id] = cls(schema)
    errors = sorted(cache[schema_id].iter_errors(item["data"] if item["data"] is not None
                                                 else {}),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
        raise LoglineError("MEMORY_CONTRACT_VIOLATION", f"{first.message} (contract "
                           f"{schema_id})", f"{where}.data{path}")


# --- the service --------------------------------------------------------------------------
class Memory:
    """Memory operations on one connection (the kernel role), signed with `key`, opening
    non-public content with the master key `master`. Each method runs in one transaction
    (a savepoint inside the caller's)."""

    def __init__(self, conn: Connection, key: SigningKey, master: HomeOrMaster | None,
                 id_secret: bytes | None = None, root_key: str | None = None) -> None:
        self.conn = conn
        self.key = key
        self.master = master
        self.id_secret = id_secret or derivation_secret(key)
        self.root_key = root_key
        self._vectors: bool | None = None
        self._data_keys: dict[str, Any] = {}

    # --- helpers ------------------------------------------------------------------------
    @property
    def vectors(self) -> bool:
        if self._vectors is None:
            self._vectors = mi.vector_support(self.conn)["vectors"]
        return self._vectors

    def _master(self) -> HomeOrMaster:
        if self.master is None:
            raise LoglineError("MASTER_KEY_MISSING", "non-public memory is encrypted: no "
                               "master key, no memory (set LOGLINE_MASTER_KEY or keep "
                               "keys/master.key in the home)")
        return self.master

    def _tenant_key(self, tenant_id: str, version: int | None = None) -> tuple[bytes, int]:
        """A tenant's data key (its current version, or `version`), read once per service
        object: one is made per request, so a rotation is seen by the next one."""
        keys = self._data_keys.get(tenant_id)
        if keys is None:
            keys = at_rest.data_keys(self.conn, self.key, self._master(), tenant_id,
                                     id_secret=self.id_secret, root_key=self.root_key)
            self._data_keys[tenant_id] = keys
        v = keys.current if version is None else version
        return keys.key(v), v

    def _terms_key(self, tenant_id: str) -> bytes:
        # The first data key version: a rotation of the data key leaves the index readable.
        return mtext.terms_key(self._tenant_key(tenant_id, 1)[0])

    def _has_data_key(self, tenant_id: str) -> bool:
        """Whether the tenant has a data key (read only: a search never makes one)."""
        if tenant_id in self._data_keys:
            return True
        tk_head, _ = tenant_heads(self.conn, tenant_id, "", self.root_key)
        return tk_head is not None

    def _audit(self, caller: Caller, op: str, spans: Sequence[Mapping[str, Any]],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        audit_id = derive_id(self.id_secret, AUDIT, caller.tenant_id)
        return store.append(self.conn, [{
            "id": audit_id, "entity_type": AUDIT, "who": "memory", "did": op,
            "this": f"memory {op} x{len(spans)}", "owner_id": "system",
            "tenant_id": caller.tenant_id, "visibility": "tenant", "status": "recorded",
            "content": {"op": op, "by": caller.user_id, **(extra or {}),
                        "spans": [[s["id"], s["seq"], s["curr_hash"]] for s in spans]},
        }], self.key)[0]

    def _lock(self) -> None:
        """The ledger's append lock, held to commit: the audit chain is extended by one
        writer at a time, without a retry."""
        self.conn.execute(q("append_lock"))

    # --- write --------------------------------------------------------------------------
    def upsert(self, caller: Caller, items: Sequence[Any], *, promoted: bool = False
               ) -> list[dict[str, Any]]:
        """Write memories (new, or the next version of one of the caller's own: `id`); all
        or nothing. Returns [{span_id, seq, layer, sensitivity, curr_hash, vector}]. The
        `permanent` layer is reached only through review (`promoted`, from promote()) or
        kept by a memory already there."""
        if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_BATCH:
            raise _bad(f"a list of 1-{MAX_BATCH} memories", "memories")
        checked = [check_item(raw, f"memories[{i}]", caller.session_id)
                   for i, raw in enumerate(items)]
        with self.conn.transaction():
            self._lock()
            contracts: dict[str, Any] = {}
            for i, item in enumerate(checked):
                _check_contract(self.conn, caller, item, f"memories[{i}]", contracts)
            heads = self._own_heads(caller, [c["id"] for c in checked if c["id"]])
            embeddings = self._embeddings(checked)
            drafts, keys, plan = [], [], []
            tenant_key = version = None
            old_keys = mi.keys_of(self.conn, caller.tenant_id, list(heads))
            for i, item in enumerate(checked):
                head = heads.get(item["id"]) if item["id"] else None
                span_id = item["id"] or str(uuid.uuid4())
                seq = head["seq"] + 1 if head else 0
                if item["layer"] == "permanent" and not promoted and not (
                        head and head["metadata"].get("layer") == "permanent"):
                    raise _bad("a memory becomes permanent only through review (POST "
                               "/api/memory/{id}/promote, logline memory promote)",
                               f"memories[{i}].layer")
                if head and head["metadata"].get("sensitivity") != item["sensitivity"]:
                    raise _bad("a memory keeps its sensitivity: write a new memory",
                               f"memories[{i}].sensitivity")
                if item["sensitivity"] == "public":
                    content: dict[str, Any] = {"text": item["text"], "data": item["data"]}
                else:
                    if tenant_key is None:
                        tenant_key, version = self._tenant_key(caller.tenant_id)
                    if head:
                        found = old_keys.get(span_id)
                        if found is None:
                            raise LoglineError("MEMORY_FORGOTTEN", "this memory was forgotten",
                                               f"memories[{i}].id")
                        content_key = self._unwrap(caller.tenant_id, span_id, found["wrapped"])
                    else:
                        content_key = crypto.new_key()
                        keys.append({"span_id": span_id, "tenant_id": caller.tenant_id,
                                     "owner_id": caller.user_id,
                                     "session_id": item["session_id"],
                                     "wrapped": {**crypto.seal(
                                         tenant_key, content_key,
                                         _key_aad(caller.tenant_id, span_id)),
                                         "key_version": version}})
                    plain = json.dumps({"text": item["text"], "data": item["data"]},
                                       sort_keys=True, separators=(",", ":"))
                    content = {"redacted": True, "sealed": crypto.seal(
                        content_key, plain, _content_aad(caller.tenant_id, span_id, seq))}
                vector = embeddings[i]
                drafts.append({
                    "id": span_id, **({"seq": seq, "prev_hash": head["curr_hash"]}
                                      if head else {}),
                    "entity_type": KIND, "who": "memory", "did": "remembered",
                    "this": f"{item['layer']} memory ({item['type']})",
                    "owner_id": caller.user_id, "tenant_id": caller.tenant_id,
                    "visibility": item["visibility"], "status": "active",
                    "metadata": {k: item[k] for k in ("layer", "type", "schema_id", "tags",
                                                      "sensitivity", "ttl_at", "session_id")}
                    | {"tokens": mtext.tokens(item["text"]),
                       "model": vector[0] if vector else None},
                    "content": content,
                })
                plan.append((item, vector))
            if keys:
                mi.insert_keys(self.conn, keys)
            spans = store.append(self.conn, drafts, self.key)
            self._index(caller.tenant_id, spans, plan)
            self._audit(caller, "upsert", spans)
        return [{"span_id": s["id"], "seq": s["seq"], "layer": s["metadata"]["layer"],
                 "sensitivity": s["metadata"]["sensitivity"], "curr_hash": s["curr_hash"],
                 "vector": s["metadata"]["model"]} for s in spans]

    def _own_heads(self, caller: Caller, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        found = mi.heads(self.conn, ids, caller.tenant_id, caller.user_id)
        for span_id in ids:
            head = found.get(span_id)
            if head is None or head["owner_id"] != caller.user_id or \
                    head["tenant_id"] != caller.tenant_id:
                raise LoglineError("MEMORY_NOT_FOUND", "no memory of yours with this id",
                                   span_id)
            if head["status"] != "active":
                raise LoglineError("MEMORY_FORGOTTEN", f"this memory is {head['status']}",
                                   span_id)
        return found

    def _embeddings(self, items: list[dict[str, Any]]) -> list[tuple[str, Any] | None]:
        """(model, vector) per item, or None: no pgvector, or a secret/pii memory whose
        writer did not opt in (a vector leaks what the text is about)."""
        out: list[tuple[str, Any] | None] = [None] * len(items)
        if not self.vectors:
            return out
        todo = []
        for i, item in enumerate(items):
            if item["sensitivity"] in ("secret", "pii") and not item["embed_sensitive"]:
                continue
            if item["embedding"] is not None:
                out[i] = (item["model"], item["embedding"])
            else:
                todo.append(i)
        if todo:
            from stage0.memory import embedder
            vectors = embedder.embed([items[i]["text"] for i in todo])
            for i, vector in zip(todo, vectors, strict=True):
                out[i] = (embedder.MODEL, vector)
        return out

    def _index(self, tenant_id: str, spans: Sequence[Mapping[str, Any]],
               plan: Sequence[tuple[dict[str, Any], tuple[str, Any] | None]]) -> None:
        rows, vectors = [], []
        tenant_terms: bytes | None = None
        for span, (item, vector) in zip(spans, plan, strict=True):
            if span["metadata"]["sensitivity"] == "public":  # its text is in the ledger
                key = mtext.PUBLIC_KEY
            else:
                tenant_terms = tenant_terms or self._terms_key(tenant_id)
                key = tenant_terms
            meta = span["metadata"]
            rows.append({"span_id": span["id"], "seq": span["seq"], "tenant_id": tenant_id,
                         "owner_id": span["owner_id"], "session_id": meta["session_id"],
                         "layer": meta["layer"], "visibility": span["visibility"],
                         "sensitivity": meta["sensitivity"], "kind": meta["type"],
                         "tags": meta["tags"], "ttl_at": meta["ttl_at"], "at": span["at"],
                         "tokens": meta["tokens"], "terms": mtext.terms(key, item["text"])})
            if vector is not None:
                vectors.append({"span_id": span["id"], "tenant_id": tenant_id,
                                "owner_id": span["owner_id"], "session_id": meta["session_id"],
                                "visibility": span["visibility"], "model": vector[0],
                                "embedding": vector[1]})
        mi.index(self.conn, rows)
        if self.vectors:
            stale = [r["span_id"] for r in rows
                     if r["span_id"] not in {v["span_id"] for v in vectors}]
            if stale:
                self.conn.execute(q("memory_embedding_delete"), {"ids": stale})
            mi.embed(self.conn, vectors)

    # --- read ---------------------------------------------------------------------------
    def _unwrap(self, tenant_id: str, span_id: str, wrapped: Mapping[str, Any]) -> bytes:
        tenant_key, _ = self._tenant_key(tenant_id, int(wrapped["key_version"]))
        return crypto.open_(tenant_key, wrapped, _key_aad(tenant_id, span_id),
                            f"memory {span_id}")

    def _open(self, span: Mapping[str, Any], keys: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, Any]:
        """{"text", "data"} of a memory span; MEMORY_FORGOTTEN when its key is gone."""
        if span["status"] != "active":
            raise LoglineError("MEMORY_FORGOTTEN", f"this memory is {span['status']}",
                               span["id"])
        body = span.get("content") or {}
        if not body.get("redacted"):
            return {"text": body.get("text"), "data": body.get("data")}
        found = keys.get(span["id"])
        if found is None:
            raise LoglineError("MEMORY_FORGOTTEN", "this memory's key was destroyed: its "
                               "content is unreadable for good", span["id"])
        content_key = self._unwrap(span["tenant_id"], span["id"], found["wrapped"])
        plain = crypto.open_(content_key, body.get("sealed") or {},
                             _content_aad(span["tenant_id"], span["id"], span["seq"]),
                             f"memory {span['id']}")
        opened: dict[str, Any] = json.loads(plain)
        return opened

    def _readable(self, caller: Caller, ids: Sequence[str]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        spans = mi.heads(self.conn, ids, caller.tenant_id, caller.user_id)
        by_tenant: dict[str, list[str]] = {}
        for s in spans.values():
            by_tenant.setdefault(s["tenant_id"], []).append(s["id"])
        keys: dict[str, dict[str, Any]] = {}
        for tenant, tids in by_tenant.items():
            keys.update(mi.keys_of(self.conn, tenant, tids))
        return spans, keys

    def get(self, caller: Caller, span_id: str) -> dict[str, Any]:
        """One memory the caller may see, decrypted (MEMORY_NOT_FOUND otherwise: absent and
        invisible look the same)."""
        spans, keys = self._readable(caller, [span_id])
        span = spans.get(span_id)
        if span is None:
            raise LoglineError("MEMORY_NOT_FOUND", "no memory with this id is visible to you",
                               span_id)
        return {**_described(span), **self._open(span, keys)}

    def search(self, caller: Caller, query: str, *, budget: int = 1000, limit: int = 10,
               scopes: Sequence[str] = mi.SCOPES, embedding: Sequence[float] | None = None,
               model: str | None = None, exact: bool = False) -> dict[str, Any]:
        """{hits: [{span_id, score, preview, layer, scope, tokens}], mode, vectors, note}."""
        if not isinstance(query, str) or not query.strip() or len(query) > 4000:
            raise _bad("query must be a non-empty string of at most 4000 characters", "query")
        if not isinstance(budget, int) or not 1 <= budget <= 200_000:
            raise _bad("budget must be 1-200000 tokens", "budget")
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise _bad("limit must be 1-100", "limit")
        bad = [s for s in scopes if s not in mi.SCOPES]
        if bad or not scopes:
            raise _bad(f"scopes are some of {', '.join(mi.SCOPES)}", "scopes")
        wanted = sorted(mi.SCOPES.index(s) for s in set(scopes))
        if caller.session_id is None and wanted == [0]:
            raise _bad("a session-only search needs a session (X-LogLine-Session)", "scopes")
        fetch = max(limit * 4, 40)
        args: dict[str, Any] = {"tenant_id": caller.tenant_id, "user_id": caller.user_id,
                "session_id": caller.session_id, "scopes": wanted, "limit": fetch}
        with self.conn.transaction():
            keys = [mtext.PUBLIC_KEY]
            if self.master is not None and self._has_data_key(caller.tenant_id):
                keys.append(self._terms_key(caller.tenant_id))
            text_hits = self._text_hits(keys, query, args)
            vector_hits: list[dict[str, Any]] = []
            if self.vectors:
                if embedding is None:
                    from stage0.memory import embedder
                    embedding, model = embedder.embed([query])[0], embedder.MODEL
                vector_hits = mi.vector_search(self.conn, embedding=embedding,
                                               model=model or "", exact=exact, **args)
            fused = _fuse(text_hits, vector_hits)
            hits = self._fit(caller, fused, budget, limit)
        out: dict[str, Any] = {"hits": hits, "mode": "text+vector" if self.vectors else "text",
                               "vectors": self.vectors}
        if not self.vectors:
            out["note"] = ("text search only: this PostgreSQL has no pgvector extension "
                           "(ledger.memory_embeddings does not exist)")
        return out

    def _text_hits(self, keys: list[bytes], query: str,
                   args: dict[str, Any]) -> list[dict[str, Any]]:
        """Memories holding every word of the query first; only when they are too few, those
        holding any (ranking every memory that shares one common word costs the most)."""
        every = mtext.query(keys, query, every=True)
        if every is None:
            return []
        hits = mi.text_search(self.conn, query=every, **args)
        if len(hits) >= args["limit"]:
            return hits
        seen = {h["span_id"] for h in hits}
        anyword = mtext.query(keys, query)
        more = mi.text_search(self.conn, query=anyword, **args) \
            if anyword is not None and anyword != every else []
        return hits + [h for h in more if h["span_id"] not in seen][:args["limit"] - len(hits)]

    def _fit(self, caller: Caller, fused: list[dict[str, Any]], budget: int,
             limit: int) -> list[dict[str, Any]]:
        spans, keys = self._readable(caller, [h["span_id"] for h in fused[:limit * 4]])
        hits, used = [], 0
        for hit in fused:
            span = spans.get(hit["span_id"])
            if span is None:
                continue
            try:
                opened = self._open(span, keys)
            except LoglineError as exc:
                if exc.code == "MEMORY_FORGOTTEN":
                    continue
                raise
            preview = mtext.preview(opened["text"] or "")
            cost = mtext.tokens(preview)
            if used + cost > budget:
                continue
            used += cost
            hits.append({"span_id": span["id"], "score": round(hit["score"], 6),
                         "preview": preview, "layer": hit["layer"],
                         "scope": mi.SCOPES[hit["scope"]], "tokens": cost})
            if len(hits) == limit:
                break
        return hits

    def browse(self, caller: Caller, *, layer: str | None = None,
               session_id: str | None = None, limit: int = 20,
               before: str | None = None) -> dict[str, Any]:
        """The caller's memories newest first: their own and those shared in their tenant
        (live, unexpired), of one `layer` or one of their sessions if asked, after the
        memory `before` (the previous page's `next_before`). Each item is described
        (layer, type, tags, ...) with a `preview` only when the caller may read it now
        (its key opens); otherwise `preview` is null."""
        if layer is not None and layer not in LAYERS:
            raise _bad(f"layer is one of {', '.join(LAYERS)}", "layer")
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise _bad("limit must be 1-100", "limit")
        with self.conn.transaction():
            rows = mi.listed(self.conn, tenant_id=caller.tenant_id, user_id=caller.user_id,
                             caller_session=caller.session_id, layer=layer,
                             session_id=session_id, before=before, limit=limit)
            if rows is None:
                raise _bad("before: not a memory in your list (forgotten, expired, or "
                           "never yours to see)", "before")
            spans, keys = self._readable(caller, [r["span_id"] for r in rows])
            items = []
            for row in rows:
                span = spans.get(row["span_id"])
                if span is None:
                    continue
                preview = None
                try:
                    preview = mtext.preview(self._open(span, keys)["text"] or "")
                except LoglineError as exc:
                    if exc.code not in ("MEMORY_FORGOTTEN", "MASTER_KEY_MISSING"):
                        raise  # content that does not open is said, never hidden
                items.append({**_described(span), "scope": mi.SCOPES[row["scope"]],
                              "tokens": row["tokens"], "preview": preview})
        return {"memories": items,
                "next_before": rows[-1]["span_id"] if len(rows) == limit else None}

    # --- forgetting, export, expiry -----------------------------------------------------
    def forget(self, caller: Caller, what: str, *, session_id: str | None = None,
               span_id: str | None = None) -> dict[str, Any]:
        """Forget the caller's `last` memory (in their session when they have one), a
        `session`'s, one `span`, or all of them (`me`): destroy their content keys, delete
        their vectors and index rows, append a `forgotten` version of each and one
        memory_redaction span. {"forgotten": n, "span_ids": [...], "redaction_id"}."""
        if what not in ("last", "session", "me", "span"):
            raise _bad("forget what: last, session, me or span", "what")
        session = session_id or caller.session_id
        if what == "session" and not session:
            raise _bad("forget session needs a session id", "session_id")
        with self.conn.transaction():
            self._lock()
            if what == "last":
                target = mi.last_of(self.conn, caller.tenant_id, caller.user_id, session)
                ids = [target] if target else []
            elif what == "span":
                if span_id is None:
                    raise _bad("forget span needs its id", "span_id")
                ids = [span_id]
            else:
                ids = [s["id"] for s in mi.heads_of_owner(self.conn, caller.tenant_id,
                                                          caller.user_id)
                       if s["status"] == "active" and (what == "me" or
                                                       s["metadata"].get("session_id") == session)]
            heads = mi.heads(self.conn, ids, caller.tenant_id, caller.user_id)
            mine = [heads[i] for i in ids if i in heads and heads[i]["owner_id"] ==
                    caller.user_id and heads[i]["tenant_id"] == caller.tenant_id
                    and heads[i]["status"] == "active"]
            if what == "span" and not mine:
                raise LoglineError("MEMORY_NOT_FOUND", "no live memory of yours with this id",
                                   span_id)
            ids = [s["id"] for s in mine]
            if not ids and what in ("last", "me"):
                return {"forgotten": 0, "span_ids": [], "redaction_id": None}
            for i in ids:
                mi.forget_keys(self.conn, caller.tenant_id, caller.user_id, i, None)
            if what in ("session", "me"):  # keys of memories not indexed (an interrupted write)
                mi.forget_keys(self.conn, caller.tenant_id, caller.user_id, None,
                               session if what == "session" else None)
            mi.unindex(self.conn, ids, self.vectors)
            spans = store.append(self.conn, [_tombstone(s, "forgotten") for s in mine],
                                 self.key) if mine else []
            redaction = store.append(self.conn, [{
                "entity_type": REDACTION, "who": "memory", "did": f"forgot {what}",
                "this": f"forgot {len(ids)} memories", "owner_id": caller.user_id,
                "tenant_id": caller.tenant_id, "visibility": "private", "status": "done",
                "content": {"what": what, "session_id": session if what == "session" else None,
                            "span_ids": ids},
            }], self.key)[0]
            self._audit(caller, f"forget_{what}", spans, {"redaction_id": redaction["id"]})
        return {"forgotten": len(ids), "span_ids": ids, "redaction_id": redaction["id"]}

    def promote(self, owner: Caller, span_id: str) -> dict[str, Any]:
        """The next version of `owner`'s memory in the `permanent` layer, without ttl_at
        (the same content, sealed again for its new version). Only after a review:
        stage0/gov/memory_review.py decides, through the gate."""
        current = self.get(owner, span_id)
        if current["owner_id"] != owner.user_id:
            raise LoglineError("MEMORY_NOT_FOUND", "no memory of yours with this id", span_id)
        head = mi.heads(self.conn, [span_id], owner.tenant_id, owner.user_id)[span_id]
        item = {k: current[k] for k in ("text", "data", "type", "tags", "sensitivity",
                                        "visibility", "schema_id", "session_id")}
        item = {k: v for k, v in item.items() if v is not None}
        [done] = self.upsert(owner, [{**item, "id": span_id, "layer": "permanent",
                                      "embed_sensitive": head["metadata"].get("model")
                                      is not None}], promoted=True)
        return done

    def export(self, caller: Caller) -> dict[str, Any]:
        """The caller's memories in their tenant, decrypted, with span ids and hashes (a data
        subject request); forgotten ones are listed without content. Recorded as a
        memory_export span (what was exported: ids and the bundle's hash, never content)."""
        with self.conn.transaction():
            self._lock()
            spans = mi.heads_of_owner(self.conn, caller.tenant_id, caller.user_id)
            keys = mi.keys_of(self.conn, caller.tenant_id, [s["id"] for s in spans])
            items = []
            for span in spans:
                entry = _described(span)
                try:
                    entry.update(self._open(span, keys))
                except LoglineError as exc:
                    if exc.code != "MEMORY_FORGOTTEN":
                        raise
                    entry["forgotten"] = True
                items.append(entry)
            bundle = {"tenant_id": caller.tenant_id, "user_id": caller.user_id,
                      "memories": items}
            import blake3
            digest = blake3.blake3(json.dumps(bundle, sort_keys=True).encode()).hexdigest()
            record = store.append(self.conn, [{
                "entity_type": EXPORT, "who": "memory", "did": "exported",
                "this": f"export of {len(items)} memories", "owner_id": caller.user_id,
                "tenant_id": caller.tenant_id, "visibility": "private", "status": "done",
                "content": {"span_ids": [s["id"] for s in spans], "bundle_blake3": digest},
            }], self.key)[0]
            self._audit(caller, "export", [], {"export_id": record["id"]})
        return {**bundle, "export_id": record["id"], "bundle_blake3": digest,
                "exported_at": record["at"]}

    def expire(self, limit: int = 1000) -> dict[str, Any]:
        """Memories whose ttl_at has passed (every tenant): keys destroyed, index rows and
        vectors deleted, an `expired` version appended. Search already leaves them out from
        the moment ttl_at passes; this makes them unreadable."""
        with self.conn.transaction():
            self._lock()
            rows = mi.expired(self.conn, limit)
            by_span = {r["span_id"]: r for r in rows}
            done: list[dict[str, Any]] = []
            for span_id, row in by_span.items():
                mi.forget_keys(self.conn, row["tenant_id"], row["owner_id"], span_id, None)
            mi.unindex(self.conn, list(by_span), self.vectors)
            heads = [store.head(self.conn, i) for i in by_span]
            live = [h for h in heads if h is not None and h["status"] == "active"]
            if live:
                done = store.append(self.conn, [_tombstone(h, "expired") for h in live],
                                    self.key)
            tenants: dict[str, list[dict[str, Any]]] = {}
            for s in done:
                tenants.setdefault(s["tenant_id"], []).append(s)
            for tenant, spans in sorted(tenants.items()):
                self._audit(Caller("system", tenant), "expire", spans)
        return {"expired": len(by_span)}

    def reindex(self, tenant_id: str | None = None) -> dict[str, Any]:
        """Rebuild the text and vector indexes from the ledger (of one tenant, or all):
        every live memory whose content still opens; vectors with the default embedder
        (memories embedded by another model, or secret/pii ones, are left without)."""
        with self.conn.transaction():
            mi.clear(self.conn, tenant_id, self.vectors)
            spans = [s for s in mi.all_heads(self.conn, tenant_id) if s["status"] == "active"]
            by_tenant: dict[str, list[dict[str, Any]]] = {}
            for s in spans:
                by_tenant.setdefault(s["tenant_id"], []).append(s)
            indexed = skipped = 0
            now = datetime.now(UTC)
            for tenant, group in sorted(by_tenant.items()):
                keys = mi.keys_of(self.conn, tenant, [s["id"] for s in group])
                ready, plan = [], []
                for span in group:
                    meta = span.get("metadata") or {}
                    ttl = meta.get("ttl_at")
                    if ttl and parse_at(ttl) <= now:
                        skipped += 1
                        continue
                    try:
                        opened = self._open(span, keys)
                    except LoglineError as exc:
                        if exc.code != "MEMORY_FORGOTTEN":
                            raise
                        skipped += 1
                        continue
                    item = {"text": opened["text"] or "", "sensitivity": meta["sensitivity"],
                            "embed_sensitive": meta.get("model") is not None,
                            "embedding": None, "model": None}
                    ready.append(span)
                    plan.append(item)
                vectors = self._embeddings(plan)
                for i, span in enumerate(ready):
                    if (span["metadata"] or {}).get("model") not in (None, _default_model()):
                        vectors[i] = None  # another model's vector: its kernel re-embeds
                self._index(tenant, ready, list(zip(plan, vectors, strict=True)))
                indexed += len(ready)
        return {"indexed": indexed, "skipped": skipped, "vectors": self.vectors}

    def status(self, tenant_id: str | None = None) -> dict[str, Any]:
        support = mi.vector_support(self.conn)
        out = {"vectors": support["vectors"], "pgvector": support["version"],
               "mode": "text+vector" if support["vectors"] else "text",
               **mi.counts(self.conn, tenant_id, support["vectors"])}
        if not support["vectors"]:
            out["note"] = ("text search only: this PostgreSQL has no pgvector extension, so "
                           "memories are found by their words alone")
        return out


def _default_model() -> str:
    return mi.DEFAULT_MODEL


def _fuse(text_hits: list[dict[str, Any]], vector_hits: list[dict[str, Any]]
          ) -> list[dict[str, Any]]:
    """Reciprocal rank fusion of the two rankings (vector neighbours under MIN_SIMILARITY
    left out), nearest scope first: session, own, tenant, public; best score within one."""
    fused: dict[str, dict[str, Any]] = {}
    near = [h for h in vector_hits if h["similarity"] >= MIN_SIMILARITY]
    for ranking in (text_hits, near):
        for rank, hit in enumerate(ranking, start=1):
            entry = fused.setdefault(hit["span_id"], {**hit, "score": 0.0})
            entry["score"] += 1.0 / (RRF_K + rank)
    return sorted(fused.values(), key=lambda h: (h["scope"], -h["score"], h["span_id"]))


def _described(span: Mapping[str, Any]) -> dict[str, Any]:
    meta = span.get("metadata") or {}
    return {"span_id": span["id"], "seq": span["seq"], "curr_hash": span["curr_hash"],
            "at": span["at"], "owner_id": span["owner_id"], "tenant_id": span["tenant_id"],
            "visibility": span["visibility"], "status": span["status"],
            **{k: meta.get(k) for k in ("layer", "type", "schema_id", "tags", "sensitivity",
                                        "ttl_at", "session_id")}}


def _tombstone(head: Mapping[str, Any], status: str) -> dict[str, Any]:
    return {**{k: head[k] for k in ("id", "entity_type", "who", "owner_id", "tenant_id",
                                    "visibility", "metadata")},
            "seq": head["seq"] + 1, "prev_hash": head["curr_hash"], "did": status,
            "this": head["this"], "status": status,
            "content": {"redacted": True, status: True}}


def _key_aad(tenant_id: str, span_id: str) -> dict[str, Any]:
    return {"purpose": "memory_key", "tenant_id": tenant_id, "span_id": span_id}


def _content_aad(tenant_id: str, span_id: str, seq: int) -> dict[str, Any]:
    return {"purpose": "memory", "tenant_id": tenant_id, "span_id": span_id, "seq": seq}
