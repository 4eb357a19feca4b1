#!/usr/bin/env python
"""Prompt benchmark (issue 14): the build of a 10-block variant, what a prompt run adds to a
model call, and how fast the bandit puts traffic on the best variant, each beside its
baseline in the same run.

    python tools/bench_prompts.py [--calls 1000] [--trials 5000] [--runs 20] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory (or uses LOGLINE_DATABASE_URL),
creates a fresh database, migrates and seeds it, adds a 10-block variant for tenant `bench`
and a provider row for the loopback model server of the tests (tests/helpers/llm_server.py,
zero latency, answering in the output contract), then measures, each after a warm-up:

1. build: the kernel's pure compile (kernels/prompt_build.py `compile_blocks`: sort,
   interpolate, join) plus the BLAKE3 hash, beside the primitive (join + BLAKE3 of the same
   text); and `Loader.boot(prompt_build)` of the variant (not recorded): the manifest, the
   verified kernel, eleven verified span reads (variant and blocks), the override lookup.
2. chat: a bare `httpx` POST of the same chat completion to the server (the floor), beside
   `Loader.boot(prompt_run)`: the family's selection looked up, the build, provider_exec
   (`ctx.llm`, its provider_execution record), the output contract, and the prompt_build /
   prompt_run spans signed and appended. Overhead = the difference of the p50s.
3. bandit: 3 variants whose answers succeed with known rates; per trial the kernel's own
   `choose` (UCB1, exploration 0.5) picks one and its outcome is observed. Reported: the
   trials until 90 % of the last 100 choices went to the best variant (median over `runs`
   seeds), beside uniform random choice, which never gets there (its share is 1/3).

A benchmark never fails: it reports. docs/benchmarks.md ("Prompts") holds a recorded run.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

import blake3  # noqa: E402
import httpx  # noqa: E402
from benchkit import finish, run_facts, seeded_ledger  # noqa: E402
from helpers.llm_server import LlmServer  # noqa: E402
from helpers.prompts import contract  # noqa: E402

from stage0 import keys  # noqa: E402
from stage0.boot.loader import Loader  # noqa: E402
from stage0.ledger import store  # noqa: E402
from stage0.llm import admin, host, providers  # noqa: E402

BUILD = "00000000-0000-4000-8000-000000000011"
RUN = "00000000-0000-4000-8000-000000000012"
FAST = {"rps": 10_000, "burst": 10_000, "tenant_rps": 10_000, "tenant_burst": 10_000,
        "daily_token_budget": 10**12, "max_attempts": 1}
LAYERS = [("doctrine", 120), ("product", 100), ("app", 90), ("task", 70)]
RATES = (0.5, 0.6, 0.75)  # the bandit simulation's variants: success rates, the last best


def _module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(n: int, fn: Any) -> dict[str, float]:
    for _ in range(min(200, n)):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"p50_ms": statistics.median(samples) * 1000,
            "p99_ms": samples[max(int(len(samples) * 0.99) - 1, 0)] * 1000, "n": n}


def blocks_of_ten() -> list[dict[str, Any]]:
    out = []
    for n in range(10):
        layer, priority = LAYERS[n % len(LAYERS)]
        text = (f"Block {n} ({layer}): the assistant of {{{{product}}}} for {{{{team}}}} keeps "
                "every answer short, cites the spans it relied on and never invents a fact. ")
        out.append({"id": str(uuid.uuid4()), "content": text * 3, "priority": priority})
    return out


def setup(loader: Loader, key: Any, model_url: str) -> str:
    """The 10-block variant of family `bench` (tenant bench) and the provider row."""
    blocks = blocks_of_ten()
    spans = [{"id": b["id"], "entity_type": "prompt_block", "who": "bench", "this": f"b{n}",
              "owner_id": "bench", "tenant_id": "bench", "visibility": "tenant",
              "status": "active", "content": b["content"],
              "metadata": {"priority": b["priority"]}} for n, b in enumerate(blocks)]
    variant = str(uuid.uuid4())
    spans.append({"id": variant, "entity_type": "prompt_variant", "who": "bench",
                  "this": "bench.ten", "owner_id": "bench", "tenant_id": "bench",
                  "visibility": "tenant", "status": "active",
                  "metadata": {"family": "bench", "block_ids": [b["id"] for b in blocks],
                               "vars": {"product": "LogLine", "team": "support"},
                               "provider": "bench"}})
    store.append(loader.conn, spans, key)
    admin.add(loader.conn, key, loader.root, keys.id_secret(loader.home, key),
              providers.parse({"name": "bench", "kind": "openai", "base_url": model_url + "/v1",
                               "model": "bench", "tenant_id": "bench",
                               "egress": {"addresses": ["127.0.0.1"]}, "limits": FAST}))
    return variant


def build(loader: Loader, variant: str, n: int) -> dict[str, Any]:
    kernel = _module(ROOT / "kernels" / "prompt_build.py", "prompt_build")
    blocks = blocks_of_ten()
    values = {"product": "LogLine", "team": "support"}
    text = kernel.compile_blocks(blocks, values)[0]
    parts = text.split("\n\n")

    def pure() -> None:
        compiled, _ = kernel.compile_blocks(blocks, values)
        blake3.blake3(compiled.encode()).hexdigest()

    def primitive() -> None:
        blake3.blake3("\n\n".join(parts).encode()).hexdigest()

    def booted() -> None:
        assert loader.boot(BUILD, {"variant_id": variant, "record": False},
                           user_id="bench", tenant_id="bench")["ok"]
    return {"primitive": timed(n * 10, primitive), "compile": timed(n * 10, pure),
            "kernel": timed(n, booted), "length": len(text)}


def chat(server: LlmServer, loader: Loader, n: int) -> dict[str, Any]:
    url = server.url + "/v1/chat/completions"
    body = {"model": "bench", "messages": [{"role": "user", "content": "ping"}],
            "stream": False}
    with httpx.Client() as bare:
        def bare_call() -> None:
            r = bare.post(url, json=body)
            assert r.json()["choices"][0]["message"]["content"]
        out = {"bare": timed(n, bare_call)}

    def run_call() -> None:
        assert loader.boot(RUN, {"family": "bench", "user": "ping"}, user_id="bench",
                           tenant_id="bench")["ok"]
    out["logline"] = timed(n, run_call)
    out["overhead_p50_ms"] = out["logline"]["p50_ms"] - out["bare"]["p50_ms"]
    return out


def until_ninety(pick: Any, trials: int, rng: random.Random) -> int | None:
    """Trials until 90 % of the last 100 choices were the best variant (None: never)."""
    stats = [{"variant_id": str(i), "n": 0, "reward": 0.0} for i in range(len(RATES))]
    best = str(len(RATES) - 1)
    window: list[bool] = []
    for t in range(1, trials + 1):
        chosen = pick(stats, t)
        s = stats[int(chosen)]
        s["n"] += 1
        s["reward"] += 1.0 if rng.random() < RATES[int(chosen)] else 0.0
        window.append(chosen == best)
        if len(window) > 100:
            window.pop(0)
        if len(window) == 100 and sum(window) >= 90:
            return t
    return None


def bandit(trials: int, runs: int) -> dict[str, Any]:
    choose = _module(ROOT / "kernels" / "prompt_bandit.py", "prompt_bandit").choose
    ucb, uniform = [], []
    for run in range(1, runs + 1):
        def ucb_pick(stats: list[dict[str, Any]], t: int, run: int = run) -> str:
            return str(choose(stats, run * 1_000_003 + t, 0.5)[0])

        rng = random.Random(run + 10_000)

        def uniform_pick(stats: list[dict[str, Any]], t: int,
                         rng: random.Random = rng) -> str:
            return str(rng.randrange(len(RATES)))
        ucb.append(until_ninety(ucb_pick, trials, random.Random(run)))
        uniform.append(until_ninety(uniform_pick, trials, random.Random(run)))
    reached = sorted(x for x in ucb if x is not None)
    return {"rates": RATES, "trials": trials, "runs": runs,
            "ucb_reached": len(reached),
            "ucb_median": statistics.median(reached) if reached else None,
            "ucb_p90": reached[int(len(reached) * 0.9) - 1] if reached else None,
            "uniform_reached": sum(1 for x in uniform if x is not None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"meta": run_facts("bench_prompts.py", argv)}
    with seeded_ledger("prompts") as (home, database, key), \
            LlmServer(keep=False) as model, Loader(database, home) as loader:
        model.answer = contract("pong", 0.9)
        host.attach(loader, credentials=lambda t, c: None)
        variant = setup(loader, key, model.url)
        results["build"] = build(loader, variant, args.calls)
        results["chat"] = chat(model, loader, args.calls)
    results["bandit"] = bandit(args.trials, args.runs)
    return finish(results, report, args.json)


def report(r: dict[str, Any]) -> None:
    b, c, s = r["build"], r["chat"], r["bandit"]
    print("| path | p50 ms | p99 ms | n |\n| --- | ---: | ---: | ---: |")
    for label, m in ((f"primitive: join + BLAKE3 of the compiled text ({b['length']} chars)",
                      b["primitive"]),
                     ("build: compile_blocks (10 blocks) + BLAKE3", b["compile"]),
                     ("build: Loader.boot(prompt_build), 11 verified reads", b["kernel"]),
                     ("chat floor: bare httpx POST to the zero-latency server", c["bare"]),
                     ("chat: Loader.boot(prompt_run), build + call + 2 spans", c["logline"])):
        print(f"| {label} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | {m['n']} |")
    print(f"\nbuild p50: compile {b['compile']['p50_ms']:.3f} ms, booted kernel "
          f"{b['kernel']['p50_ms']:.3f} ms (goal < 1 ms); chat overhead p50 "
          f"{c['overhead_p50_ms']:.3f} ms beyond the bare call (goal < 5 ms)")
    print(f"\nbandit over success rates {', '.join(map(str, s['rates']))}: UCB1 put 90 % of "
          f"the last 100 choices on the best after {s['ucb_median']} trials (median; p90 "
          f"{s['ucb_p90']}; {s['ucb_reached']}/{s['runs']} runs within {s['trials']}); "
          f"uniform random choice: {s['uniform_reached']}/{s['runs']} runs ever did (its "
          "share stays near 33 %)")
    print(f"\nload average {r['meta']['load_avg_at_start'][0]:.1f} at start, "
          f"{r['meta']['load_avg_at_end'][0]:.1f} at end, {r['meta']['cpus']} cpus")


if __name__ == "__main__":
    sys.exit(main())
