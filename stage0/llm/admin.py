"""Managing provider rows: add (or change), list, show, disable, test. What the CLI
(`logline provider ...`) and the admin API (/api/admin/providers) both call.

A provider is one span id per (tenant, name), derived with the platform's id secret; a change
is its next version, signed by the operator (platform) key. `test` makes one real call and
records it like any other (a provider_execution span).
"""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import provider_rows, records, store
from stage0.ledger.db import Connection
from stage0.llm import providers
from stage0.llm.host import LlmHost
from stage0.spans.ids import derive_id

TEST_MESSAGES = [{"role": "user", "content": "Reply with the single word: pong"}]


def _keys(conn: Connection, root: str) -> frozenset[str]:
    return records.platform(conn, root).keys


def current(conn: Connection, root: str, name: str, tenant: str) -> dict[str, Any] | None:
    """The row (tenant, name) names exactly (no fallback to the system row)."""
    span = provider_rows.find(conn, name, tenant, _keys(conn, root))
    return span if span is not None and span["tenant_id"] == tenant else None


def add(conn: Connection, key: SigningKey, root: str, secret: bytes,
        provider: providers.Provider) -> dict[str, Any]:
    """Append `provider` as a new row, or as the next version of the one with its name."""
    existing = current(conn, root, provider.name, provider.tenant_id)
    span_id = existing["id"] if existing else \
        derive_id(secret, "provider", provider.tenant_id, provider.name)
    return store.append(conn, [{"id": span_id, **providers.to_span_fields(provider)}], key)[0]


def set_enabled(conn: Connection, key: SigningKey, root: str, name: str, tenant: str,
                enabled: bool) -> dict[str, Any]:
    span = current(conn, root, name, tenant)
    if span is None:
        raise LoglineError("PROVIDER_NOT_FOUND", f"no provider {name!r} in tenant {tenant}")
    provider = providers.from_span(span).model_copy(update={"enabled": enabled})
    draft = {"id": span["id"], **providers.to_span_fields(provider),
             "description": span.get("description")}
    return store.append(conn, [draft], key)[0]


def listed(conn: Connection, root: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """One summary per provider row (a row that does not parse says why, never hidden)."""
    out = []
    for span in provider_rows.listed(conn, _keys(conn, root), tenant):
        summary = {"id": span["id"], "seq": span["seq"], "name": span["name"],
                   "tenant_id": span["tenant_id"], "status": span["status"]}
        try:
            p = providers.from_span(span)
        except LoglineError as exc:
            summary["problem"] = exc.code
        else:
            summary.update(kind=p.kind, model=p.model, base_url=p.base_url,
                           credential=p.credential)
        out.append(summary)
    return out


def show(conn: Connection, root: str, name: str, tenant: str) -> dict[str, Any]:
    span = provider_rows.find(conn, name, tenant, _keys(conn, root))
    if span is None:
        raise LoglineError("PROVIDER_NOT_FOUND", f"no provider {name!r} for tenant {tenant}")
    provider = providers.from_span(span)
    return {"id": span["id"], "seq": span["seq"], "at": span["at"],
            **provider.model_dump(mode="json")}


def test(host: LlmHost, name: str, tenant: str, user: str = "operator") -> dict[str, Any]:
    """One small real call through everything a kernel's call goes through, recorded."""
    return host.call(name, tenant, user, None, "chat", TEST_MESSAGES,
                     {"max_tokens": 8}, caller={"name": "provider test"}, durable=True)
