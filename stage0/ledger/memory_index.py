"""Memory's tables outside the ledger (schema/0012_memory.sql): the destroyable content keys
and the derived search indexes. Stage 0 reaches them as the kernel role; every statement
takes the caller's tenant and user explicitly (stage0/memory decides who may see what).

Vectors go through the `pgvector` package's psycopg adapter, registered per connection the
first time one is needed and only where the server has the extension: without it the
vector functions are never called (`has_vectors` is False) and memory is text-only.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from stage0.ledger import store
from stage0.ledger.db import Connection, one
from stage0.ledger.queries import q

_REGISTERED: weakref.WeakSet[Connection] = weakref.WeakSet()
SCOPES = ("session", "private", "tenant", "public")


def vector_support(conn: Connection) -> dict[str, Any]:
    """{"vectors": bool, "version": pgvector's version or None}."""
    row = one(conn.execute(q("memory_has_vectors")))
    return {"vectors": bool(row["vectors"]), "version": row["version"]}


def _adapt(conn: Connection) -> None:
    if conn not in _REGISTERED:
        from pgvector.psycopg import register_vector
        register_vector(conn)
        _REGISTERED.add(conn)


# --- keys ---------------------------------------------------------------------------------
def insert_keys(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(q("memory_key_insert"), [{**r, "wrapped": Jsonb(r["wrapped"])}
                                                 for r in rows])


def keys_of(conn: Connection, tenant_id: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {r["span_id"]: r for r in conn.execute(
        q("memory_keys_of"), {"tenant_id": tenant_id, "ids": list(ids)})}


def forget_keys(conn: Connection, tenant_id: str, owner_id: str, span_id: str | None,
                session_id: str | None) -> list[str]:
    return [r["span_id"] for r in conn.execute(q("memory_forget_keys"), {
        "tenant_id": tenant_id, "owner_id": owner_id, "span_id": span_id,
        "session_id": session_id})]


def last_of(conn: Connection, tenant_id: str, owner_id: str,
            session_id: str | None) -> str | None:
    row = conn.execute(q("memory_last_of"), {"tenant_id": tenant_id, "owner_id": owner_id,
                                             "session_id": session_id}).fetchone()
    return row["span_id"] if row else None


# --- derived indexes ----------------------------------------------------------------------
def index(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        with conn.cursor() as cur:
            cur.executemany(q("memory_index_upsert"), rows)


def embed(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Store vectors (numpy arrays or lists of floats) of memories."""
    if rows:
        _adapt(conn)
        import numpy as np
        with conn.cursor() as cur:
            cur.executemany(q("memory_embedding_upsert"), [
                {**r, "embedding": np.asarray(r["embedding"], dtype=np.float32)} for r in rows])


def unindex(conn: Connection, ids: Sequence[str], vectors: bool) -> None:
    if not ids:
        return
    conn.execute(q("memory_index_delete"), {"ids": list(ids)})
    if vectors:
        conn.execute(q("memory_embedding_delete"), {"ids": list(ids)})


def clear(conn: Connection, tenant_id: str | None, vectors: bool) -> None:
    conn.execute(q("memory_index_clear"), {"tenant_id": tenant_id})
    if vectors:
        conn.execute(q("memory_embeddings_clear"), {"tenant_id": tenant_id})


def text_search(conn: Connection, *, query: str, tenant_id: str, user_id: str,
                session_id: str | None, scopes: Sequence[int],
                limit: int) -> list[dict[str, Any]]:
    return list(conn.execute(q("memory_text_search"), {
        "query": query, "tenant_id": tenant_id, "user_id": user_id, "session_id": session_id,
        "scopes": list(scopes), "limit": limit}))


def vector_search(conn: Connection, *, embedding: Any, model: str, tenant_id: str,
                  user_id: str, session_id: str | None, scopes: Sequence[int], limit: int,
                  exact: bool = False, ef: int = 400) -> list[dict[str, Any]]:
    """Nearest visible memories: through HNSW for the default model, else (or with exact)
    by an exact scan."""
    import numpy as np
    _adapt(conn)
    params = {"embedding": np.asarray(embedding, dtype=np.float32), "model": model,
              "tenant_id": tenant_id, "user_id": user_id, "session_id": session_id,
              "scopes": list(scopes), "limit": limit}
    if exact or model != DEFAULT_MODEL:
        return list(conn.execute(q("memory_vector_exact"), params))
    conn.execute(q("memory_ef_search"), {"ef": str(max(ef, limit))})
    return list(conn.execute(q("memory_vector_search"), {**params, "fetch": max(ef, limit)}))


DEFAULT_MODEL = "wordllama-l2_supercat-256"


# --- spans --------------------------------------------------------------------------------
def heads(conn: Connection, ids: Sequence[str], tenant_id: str,
          user_id: str) -> dict[str, dict[str, Any]]:
    """The heads of the memories among `ids` that the caller may see."""
    rows = conn.execute(q("memory_heads"), {"ids": list(ids), "tenant_id": tenant_id,
                                            "user_id": user_id})
    return {s["id"]: s for s in map(store.span_from_row, rows)}


def listed(conn: Connection, *, tenant_id: str, user_id: str, caller_session: str | None,
           layer: str | None, session_id: str | None, before: str | None,
           limit: int) -> list[dict[str, Any]] | None:
    """The caller's memories newest first (memory_list), after the memory `before`; None
    when `before` is not a memory the caller sees in the index (any more)."""
    before_at = None
    if before is not None:
        row = conn.execute(q("memory_list_cursor"), {"span_id": before, "tenant_id": tenant_id,
                                                     "user_id": user_id}).fetchone()
        if row is None:
            return None
        before_at = row["at"]
    return list(conn.execute(q("memory_list"), {
        "tenant_id": tenant_id, "user_id": user_id, "caller_session": caller_session,
        "layer": layer, "session_id": session_id, "before_at": before_at,
        "before_id": before, "limit": limit}))


def heads_of_owner(conn: Connection, tenant_id: str, owner_id: str) -> list[dict[str, Any]]:
    return [store.span_from_row(r) for r in conn.execute(
        q("memory_heads_of_owner"), {"tenant_id": tenant_id, "owner_id": owner_id})]


def all_heads(conn: Connection, tenant_id: str | None) -> Iterable[dict[str, Any]]:
    for row in conn.execute(q("memory_all_heads"), {"tenant_id": tenant_id}):
        yield store.span_from_row(row)


def contract(conn: Connection, span_id: str, tenant_id: str) -> dict[str, Any] | None:
    row = conn.execute(q("memory_contract_head"), {"id": span_id,
                                                   "tenant_id": tenant_id}).fetchone()
    return store.span_from_row(row) if row else None


def expired(conn: Connection, limit: int) -> list[dict[str, Any]]:
    return list(conn.execute(q("memory_expired"), {"limit": limit}))


def counts(conn: Connection, tenant_id: str | None, vectors: bool) -> dict[str, int]:
    row = one(conn.execute(q("memory_counts"), {"tenant_id": tenant_id}))
    out = {"indexed": int(row["indexed"]), "keys": int(row["keys"])}
    if vectors:
        out["vectors"] = int(one(conn.execute(q("memory_embedding_count"),
                                              {"tenant_id": tenant_id}))["vectors"])
    return out
