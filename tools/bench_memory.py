#!/usr/bin/env python
"""Memory benchmark (issue 12): batched upserts and search, beside their baselines.

    python tools/bench_memory.py [--memories 100000] [--other 0] [--batch 1000]
                                 [--queries 200] [--quick] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory (or uses LOGLINE_DATABASE_URL),
creates, migrates and seeds a fresh database, then measures in one run:

* upsert: `Memory.upsert` of batches of internal memories (content sealed under a key per
  memory, keys wrapped, spans signed and appended, the blind text index, the vector, the
  audit chain), in memories/s; beside it the embedding alone (wordllama, the same texts) and
  plain `store.append` of as many unencrypted, unindexed spans (the ledger's floor);
* search in a tenant holding --memories memories (the ledger holding --other more, in other
  tenants): `Memory.search` end to end (query embedding, text and HNSW candidates, fusion,
  decryption of the previews) p50/p95, beside the HNSW query alone and an exact
  (sequential scan) vector search of the same tenant, and HNSW recall@10 against that exact
  search.

A benchmark never fails: it reports. docs/benchmarks.md holds a recorded run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import finish, run_facts, seeded_ledger  # noqa: E402

from stage0.ledger import db, store  # noqa: E402
from stage0.ledger import memory_index as mi  # noqa: E402
from stage0.memory import embedder  # noqa: E402
from stage0.memory.service import Caller, Memory  # noqa: E402
from stage0.vault import crypto  # noqa: E402
from stage0.vault import master as masters  # noqa: E402

GOALS = {"upsert_per_s": 1000, "search_p95_ms": 20.0, "recall_at_10": 0.95}
WORDS = """apple river mountain coffee budget invoice meeting travel flight hotel passport
doctor allergy medicine garden dog cat piano guitar football tennis recipe pasta salad
birthday anniversary project deadline server database backup password laptop phone
charger train bus airport museum library book novel poem painting camera photo holiday
beach winter summer autumn spring rain snow storm sunshine morning evening night office
colleague manager client contract salary bonus tax insurance car bicycle parking garage
kitchen bedroom window door key lock alarm neighbour school teacher exam homework science
history language french spanish german japanese music concert ticket festival movie
series podcast newsletter email calendar reminder appointment dentist gym yoga running
swimming marathon diet vegetarian allergy peanut gluten chocolate tea wine beer water
""".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fill(memory: Memory, caller: Caller, n: int, batch: int, rng: random.Random) -> float:
    """Write n memories for caller in batches; seconds taken."""
    start = time.perf_counter()
    for done in range(0, n, batch):
        memory.upsert(caller, [{"text": sentence(rng)} for _ in range(min(batch, n - done))])
    return time.perf_counter() - start


def upsert_figures(database: db.Database, key: Any, master: masters.Master, batch: int,
                   rng: random.Random) -> dict[str, Any]:
    n = max(batch, 10 * batch // 2)
    texts = [sentence(rng) for _ in range(n)]
    embedder.embed(texts[:10])  # load the model outside the timings
    start = time.perf_counter()
    for i in range(0, n, batch):
        embedder.embed(texts[i:i + batch])
    embed_s = time.perf_counter() - start
    with database.connect("kernel", autocommit=True) as conn:
        memory = Memory(conn, key, master)
        caller = Caller("bench-upsert", "bench-upsert")
        memory.upsert(caller, [{"text": "warm up"}])  # the tenant's data key, once
        start = time.perf_counter()
        for i in range(0, n, batch):
            memory.upsert(caller, [{"text": t} for t in texts[i:i + batch]])
        upsert_s = time.perf_counter() - start
        hnsw = _drop_hnsw(database)
        if hnsw:  # what the graph's insertions cost: the same writes without the index
            start = time.perf_counter()
            for i in range(0, n, batch):
                memory.upsert(caller, [{"text": t} for t in texts[i:i + batch]])
            no_hnsw_s = time.perf_counter() - start
            _create_hnsw(database, hnsw)
        start = time.perf_counter()
        for i in range(0, n, batch):
            store.append(conn, [{"entity_type": "note", "who": "bench", "this": t,
                                 "owner_id": "bench", "tenant_id": "bench-plain"}
                                for t in texts[i:i + batch]], key)
        plain_s = time.perf_counter() - start
    return {"memories": n, "batch": batch, "upsert_per_s": n / upsert_s,
            "embed_per_s": n / embed_s, "embed_share": embed_s / upsert_s,
            "upsert_without_embedding_per_s": n / max(upsert_s - embed_s, 1e-9),
            "plain_append_per_s": n / plain_s,
            "upsert_without_hnsw_per_s": n / no_hnsw_s if hnsw else None}


def _drop_hnsw(database: db.Database) -> str | None:
    """Drop the HNSW index (as the admin); its definition, to create it again."""
    with database.connect("admin", autocommit=True) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'ledger' "
                           "AND indexname = 'me_hnsw'").fetchone()
        if row is None:
            return None
        conn.execute("DROP INDEX ledger.me_hnsw")
        return str(row["indexdef"])


def _create_hnsw(database: db.Database, definition: str) -> float:
    """Build the HNSW index from what the table holds; seconds taken."""
    start = time.perf_counter()
    with database.connect("admin", autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(definition)
    return time.perf_counter() - start


def search_figures(database: db.Database, key: Any, master: masters.Master, args: Any,
                   rng: random.Random) -> dict[str, Any]:
    tenant = Caller("bench-user", "bench-tenant")
    # Filled without the HNSW index, which is then built in one go (as a bulk load would):
    # inserting into the graph row by row is what bounds the upsert rate.
    hnsw = _drop_hnsw(database)
    with database.connect("kernel", autocommit=True) as conn:
        memory = Memory(conn, key, master)
        fill_s = fill(memory, tenant, args.memories, args.batch, rng)
        for i in range((args.other + 99_999) // 100_000):
            others = min(100_000, args.other - i * 100_000)
            fill(memory, Caller("other", f"other-{i}"), others, args.batch, rng)
    build_s = _create_hnsw(database, hnsw) if hnsw else None
    with database.connect("kernel", autocommit=True) as conn:
        memory = Memory(conn, key, master)
        conn.execute("ANALYZE ledger.memory_index")
        vectors = memory.vectors
        if vectors:
            conn.execute("ANALYZE ledger.memory_embeddings")
        queries = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(args.queries)]
        for q in queries[:5]:
            memory.search(tenant, q)  # warm caches
        full, hnsw, exact, recalls = [], [], [], []
        for q in queries:
            start = time.perf_counter()
            memory.search(tenant, q, limit=10)
            full.append((time.perf_counter() - start) * 1000)
            if not vectors:
                continue
            vec = embedder.embed([q])[0]
            args_ = {"embedding": vec, "model": embedder.MODEL, "tenant_id": tenant.tenant_id,
                     "user_id": tenant.user_id, "session_id": None, "scopes": [0, 1, 2, 3],
                     "limit": 10}
            with conn.transaction():
                start = time.perf_counter()
                approx = mi.vector_search(conn, **args_)
                hnsw.append((time.perf_counter() - start) * 1000)
            with conn.transaction():
                start = time.perf_counter()
                truth = mi.vector_search(conn, exact=True, **args_)
                exact.append((time.perf_counter() - start) * 1000)
            want = {h["span_id"] for h in truth}
            recalls.append(len(want & {h["span_id"] for h in approx}) / max(len(want), 1))
    out: dict[str, Any] = {"memories_in_tenant": args.memories, "other_memories": args.other,
                           "fill_per_s": (args.memories / fill_s) if fill_s else None,
                           "hnsw_build_s": build_s,
                           "vectors": vectors, "queries": len(queries),
                           "search_p50_ms": pct(full, 50), "search_p95_ms": pct(full, 95)}
    if vectors:
        out.update({"hnsw_p50_ms": pct(hnsw, 50), "hnsw_p95_ms": pct(hnsw, 95),
                    "exact_p50_ms": pct(exact, 50), "exact_p95_ms": pct(exact, 95),
                    "recall_at_10": statistics.fmean(recalls)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=100_000,
                        help="memories in the searched tenant (default 100000)")
    parser.add_argument("--other", type=int, default=0,
                        help="memories in other tenants (the issue's figure: 900000)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10000 memories, 50 queries")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.memories, args.queries = 10_000, 50
    rng = random.Random(12)
    results: dict[str, Any] = {"meta": run_facts("bench_memory.py", argv)}
    master = masters.Master(crypto.new_key(), "bench")
    with seeded_ledger("memory") as (_home, database, key):
        results["upsert"] = upsert_figures(database, key, master, args.batch, rng)
        results["search"] = search_figures(database, key, master, args, rng)
    return finish(results, report, args.json)


def report(r: dict[str, Any]) -> None:
    u, s = r["upsert"], r["search"]
    print(f"upsert, batches of {u['batch']} ({u['memories']} memories), goal "
          f">= {GOALS['upsert_per_s']}/s")
    print("| path | memories/s |\n| --- | ---: |")
    print(f"| Memory.upsert (seal, sign, append, index, embed, audit) | {u['upsert_per_s']:,.0f} |")
    print(f"| the embedding alone (wordllama, same texts) | {u['embed_per_s']:,.0f} |")
    print(f"| Memory.upsert less its embedding time | "
          f"{u['upsert_without_embedding_per_s']:,.0f} |")
    if u["upsert_without_hnsw_per_s"]:
        print(f"| Memory.upsert with the HNSW index dropped (what the graph costs) | "
              f"{u['upsert_without_hnsw_per_s']:,.0f} |")
    print(f"| floor: store.append of plain spans (no seal, no index) | "
          f"{u['plain_append_per_s']:,.0f} |")
    print(f"\nsearch: {s['memories_in_tenant']:,} memories in the tenant, "
          f"{s['other_memories']:,} in others, {s['queries']} queries; goal p95 < "
          f"{GOALS['search_p95_ms']} ms, recall@10 >= {GOALS['recall_at_10']}")
    if s.get("hnsw_build_s"):
        print(f"(filled at {s['fill_per_s']:,.0f} memories/s without the HNSW index, then "
              f"built in {s['hnsw_build_s']:.1f} s)")
    print("| path | p50 ms | p95 ms |\n| --- | ---: | ---: |")
    print(f"| Memory.search end to end (text + vector, fused, decrypted) | "
          f"{s['search_p50_ms']:.2f} | {s['search_p95_ms']:.2f} |")
    if s["vectors"]:
        print(f"| the HNSW query alone | {s['hnsw_p50_ms']:.2f} | {s['hnsw_p95_ms']:.2f} |")
        print(f"| exact vector search (sequential scan) | {s['exact_p50_ms']:.2f} | "
              f"{s['exact_p95_ms']:.2f} |")
        print(f"\nHNSW recall@10 against the exact search: {s['recall_at_10']:.3f}")
    else:
        print("(no pgvector on this server: text search only)")


if __name__ == "__main__":
    sys.exit(main())
