"""Span kinds: what a kind name may look like, and which kinds only the platform signs.

A *platform kind* is a record whose meaning is "the platform did or decided this": an
execution, a completed request, a job, an approval, a gate decision, a policy's cursor, a
boot event. Such a span counts only when it is signed by a platform key (the root key or a
key the manifest trusts with role `platform`); anything else that carries one of these kinds
is a named violation (`KIND_NOT_PLATFORM_SIGNED`), never a record. Spans that arrive through
`POST /api/spans` are signed by the separate edge key, so a tenant can never mint one.

The list lives in the manifest (`metadata.platform_kinds`, seeded from ROW/manifest); the
constant below is the default used when a manifest does not name them, and the floor: a
manifest can add kinds but never remove these.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from stage0.errors import LoglineError

#: A kind is lowercase ASCII: a letter, then letters, digits or `_`, 64 characters at most.
#: No look-alikes (zero-width, Cyrillic, upper case) can pass for a reserved kind.
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")

PLATFORM_KINDS: frozenset[str] = frozenset({
    # the manifest and keys
    "manifest", "api_key",
    # stage 0 and the kernels
    "boot_event", "boot_refused", "execution", "request", "policy_cursor", "policy_error",
    "policy_violation", "rollup", "metric",
    # governance
    "contract", "contract_activation", "gate_decision", "proposal", "approval_request",
    "approval", "job", "job_claim", "job_result", "audit_denial", "audit_summary",
    # the vault (stage0/vault): encrypted values and the tenants' wrapped data keys
    "secret", "tenant_key",
    # LLM providers (stage0/llm): the rows stage 0 calls, its calls, its breaker changes
    "provider", "provider_execution", "provider_breaker",
    # prompts (issue 14): what the prompt kernels built, ran, measured and chose
    "prompt_build", "prompt_run", "prompt_eval_result", "prompt_variant_selection",
    # memory (stage0/memory): written by stage 0 for the caller, never by a client
    "memory", "memory_audit", "memory_redaction", "memory_export", "memory_consent",
    "memory_promotion",
    # opt-in transcripts (stage0/llm/transcripts.py): a tenant's setting, the sealed text
    "tenant_setting", "provider_transcript",
})

#: The prompt system's kinds (docs/prompts.md). Blocks and variants are authored content
#: (a tenant writes its own); builds, runs, eval results and variant choices are records of
#: what the prompt kernels did, so they are platform kinds (a tenant cannot forge a run).
PROMPT_KINDS: tuple[str, ...] = ("prompt_block", "prompt_variant", "prompt_build", "prompt_run",
                                 "prompt_eval_result", "prompt_variant_selection")

#: Kinds no policy may emit, whoever wrote it: code, trust, scheduling and the records
#: that authorise action (the agent's own cursor/error/rollup spans are written by it).
NEVER_EMITTED: frozenset[str] = frozenset({
    "manifest", "api_key", "function", "policy", "request", "execution", "boot_event",
    "boot_refused", "policy_cursor", "policy_error", "rollup", "contract",
    "contract_activation", "gate_decision", "proposal", "approval_request", "approval",
    "job", "job_claim", "job_result", "audit_denial", "audit_summary", "secret", "tenant_key",
    "provider", "provider_execution", "provider_breaker",
    "prompt_build", "prompt_run", "prompt_eval_result", "prompt_variant_selection",
    "memory", "memory_audit", "memory_redaction", "memory_export", "memory_consent",
    "memory_promotion",
    # opt-in transcripts (stage0/llm/transcripts.py): a tenant's setting, the sealed text
    "tenant_setting", "provider_transcript",
})


def check_kind(kind: Any, where: str = "entity_type") -> str:
    """`kind` if it is a well-formed kind name, else LoglineError SPAN_INVALID_KIND."""
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        shown = repr(kind)[:80].encode("ascii", "backslashreplace").decode()
        raise LoglineError("SPAN_INVALID_KIND", f"a kind is a lowercase letter followed by "
                           f"up to 63 lowercase letters, digits or '_', got {shown}", where)
    return kind


def platform_kinds(manifest_metadata: Mapping[str, Any] | None) -> frozenset[str]:
    """The manifest's platform kinds (never fewer than PLATFORM_KINDS)."""
    declared = (manifest_metadata or {}).get("platform_kinds") or ()
    return PLATFORM_KINDS | frozenset(k for k in declared if isinstance(k, str))


def platform_keys(manifest_metadata: Mapping[str, Any] | None, root_key: str) -> frozenset[str]:
    """Keys whose signatures make a platform record: the root key, and trusted keys whose
    manifest entry says `role: platform`."""
    entries = (manifest_metadata or {}).get("trusted_keys") or []
    return frozenset([root_key, *(e["public_key"] for e in entries
                                  if isinstance(e, dict) and e.get("role") == "platform"
                                  and isinstance(e.get("public_key"), str))])


def is_platform_record(span: Mapping[str, Any], keys: Collection[str]) -> bool:
    """True when `span` is signed by one of the platform `keys`."""
    return span.get("public_key") in keys
