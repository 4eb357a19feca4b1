#!/usr/bin/env python
"""LLM provider benchmark (issue 11): what LogLine adds to a model call, and how fast an open
breaker sheds load, against the loopback model server of the tests
(tests/helpers/llm_server.py, zero latency), beside a bare httpx call in the same run.

    python tools/bench_llm.py [--calls 2000] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory (or uses LOGLINE_DATABASE_URL),
creates a fresh database, migrates and seeds it, adds a provider row for the loopback server
(run in a process of its own, as a real model server is: in this process its threads would
take the GIL from the paths measured), then measures, each after a warm-up, taking turns in
five rounds (so that a change of the machine's load weighs on every path alike):

1. bare: `httpx.Client.post` of an OpenAI chat completion, JSON decoded (the floor);
2. client: `stage0.llm.client.LlmClient.call` (egress check and pinned address, breaker,
   buckets, budget callback returning 0, timeouts, size cap, decoding): no ledger;
3. LogLine: `Loader.boot(provider_exec)`: the manifest's and the kernel's heads (one query),
   its RestrictedPython `main`, `ctx.llm` -> the provider row with the day's token count (one
   query), the call, and the `provider_execution` span queued to the host's recorder (signed
   and appended in batches by its thread). One worker, sequential.
   Then the same waiting for each record's commit before the next call (what a durable
   record per call costs). For scale, in the same run: a `SELECT 1` round trip and one
   `store.append` of a span of the same size in its own transaction.
4. breaker: with the server answering 500, the calls until the breaker opens (its threshold),
   then the time an open breaker takes to refuse a call (client, and the whole kernel path
   with its `denied` record); then the server recovers, the breaker's open time is skipped
   on its clock, and the calls until traffic flows again (the half-open probe).

Latency is per call, p50 and p99; calls/s is sequential through one process; CPU is this
process's (all its threads, the recorder's included) per call. A benchmark never fails: it
reports. docs/benchmarks.md ("LLM providers") holds recorded runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

import httpx  # noqa: E402
from benchkit import finish, run_facts, seeded_ledger  # noqa: E402
from helpers.llm_server import LlmServer  # noqa: E402

from stage0 import keys  # noqa: E402
from stage0.boot.loader import Loader  # noqa: E402
from stage0.ledger import manifest, provider_rows, store  # noqa: E402
from stage0.llm import admin, host, providers  # noqa: E402
from stage0.llm.client import LlmClient  # noqa: E402

PROVIDER_EXEC = "00000000-0000-4000-8000-000000000005"
MESSAGES = [{"role": "user", "content": "ping"}]
FAST = {"rps": 10_000, "burst": 10_000, "tenant_rps": 10_000, "tenant_burst": 10_000,
        "daily_token_budget": 10**12, "max_attempts": 1}


def timed(n: int, fn: Any) -> dict[str, float]:
    return interleaved(n, {"_": fn}, rounds=1)["_"]


def interleaved(n: int, fns: dict[str, Any], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Each fn n times after a warm-up, in `rounds` rounds taking turns, so that a change of
    the machine's load during the run weighs on every path alike."""
    for fn in fns.values():
        for _ in range(min(200, n)):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    elapsed = dict.fromkeys(fns, 0.0)
    cpu = dict.fromkeys(fns, 0.0)
    for r in range(rounds):
        calls = n // rounds + (1 if r < n % rounds else 0)
        for name, fn in fns.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
            elapsed[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - cpu_started
    out = {}
    for name, got in samples.items():
        got.sort()
        out[name] = {"p50_ms": statistics.median(got) * 1000,
                     "p99_ms": got[max(0, int(len(got) * 0.99) - 1)] * 1000,
                     "per_s": len(got) / elapsed[name], "n": len(got),
                     "cpu_ms": cpu[name] / len(got) * 1000}
    return out


class ServerProcess:
    """The loopback model server in a process of its own, as a real one is (in this process
    it would take the GIL from the paths measured)."""

    def __init__(self) -> None:
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from helpers.llm_server import LlmServer; "
                "s = LlmServer(keep=False).__enter__(); print(s.url, flush=True); "
                "sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "tests")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def provider(url: str, name: str, **limits: Any) -> providers.Provider:
    return providers.parse({"name": name, "kind": "openai", "base_url": url + "/v1",
                            "model": "bench", "egress": {"addresses": ["127.0.0.1"]},
                            "limits": {**FAST, **limits}})


def overhead(server_url: str, loader: Loader, n: int) -> dict[str, Any]:
    url = server_url + "/v1/chat/completions"
    body = {"model": "bench", "messages": MESSAGES, "stream": False}
    bare = httpx.Client()

    def bare_call() -> None:
        r = bare.post(url, json=body)
        assert r.json()["choices"][0]["message"]["content"]
    client = LlmClient(lambda t, c: None)
    p = provider(server_url, "bench")

    def client_call() -> None:
        assert client.call(p, "acme", "chat", MESSAGES).ok

    def kernel_call() -> None:
        assert loader.boot(PROVIDER_EXEC, {"provider": "bench", "messages": MESSAGES},
                           user_id="bench", tenant_id="acme")["ok"]
    out: dict[str, Any] = interleaved(n, {"bare": bare_call, "client": client_call,
                                          "logline": kernel_call})
    bare.close()
    client.close()
    llm_host = host.for_loader(loader)
    llm_host.flush()

    def durable_call() -> None:  # each record committed before the call returns
        kernel_call()
        llm_host.flush()
    out["logline_durable"] = timed(n, durable_call)
    conn = loader.database.connect("kernel", autocommit=True)
    out["select1"] = timed(n, lambda: conn.execute("SELECT 1").fetchone())
    heads = [manifest.MANIFEST_ID, PROVIDER_EXEC]
    out["heads"] = timed(n, lambda: store.heads(conn, heads))
    keys = loader.platform_keys()
    out["lookup"] = timed(n, lambda: provider_rows.for_call(conn, "bench", "acme", keys))
    span = {"entity_type": "bench_record", "who": "bench", "this": "bench", "owner_id": "b",
            "tenant_id": "acme", "metadata": {"tokens_in": 11, "tokens_out": 7}}
    out["append"] = timed(n, lambda: store.append(conn, [dict(span)], loader.key))
    conn.close()
    out["overhead_p50_ms"] = out["logline"]["p50_ms"] - out["bare"]["p50_ms"]
    out["client_overhead_p50_ms"] = out["client"]["p50_ms"] - out["bare"]["p50_ms"]
    return out


def breaker(server: LlmServer, loader: Loader, n: int) -> dict[str, Any]:
    clock, changes = Clock(), []
    client = LlmClient(lambda t, c: None, clock=clock, on_breaker=changes.append)
    p = provider(server.url, "flaky", breaker_failures=5, breaker_open_s=30)
    server.default = "500"
    to_open = 0
    while client.breaker(p).state != "open" and to_open < 100:
        client.call(p, "acme", "chat", MESSAGES)
        to_open += 1
    seen = len(server.requests)

    def shed() -> None:
        assert client.call(p, "acme", "chat", MESSAGES).outcome == "BREAKER_OPEN"
    out: dict[str, Any] = {"threshold": 5, "calls_to_open": to_open,
                           "shed_client": timed(n, shed)}
    out["requests_while_open"] = len(server.requests) - seen
    # the whole kernel path: a provider row whose breaker is opened by the failing server
    host.for_loader(loader).client.clock = clock
    for _ in range(5):
        loader.boot(PROVIDER_EXEC, {"provider": "flaky", "messages": MESSAGES},
                    user_id="bench", tenant_id="acme")

    def shed_kernel() -> None:
        out_ = loader.boot(PROVIDER_EXEC, {"provider": "flaky", "messages": MESSAGES},
                           user_id="bench", tenant_id="acme")
        assert out_["error"]["code"] == "BREAKER_OPEN", out_
    out["shed_logline"] = timed(min(n, 1000), shed_kernel)
    server.default = "ok"
    clock.offset += 31
    resumed = 0
    while resumed < 10:
        resumed += 1
        if client.call(p, "acme", "chat", MESSAGES).ok:
            break
    out["calls_to_resume"] = resumed
    out["changes"] = [f"{c.before}->{c.after}" for c in changes]
    client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"meta": run_facts("bench_llm.py", argv)}
    with seeded_ledger("llm") as (home, database, key):
        fast = ServerProcess()
        try:
            with LlmServer(keep=False) as model, Loader(database, home) as loader:
                host.attach(loader, credentials=lambda t, c: None)
                secret = keys.id_secret(home, key)
                for p in (provider(fast.url, "bench"), provider(model.url, "flaky",
                                                                breaker_failures=5)):
                    admin.add(loader.conn, key, loader.root, secret, p)
                model.keep = True
                results["overhead"] = overhead(fast.url, loader, args.calls)
                results["breaker"] = breaker(model, loader, args.calls)
        finally:
            fast.close()
    return finish(results, report, args.json)


def report(r: dict[str, Any]) -> None:
    o, b = r["overhead"], r["breaker"]
    print("| path | p50 ms | p99 ms | calls/s | CPU ms/call (this process) |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for label, key in (("bare httpx (floor)", "bare"), ("LlmClient (no ledger)", "client"),
                       ("LogLine: boot provider_exec, span recorded", "logline"),
                       ("the same, waiting for each record's commit (flush per call)",
                        "logline_durable"),
                       ("for scale: SELECT 1 (one round trip)", "select1"),
                       ("the boot's query: manifest and kernel heads", "heads"),
                       ("the call's query: provider row, tokens today, transcripts "
                        "setting", "lookup"),
                       ("for scale: store.append of one span (autocommit)", "append")):
        m = o[key]
        print(f"| {label} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | {m['per_s']:,.0f} | "
              f"{m['cpu_ms']:.3f} |")
    print(f"\noverhead p50: LogLine {o['overhead_p50_ms']:.3f} ms (goal < 2 ms), client alone "
          f"{o['client_overhead_p50_ms']:.3f} ms; LogLine {o['logline']['per_s']:,.0f} calls/s "
          "through one worker (goal >= 500)")
    sc, sk = b["shed_client"], b["shed_logline"]
    print(f"\nbreaker: opened after {b['calls_to_open']} failing calls (threshold "
          f"{b['threshold']}); {b['requests_while_open']} requests reached the server while "
          f"open; refusing a call takes p50 {sc['p50_ms'] * 1000:.1f} µs / p99 "
          f"{sc['p99_ms'] * 1000:.1f} µs in the client (goal < 1 ms), p50 "
          f"{sk['p50_ms']:.3f} ms through provider_exec with its denied record; traffic "
          f"resumed after {b['calls_to_resume']} call(s) (the probe); changes: "
          f"{', '.join(b['changes'])}")
    print(f"\nload average {r['meta']['load_avg_at_start'][0]:.1f} at start, "
          f"{r['meta']['load_avg_at_end'][0]:.1f} at end, {r['meta']['cpus']} cpus")


if __name__ == "__main__":
    sys.exit(main())
