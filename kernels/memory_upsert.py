"""memory_upsert: remember things for the caller (docs/memory.md).

Input:  {"memories": [{"text", "data"?, "layer"?, "type"?, "schema_id"?, "tags"?,
         "sensitivity"?, "visibility"?, "ttl_at"? | "ttl_s"?, "session_id"?, "id"?,
         "embed_sensitive"?}], "session_id"?, "provider"?}
Output: {"written": [{"span_id", "seq", "layer", "sensitivity", "curr_hash", "vector"}]}

Stage 0 encrypts, signs, indexes and audits (ctx.memory_upsert), as the caller's user and
tenant. With "provider", the vectors come from that provider's embeddings (ctx.embed, its
egress and hardening) instead of the local default model; without it, the tenant's default
embedder (ctx.memory_embedder: `logline memory embedder set`).
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000009"
NAME = "memory_upsert"


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    memories = args.get("memories")
    provider = args.get("provider") or ctx.memory_embedder()
    if provider and isinstance(memories, list):
        texts = [m.get("text") if isinstance(m, dict) else None for m in memories]
        answer = ctx.embed(provider, texts)
        if not answer.get("ok"):
            return {"written": [], "error": answer.get("error")}
        vectors = answer.get("embeddings") or []
        if len(vectors) != len(memories):
            return {"written": [], "error": {"code": "MEMORY_INVALID",
                                             "message": "one embedding per memory expected"}}
        memories = [dict(m, embedding=vectors[i], model="provider:" + provider)
                    for i, m in enumerate(memories)]
    return {"written": ctx.memory_upsert(memories, args.get("session_id"))}
