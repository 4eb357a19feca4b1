"""Every reason code LogLine answers with: its HTTP status and what it means, in one table.

A refusal carries a stable code (`LoglineError(code, ...)`, `ApiError`, a kernel's
`{"code": ...}`, a database trigger's `RAISE`). This module is the one place that says what
each code means and which HTTP status the API answers it with: `stage0.api` reads the status
from here (`http_status`), `tools/gen_errors_doc.py` writes docs/errors.md from it, and
tests/unit/test_reason_codes.py fails when a code the source raises is missing here, or a code
here is raised nowhere. Plain data, no I/O.

`http` is the status the API answers the code with; None for codes that only the CLI, the
agent, kernels or the console meet. A code that reaches the API from the layers below it
without a status here is answered 422 (`DEFAULT_HTTP`).
"""

from __future__ import annotations

from typing import NamedTuple

#: The status of a refusal from the ledger, the gate's rules or the loader that this table
#: gives none.
DEFAULT_HTTP = 422


class Reason(NamedTuple):
    code: str
    http: int | None  # the API's status for it; None: the API never answers it
    meaning: str  # one line, Markdown
    remedy: str = ""  # what to do about it, when there is something to do


class Area(NamedTuple):
    """A group of codes with one origin; one section of docs/errors.md."""

    name: str
    title: str
    reasons: tuple[Reason, ...]
    before: str = ""  # prose above the table
    after: str = ""  # prose below it


R = Reason

AREAS: tuple[Area, ...] = (
    Area("spans", "Spans (normalisation, `stage0/spans/canonical.py`)", (
        R("SPAN_NOT_OBJECT", 422, "a span must be a JSON object"),
        R("SPAN_UNKNOWN_FIELD", 422, "a field that is not a ledger column"),
        R("SPAN_MISSING_FIELD", 422, "`entity_type`, `who`, `this`, `id` or `at` missing"),
        R("SPAN_INVALID_FIELD", 422, "wrong JSON type for the field"),
        R("SPAN_INVALID_UUID", 422, "not an 8-4-4-4-12 UUID"),
        R("SPAN_INVALID_HEX", 422, "hash/signature/key not lowercase hex of the right length"),
        R("SPAN_INVALID_TIMESTAMP", 422, "`at` not ISO 8601 with a time zone"),
        R("SPAN_INVALID_VISIBILITY", 422, "not private, tenant or public"),
        R("SPAN_OUT_OF_RANGE", 422, "`seq` / `duration_ms` outside 0..2^31-1"),
        R("SPAN_PREV_HASH_REQUIRED", 422, "seq 0 with a prev_hash, or a later seq without one"),
        R("SPAN_NUL_CHARACTER", 422, "a NUL (`\\u0000`), which PostgreSQL cannot store"),
        R("SPAN_INVALID_UNICODE", 422, "a lone surrogate"),
        R("SPAN_INTEGER_RANGE", 422, "an integer beyond ±(2^53−1)"),
        R("SPAN_NON_FINITE_NUMBER", 422, "NaN or Infinity"),
        R("SPAN_JSON_TOO_DEEP", 422, "JSON nested deeper than 64"),
        R("SPAN_TOO_LARGE", 422, "canonical form over 1 MiB"),
        R("SPAN_INVALID_KIND", 422, "`entity_type` is not `^[a-z][a-z0-9_]{0,63}$` (no upper "
          "case, spaces, zero-width or non-ASCII look-alikes)"),
    )),
    Area("ledger", "Ledger (database triggers and the append path)", (
        R("LEDGER_APPEND_ONLY", None, "UPDATE, DELETE or TRUNCATE on the ledger"),
        R("LEDGER_SEQ_GAP", 409, "a first stored version that is not seq 0, or a seq that "
          "skips versions"),
        R("LEDGER_SEQ_CONFLICT", 409, "seq is not head + 1 (someone appended first)"),
        R("LEDGER_PREV_HASH_MISMATCH", 409, "prev_hash is not the head's curr_hash"),
        R("LEDGER_OWNERSHIP_CHANGE", 403, "a version that changes owner, tenant or entity_type "
          "(also `logline new` asked to change them for the span its NAME.ndjson holds)"),
        R("LEDGER_DUPLICATE", 409, "a unique index refused the row (e.g. idempotency key)"),
        R("LEDGER_STALE_SNAPSHOT", 409, "an append from a REPEATABLE READ or SERIALIZABLE "
          "transaction whose snapshot predates another append's commit (it would fork the "
          "ledger chain)", "retry the transaction"),
        R("LEDGER_FORBIDDEN", 403, "row-level security or privileges refused the row; over "
          "HTTP also an `owner_id` / `tenant_id` that is not the caller's"),
        R("LEDGER_REJECTED", 422, "any other database refusal (message included)"),
        R("DB_UNAVAILABLE", 503, "the database cannot be reached"),
    )),
    Area("proofs", "Proofs and trust", (
        R("HASH_MISSING", 422, "a signed span without curr_hash"),
        R("HASH_MISMATCH", 422, "the content does not hash to curr_hash"),
        R("SIGNATURE_MISSING", 422, "a span without signature or public_key"),
        R("SIGNATURE_INVALID", 422, "the signature does not verify"),
        R("PROOF_INVALID", 422, "a proof check failed without naming its reason (never "
          "expected: the check names `HASH_*` or `SIGNATURE_*`)"),
        R("KEY_UNTRUSTED", 403, "signed by a key that is neither root nor in the manifest's "
          "trusted_keys", "`logline keys trust`"),
        R("KIND_NOT_PLATFORM_SIGNED", None, "a platform kind (execution, request, job, "
          "approval, ... `stage0/spans/kinds.py`, the manifest's `platform_kinds`) signed by a "
          "key that is not a platform key (root, or trusted with role `platform`): never a "
          "record; views leave such spans out and flag them (see below)"),
        R("KEY_NOT_PLATFORM", 422, "a kernel (an id in allowed_boot_ids) signed by a trusted "
          "key that is not a platform key: it does not boot"),
        R("MANIFEST_NOT_FOUND", 422, "no manifest in the ledger", "`logline seed`"),
        R("MANIFEST_UNTRUSTED", 422, "the manifest is not intact or not signed by the root "
          "key"),
        R("CHAIN_BROKEN", 422, "versions missing or prev_hash links broken"),
        R("HEAD_MISMATCH", None, "the head projection disagrees with the stored versions"),
        R("HEAD_MISSING", None, "stored versions have no head"),
        R("LEDGER_CHAIN_BROKEN", None, "the ledger hash chain breaks at this row (edited or "
          "removed rows)"),
        R("POSITION_INVALID", None, "a position out of order or never handed out"),
        R("CHAIN_TRUNCATED", None, "rows are gone from the end: the newest row is not the tip "
          "the last append recorded (`ledger.chain_tip`), or a checkpoint (`verify "
          "--checkpoint`) pins a position the ledger no longer holds"),
        R("CHAIN_FORKED", None, "the row at a checkpoint's position has another chain hash: "
          "history before it was rewritten"),
    )),
    Area("files", "Keys, configuration, files", (
        R("KEY_EXISTS", None, "a key file (or id secret) already exists: never overwritten"),
        R("KEY_NOT_FOUND", None, "no key file", "`logline keys gen`"),
        R("KEY_INVALID", None, "a key file that is not a 32-byte hex Ed25519 seed, an id "
          "secret that is not 32 bytes of hex, a public key that is not 64 hex characters"),
        R("KEY_PERMISSIONS", None, "a key or id secret file readable by others",
          "`chmod 600` it"),
        R("KEY_IS_ROOT", None, "trusting or removing the root key (always trusted)"),
        R("KEY_NOT_TRUSTED", None, "removing a key that is not in the manifest"),
        R("KEY_ROLE_INVALID", None, "a trusted key's role is not `author`, `edge` or "
          "`platform`"),
        R("CHECKPOINT_INVALID", None, "a checkpoint file that is not one, was edited, or is "
          "for another root key"),
        R("CHECKPOINT_EMPTY", None, "nothing to checkpoint yet: the ledger holds no rows"),
        R("ID_SECRET_MISSING", None, "a home that signs with a key other than the root key has "
          "no `keys/id.secret`; without it the ids it derived would differ from everyone "
          "else's", "copy it from the operator's: `logline keys id-secret --out FILE`"),
        R("ROOT_KEY_NOT_PINNED", None, "`$LOGLINE_HOME/config.json` pins no root public key",
          "`logline keys gen` or `logline init`"),
        R("ROOT_KEY_MISMATCH", None, "the operator key is not the root key "
          "`$LOGLINE_HOME/config.json` pins"),
        R("CONFIG_INVALID", None, "`$LOGLINE_HOME/config.json` is not valid JSON"),
        R("ROW_NOT_FOUND", None, "an NDJSON (or code) file or directory that does not exist"),
        R("ROW_UNREADABLE", None, "an NDJSON file that cannot be read"),
        R("ROW_BAD_ENCODING", None, "an NDJSON line that is not UTF-8 (file:line)"),
        R("ROW_BAD_JSON", None, "an NDJSON line that is not JSON (file:line)"),
        R("ROW_NOT_OBJECT", None, "an NDJSON line that is not one JSON object (file:line)"),
        R("SEED_ID_REQUIRED", None, "a seeded row without a stable `id` (re-seeding would "
          "duplicate it; Blueprint4.md §6)"),
        R("SEED_UNSIGNED_CHAIN_FIELDS", None, "an unsigned row that sets fields the seed "
          "assigns (seq, prev_hash, ...)", "remove them, or sign the row with `logline sign`"),
        R("SEED_CONFLICT", None, "the ledger already holds a different version at this seq",
          "re-sign the row as the next version"),
        R("SEED_DUPLICATE_ID", None, "one file holds an id twice unsigned"),
        R("MANIFEST_INVALID", None, "a manifest's `metadata.trusted_keys` is not a list of "
          "{name, public_key, role?}"),
        R("MIGRATION_BAD_NAME", None, "a migration file not named `NNNN_lowercase_words.sql`"),
        R("MIGRATION_DUPLICATE", None, "two migrations share a number"),
        R("MIGRATION_CHANGED", None, "a migration already applied with different content",
          "add a new migration instead of editing it"),
        R("MIGRATION_FAILED", None, "PostgreSQL refused a migration (its message included)"),
        R("EMBEDDED_AS_ROOT", None, "running as root, the embedded PostgreSQL runs as the OS "
          "user `pgserver`, and a directory above its data folder or its programs is closed to "
          "that user (or a file of its programs unreadable, or the user could not be created): "
          "LogLine changes nothing; the message names each directory and the remedies "
          "(README, \"Running as root\")"),
        R("NOT_INITIALISED", None, "`$LOGLINE_HOME` has no operator key and config, or no "
          "embedded database yet, or the database was never migrated (nothing is started)",
          "`logline init`"),
        R("INPUT_BAD_JSON", None, "a `--input` that is not JSON (also `logline try` of a "
          "policy without a span to try it on)"),
        R("NEW_BAD_NAME", None, "`logline new` with a name that is not a lowercase letter then "
          "lowercase letters, digits or `_` (or a kind other than function and policy)"),
        R("NEW_CODE_INVALID", None, "`logline new` / `try`: the code does not parse (names the "
          "line) or defines no `main`, or a policy's ON_ENTITY_TYPES / TIMEOUT_MS is "
          "malformed"),
        R("NEW_NOT_ONE_ROW", None, "`logline new` finds NAME.ndjson holding other than one row "
          "(it keeps one span's row per file)"),
        R("BAD_ID", 400, "something that is not a span id (a UUID) where one is needed: a CLI "
          "argument (`logline boot fibonacci`), an id in an API path, `span_id` of an execute, "
          "a `trace_id` filter (trace ids given in a span must be lowercase UUIDs: "
          "`BAD_FIELD`, 422)"),
        R("BAD_RATE", None, "`logline serve --rate` that is not CLASS=PER_SECOND[:BURST] with "
          "a known class"),
        R("KERNEL_SOURCE_INVALID", None, "`tools/build_rows.py`: a kernel or policy source "
          "under `kernels/` declares no NAME"),
        R("BENCH_NEEDS_CHECKOUT", None, "`logline bench` run from an installed package: the "
          "benchmarks live in `tools/` of a checkout"),
    )),
    Area("kernels", "Stage 0 and kernels", (
        R("BOOT_NOT_ALLOWED", 403, "the id is not in the manifest's allowed_boot_ids (only "
          "kernels boot; a function is scheduled: `logline schedule ID`)"),
        R("FUNCTION_NOT_FOUND", 404, "no such span, or (`POST /api/execute`) a span that is "
          "not a function"),
        R("NOT_A_FUNCTION", 422, "booting a span that is not a function"),
        R("KERNEL_COMPILE_ERROR", 422, "RestrictedPython refused the code (names the line)"),
        R("KERNEL_NO_MAIN", 422, "no `main` defined"),
        R("KERNEL_ERROR", 422, "the kernel raised (exception type and message)"),
        R("KERNEL_OUTPUT_NOT_JSON", 422, "the kernel returned something that is not JSON"),
        R("KERNEL_SQL_NOT_LITERAL", 422, "SQL that is not a literal of the kernel's source"),
        R("KERNEL_RECORD_INVALID", 422, "ctx.record() of a span that is not a new draft "
          "with an id the boot minted"),
        R("TENANT_MISMATCH", 403, "scheduling another tenant's private function"),
        R("REQUESTER_REQUIRED", None, "`logline schedule` of a function without owner_id (or "
          "tenant_id) and no `--user` (`--tenant`): nobody would be asking for the run"),
        R("QUOTA_EXCEEDED", 429, "the tenant's daily execution quota is used up: a request the "
          "workers refused ends `denied` with this in `error.code` and `metadata.reason` (and "
          "a `policy_violation`); `POST /api/execute` answers it at once, with `Retry-After` "
          "until 00:00 UTC"),
        R("QUOTA_INVALID", None, "`logline quota set` with a limit that is not a whole number "
          "from 0 to 2^31−1 (or `default`)"),
        R("RUN_CODE_FAILED", None, "a request run_code could not handle (completed with status "
          "error)"),
        R("POLICY_ERROR", None, "(`policy_error` error.code) a policy failed or an action of "
          "it was refused; `metadata.cause` says why, with one of the codes below or a "
          "`SANDBOX_*` code (the policy hit a sandbox limit alone)"),
        R("POLICY_RAISED", None, "(cause) the policy raised on this span"),
        R("POLICY_BUDGET_EXHAUSTED", None, "(cause) not evaluated: the policy's budget for the "
          "round was spent (the batch the span was in failed; the message says how)"),
        R("POLICY_BAD_OUTPUT", None, "(cause) not a list of actions, an action that is not an "
          "object, an unknown action"),
        R("POLICY_ACTION_INVALID", None, "(cause) an emit_span with fields it may not set or "
          "that make no valid span; a run of something that is not a span id"),
        R("POLICY_KIND_INVALID", None, "(cause) an emitted kind that is not "
          "`^[a-z][a-z0-9_]{0,63}$` (look-alikes of reserved kinds)"),
        R("POLICY_KIND_RESERVED", None, "(cause) a tenant policy emitting a platform kind "
          "(`job`, `approval`, `execution`, `metric`, ...)"),
        R("POLICY_KIND_NEVER_EMITTED", None, "(cause) any policy emitting code, trust, "
          "scheduling or authorisation kinds (`stage0.spans.kinds.NEVER_EMITTED`)"),
        R("POLICY_CROSS_TENANT", None, "(cause) a tenant policy emitting into, or naming a "
          "span of, another tenant"),
        R("POLICY_RUN_FOREIGN", None, "(cause) a tenant policy scheduling a function that is "
          "not its own tenant's"),
        R("POLICY_APPEND_FAILED", None, "(cause) the ledger refused the span an action asked "
          "for (its id taken, a duplicate idempotency key); the other actions and the cursor "
          "went ahead"),
    ), after="`logline try` reports a `SANDBOX_*` code as its error (exit 2), and a policy "
             "action the agent would refuse as `REFUSED action N: ...` (exit 1)."),
    Area("sandbox", "The sandbox (`stage0/sandbox/`; `docs/sandbox.md`)", (
        R("SANDBOX_COMPILE_ERROR", None, "syntax error (`line N: ...`), code too deeply "
          "nested"),
        R("SANDBOX_FORBIDDEN", None, "a refused import, name, attribute, builtin, write or "
          "statement, at compile time or at run time (also when the code caught the "
          "refusal)"),
        R("SANDBOX_NO_ENTRY", None, "the entry point is missing, not a function, or takes no "
          "parameter"),
        R("SANDBOX_RUNTIME_ERROR", None, "an exception escaped: `line N: Type: message`"),
        R("SANDBOX_RECURSION", None, "the recursion limit was hit"),
        R("SANDBOX_CPU_LIMIT", None, "CPU time above `cpu_ms` (the worker was killed by "
          "SIGPROF/SIGXCPU)"),
        R("SANDBOX_TIMEOUT", None, "no reply within `wall_ms` (the parent killed the worker)"),
        R("SANDBOX_MEMORY_LIMIT", None, "an allocation failed under the address-space limit"),
        R("SANDBOX_OUTPUT_NOT_JSON", None, "the output is not storable JSON (set, bytes, "
          "NaN, a non-string key, an integer beyond ±(2^53−1), deeper than 64, NUL, ...)"),
        R("SANDBOX_OUTPUT_TOO_LARGE", None, "the encoded output is above `output_bytes`"),
        R("SANDBOX_INPUT_NOT_JSON", None, "input or context is not storable JSON (context "
          "must be an object)"),
        R("SANDBOX_INPUT_TOO_LARGE", None, "input above `input_bytes`, or code above "
          "`code_bytes`"),
        R("SANDBOX_WORKER_DIED", None, "the worker died for another reason (killed from "
          "outside, crashed, protocol violation)"),
        R("SANDBOX_ERROR", None, "`logline try`: the run failed without a code (never "
          "expected)"),
        R("SANDBOX_LIMITS_INVALID", None, "(the pool) a limit or pool size that is not a "
          "positive whole number, a recursion limit under 20, memory above the pool's own"),
        R("SANDBOX_INVALID_REQUEST", None, "(the pool) code not a string, entry not a public "
          "identifier, tenant neither None nor a non-empty string"),
        R("SANDBOX_CLOSED", None, "(the pool) a run asked of a closed pool"),
        R("SANDBOX_UNAVAILABLE", None, "(the pool) sandbox workers cannot start"),
    ), before="A run's `error` is `{\"code\", \"message\"}` (an execution's `error.code`, "
              "`logline try`'s error); `docs/sandbox.md` explains the limits. Problems of "
              "the pool itself raise the last four."),
    Area("contracts", "Contracts (`stage0/gov/contracts.py`, `stage0/gov/contract_store.py`, "
         "`proposals.py`, `approvals.py`, `jobs.py`)", (
        R("CONTRACT_INVALID", 422, "a contract does not fit the schema (names the field: "
          "`actions.delete.approvals: ...`)"),
        R("CONTRACT_BAD_YAML", None, "a contract file is not YAML (file:line)"),
        R("CONTRACT_FILE_NAME", None, "a contract file is not named `NAME@VERSION.yaml` after "
          "its content"),
        R("CONTRACT_EXISTS", 409, "publishing a name@version that is already published, is a "
          "system contract, or is named `api`"),
        R("CONTRACT_NOT_FOUND", 404, "activating something that is not NAME@VERSION, not "
          "visible to the tenant, or the api contract (always active)"),
        R("CONTRACT_UNTRUSTED", 403, "a contract span whose hash or signature fails, or signed "
          "by an untrusted key"),
        R("CONTRACT_CHANGED", 409, "the contract version a request was decided under is no "
          "longer there"),
    )),
    Area("gate", "The gate (`stage0/gov/gate.py`; `docs/governance.md`)", (
        R("G_OK", None, "outcome ALLOW: the action needs no approval (answered 201 by "
          "proposals and intents)"),
        R("G_APPROVED", None, "outcome ALLOW: enough valid, unexpired approvals; an execute "
          "job is queued (answered 200 by approvals)"),
        R("G_APPROVAL_REQUIRED", None, "outcome PENDING_APPROVAL: waiting for (more) approvals "
          "(answered 201 / 200)"),
        R("G_APPROVAL_EXPIRED", None, "outcome PENDING_APPROVAL: too few approvals, some "
          "expired after `approval_ttl_s` (answered 200); also the reason a claim refuses an "
          "execute job whose approvals expired before it was claimed (the request ends "
          "`refused`)"),
        R("G_REJECTED", None, "outcome DENY of a recorded rejection: one approver rejected, "
          "the request has ended (answered 200 by approvals)"),
        R("G_NO_CONTRACT", 403, "no active contract for the tenant (or none of the named "
          "domain); on routes: the api contract is missing or untrusted"),
        R("G_UNKNOWN_ACTION", 422, "the contract has no such action (or it names another "
          "domain)"),
        R("G_AMBIGUOUS_ACTION", 422, "a bare action that two active contracts have: name it "
          "`domain.action`"),
        R("G_NO_PROFILE", 403, "a route whose action has no profile in the api contract"),
        R("G_ROLE_DENIED", 403, "none of the caller's roles may call this route, request this "
          "action, or approve it"),
        R("G_BAD_ARGUMENTS", 422, "arguments do not fit the action's `args` (names the "
          "argument; path refusals name P_ABSOLUTE or P_TRAVERSAL)"),
        R("G_SOD_VIOLATION", 403, "an approval by the requester, or by an agent identity (a "
          "user holding a key with the contract's `executor_role`, or who claimed one of the "
          "request's jobs)"),
        R("G_APPROVAL_REPLAYED", 409, "this approver already answered this request and the "
          "answer stands (a rejection, or an approval not yet expired; an expired approval may "
          "be renewed)"),
        R("G_PLAN_PENDING", 409, "an approval of a destructive request whose plan the agent "
          "has not reported yet (rejecting is accepted)"),
        R("G_NOT_PENDING", 409, "the request is no longer waiting for approvals (rejected, "
          "plan failed, approved, done ...)"),
    ), before="Outcomes are not errors: they are the `reason` of an answer that succeeded. "
              "Refusals are answered with the code as the error code, after their "
              "`gate_decision` span is recorded. The route gate (every HTTP route is an "
              "action of the api contract) answers all its refusals 403."),
    Area("jobs", "Jobs, sentences and the audit export", (
        R("JOB_NOT_CLAIMED", 409, "a result for a job that this key's user has not claimed"),
        R("JOB_RESULT_CONFLICT", 409, "a different result is already recorded for the job "
          "(the same one again is acknowledged)"),
        R("JOB_CLAIM_FAILED", None, "(`job_claim` content.reason, status `refused`) the ledger "
          "refused the job's claim span (its id was taken): the job is skipped for good, the "
          "agent's other jobs are handed out"),
        R("JOB_BAD_STATUS", None, "a result status other than done, failed, interrupted (over "
          "HTTP the body check answers `BAD_FIELD` first)"),
        R("INTENT_NOT_UNDERSTOOD", 422, "no phrase of the tenant's active contracts matches "
          "the sentence (or the tenant has no active contract); the message lists examples"),
        R("EXPORT_UNREADABLE", None, "`logline verify --export FILE`: the file cannot be read"),
        R("AUDIT_BAD_FORMAT", None, "an export format other than jsonl or csv (the CLI's "
          "`--format` and the API's `BAD_QUERY` catch it first)"),
        R("UNREADABLE", None, "`logline verify --export`: a line that is not a span"),
        R("RECORD_MISLABELLED", None, "`logline verify --export`: the line's `record` is not "
          "what its key makes it (`platform`, `tenant` or `forged`)"),
    ), after="`logline verify --export` reports a bad line as `FAIL FILE:LINE ID REASON`, the "
             "reason being a proof code (`HASH_MISMATCH`, `SIGNATURE_INVALID`, "
             "`KEY_UNTRUSTED` ...), `UNREADABLE`, `KIND_NOT_PLATFORM_SIGNED` (a platform kind, "
             "such as `approval` or `execution`, signed by a key that is not a platform key) "
             "or `RECORD_MISLABELLED`, and exits 1."),
    Area("records", "Views of platform records (`stage0/ledger/records.py`; `docs/api.md`)", (
        R("RECORD_MALFORMED", 422, "a record whose fields are not what the platform writes (a "
          "contract without name, version or actions; a request whose terms cannot be read): "
          "skipped; `GET /api/proposals/{id}` of such a request answers 422 with this code"),
        R("PLAN_MALFORMED", None, "the plan an agent reported is not a list of operations each "
          "naming its `op` and `path` as text (with `to` text or null, `size` a whole number "
          ">= 0): never shown as a plan, the request is `plan_failed`"),
    ), before="A view that interprets spans (metrics, executions, functions, contracts, the "
              "approvals inbox, a request's state, the audit export) leaves out what is not a "
              "platform record of the caller's tenant, and names in its answer's `flags` "
              "(`{\"id\", \"reason\", \"detail\"}`; the CLI prints `flagged ID REASON: "
              "detail`, the console a ⚑ marker) what it left out and why. A flag is not an "
              "error: the rest of the answer stands. Besides the two below, a flag's reason "
              "is `KIND_NOT_PLATFORM_SIGNED`: a span of a platform kind (an `execution`, "
              "`approval`, `job`, `contract` ...) of your tenant, signed by a key that is not "
              "a platform key, is not counted."),
    Area("api", "The HTTP edge (`stage0/api`)", (
        R("BAD_JSON", 400, "the body is not JSON, nests too deeply, or is missing; also "
          "`logline propose --args` that is not JSON"),
        R("BAD_QUERY", 400, "a query parameter with a NUL or over 1000 characters, not a whole "
          "number or out of its range, a time that is not ISO 8601 with a zone, `from` after "
          "`until`, an export format other than jsonl or csv"),
        R("BAD_FIELD", 422, "a body field that does not fit the route's schema (names the "
          "field), a platform kind as `entity_type`, `at` with metadata that is not an "
          "object"),
        R("AUTH_REQUIRED", 401, "no `Authorization: Bearer <api key>` (answered with "
          "`WWW-Authenticate: Bearer`)"),
        R("AUTH_INVALID", 401, "an unknown, revoked or malformed API key"),
        R("OPERATOR_ONLY", 403, "`POST /api/boot/{id}`, `GET /metrics`, a change to a provider "
          "row or acting for another tenant with a key that lacks the `operator` role, let "
          "through by an api contract not yet re-seeded (the gate itself answers "
          "`G_ROLE_DENIED`)"),
        R("NOT_FOUND", 404, "no such route, or no span, proposal, approval request or job with "
          "this id visible to you (absent and invisible look the same); `logline why` of an "
          "id that is neither a span nor a trace"),
        R("METHOD_NOT_ALLOWED", 405, "a method the route does not take"),
        R("BODY_TIMEOUT", 408, "the request body took longer than `logline serve "
          "--body-timeout` (30 s) to arrive; the connection is closed"),
        R("BODY_TOO_LARGE", 413, "a body over 1 MiB (with or without Content-Length)"),
        R("UNSUPPORTED_MEDIA_TYPE", 415, "a body that is not `application/json`"),
        R("RATE_LIMITED", 429, "too many requests of the route's class for this key (`logline "
          "serve --rate`); answered with `Retry-After`"),
        R("INTERNAL", 500, "the server failed (logged with the request id)"),
        R("BOOT_FAILED", 500, "`POST /api/boot/{id}`: the child process that runs the boot "
          "exited without an answer (killed, crashed; its traceback is in the server log)"),
        R("REQUEST_TIMEOUT", 504, "the request took longer than `logline serve "
          "--request-timeout` (15 s; not the SSE stream)"),
        R("PORT_IN_USE", None, "`logline up` / `serve`: the host:port is taken by another "
          "process; nothing was announced or started", "choose another with `--port`"),
    ), before="Refusals of the API itself; `docs/api.md` has the table by HTTP status."),
    Area("operations", "The console's operations (`stage0/api/operations.py`; `docs/api.md`)", (
        R("VERIFY_RUNNING", 409, "`POST /api/verify` while this server is already verifying "
          "the ledger: one walk at a time"),
        R("VERIFY_TIMEOUT", 504, "`POST /api/verify` did not finish within 10 s and was "
          "cancelled", "run `logline verify` (no time limit, several processes)"),
    )),
    Area("llm", "LLM providers (`stage0/llm`; `docs/providers.md`)", (
        R("PROVIDER_KIND_UNKNOWN", 422, "a provider row's kind is not openai, ollama or "
          "anthropic (the row is never called)"),
        R("PROVIDER_INVALID", 422, "a provider row (or `provider add`'s arguments) does not "
          "parse; `where` names the field"),
        R("PROVIDER_NOT_FOUND", 404, "no platform-signed provider row of this name for the "
          "caller's tenant or the system", "`logline provider list`"),
        R("PROVIDER_DISABLED", None, "the provider row's status is `disabled`",
          "`logline provider enable NAME`"),
        R("LLM_REQUEST_INVALID", None, "messages are not `[{role, content}]` (role system, "
          "user or assistant; content text), input is not text(s), params set a reserved key "
          "(model, messages, input, system, prompt, stream_options, n), or max_tokens is not "
          "a whole number >= 1"),
        R("LLM_OPERATION_UNSUPPORTED", None, "embeddings from an anthropic provider, or an "
          "operation other than chat and embed"),
        R("CREDENTIAL_MISSING", None, "the provider row names a credential neither the "
          "tenant nor (for a system row) the system tenant has",
          "`logline secrets set NAME --tenant T`"),
        R("EGRESS_DENIED", None, "the host is not in the row's egress.hosts, it resolves only "
          "to addresses the row does not allow (private, loopback, link-local, metadata), or "
          "plain http to a public address"),
        R("BREAKER_OPEN", None, "the provider's circuit breaker is open (or its half-open "
          "probe is under way); `retry_in_s` says when calls resume"),
        R("TOKEN_BUDGET_EXCEEDED", None, "the tenant has used its daily_token_budget with "
          "this provider today (UTC)", "wait for 00:00 UTC, or raise the row's "
          "limits.daily_token_budget"),
        R("PROVIDER_THROTTLED", None, "the provider's request rate (limits.rps, burst) in "
          "this worker is spent; `retry_in_s` says when"),
        R("TENANT_THROTTLED", None, "the tenant's request rate for this provider "
          "(limits.tenant_rps, tenant_burst) is spent"),
        R("PROVIDER_TIMEOUT", None, "connecting or reading timed out, or the call's "
          "total_timeout_s passed"),
        R("PROVIDER_STREAM_IDLE", None, "a streamed answer sent nothing for "
          "stream_idle_timeout_s"),
        R("PROVIDER_STREAM_TRUNCATED", None, "a stream ended before its end marker (never "
          "passed on as a shorter answer)"),
        R("PROVIDER_RATE_LIMITED", None, "the provider answered 429 (after the retries, "
          "honouring Retry-After)"),
        R("PROVIDER_UNAVAILABLE", None, "a 5xx, a refused or dropped connection, a body cut "
          "short, a name that does not resolve"),
        R("PROVIDER_BAD_RESPONSE", None, "the answer is not JSON or not the protocol's "
          "shape, or an error object (only its type is kept)"),
        R("PROVIDER_RESPONSE_TOO_LARGE", None, "the answer is over limits.max_response_bytes"),
        R("PROVIDER_REDIRECT", None, "the provider answered 3xx: never followed",
          "set base_url to the final URL"),
        R("PROVIDER_TLS_FAILED", None, "the server's certificate did not verify for the "
          "provider's host name"),
        R("PROVIDER_AUTH_FAILED", None, "401 or 403: the provider refused the credential"),
        R("PROVIDER_REJECTED", None, "another 4xx: the provider refused the request"),
        R("PROVIDER_CANCELLED", None, "the caller went away (the call was stopped, its "
          "connection shut)"),
        R("RECORDER_FLUSH_FAILED", None, "provider records are still queued after the wait "
          "(the database refused or was unreachable; they stay queued and are retried, and "
          "the log says why: provider_records_flush_failed)", "bring the database back; "
          "nothing is dropped while the process lives"),
        R("RECORDER_CLOSED", None, "a provider call was recorded after its host was closed"),
        R("TRANSCRIPT_NOT_FOUND", 404, "the tenant kept no transcript of that call (it had not "
          "opted in then, the id is not one of its calls, or it is another tenant's)",
          "`logline provider transcripts on --tenant T` keeps those of later calls"),
        R("TRANSCRIPT_INVALID", 422, "a transcripts setting or read names no tenant (or "
          "`system`), or `keep` is not true or false"),
    ), before="A failed call does not raise in the kernel: `ctx.llm` answers `ok: false` with "
              "the code in `error`, and the `provider_execution` span records it."),
    Area("apikeys", "API keys and the CLI's client", (
        R("APIKEY_BAD_ROLE", None, "`apikey create --role` with a role that is neither reader, "
          "writer, admin nor declared by a contract"),
        R("APIKEY_BAD_NAME", None, "a user or tenant name that is not 1-200 letters, digits or "
          "`_.@:-`"),
        R("APIKEY_NOT_FOUND", None, "no such key"),
        R("APIKEY_REVOKED", None, "the key is already revoked"),
        R("APIKEY_RESERVED", None, "`apikey create` for user or tenant `system`, the platform "
          "itself (its spans are the operator's to seed); such a key already in a ledger does "
          "not authenticate. Also `--role operator`: only the local operator's own key holds "
          "it (`logline up` makes it); on any other key already in a ledger the role is "
          "ignored"),
        R("TOKEN_REQUIRED", None, "a command that calls the API without `--token` or "
          "`LOGLINE_TOKEN`"),
        R("API_UNREACHABLE", None, "the API cannot be reached (names the URL); the agent "
          "retries with back-off (as it does on any 4xx or 5xx answer to its claims), other "
          "commands stop"),
        R("HTTP_nnn", None, "the server answered status nnn without LogLine's error shape (a "
          "proxy, another program); the console shows it too"),
    ), after="Refusals from the API reach the CLI with the server's own code (`error: "
             "G_SOD_VIOLATION: ...`)."),
    Area("vault", "Credentials and the master key (`stage0/vault/`; `docs/providers.md`)", (
        R("MASTER_KEY_MISSING", None, "no `LOGLINE_MASTER_KEY` and no `keys/master.key`: "
          "nothing is encrypted or decrypted (fail closed); when the ledger already holds data "
          "keys no new master key is created either", "restore the master key from its backup "
          "or set `LOGLINE_MASTER_KEY`"),
        R("MASTER_KEY_INVALID", None, "a master key that is not 32 bytes in hex or base64 (the "
          "message never repeats what was given), or a rotation to the same key",
          "`openssl rand -hex 32` makes one"),
        R("MASTER_KEY_WRONG", None, "the tenant's data key is wrapped by another master key "
          "than the one given (both named by their id, a keyed hash: never the key)",
          "use the master key the ledger was sealed with; after `secrets rotate-master` the "
          "old one is `keys/master.key.retired-*`"),
        R("MASTER_KEY_FROM_ENV", None, "`logline secrets rotate-master` with the key in "
          "`LOGLINE_MASTER_KEY` and no `--new-key-file`", "pass `--new-key-file FILE`, then "
          "set the variable to its content"),
        R("SECRET_UNREADABLE", None, "a secret or a data key that does not open: altered "
          "bytes, moved to another tenant, name or version, not a vault record, or several "
          "spans claiming one secret"),
        R("SECRET_NOT_FOUND", None, "the tenant has no secret of that name (another tenant's "
          "is not found either); `rotate` of a name never set; `rotate-key` of a tenant with "
          "no data key", "`logline secrets list --tenant T`"),
        R("SECRET_REVOKED", None, "the secret was revoked (`logline secrets revoke`), or "
          "revoking one that already is", "`logline secrets set` gives it a new value"),
        R("SECRET_EMPTY", None, "the value read from standard input is empty or blank",
          "pipe the value in, e.g. with `printf %s \"$KEY\"`"),
        R("SECRET_TOO_LARGE", None, "a value over 64 KiB"),
        R("SECRET_NOT_TEXT", None, "the value on standard input is not UTF-8 text (the "
          "message never quotes its bytes)"),
        R("SECRET_BAD_NAME", None, "a secret name that is not 1-128 letters, digits or `_.:-`, "
          "or a tenant that is not 1-200 letters, digits or `_.@:-`"),
    )),
    Area("agent", "The governed agent (`stage0/agent/runner.py`)", (
        R("AGENT_NOT_CONFIGURED", None, "`logline agent run/status` before `logline agent "
          "configure`"),
        R("AGENT_BAD_CONFIG", None, "the state directory's config.json is not what configure "
          "writes"),
        R("AGENT_BAD_ROOT", None, "the root is not a directory, or the state directory lies "
          "inside it"),
        R("AGENT_ROLE_MISSING", None, "the key given to configure does not carry the agent "
          "role"),
        R("AGENT_NO_PLAN", None, "(in a job result's output) a destructive execute job without "
          "an approved plan"),
    )),
    Area("fsops", "Agent file operations (`stage0/agent/fsops.py`)", (
        R("P_BAD_PATH", None, "not a string, empty, longer than 4096, a component longer than "
          "255, not UTF-8"),
        R("P_ABSOLUTE", None, "starts with `/`, `\\`, `~` or a drive (`C:`, `C:/...`, "
          "`C:\\...`)"),
        R("P_TRAVERSAL", None, "a `..` component or a NUL character"),
        R("P_SYMLINK", None, "a component of the path is a symlink (refused even if it points "
          "inside the root)"),
        R("P_NOT_FOUND", None, "no such file or directory (also: the root itself, a path with "
          "nothing trashed)"),
        R("P_NOT_A_FILE", None, "a file was expected (a directory, the root, a FIFO, a device "
          "...)"),
        R("P_NOT_A_DIR", None, "a directory was expected"),
        R("P_EXISTS", None, "a destination exists (never overwritten), or two ops have the "
          "same destination"),
        R("P_IN_TRASH", None, "a path inside `.logline-trash/` (the trash cannot be listed or "
          "targeted)"),
        R("P_CHANGED", None, "a file's content or identity changed between plan and execution "
          "(moved back when it could be), or the copy a duplicate's trash op keeps "
          "(`duplicate_of`) is gone or changed (the duplicate is not trashed)"),
        R("P_UNKNOWN_ACTION", None, "planning an action that is not delete, delete_duplicates, "
          "move, rename"),
        R("P_BAD_ARGS", None, "the action's arguments are missing, of the wrong type, or list "
          "a path twice"),
        R("P_BAD_NAME", None, "rename's new_name is empty, `.`, `..`, contains `/` or NUL, or "
          "is too long"),
        R("P_BAD_OP", None, "an op to execute is malformed (unknown op, bad hash, bad inode "
          "...)"),
        R("P_TOO_DEEP", None, "a directory tree deeper than 256 levels"),
        R("P_IO", None, "any other operating-system error (message included)"),
    ), before="A refused plan fails its job with `{\"code\", \"message\", \"where\"}` in the "
              "result's output (the request becomes `plan_failed`); a refused op is one "
              "result with `\"status\": \"refused\"` and its code. `where` is the offending "
              "path, relative to the root."),
    Area("journal", "The agent's journal (`stage0/agent/journal.py`)", (
        R("J_CORRUPT", None, "a damaged journal line other than a torn last one (file:line); "
          "the agent stops rather than guess"),
        R("J_UNKNOWN_JOB", None, "an ack for a job the journal does not know"),
        R("J_NOT_RUNNING", None, "an op or finish for a job that is not begun-and-unfinished"),
        R("J_NOT_FINISHED", None, "an ack before the job finished"),
        R("J_BAD_STATUS", None, "a finish status other than done or failed"),
        R("J_BAD_ARGS", None, "a job id that is not a non-empty string, a result that is not "
          "an object, a bad op index"),
    )),
    Area("console", "The console, in the browser (`stage0/api/console/static/app.js`)", (
        R("NETWORK", None, "the console could not reach the LogLine server"),
        R("KEY_REQUIRED", None, "signing in without an API key"),
        R("CONSOLE_RENDER", None, "a request the console cannot show (its message says why)"),
        R("CONSOLE_ERROR", None, "anything else that failed in the console (the message is "
          "the browser's)"),
    ), before="The console shows the API's codes as the server sent them; these few are its "
              "own."),
    Area("prompts", "Prompts (`kernels/prompt_*.py`; `docs/prompts.md`)", (
        R("PROMPT_NOT_FOUND", 404, "no prompt_variant or prompt_block with this id (or no "
          "variant of this family) in the caller's tenant or the system's"),
        R("PROMPT_VARIANT_INVALID", 422, "a variant's metadata.block_ids is not a list of 1-64 "
          "ids, or metadata.vars is not an object of name -> default text or null"),
        R("PROMPT_BLOCK_INVALID", 422, "a block's metadata.priority is not an integer or its "
          "content is not text"),
        R("PROMPT_TEMPLATE_INVALID", 422, "a `{{` never closed, or `{{ x }}` where x is not a "
          "variable name; `where` names the block"),
        R("PROMPT_VARIABLE_MISSING", 422, "a `{{ name }}` with no value: neither given in vars "
          "nor defaulted by the variant (never replaced by an empty string); `where` names "
          "the block and the variable"),
        R("PROMPT_VARIABLE_UNDECLARED", 422, "a var the variant's metadata.vars does not "
          "declare"),
        R("PROMPT_VARIABLE_INVALID", 422, "vars is not an object, or a value is not text"),
        R("PROMPT_INPUT_INVALID", 422, "a run's user text is missing or not text, or its "
          "context is not a list of `{role, content}` with role user or assistant (no system "
          "messages: the system prompt is the build's alone); `where` names the field"),
        R("PROMPT_OUTPUT_INVALID", None, "the model's answer broke the output contract "
          "(`{text, confidence, follow_up_question?, actions[], citations[], "
          "telemetry.tool_use_count}`) twice: once, then after one repair request; the "
          "prompt_run span records it with status error"),
    ), before="The prompt kernels answer `ok: false` with the code in `error`; the CLI and "
              "the API turn it into a refusal with the status below."),
    Area("memory", "Memory (`stage0/memory/`; `docs/memory.md`)", (
        R("MEMORY_INVALID", 422, "a memory, search or forget request with a field that does "
          "not fit (the message and `where` name it: `memories[0].sensitivity`, `query`...)"),
        R("MEMORY_NOT_FOUND", 404, "no memory with this id that you may see (absent and "
          "another's look the same), or updating one that is not your own"),
        R("MEMORY_FORGOTTEN", 410, "the memory was forgotten or expired: its content key was "
          "destroyed, so its content is unreadable for good"),
        R("MEMORY_CONTRACT_NOT_FOUND", 422, "`schema_id` names no `memory_contract` span of "
          "your tenant or a public one, or its `content.schema` is not a valid JSON Schema"),
        R("MEMORY_CONTRACT_VIOLATION", 422, "the memory's `data` does not satisfy its "
          "contract (`where` names the field, e.g. `memories[0].data.email`)"),
        R("MEMORY_CONSENT_REQUIRED", 403, "writing memory without consent: memory is off by "
          "default (`X-LogLine-Memory: on` or `session-only` turns it on; the choice is "
          "recorded as a `memory_consent` span)"),
        R("MEMORY_EMBEDDER_UNAVAILABLE", 503, "the default embedder (wordllama) is not "
          "installed or its packaged weights are missing", "`pip install -e .`"),
    )),
)

REASONS: dict[str, Reason] = {r.code: r for area in AREAS for r in area.reasons}


def http_status(code: str) -> int | None:
    """The API's status for `code`; None when the table gives it none."""
    reason = REASONS.get(code)
    return reason.http if reason else None
