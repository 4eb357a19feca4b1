"""A tenant's default embedder (issue 12; docs/memory.md): `wordllama` (the local model,
stage0/memory/embedder.py) or the name of a `provider` row the tenant may call.

The choice is a `tenant_setting` span named `memory_embedder` (platform kind, one id per
tenant derived with the platform's id secret, signed by a platform key, as the transcripts
opt-in of stage0/llm/transcripts.py): `metadata.value` holds the name. memory_upsert and
memory_search (the kernels) embed with it when their input names no `provider`. A span at
that id signed by anything but a platform key is refused, never obeyed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import provider_rows, records, store
from stage0.ledger.db import Connection
from stage0.spans.ids import derive_id

SETTING = "memory_embedder"
KIND = "tenant_setting"
LOCAL = "wordllama"
_TENANT = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}$")


def _bad(message: str, where: str) -> LoglineError:
    return LoglineError("MEMORY_INVALID", message, where)


def _tenant(tenant_id: Any) -> str:
    if not isinstance(tenant_id, str) or not _TENANT.match(tenant_id) or tenant_id == "system":
        raise _bad("name a tenant: 1-200 letters, digits or _.@:- (not system)", "tenant")
    return tenant_id


def setting_id(id_secret: bytes, tenant_id: str) -> str:
    return derive_id(id_secret, KIND, tenant_id, SETTING)


def embedder(conn: Connection, id_secret: bytes, platform_keys: Iterable[str],
             tenant_id: str) -> str:
    """The tenant's default embedder: `wordllama` unless a platform-signed setting names a
    provider."""
    head = store.head(conn, setting_id(id_secret, tenant_id))
    if head is None or head["entity_type"] != KIND or head["status"] != "active":
        return LOCAL
    if head["public_key"] not in set(platform_keys):
        raise LoglineError("MEMORY_INVALID", "the tenant's embedder setting is not signed by "
                           "a platform key", head["id"])
    value = (head.get("metadata") or {}).get("value")
    return value if isinstance(value, str) and value else LOCAL


def set_embedder(conn: Connection, key: SigningKey, root: str, id_secret: bytes,
                 tenant_id: str, name: Any, by: str = "operator") -> dict[str, Any]:
    """Name `tenant_id`'s default embedder (the setting's next version); the span. A provider
    must be one the tenant may call (its own or the system's, platform-signed)."""
    tenant_id = _tenant(tenant_id)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad("the embedder is `wordllama` or a provider's name (1-200 letters, digits "
                   "or _.@:-)", "embedder")
    platform_keys = records.platform(conn, root).keys
    if name != LOCAL and provider_rows.find(conn, name, tenant_id, platform_keys) is None:
        raise _bad(f"no provider named {name} for tenant {tenant_id} (`logline provider "
                   "list`)", "embedder")
    span_id = setting_id(id_secret, tenant_id)
    with conn.transaction():
        head = store.head(conn, span_id)
        draft: dict[str, Any] = {
            "id": span_id, "entity_type": KIND, "who": by, "did": "chose the memory embedder",
            "this": SETTING, "name": SETTING, "owner_id": "system", "tenant_id": tenant_id,
            "visibility": "tenant", "status": "active",
            "metadata": {"setting": SETTING, "value": name}}
        if head is not None:
            if head["public_key"] not in platform_keys:
                raise _bad("the setting's id holds a span no platform key signed", span_id)
            draft.update(seq=head["seq"] + 1, prev_hash=head["curr_hash"])
        return store.append(conn, [draft], key)[0]
