"""LogLine: the stage-0 loader and the platform around it, one layer per folder.

Each layer imports only from the layers listed below it (import-linter checks this: see
`[tool.importlinter]` in pyproject.toml).

    cli/      `logline` commands: thin, each next to its own arguments
    api/      the HTTP edge: Starlette app, SSE timeline, console          | side by side,
    agent/    the governed local executor: an HTTP client, never the DB    | independent
    gov/      contracts, the fail-closed gate, API keys, proposals, approvals, jobs, audit
    runtime/  long-running workers and request scheduling
    boot/     THE stage-0 loader: verify a kernel span and run it (loader, restricted
              compile, kernel capabilities)
    llm/      LLM providers: rows, wire protocols, egress policy, hardening; stage 0   | side
              calls models for kernels (ctx.llm), so the sandbox never has a socket  | by
    memory/   memory spans: encrypted content, text and vector indexes, forgetting  | side
              by destroying keys, export (stage 0 for the memory kernels and the API)
    sandbox/  resource-limited worker processes running user code (RestrictedPython)  | side
    vault/    credentials and values encrypted at rest: AES-256-GCM under a master   | by
              key held outside the database (stage 0 only; never the sandbox)      | side
    ledger/   everything that talks to PostgreSQL: connections, named SQL, append/read,
              manifest, migrations, seeding, verification
    spans/    pure: canonical form, hashes and signatures, kinds, derived ids (no I/O)
    (root)    errors, reasons (every reason code: HTTP status, meaning), config (the home
              folder), keys (files in it), log (stderr lines): shared foundations (keys
              and log use spans/, config uses errors)
"""
