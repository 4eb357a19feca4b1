"""memory_search: what the caller's memory holds about a query (docs/memory.md).

Input:  {"query", "budget"? (tokens, default 1000), "limit"? (default 10), "scopes"?
         (some of session, private, tenant, public), "session_id"?, "provider"?}
Output: {"hits": [{"span_id", "score", "preview", "layer", "scope", "tokens"}], "mode",
         "vectors", "note"?}

Scopes are ranked session -> private -> tenant -> public; full-text and vector rankings are
fused by reciprocal rank; the hits fit the budget. "mode" is "text" on a server without
pgvector. With "provider", the query is embedded by that provider (the memories must have
been written with the same one); without it, the tenant's default embedder
(ctx.memory_embedder).
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000010"
NAME = "memory_search"


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    embedding = None
    model = None
    provider = args.get("provider") or ctx.memory_embedder()
    if provider:
        answer = ctx.embed(provider, args.get("query"))
        if not answer.get("ok"):
            return {"hits": [], "error": answer.get("error")}
        embedding = (answer.get("embeddings") or [None])[0]
        model = "provider:" + provider
    return ctx.memory_search(args.get("query"), budget=args.get("budget", 1000),
                             limit=args.get("limit", 10),
                             scopes=args.get("scopes") or ["session", "private", "tenant",
                                                           "public"],
                             session_id=args.get("session_id"), embedding=embedding,
                             model=model)
