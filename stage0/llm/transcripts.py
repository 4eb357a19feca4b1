"""Opt-in transcripts: the prompt and the answer of a tenant's provider calls, kept encrypted.

By default a `provider_execution` record keeps a BLAKE3 hash and a length of the prompt and
of the answer, never the text. A tenant that opts in (`logline provider transcripts on
--tenant T`, or its admin: `POST /api/admin/llm-transcripts`) also gets, for each call that
reached a model, a `provider_transcript` span holding `{"input", "output"}` sealed with the
tenant's data key (stage0.vault.at_rest, the same AES-256-GCM envelope as credentials), with
associated data `{"purpose": "transcript", "tenant_id", "execution_id"}`: a transcript moved
to another tenant or another call does not open. The span is a platform kind, `private` and
owned by `system` (row-level security hides even the ciphertext from every API key), its
parent the execution record. Only stage 0 opens it, for the tenant's admin or the operator
(`logline provider transcript EXECUTION_ID --tenant T`, `GET
/api/admin/llm-transcripts/{execution_id}`).

The choice is a `tenant_setting` span (platform kind, one id per tenant and setting, derived
with the platform's id secret, signed by the operator key): `status` `active` keeps
transcripts, `inactive` stops keeping new ones (those kept stay, sealed). Fail closed: for a
tenant that opted in, a call whose transcript cannot be sealed (no master key, a data key
that does not open) is refused before anything is sent, with the vault's code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import provider_rows, records, store
from stage0.ledger.db import Connection
from stage0.spans.canonical import _UUID
from stage0.spans.ids import derive_id
from stage0.vault import at_rest
from stage0.vault.credentials import TENANT, HomeOrMaster, master_for_write
from stage0.vault.tenant_keys import DataKeys

SETTING = "llm_transcripts"
SETTING_KIND = "tenant_setting"
KIND = "provider_transcript"
PURPOSE = "transcript"


def aad(execution_id: str) -> dict[str, Any]:
    return {"purpose": PURPOSE, "execution_id": execution_id}


def _check_tenant(tenant_id: Any) -> str:
    if not isinstance(tenant_id, str) or not TENANT.match(tenant_id) or tenant_id == "system":
        raise LoglineError("TRANSCRIPT_INVALID", "name a tenant: 1-200 letters, digits or "
                           "_.@:- (not system)", "tenant")
    return tenant_id


# --- the setting ----------------------------------------------------------------------------
def setting_id(id_secret: bytes, tenant_id: str) -> str:
    return derive_id(id_secret, SETTING_KIND, tenant_id, SETTING)


def keeps(conn: Connection, keys: Iterable[str], tenant_id: str) -> bool:
    """Whether `tenant_id` keeps transcripts (its platform-signed setting is active)."""
    return provider_rows.transcripts_on(conn, tenant_id, keys)


def set_keep(conn: Connection, key: SigningKey, root: str, id_secret: bytes, tenant_id: str,
             keep: bool, by: str = "operator", master: HomeOrMaster | None = None
             ) -> dict[str, Any]:
    """Turn `tenant_id`'s transcripts on or off (the setting's next version); the span.
    Turning them on with `master` first makes sure the tenant's data key opens (created,
    with the master key on a fresh ledger, as the first `secrets set` does), so that a
    missing key is said now rather than by the next call's refusal."""
    tenant_id = _check_tenant(tenant_id)
    if not isinstance(keep, bool):
        raise LoglineError("TRANSCRIPT_INVALID", "keep is true or false", "keep")
    if keep and master is not None:
        at_rest.data_keys(conn, key, master_for_write(conn, master), tenant_id,
                          id_secret=id_secret, root_key=root)
    span_id = setting_id(id_secret, tenant_id)
    head = store.head(conn, span_id)
    draft = {"id": span_id, "entity_type": SETTING_KIND, "who": by,
             "did": "kept transcripts" if keep else "stopped keeping transcripts",
             "this": SETTING, "name": SETTING, "owner_id": "system", "tenant_id": tenant_id,
             "visibility": "tenant", "status": "active" if keep else "inactive",
             "metadata": {"setting": SETTING, "value": keep}}
    if head is not None:
        if head["public_key"] not in records.platform(conn, root).keys:
            raise LoglineError("TRANSCRIPT_INVALID", "the setting's id holds a span no "
                               "platform key signed", span_id)
        draft.update(seq=head["seq"] + 1, prev_hash=head["curr_hash"])
    return store.append(conn, [draft], key)[0]


# --- sealing and reading ----------------------------------------------------------------------
def data_keys(conn: Connection, key: SigningKey, master: HomeOrMaster, tenant_id: str,
              id_secret: bytes | None, root: str) -> DataKeys:
    """The tenant's data keys (created on first use), or the vault's refusal."""
    return at_rest.data_keys(conn, key, master, tenant_id, id_secret=id_secret, root_key=root)


def draft(keys: DataKeys, tenant_id: str, execution_id: str, at: str, payload: Any,
          output: Any) -> dict[str, Any]:
    """The `provider_transcript` span of execution `execution_id`: prompt and answer sealed."""
    text = json.dumps({"input": payload, "output": output}, ensure_ascii=False,
                      separators=(",", ":"))
    sealed = at_rest.seal_with(keys, tenant_id, text, aad(execution_id))
    return {"entity_type": KIND, "who": "stage0", "did": "kept", "this": execution_id,
            "parent_id": execution_id, "owner_id": "system", "tenant_id": tenant_id,
            "visibility": "private", "status": "sealed", "at": at,
            "content": {"execution_id": execution_id, **sealed}}


def read(conn: Connection, master: HomeOrMaster, root: str, tenant_id: str,
         execution_id: str) -> dict[str, Any]:
    """The transcript of `tenant_id`'s call `execution_id`, opened: {execution_id,
    tenant_id, at, input, output}. TRANSCRIPT_NOT_FOUND when the tenant kept none for it
    (another tenant's is not found either)."""
    tenant_id = _check_tenant(tenant_id)
    keys = records.platform(conn, root).keys
    span = provider_rows.transcript_of(conn, execution_id, tenant_id, keys) \
        if isinstance(execution_id, str) and _UUID.fullmatch(execution_id) else None
    if span is None:
        raise LoglineError("TRANSCRIPT_NOT_FOUND", f"tenant {tenant_id} kept no transcript "
                           f"of call {execution_id} (transcripts are kept only when the "
                           "tenant opted in before the call)", execution_id)
    sealed = dict(span.get("content") or {})
    plain = at_rest.open_for(conn, master, tenant_id, sealed, aad(execution_id),
                             root_key=root)
    value = json.loads(plain)
    return {"execution_id": execution_id, "tenant_id": tenant_id, "at": span["at"],
            "input": value.get("input"), "output": value.get("output")}
