"""Stage 0's side of `ctx.llm`: find the provider row, make the call, record what happened.

Each call appends one `provider_execution` span (a platform kind): provider, model, operation,
tokens in and out, latency (duration_ms), the cost estimate when the row has prices, attempts,
HTTP status, outcome and error code, and the caller's trace_id. Never the prompt, the answer or
the credential: a BLAKE3 hash and a length of each. Breaker changes are `provider_breaker`
spans. Records go through the host's recorder (stage0/llm/recorder.py): signed when the call
ends, appended in batches on a connection of its own a few ms later (one commit for many calls),
so they survive a rollback of the calling kernel's transaction and never hold the ledger's
append lock while a model answers; the tokens of records still queued count against the
budget (Recorder.pending_tokens). A crash loses at most the records still queued.

Per call, the host reads one row: the provider row and the tenant's token count of the day
together (`provider_for_call`); the row's parsed configuration is kept by its curr_hash, and
the platform's keys come from the loader's manifest of this boot (or, without a loader, the
manifest head cached by its hash: stage0.ledger.records.platform).
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import blake3
from nacl.signing import SigningKey

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger import provider_rows, records
from stage0.ledger.db import Connection
from stage0.llm import providers, streaming, transcripts
from stage0.llm.client import CallResult, CredentialSource, LlmClient
from stage0.llm.egress import CachedResolver, Resolver, resolve
from stage0.llm.hardening import BreakerChange
from stage0.llm.recorder import Recorder
from stage0.log import log
from stage0.spans.canonical import now_at
from stage0.vault.credentials import HomeOrMaster
from stage0.vault.tenant_keys import DataKeys

if TYPE_CHECKING:
    from stage0.boot.loader import Loader

#: Outcomes decided here, before the provider saw anything (status `denied`).
REFUSALS = frozenset({"PROVIDER_NOT_FOUND", "PROVIDER_DISABLED", "PROVIDER_KIND_UNKNOWN",
                      "PROVIDER_INVALID", "BREAKER_OPEN", "TOKEN_BUDGET_EXCEEDED",
                      "PROVIDER_THROTTLED", "TENANT_THROTTLED", "CREDENTIAL_MISSING",
                      "EGRESS_DENIED", "LLM_REQUEST_INVALID", "LLM_OPERATION_UNSUPPORTED",
                      "SECRET_REVOKED", "SECRET_UNREADABLE", "MASTER_KEY_MISSING",
                      "MASTER_KEY_WRONG", "MASTER_KEY_INVALID"})


def no_credentials(tenant_id: str, name: str) -> str | None:
    """A credential source with no credentials (a provider that names one is refused with
    CREDENTIAL_MISSING): for tools and tests that must never read the vault."""
    return None


def credential_source(conn: Connection, home: Home) -> CredentialSource:
    """Where stage 0 gets a tenant's provider credentials: the vault
    (stage0.vault.credentials.reveal), read with `home`'s master key as the calling tenant.
    A secret the tenant does not have is None (CREDENTIAL_MISSING); a revoked one, a missing
    or wrong master key, or a value that does not open refuse the call with their own code
    (SECRET_REVOKED, MASTER_KEY_MISSING, ...): never a call without the credential."""
    from stage0.vault import credentials

    def reveal(tenant_id: str, name: str) -> str | None:
        try:
            return credentials.reveal(conn, home, tenant_id, name)
        except LoglineError as exc:
            if exc.code == "SECRET_NOT_FOUND":
                return None
            raise LoglineError(exc.code, exc.message, f"credential {name!r}") from None
    return reveal


def fingerprint(value: Any) -> dict[str, Any]:
    """What a record keeps of a prompt or an answer: its BLAKE3 hash and length."""
    if value is None:
        return {"blake3": None, "length": 0}
    text = value if isinstance(value, str) else \
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {"blake3": blake3.blake3(text.encode("utf-8")).hexdigest(), "length": len(text)}


def status_of(outcome: str) -> str:
    """complete; denied (refused before anything was sent); cancelled; error."""
    if outcome == "ok":
        return "complete"
    if outcome == "PROVIDER_CANCELLED":
        return "cancelled"
    return "denied" if outcome in REFUSALS else "error"


class LlmHost:
    """Stage 0's side of the model calls of one process (a loader's, the API's, the CLI's).

    `connect()` gives a new kernel-role autocommit connection: the host takes one for its
    look-ups and its recorder another; close() flushes the recorder and closes both.
    `platform_keys()`, when given, says which keys sign platform records (the loader's
    manifest of the current boot); otherwise the host reads the manifest head itself."""

    def __init__(self, connect: Callable[[], Connection], key: SigningKey, root: str,
                 credentials: CredentialSource, worker: str = "stage0",
                 resolver: Resolver | None = None, verify: bool | ssl.SSLContext = True, *,
                 platform_keys: Callable[[], frozenset[str]] | None = None,
                 recorder: dict[str, Any] | None = None, master: HomeOrMaster | None = None,
                 id_secret: bytes | None = None, **client: Any) -> None:
        self.key, self.root, self.worker = key, root, worker
        #: The master key (or the home holding it) that seals the transcripts of tenants
        #: that keep them; None: such a tenant's calls are refused (MASTER_KEY_MISSING).
        self.master, self.id_secret = master, id_secret
        self.conn = connect()
        self._platform_keys = platform_keys
        self._lock = threading.Lock()
        self._local = threading.local()
        self._parsed: dict[str, providers.Provider] = {}
        self.recorder = Recorder(connect, key, name=worker, **(recorder or {}))
        self.client = LlmClient(credentials, usage=self._usage,
                                resolver=resolver or CachedResolver(resolve),
                                on_breaker=self._breaker_changed, verify=verify, **client)
        self._closed = False

    def close(self) -> None:
        """Flush the queued records, then close the client and both connections."""
        if self._closed:
            return
        self._closed = True
        try:
            self.recorder.close()
        finally:
            self.client.close()
            self.conn.close()

    def flush(self, timeout: float | None = 30.0) -> None:
        """Return once every record of a call made so far is in the ledger."""
        self.recorder.flush(timeout)

    def _keys(self) -> frozenset[str]:
        if self._platform_keys is not None:
            return self._platform_keys()
        return records.platform(self.conn, self.root).keys

    def _usage(self, tenant: str, provider: str) -> int:
        """Tokens `tenant` used today with `provider`: the ledger's count read with the row
        (provider_for_call) plus what the recorder still holds; read afresh when the client
        is used without a look-up."""
        found = getattr(self._local, "usage", None)
        if found is not None and found[0] == (tenant, provider):
            self._local.usage = None
            return int(found[1])
        pending = self.recorder.pending_tokens_by_day(tenant, provider)
        with self._lock:
            used, day = provider_rows.tokens_today(self.conn, tenant, provider)
        return used + pending.get(day, 0)

    def provider(self, name: Any, tenant: str
                 ) -> tuple[dict[str, Any], providers.Provider, bool]:
        """The provider row `tenant` means by `name`, parsed, and whether the tenant keeps
        transcripts."""
        if not isinstance(name, str) or not re.fullmatch(providers.NAME_PATTERN[1:-1], name):
            raise LoglineError("PROVIDER_NOT_FOUND", "a provider's name is 1-63 lowercase "
                               "letters, digits, '.', '_' or '-'")
        keys = self._keys()
        # Queued tokens first, the ledger's count second: a flush that commits in between
        # is counted twice (a refusal a few ms early), never missed.
        pending = self.recorder.pending_tokens_by_day(tenant, name)
        with self._lock:
            found = provider_rows.for_call(self.conn, name, tenant, keys)
        if found is None:
            raise LoglineError("PROVIDER_NOT_FOUND", f"no provider {name!r} for tenant "
                               f"{tenant} (`logline provider list`)")
        span, used, day, keep = found
        self._local.usage = ((tenant, name), used + pending.get(day, 0))
        parsed = self._parsed.get(span["curr_hash"])
        if parsed is None:
            parsed = providers.from_span(span)
            if len(self._parsed) > 256:
                self._parsed.clear()
            self._parsed[span["curr_hash"]] = parsed
        return span, parsed, keep

    # --- one call ------------------------------------------------------------------------
    def call(self, name: Any, tenant: str, user: str, trace_id: str | None, operation: str,
             payload: Any, params: Any = None, *, caller: dict[str, Any] | None = None,
             cancel: threading.Event | None = None, durable: bool = False) -> dict[str, Any]:
        """Call provider `name` for `tenant`; record it; the answer (never raises for a
        provider's failure: `ok` is false and `error` says why). `durable`: return only once
        the record is in the ledger (a one-off test); otherwise within the recorder's
        interval."""
        span: dict[str, Any] | None = None
        sealing: DataKeys | None = None
        self._local.usage = None
        try:
            span, provider, keep = self.provider(name, tenant)
            if keep:  # fail closed: a transcript that could not be sealed is no call
                sealing = self._data_keys(tenant)
        except LoglineError as exc:
            shown = name if isinstance(name, str) and len(name) <= 63 else "(invalid name)"
            result = CallResult(shown if span is None else span["name"], "", operation,
                                tenant, exc.code, exc.message)
        else:
            result = self.client.call(provider, tenant, operation, payload, params, cancel,
                                      streaming.current())
        finally:
            self._local.usage = None
        record = self._record(result, span, user, trace_id, payload, caller)
        if sealing is not None and status_of(result.outcome) != "denied":
            answer = result.answer if result.ok else None
            output = None if answer is None else \
                answer.text if answer.embeddings is None else answer.embeddings
            self.recorder.add(transcripts.draft(sealing, tenant, record["id"], record["at"],
                                                payload, output))
        if durable:
            self.flush()
        return self._answer(result, record["id"])

    def _data_keys(self, tenant: str) -> DataKeys:
        if self.master is None:
            raise LoglineError("MASTER_KEY_MISSING", f"tenant {tenant} keeps transcripts and "
                               "this process has no master key to seal them")
        with self._lock:
            return transcripts.data_keys(self.conn, self.key, self.master, tenant,
                                         self.id_secret, self.root)

    @staticmethod
    def _answer(result: CallResult, execution_id: str) -> dict[str, Any]:
        answer = result.answer if result.ok else None
        return {"ok": result.ok, "text": answer.text if answer else None,
                "embeddings": answer.embeddings if answer else None,
                "finish": answer.finish if answer else None, "model": result.model,
                "tokens_in": result.tokens_in, "tokens_out": result.tokens_out,
                "cost": result.cost, "currency": result.currency,
                "latency_ms": result.latency_ms, "error": result.error(),
                "retry_in_s": result.retry_in_s, "execution_id": execution_id}

    def _record(self, result: CallResult, provider_span: dict[str, Any] | None, user: str,
                trace_id: str | None, payload: Any, caller: dict[str, Any] | None
                ) -> dict[str, Any]:
        answer = result.answer if result.ok else None
        output = None if answer is None else \
            answer.text if answer.embeddings is None else answer.embeddings
        meta = (provider_span or {}).get("metadata") or {}
        at = now_at()
        span = {
            "entity_type": "provider_execution", "who": "stage0", "did": "called",
            "this": result.provider, "parent_id": (provider_span or {}).get("id"),
            "owner_id": user, "tenant_id": result.tenant_id, "visibility": "tenant",
            "status": status_of(result.outcome), "trace_id": trace_id, "at": at,
            "duration_ms": result.latency_ms, "error": result.error(),
            "metadata": {
                "provider": result.provider, "provider_seq": (provider_span or {}).get("seq"),
                "kind": meta.get("kind"), "model": result.model,
                "operation": result.operation, "outcome": result.outcome,
                "tokens_in": result.tokens_in, "tokens_out": result.tokens_out,
                "usage_estimated": bool(answer and answer.usage_estimated),
                "cost": result.cost, "currency": result.currency,
                "attempts": result.attempts, "http_status": result.status,
                "streamed": result.streamed, "input": fingerprint(payload),
                "output": fingerprint(output), "caller": caller, "worker": self.worker},
        }
        stored = self.recorder.add(span, (result.tenant_id, result.provider, at[:10]),
                                   result.tokens_in + result.tokens_out)
        if span["status"] == "error":  # refusals are recorded, not logged (no log floods)
            log("provider_call_failed", provider=result.provider, tenant=result.tenant_id,
                code=result.outcome, attempts=result.attempts, trace_id=trace_id)
        return stored

    def _breaker_changed(self, change: BreakerChange) -> None:
        did = {"open": "opened", "half_open": "half_opened", "closed": "closed"}[change.after]
        span = {"entity_type": "provider_breaker", "who": "stage0", "did": did,
                "this": change.provider, "owner_id": "system", "tenant_id": "system",
                "visibility": "tenant", "status": change.after,
                "metadata": {"before": change.before, "after": change.after,
                             "reason": change.reason, "failures": change.failures,
                             "error_rate": change.error_rate, "worker": self.worker}}
        self.recorder.add(span)  # in the same queue: after the failures that caused it
        log("provider_breaker", provider=change.provider, before=change.before,
            after=change.after, reason=change.reason, worker=self.worker)


_HOSTS: weakref.WeakKeyDictionary[Any, LlmHost] = weakref.WeakKeyDictionary()
_HOSTS_LOCK = threading.Lock()


def attach(loader: Loader, **kw: Any) -> LlmHost:
    """Give `loader` a host of its own: its own autocommit connections (look-ups, recorder),
    the loader's signing key and manifest, and (unless given) the credentials
    `credential_source` names. Tests pass `credentials`, `resolver` and client settings
    here. Loader.close() closes it (flushing its records)."""
    with _HOSTS_LOCK:
        old = _HOSTS.pop(loader, None)
        if old is not None:
            old.close()
        given = kw.pop("credentials", None)
        kw.setdefault("master", loader.home)
        host = LlmHost(lambda: loader.database.connect("kernel", autocommit=True),
                       loader.key, loader.root, worker=loader.worker_id,
                       platform_keys=loader.platform_keys,
                       credentials=given or no_credentials, **kw)
        host.id_secret = host.id_secret or _id_secret(loader)
        if given is None:
            host.client.credentials = credential_source(host.conn, loader.home)
        _HOSTS[loader] = host
        loader.on_close(lambda: detach(loader))
        weakref.finalize(loader, host.close)  # a loader dropped without close()
        return host


def _id_secret(loader: Loader) -> bytes | None:
    try:
        return loader.id_secret
    except LoglineError:  # a home without one: the data key is derived as the vault does
        return None


def detach(loader: Loader) -> None:
    """Close `loader`'s host, if it has one (Loader.close() does it)."""
    with _HOSTS_LOCK:
        host = _HOSTS.pop(loader, None)
    if host is not None:
        host.close()


def for_loader(loader: Loader) -> LlmHost:
    with _HOSTS_LOCK:
        host = _HOSTS.get(loader)
    return host if host is not None else attach(loader)
