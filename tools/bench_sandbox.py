#!/usr/bin/env python
"""Sandbox benchmark: runs/s of a trivial function through stage0.sandbox.pool.SandboxPool,
with bytecode cached by BLAKE3 code hash (the default) next to compiling on every call.

    python tools/bench_sandbox.py [--seconds 2] [--threads 1] [--size 1] [--json FILE]

Each mode gets its own warm pool of `--size` workers, driven by `--threads` callers for
`--seconds` after a short warm-up. Also prints p50/p99 latency of one run (parent side:
validate input, frame, pipe round trip, worker compile-or-lookup, run, validate output), and
the CPU one run costs in this process and in the worker (from /proc): on a busy machine the
rate falls with the load, the CPU per run barely moves.
A benchmark never fails: it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stage0.sandbox.pool import Limits, SandboxPool  # noqa: E402

CODE = "def main(input):\n    return {'n': input['n'] + 1}\n"


def _proc_cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes (Linux /proc), seconds."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(cache: bool, seconds: float, threads: int, size: int) -> dict[str, float]:
    with SandboxPool(size, Limits(wall_ms=5000, cpu_ms=5000, memory_mb=256),
                     cache_code=cache) as pool:
        for i in range(200):
            pool.run(CODE, {"n": i})
        latencies: list[list[float]] = [[] for _ in range(threads)]
        counts = [0] * threads
        failures = [0] * threads
        stop = time.monotonic() + seconds

        def drive(k: int) -> None:
            n = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                result = pool.run(CODE, {"n": n})
                latencies[k].append(time.perf_counter() - t0)
                if result.output != {"n": n + 1}:
                    failures[k] += 1
                n += 1
            counts[k] = n

        pids = [w["pid"] for w in pool.worker_info()]
        worker_cpu0, parent_cpu0 = _proc_cpu_s(pids), time.process_time()
        started = time.monotonic()
        workers = [threading.Thread(target=drive, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        elapsed = time.monotonic() - started
        parent_cpu = time.process_time() - parent_cpu0
        worker_cpu = _proc_cpu_s(pids) - worker_cpu0
    lat = sorted(x for per in latencies for x in per)
    runs = max(1, sum(counts))
    return {
        "parent_cpu_us": parent_cpu / runs * 1e6,
        "worker_cpu_us": worker_cpu / runs * 1e6,
        "runs": sum(counts),
        "runs_per_s": sum(counts) / elapsed,
        "p50_us": statistics.median(lat) * 1e6,
        "p99_us": lat[int(len(lat) * 0.99) - 1] * 1e6,
        "failures": sum(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    cached = measure(True, args.seconds, args.threads, args.size)
    compiled = measure(False, args.seconds, args.threads, args.size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"sandbox: trivial function, {args.size} worker(s), {args.threads} caller thread(s), "
          f"{args.seconds:g} s per mode; {os.cpu_count()} CPUs, load {load:.2f}, "
          f"Python {platform.python_version()}")
    print(f"{'':24}{'cached bytecode':>18}{'compile every call':>22}")
    print(f"{'runs/s':24}{cached['runs_per_s']:>18,.0f}{compiled['runs_per_s']:>22,.0f}")
    print(f"{'p50 latency (us)':24}{cached['p50_us']:>18,.0f}{compiled['p50_us']:>22,.0f}")
    print(f"{'p99 latency (us)':24}{cached['p99_us']:>18,.0f}{compiled['p99_us']:>22,.0f}")
    print(f"{'parent CPU/run (us)':24}{cached['parent_cpu_us']:>18,.0f}"
          f"{compiled['parent_cpu_us']:>22,.0f}")
    print(f"{'worker CPU/run (us)':24}{cached['worker_cpu_us']:>18,.0f}"
          f"{compiled['worker_cpu_us']:>22,.0f}")
    print(f"{'wrong outputs':24}{cached['failures']:>18}{compiled['failures']:>22}")
    print(f"speed-up from the cache: {cached['runs_per_s'] / compiled['runs_per_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"cached": cached, "compile_every_call": compiled, "args": vars(args),
             "load": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
