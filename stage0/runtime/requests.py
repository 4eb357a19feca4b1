"""Scheduling: a `request` span asks the workers to run a function once."""

from __future__ import annotations

import uuid
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q


def schedule(conn: Connection, key: SigningKey, function_id: str, input: Any = None,
             user_id: str | None = None, tenant_id: str | None = None,
             idempotency_key: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
    """Append a scheduled request for `function_id` (the CLI twin of POST /api/execute).

    With `idempotency_key`, a second request with the same key in the same tenant is refused
    by the ledger (LEDGER_DUPLICATE) and the first one is returned instead.
    """
    function = store.head(conn, function_id)
    if function is None or function["entity_type"] != "function":
        raise LoglineError("FUNCTION_NOT_FOUND", "no function span with this id", function_id)
    tenant = tenant_id or function["tenant_id"]
    requester = user_id or function["owner_id"]
    if not requester or not tenant:
        missing = " and ".join(n for n, v in (("owner_id", requester), ("tenant_id", tenant))
                               if not v)
        raise LoglineError("REQUESTER_REQUIRED", f"the function has no {missing}, so nobody "
                           "asks for this run by default: name who does with --user USER "
                           "--tenant TENANT", function_id)
    if function["tenant_id"] != tenant and function["visibility"] != "public":
        raise LoglineError("TENANT_MISMATCH", "the function belongs to another tenant",
                           function_id)
    metadata = {"function_seq": function["seq"]}
    if idempotency_key:
        metadata["idempotency_key"] = idempotency_key
    request = {
        "entity_type": "request", "who": requester, "did": "scheduled",
        "this": function.get("name") or function_id, "parent_id": function["id"],
        "owner_id": requester, "tenant_id": tenant,
        "visibility": "tenant", "status": "scheduled", "input": input,
        "trace_id": trace_id or str(uuid.uuid4()),
        "metadata": metadata,
    }
    try:
        return store.append(conn, [request], key)[0]
    except LoglineError as exc:
        if exc.code == "LEDGER_DUPLICATE" and idempotency_key:
            existing = conn.execute(q("request_by_idempotency_key"),
                                    {"tenant": tenant, "key": idempotency_key}).fetchone()
            if existing:
                return store.head(conn, existing["id"]) or request
        raise
