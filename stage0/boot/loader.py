"""Stage-0: boot a function span by id, only if everything about it checks out.

latest manifest (signed by the pinned root key) -> id in allowed_boot_ids -> latest version of
the function -> hash, signature, trusted key, version chain -> `boot_event` span -> run the
kernel (RestrictedPython, capability context) -> its JSON output. Any refusal appends a
`boot_refused` span and raises BootRefused with a stable reason code. There is no switch that
skips verification.

A loaded kernel and the manifest are cached by their heads' curr_hash: while a head does not
move, later boots re-read both heads (one indexed query) and re-check only that each is
unchanged: the same content as the version verified, or content that still hashes to it (an
edit behind our back is refused); a new seq is verified, booted (new boot_event) and used from
the next call on, without a restart.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from stage0.boot.capabilities import KernelContext
from stage0.boot.restricted import load_main
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.keys import id_secret, operator_key
from stage0.ledger import manifest, store
from stage0.ledger.db import Database, idle
from stage0.ledger.manifest import Signers
from stage0.log import log
from stage0.spans.canonical import _UUID
from stage0.spans.proofs import check_proofs, digest, public_key_hex


class _Begun:
    """The running boot's transaction, once begun (Loader.begin)."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack


class BootRefused(LoglineError):
    """The loader would not run this function; `code` says why."""


@dataclass
class Loaded:
    span: dict[str, Any]
    main: Any


def _jsonable_output(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise LoglineError("KERNEL_OUTPUT_NOT_JSON", str(exc), name) from None


class Loader:
    def __init__(self, database: Database, home: Home, sandbox: Any = None,
                 worker_id: str | None = None) -> None:
        self.database = database
        self.conn = database.connect("kernel", autocommit=True)
        self.home = home
        self.key = operator_key(home)
        self.root = home.root_public_key()
        self.signer_public_key = public_key_hex(self.key)
        self.worker_id = worker_id or f"stage0-{uuid.uuid4().hex[:8]}"
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._loaded: dict[str, Loaded] = {}
        self._manifest: dict[str, Any] | None = None
        self._verified_in_boot: set[str] = set()
        self._verified_spans: dict[str, str] = {}
        self._records: list[tuple[Any, ...]] = []
        self._id_secret: bytes | None = None
        self._on_close: list[Callable[[], None]] = []
        self._verified_manifest: dict[str, Any] | None = None
        self._signers: tuple[str, Signers] | None = None
        self._prefetched: dict[str, Any] | None = None
        #: The kernels each function called through ctx.call in its boots (bounded): their
        #: heads are read with the function's at the next boot, in the same round trip.
        self._callees: dict[str, set[str]] = {}
        self._booting: str | None = None
        self._prefetched_calls: dict[str, dict[str, Any]] = {}
        #: Ids kernels minted with ctx.new_id() in the running boot (ctx.record takes these).
        self.minted: set[str] = set()
        self._manifest_head: dict[str, Any] | None = None
        self._transaction: ExitStack | _Begun | None = None

    @property
    def id_secret(self) -> bytes:
        """What the ids kernels derive are keyed with (keys.id_secret): read when first
        needed, so `logline boot` of a kernel that derives none works on any home."""
        if self._id_secret is None:
            self._id_secret = id_secret(self.home, self.key)
        return self._id_secret

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run `fn` when the loader closes (the LLM host: its records flushed, its
        connections closed), before the loader's own connection."""
        self._on_close.append(fn)

    def close(self) -> None:
        try:
            while self._on_close:
                self._on_close.pop()()
        finally:
            if self._sandbox is not None and self._owns_sandbox:
                self._sandbox.close()
            self.conn.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- trust --------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest as of the start of the current top-level boot (re-read per boot)."""
        if self._manifest is None:
            head, self._manifest_head = self._manifest_head, None
            self._manifest = self._checked_manifest(
                head if head is not None else store.head(self.conn, manifest.MANIFEST_ID))
        return self._manifest

    def _checked_manifest(self, head: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest head, verified. The version verified before (content equal to it, or
        still hashing to what was signed) skips only the signature check (an edit changes
        the digest)."""
        known = self._verified_manifest
        if head is not None and known is not None and head["curr_hash"] == known["curr_hash"] \
                and head["public_key"] == self.root and \
                (head == known or digest(head).hex() == head["curr_hash"]):
            # (the same content as the version verified hashes the same: no need to hash it)
            return head
        self._signers = None
        found = manifest.latest(self.conn, self.root) if head is None else \
            manifest.latest_of(head, self.root)
        self._verified_manifest = found
        return found

    def _manifest_signers(self) -> Signers:
        current = self.manifest()
        if self._signers is None or self._signers[0] != current["curr_hash"]:
            self._signers = (current["curr_hash"], manifest.signers_of(current, self.root))
        return self._signers[1]

    def manifest_metadata(self) -> dict[str, Any]:
        """A deep copy: a kernel that edits what it was given changes nothing for others."""
        return copy.deepcopy(self.manifest().get("metadata") or {})

    def trusted(self) -> frozenset[str]:
        return self._manifest_signers().trusted

    def platform_keys(self) -> frozenset[str]:
        """Keys that may sign kernels and the platform's records (root + role platform)."""
        return self._manifest_signers().platform

    def platform_kinds(self) -> frozenset[str]:
        return self._manifest_signers().platform_kinds

    # --- boot ---------------------------------------------------------------------------
    def boot(self, function_id: str, input: Any = None, user_id: str = "system",
             tenant_id: str = "system", trace_id: str | None = None) -> Any:
        """Verify, record and run a kernel once in its own transaction; return its output."""
        trace_id = trace_id or str(uuid.uuid4())
        self._verified_in_boot = set()
        # Every boot sees the latest manifest and the function's head, read together.
        function_id = str(function_id).lower()
        # ... and the heads of the kernels it called last time (one round trip for all).
        callees = sorted(self._callees.get(function_id, ()))
        found = store.heads(self.conn, [manifest.MANIFEST_ID, function_id, *callees]) \
            if _UUID.fullmatch(function_id) else {}
        self._manifest = None
        self._manifest_head = found.get(manifest.MANIFEST_ID)
        self._prefetched = found.get(function_id)
        self._prefetched_calls = {i: found[i] for i in callees if i in found}
        self._booting = function_id
        try:
            loaded = self.load(function_id, user_id, tenant_id, trace_id)
            with ExitStack() as stack:
                self._transaction = stack
                try:
                    return self._run(loaded, input, user_id, tenant_id, trace_id)
                finally:
                    self._transaction = None
        finally:
            self._booting, self._prefetched_calls = None, {}
            self.minted = set()
            self._flush_records()

    def begin(self) -> None:
        """Open the running boot's transaction, when it is not open yet. A boot's kernel
        runs in one transaction, begun when the kernel first reaches the database (every
        capability that does calls this): a kernel that never does (provider_exec) costs
        no BEGIN and COMMIT. PostgreSQL takes a transaction's snapshot at its first
        statement anyway, so nothing a kernel sees changes."""
        stack = self._transaction
        if stack is not None and not isinstance(stack, _Begun):
            stack.enter_context(self.conn.transaction())
            self._transaction = _Begun(stack)

    def call(self, function_id: str, input: Any, user_id: str, tenant_id: str,
             trace_id: str) -> Any:
        """Run a kernel inside the calling kernel's transaction. Verified once per top-level
        boot: a batch of calls pays for one verification, and the next boot sees a new seq."""
        function_id = str(function_id).lower()
        if self._booting is not None and _UUID.fullmatch(function_id):
            if len(self._callees) > 1000:
                self._callees.clear()
            self._callees.setdefault(self._booting, set()).add(function_id)
        loaded = self._loaded.get(function_id)
        if loaded is None or function_id not in self._verified_in_boot:
            loaded = self.load(function_id, user_id, tenant_id, trace_id)
            self._verified_in_boot.add(function_id)
        return self._run(loaded, input, user_id, tenant_id, trace_id)

    def load(self, function_id: str, user_id: str = "system", tenant_id: str = "system",
             trace_id: str | None = None) -> Loaded:
        function_id = str(function_id).lower()
        try:
            span = self._verified_function(function_id)
            cached = self._loaded.get(function_id)
            if cached and cached.span["curr_hash"] == span["curr_hash"]:
                return cached
            main = load_main(span["code"] or "", f"{span.get('name') or function_id}")
        except LoglineError as exc:
            self._refuse(function_id, exc, user_id, tenant_id, trace_id)
            raise BootRefused(exc.code, exc.message, function_id) from None
        self._queue("boot_event", "booted", span, user_id, tenant_id, trace_id, {}, "ok")
        self._loaded[function_id] = Loaded(span, main)
        return self._loaded[function_id]

    def _verified_function(self, function_id: str) -> dict[str, Any]:
        allowed = [str(i).lower()
                   for i in (self.manifest().get("metadata") or {}).get("allowed_boot_ids", [])]
        if function_id not in allowed:
            raise LoglineError("BOOT_NOT_ALLOWED", "the manifest's allowed_boot_ids does not "
                               "list this id: only kernels boot (to run a function, schedule "
                               "it: `logline schedule ID` or POST /api/execute)")
        span, self._prefetched = self._prefetched, None
        if span is None or span["id"] != function_id:
            span = self._prefetched_calls.pop(function_id, None) or \
                store.head(self.conn, function_id)
        if span is None:
            raise LoglineError("FUNCTION_NOT_FOUND", "no span with this id")
        cached = self._loaded.get(function_id)
        if cached and cached.span["curr_hash"] == span["curr_hash"] and \
                (span == cached.span or digest(span).hex() == span["curr_hash"]) and \
                span["public_key"] in self.platform_keys():
            # The head has not moved and still hashes to what was verified when it was loaded
            # (an edit behind our back changes the digest; content equal to the verified
            # span's hashes the same without hashing it): skip only the signature check.
            return span
        versions = store.versions(self.conn, function_id)
        if span["entity_type"] != "function":
            raise LoglineError("NOT_A_FUNCTION", f"entity_type is {span['entity_type']!r}")
        for version in versions:
            check = check_proofs(version)
            if not check.ok:
                raise LoglineError(check.reason or "PROOF_INVALID",
                                   f"seq {version['seq']}: {check.detail}")
        if span["public_key"] not in self.trusted():
            raise LoglineError("KEY_UNTRUSTED", f"signed by {span['public_key']}, which the "
                               "manifest does not trust")
        if span["public_key"] not in self.platform_keys():
            raise LoglineError("KEY_NOT_PLATFORM", f"signed by {span['public_key']}: a kernel "
                               "boots only when a platform key (the root key or one trusted "
                               "with role platform) signed it")
        for prev, version in zip(versions, versions[1:], strict=False):
            if version["seq"] != prev["seq"] + 1 or version["prev_hash"] != prev["curr_hash"]:
                raise LoglineError("CHAIN_BROKEN", f"seq {version['seq']} does not follow "
                                   f"seq {prev['seq']}")
        if versions[0]["seq"] != 0:
            raise LoglineError("CHAIN_BROKEN", "versions before seq "
                               f"{versions[0]['seq']} are missing")
        return span

    def _run(self, loaded: Loaded, input: Any, user_id: str, tenant_id: str,
             trace_id: str) -> Any:
        ctx = KernelContext(self, loaded.span["code"], loaded.span, input, user_id, tenant_id,
                            trace_id)
        try:
            result = loaded.main(ctx)
        except LoglineError:
            raise
        except Exception as exc:  # kernel bug: reported with the kernel's name, not a trace
            raise LoglineError("KERNEL_ERROR", f"{type(exc).__name__}: {exc}",
                               loaded.span.get("name") or loaded.span["id"]) from exc
        return _jsonable_output(result, loaded.span.get("name") or loaded.span["id"])

    def check_span(self, span: dict[str, Any]) -> None:
        """Hash and signature of a span; a span already verified with this exact digest
        skips the (costly) signature check."""
        raw = digest(span).hex()
        if raw == span["curr_hash"] and self._verified_spans.get(span["id"]) == raw:
            return
        check = check_proofs(span)
        if not check.ok:
            raise LoglineError(check.reason or "PROOF_INVALID", check.detail, span["id"])
        if len(self._verified_spans) > 10_000:
            self._verified_spans.clear()
        self._verified_spans[span["id"]] = raw

    # --- records ------------------------------------------------------------------------
    def _refuse(self, function_id: str, exc: LoglineError, user_id: str, tenant_id: str,
                trace_id: str | None) -> None:
        target = {"id": function_id, "name": None, "seq": None, "curr_hash": None}
        self._queue("boot_refused", "refused", target, user_id, tenant_id, trace_id,
                    {"reason": exc.code, "message": exc.message}, "refused")
        self.log("boot_refused", function_id=function_id, reason=exc.code)

    def _queue(self, *record: Any) -> None:
        """Boot records are appended outside any kernel transaction: inside one they would
        take the ledger's append lock while sandboxed code still runs (stalling every writer),
        and a rollback of the caller would erase them."""
        self._records.append(record)
        if idle(self.conn):
            self._flush_records()

    def _flush_records(self) -> None:
        records, self._records = self._records, []
        for record in records:
            self._record(*record)

    def _record(self, entity_type: str, did: str, target: dict[str, Any], user_id: str,
                tenant_id: str, trace_id: str | None, error: dict[str, Any],
                status: str) -> None:
        span = {
            "entity_type": entity_type, "who": "stage0", "did": did,
            "this": target.get("name") or target["id"], "parent_id": target["id"],
            "owner_id": user_id, "tenant_id": tenant_id, "visibility": "tenant",
            "status": status, "trace_id": trace_id, "error": error or None,
            "metadata": {"function_seq": target.get("seq"),
                         "function_hash": target.get("curr_hash"), "worker": self.worker_id},
        }
        store.append(self.conn, [span], self.key)

    # --- sandbox ------------------------------------------------------------------------
    def run_untrusted(self, code: str, input: Any, timeout_ms: int | None,
                      entry: str = "main", *, tenant: str) -> dict[str, Any]:
        """Run untrusted code in the sandbox as code of `tenant` (its owner: a sandbox
        worker never runs code of two tenants). `timeout_ms` is the wall-clock limit (and
        the CPU limit); None or 0 means the pool's default (5 s)."""
        from dataclasses import asdict

        from stage0.sandbox.pool import Limits, SandboxPool

        if self._sandbox is None:
            self._sandbox = SandboxPool(size=1)
        limits = Limits(wall_ms=timeout_ms) if timeout_ms else None
        return asdict(self._sandbox.run(code, input, entry=entry, limits=limits,
                                        tenant=tenant))

    def log(self, event: str, **fields: Any) -> None:
        log(event, worker=self.worker_id, **fields)

