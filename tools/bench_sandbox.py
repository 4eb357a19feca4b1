#!/usr/bin/env python
"""Sandbox benchmark: runs/s of a trivial function through stage0.sandbox.SandboxPool, with
bytecode cached by BLAKE3 code hash (the default) next to compiling on every call.

    python tools/bench_sandbox.py [--seconds 2] [--threads 1] [--size 1] [--json FILE]

Each mode gets its own warm pool of `--size` workers, driven by `--threads` callers for
`--seconds` after a short warm-up. Also prints p50/p99 latency of one run (parent side:
validate input, frame, pipe round trip, worker compile-or-lookup, run, validate output). The
machine's load matters: on a shared 2-core box, other processes' CPU shows up directly.
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

from stage0.sandbox import Limits, SandboxPool  # noqa: E402

CODE = "def main(input):\n    return {'n': input['n'] + 1}\n"


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

        started = time.monotonic()
        workers = [threading.Thread(target=drive, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        elapsed = time.monotonic() - started
    lat = sorted(x for per in latencies for x in per)
    return {
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
    print(f"{'wrong outputs':24}{cached['failures']:>18}{compiled['failures']:>22}")
    print(f"speed-up from the cache: {cached['runs_per_s'] / compiled['runs_per_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"cached": cached, "compile_every_call": compiled, "args": vars(args),
             "load": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
