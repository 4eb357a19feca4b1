"""`logline demo`: the whole loop in seconds on the embedded database.

Appends a user function, schedules it, lets the kernels run (request_worker -> run_code in the
sandbox -> policy_agent), prints every span of the request's trace and runs `verify`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.config import Home
from stage0.ledger import store, verify
from stage0.ledger.db import Database, one
from stage0.ledger.queries import q
from stage0.runtime.requests import schedule
from stage0.runtime.worker import KERNELS

DEMO_FUNCTION = '''def main(input):
    """Fibonacci numbers up to n: a small, deterministic user function."""
    n = input.get("n", 10)
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return {"n": n, "fib": seq[:n], "sum": sum(seq[:n])}
'''


def run_demo(database: Database, home: Home, out: Callable[[str], None]) -> dict[str, Any]:
    key = keys.operator_key(home)
    with database.connect("kernel") as conn:
        start = one(conn.execute(q("position_high_water")))["high"] or 0
        [function] = store.append(conn, [{
            "entity_type": "function", "who": "demo-user", "did": "defined", "this": "fibonacci",
            "name": "fibonacci", "code": DEMO_FUNCTION, "language": "python",
            "owner_id": "demo-user", "tenant_id": "demo", "visibility": "tenant",
            "status": "active"}], key)
        out(f"1. appended function  {function['id']} (fibonacci, seq {function['seq']})")
        request = schedule(conn, key, function["id"], {"n": 12})
        out(f"2. scheduled request  {request['id']} (trace {request['trace_id']})")
    with Loader(database, home) as loader:
        worked = loader.boot(KERNELS["request_worker"], {"batch": 8})
        out(f"3. request_worker     claimed {worked['claimed']} request(s)")
        policies = loader.boot(KERNELS["policy_agent"], {"batch": 500})
        out(f"4. policy_agent       {policies['policies']} policies, {policies['actions']} "
            "action span(s)")
    with database.connect("kernel") as conn:
        boots = conn.execute(q("demo_boot_events"), {"after": start}).fetchall()
        out("\nboots (stage 0 verified each kernel: manifest, hash, signature, trust, chain):")
        for row in boots:
            out(f"  #{row['position']:<6} boot_event     {row['this']:<15} seq "
                f"{row['metadata']['function_seq']} {row['metadata']['function_hash'][:16]}")
        trace = conn.execute(q("demo_trace"), {"trace_id": request["trace_id"]}).fetchall()
        out("\ntrace of the request:")
        for row in trace:
            extra = f" {row['duration_ms']} ms -> {row['output']}" if row["output"] else ""
            out(f"  #{row['position']:<6} {row['entity_type']:<14} seq {row['seq']} "
                f"{row['status'] or '':<10} by {row['who']}{extra}")
        report = verify.verify(conn, home.root_public_key())
    out(f"\nverify: {report.spans} spans, "
        f"{'ok' if report.ok else f'{len(report.failures)} failure(s)'}")
    return {"function": function["id"], "request": request["id"], "verify_ok": report.ok}
