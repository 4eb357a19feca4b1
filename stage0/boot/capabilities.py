"""The capability context a kernel receives: everything it may do, and nothing else.

Kernel code (RestrictedPython) sees only public methods of KernelContext; its connection, key
and loader sit behind underscore names that restricted code cannot reach. SQL must be a string
literal of the kernel's own signed source, so no string-built SQL reaches the database, and
always travels with separate parameters.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import blake3

from stage0.errors import LoglineError
from stage0.ledger import store
from stage0.ledger.db import Connection, DatabaseError, db_error
from stage0.ledger.queries import q
from stage0.spans import kinds
from stage0.spans.canonical import format_at, normalise, now_at
from stage0.spans.ids import derive_id

if TYPE_CHECKING:
    from stage0.boot.loader import Loader

#: Environment variables a kernel may read (nothing secret).
ENV_ALLOWLIST = ("LOGLINE_ENV", "LOGLINE_WORKER_ID", "TZ")


@lru_cache(maxsize=256)
def string_literals(source: str) -> frozenset[str]:
    return frozenset(node.value for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class KernelContext:
    """What `main(ctx)` of a kernel gets. Public methods are the capabilities."""

    def __init__(self, loader: Loader, source: str, kernel: dict[str, Any], input: Any,
                 user_id: str, tenant_id: str, trace_id: str) -> None:
        self._loader = loader
        self._literals = string_literals(source)
        self.input = input
        self.kernel = {k: kernel[k] for k in ("id", "seq", "name", "curr_hash")}
        self.identity = {"user_id": user_id, "tenant_id": tenant_id}
        self.trace_id = trace_id
        self._manifest: dict[str, Any] | None = None
        self.signer_public_key = loader.signer_public_key
        self.root_public_key = loader.root
        #: Kinds only the platform records, the keys that sign platform records, and the
        #: kinds no policy may emit (stage0.spans.kinds), for kernels that act for others.
        self.platform_kinds = loader.platform_kinds()
        self.platform_keys = loader.platform_keys()
        self.never_emitted = kinds.NEVER_EMITTED
        import os
        self.env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}

    @property
    def _conn(self) -> Connection:
        """The loader's connection, in the boot's transaction (begun on first use)."""
        self._loader.begin()
        return self._loader.conn

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest's metadata: a copy of its own, made when first read (a kernel that
        edits it changes nothing for others; a kernel that never reads it pays nothing)."""
        if self._manifest is None:
            self._manifest = self._loader.manifest_metadata()
        return self._manifest

    # --- data -----------------------------------------------------------------------------
    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """Run a parameterised query; `query` must be a literal of the kernel's source."""
        if not isinstance(query, str) or query not in self._literals:
            raise LoglineError("KERNEL_SQL_NOT_LITERAL", "SQL must be a string literal of the "
                               "kernel's signed source; pass values as parameters",
                               self.kernel["name"])
        try:
            rows = self._conn.execute(query, params).fetchall() if params is not None \
                else self._conn.execute(query).fetchall()
        except DatabaseError as exc:
            raise db_error(exc) from None
        return [{k: _jsonable(v) for k, v in row.items()} for row in rows]

    def sql_one(self, query: str, params: Any = None) -> dict[str, Any] | None:
        rows = self.sql(query, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A savepoint: what happens inside commits or rolls back together."""
        with self._conn.transaction():
            yield

    def lock_appends(self) -> None:
        """Take the ledger's append lock now (held to commit): counts made after this see
        every committed append, and nobody appends until this transaction ends."""
        self._conn.execute(q("append_lock"))

    def append(self, spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Normalise, chain, hash, sign (operator key) and append, all or nothing."""
        return store.append(self._conn, spans, self._loader.key)

    def record(self, spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append new spans a few ms after this call, batched with the provider records on
        the host's recorder connection (stage0/llm/recorder.py: one commit for many, outside
        this transaction, so they stay if it rolls back): for records nobody reads in this
        boot, such as prompt_run. Each is a draft whose id this boot minted with new_id()
        (never another span's: a new span, seq 0); it is checked and signed now (an error
        raises here) and readable once the host's recorder flushed (the API flushes before
        it answers; closing the loader flushes)."""
        from stage0.llm.host import for_loader
        if not isinstance(spans, list):
            raise LoglineError("KERNEL_RECORD_INVALID", "record() takes a list of span drafts",
                               self.kernel["name"])
        for span in spans:
            if not isinstance(span, dict) or str(span.get("id")) not in self._loader.minted:
                raise LoglineError("KERNEL_RECORD_INVALID", "a recorded span's id must be one "
                                   "this boot minted with ctx.new_id()", self.kernel["name"])
            signed = sorted(k for k in ("seq", "prev_hash", "curr_hash", "signature",
                                        "public_key") if k in span)
            if signed:
                raise LoglineError("KERNEL_RECORD_INVALID", f"a recorded span is a new draft "
                                   f"(no {signed[0]})", self.kernel["name"])
        for span in spans:  # all or nothing: every draft checked before one is queued
            normalise({"at": now_at(), **span})
        recorder = for_loader(self._loader).recorder
        stored = [recorder.add(span) for span in spans]
        for span in spans:
            self._loader.minted.discard(str(span["id"]))
        return stored

    def check_span(self, span: dict[str, Any]) -> str | None:
        """Why `span` could not be appended as it is (normal form), or None if it could."""
        try:
            normalise({"at": now_at(), **span})
        except LoglineError as exc:
            return str(exc)
        return None

    def kind_problem(self, kind: Any) -> str | None:
        """Why `kind` is not a well-formed kind name (a look-alike, say), or None."""
        try:
            kinds.check_kind(kind)
        except LoglineError as exc:
            return str(exc)
        return None

    def head(self, span_id: str) -> dict[str, Any] | None:
        return store.head(self._conn, span_id)

    def claim_requests(self, batch: int) -> list[dict[str, Any]]:
        """Lock up to `batch` scheduled requests for this transaction, round-robin across
        tenants (each tenant's oldest first), in the order to run them. The transaction may
        then stay idle while the sandbox runs them: up to twice batch x policy.timeout_ms
        (a batch that cannot be recorded is run again one by one), plus a minute."""
        timeout = int((self.manifest.get("policy") or {}).get("timeout_ms", 30000))
        self.allow_idle_ms(2 * int(batch) * timeout + 60_000)
        rows = self._conn.execute(q("claim_requests"), {"batch": int(batch)}).fetchall()
        return [store.span_from_row(r) for r in rows]

    def allow_idle_ms(self, ms: int) -> None:
        """Let this transaction sit idle (while untrusted code runs) for up to `ms`, even
        beyond the kernel role's idle_in_transaction_session_timeout (never less than it)."""
        self._conn.execute(q("allow_idle"), {"ms": int(ms)})

    def verified(self, span_id: str) -> dict[str, Any]:
        """The latest version of a span after checking its hash, signature and key trust."""
        span = store.head(self._conn, span_id)
        if span is None:
            raise LoglineError("FUNCTION_NOT_FOUND", "no such span", span_id)
        self._loader.check_span(span)
        if span["public_key"] not in self._loader.trusted():
            raise LoglineError("KEY_UNTRUSTED", f"signed by untrusted {span['public_key']}",
                               span_id)
        return span

    def verified_many(self, span_ids: list[str]) -> dict[str, dict[str, Any]]:
        """verified() of several spans in one read: {id: span} of those that exist (an id
        missing from the answer does not exist); a span that fails its checks raises."""
        if not isinstance(span_ids, list) or len(span_ids) > 1000:
            raise LoglineError("KERNEL_ERROR", "verified_many takes a list of at most 1000 "
                               "ids", self.kernel["name"])
        found = store.heads(self._conn, [str(i).lower() for i in span_ids])
        trusted = self._loader.trusted()
        for span_id, span in found.items():
            self._loader.check_span(span)
            if span["public_key"] not in trusted:
                raise LoglineError("KEY_UNTRUSTED", f"signed by untrusted {span['public_key']}",
                                   span_id)
        return found

    # --- computation ----------------------------------------------------------------------
    def sandbox(self, code: str, input: Any, timeout_ms: int | None = None,
                entry: str = "main", *, tenant: str) -> dict[str, Any]:
        """Run untrusted code (`entry(input)`) in the sandbox pool; returns its RunResult.
        `tenant` (required) is the tenant the code belongs to (a function's or a policy's
        tenant_id): a sandbox worker only ever runs code of one tenant."""
        if not isinstance(tenant, str) or not tenant:
            raise LoglineError("SANDBOX_INVALID_REQUEST",
                               f"tenant must be a non-empty string, got {tenant!r}",
                               self.kernel["name"])
        return self._loader.run_untrusted(code, input, timeout_ms, entry, tenant=tenant)

    def call(self, function_id: str, input: Any) -> Any:
        """Run another kernel the manifest allows, verified like a boot, in this transaction."""
        return self._loader.call(function_id, input, self.identity["user_id"],
                                 self.identity["tenant_id"], self.trace_id)

    # --- models (issue 11: stage0/llm) ---------------------------------------------------
    def llm(self, provider: str, messages: Any, params: Any = None) -> dict[str, Any]:
        """Ask provider `provider` (a `provider` row) to answer `messages` ([{role, content}]):
        stage 0 makes the call, so the sandbox never holds a socket. Returns {ok, text,
        tokens_in, tokens_out, model, cost, error: {code, message} | None, execution_id};
        each call is recorded as a provider_execution span in the caller's trace."""
        return self._llm_call(provider, "chat", messages, params)

    def embed(self, provider: str, input: Any, params: Any = None) -> dict[str, Any]:
        """Embeddings of a text or a list of texts ({ok, embeddings, ...}, as llm())."""
        return self._llm_call(provider, "embed", input, params)

    def _llm_call(self, provider: Any, operation: str, payload: Any,
                  params: Any) -> dict[str, Any]:
        from stage0.llm.host import for_loader
        return for_loader(self._loader).call(
            provider, self.identity["tenant_id"], self.identity["user_id"], self.trace_id,
            operation, payload, params, caller=dict(self.kernel))

    # --- memory (issue 12: stage0/memory) ---------------------------------------------
    def _memory(self, session_id: Any) -> tuple[Any, Any]:
        from stage0.memory.service import Caller, Memory
        if session_id is not None and not isinstance(session_id, str):
            raise LoglineError("MEMORY_INVALID", "session_id must be a string", "session_id")
        caller = Caller(self.identity["user_id"], self.identity["tenant_id"], session_id)
        service = Memory(self._conn, self._loader.key, self._loader.home,
                         id_secret=self._loader.id_secret, root_key=self._loader.root)
        return service, caller

    def memory_upsert(self, memories: Any, session_id: Any = None) -> list[dict[str, Any]]:
        """Write memories for the caller (encrypted, indexed, audited by stage 0)."""
        service, caller = self._memory(session_id)
        written: list[dict[str, Any]] = service.upsert(caller, memories)
        return written

    def memory_search(self, query: Any, budget: Any = 1000, limit: Any = 10,
                      scopes: Any = None, session_id: Any = None, embedding: Any = None,
                      model: Any = None) -> dict[str, Any]:
        """Search the memories the caller may see: {hits, mode, vectors, note?}."""
        service, caller = self._memory(session_id)
        found: dict[str, Any] = service.search(
            caller, query, budget=budget, limit=limit,
            scopes=list(scopes) if isinstance(scopes, list | tuple)
            else ("session", "private", "tenant", "public") if scopes is None else ["?"],
            embedding=embedding, model=model)
        return found

    def memory_embedder(self) -> str | None:
        """The caller's tenant's default embedder for memory: a provider's name, or None
        for the local model (stage0/memory/settings.py; `logline memory embedder set`)."""
        from stage0.memory import settings
        name = settings.embedder(self._conn, self._loader.id_secret, self.platform_keys,
                                 self.identity["tenant_id"])
        return None if name == settings.LOCAL else name

    # --- utilities ------------------------------------------------------------------------
    def now(self) -> str:
        return now_at()

    def new_id(self) -> str:
        minted = str(uuid.uuid4())
        self._loader.minted.add(minted)
        return minted

    def derived_id(self, *parts: Any) -> str:
        """A UUID derived from `parts` with the platform's id secret (stage0.spans.ids): the same
        parts give the same id (idempotent appends such as cursors), and nobody without the
        secret can compute it first and take it."""
        return derive_id(self._loader.id_secret, *parts)

    def stable_id(self, *parts: str) -> str:
        """The uuid5 of names that ids were derived with before derived_id: anyone can
        compute it, so use it only to read what older versions recorded, never as the id
        of something to append."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "logline:" + ":".join(map(str, parts))))

    def blake3(self, text: str) -> str:
        return blake3.blake3(text.encode("utf-8")).hexdigest()

    def json_dumps(self, value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def json_loads(self, text: Any) -> dict[str, Any]:
        """Parse JSON text that came from outside (a model's answer): {"ok": True, "value"}
        or {"ok": False, "error": why}; never raises. Text over 1 MiB is refused unread."""
        if not isinstance(text, str):
            return {"ok": False, "error": "not text"}
        if len(text) > 1 << 20:
            return {"ok": False, "error": "over 1 MiB"}
        try:
            return {"ok": True, "value": json.loads(text)}
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"not JSON: {str(exc)[:200]}"}

    def clock_ms(self) -> float:
        """A monotonic clock in milliseconds, for measuring how long something took."""
        import time
        return time.monotonic() * 1000

    def log(self, event: str, **fields: Any) -> None:
        self._loader.log(event, kernel=self.kernel["name"], **fields)
