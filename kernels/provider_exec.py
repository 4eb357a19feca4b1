"""provider_exec: call an LLM provider (a `provider` row) for the caller and record the call.

Input, chat:       {"provider": "<name>", "messages": [{"role", "content"}], "params": {...}}
Input, embeddings: {"provider": "<name>", "operation": "embed", "input": "<text>" | [texts]}
Output: {"ok", "text" | "embeddings", "tokens_in", "tokens_out", "model", "cost", "error",
"execution_id"} (error: {"code", "message"}, e.g. TOKEN_BUDGET_EXCEEDED or BREAKER_OPEN).

The kernel holds no socket and no credential: stage 0 makes the call (ctx.llm / ctx.embed),
under the provider row's egress policy and limits, as the caller's tenant, and appends a
provider_execution span in the caller's trace (hashes and lengths, never the text).
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000005"
NAME = "provider_exec"


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    operation = args.get("operation") or "chat"
    if operation == "embed":
        return ctx.embed(args.get("provider"), args.get("input"), args.get("params"))
    return ctx.llm(args.get("provider"), args.get("messages"), args.get("params"))
