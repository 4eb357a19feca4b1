"""request_worker: claim scheduled requests FIFO in batches and run each through run_code.

Input: {"batch": 8}. Output: {"claimed": n, "executions": [{request_id, execution_id, status}]}.

The claim is a row lock on each request's head (ledger.claim_requests_v1, FOR UPDATE SKIP
LOCKED) held by this kernel's transaction, and each completion is appended in that same
transaction. A worker killed mid-batch releases its locks with its connection: the requests are
claimed again elsewhere, and each still yields exactly one recorded execution.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000003"
NAME = "request_worker"
RUN_CODE_ID = "00000000-0000-4000-8000-000000000001"
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")


def fail(ctx, request, message):
    """A request run_code could not handle still completes, with the error recorded."""
    out = {k: v for k, v in request.items() if k not in CHAIN_FIELDS}
    out["seq"] = request["seq"] + 1
    out["prev_hash"] = request["curr_hash"]
    out["status"] = "error"
    out["error"] = {"code": "RUN_CODE_FAILED", "message": message[:2000]}
    return ctx.append([out])[0]


def main(ctx):
    batch = int((ctx.input or {}).get("batch", 8))
    requests = ctx.claim_requests(batch)
    done = []
    for request in requests:
        try:
            with ctx.transaction():
                span = ctx.call(RUN_CODE_ID, {"span_id": request["parent_id"],
                                              "request": request})
            done.append({"request_id": request["id"], "span_id": span["id"],
                         "entity_type": span["entity_type"], "status": span["status"]})
        except Exception as exc:
            ctx.log("request_failed", request_id=request["id"], error=str(exc))
            failed = fail(ctx, request, str(exc))
            done.append({"request_id": request["id"], "span_id": failed["id"],
                         "entity_type": "request", "status": "error"})
    return {"claimed": len(requests), "executions": done}
