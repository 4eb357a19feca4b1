"""LLM providers: the rows that describe them, the three wire protocols, the egress policy and
the hardening around every call (timeouts, retries, breaker, rate limits, token budgets).

A layer above ledger/ and below boot/: stage 0 makes the calls for kernels (`ctx.llm`), so the
sandbox never gets a socket. `client.LlmClient` is the entry point; it knows nothing of the
database except through the callables it is given (credentials, budget usage, events).
"""
