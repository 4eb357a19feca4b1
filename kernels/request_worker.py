"""request_worker: claim scheduled requests in batches and run them through run_code.

Input: {"batch": 8}. Output: {"claimed": n, "executions": [{request_id, span_id, status}]}.

A batch takes requests round-robin across tenants (each tenant's oldest, then each one's
next, ...) and runs them in that order, so one tenant's flood of requests delays another
tenant's by at most one run per round. The claim is a row lock on each request's head
(ledger.claim_requests_v2, FOR UPDATE SKIP LOCKED) held by this kernel's transaction, and
every completion is appended in that same transaction. A worker killed mid-batch releases
its locks with its connection: the requests are claimed again elsewhere, and each still
yields exactly one recorded execution. If the batch cannot be recorded as a whole, each
request is retried alone, and one that still fails is completed with status error so it is
never retried forever.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000003"
NAME = "request_worker"
RUN_CODE_ID = "00000000-0000-4000-8000-000000000001"
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")


def fail(ctx, request, message):
    out = {k: v for k, v in request.items() if k not in CHAIN_FIELDS}
    out["seq"] = request["seq"] + 1
    out["prev_hash"] = request["curr_hash"]
    out["status"] = "error"
    out["error"] = {"code": "RUN_CODE_FAILED", "message": message[:2000]}
    ctx.append([out])
    return {"request_id": request["id"], "span_id": request["id"], "entity_type": "request",
            "status": "error"}


def run(ctx, requests):
    with ctx.transaction():
        return ctx.call(RUN_CODE_ID, {"requests": requests})["results"]


def main(ctx):
    requests = ctx.claim_requests(int((ctx.input or {}).get("batch", 8)))
    if not requests:
        return {"claimed": 0, "executions": []}
    try:
        done = run(ctx, requests)
    except Exception as exc:
        ctx.log("batch_failed", size=len(requests), error=str(exc)[:300])
        done = []
        for request in requests:
            try:
                done.extend(run(ctx, [request]))
            except Exception as one:
                ctx.log("request_failed", request_id=request["id"], error=str(one)[:300])
                done.append(fail(ctx, request, str(one)))
    return {"claimed": len(requests), "executions": done}
