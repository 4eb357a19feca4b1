"""Contracts per tenant in the ledger: publish, activate, find the active ones, and resolve
an action to the contract that governs it (the platform's api contract included)."""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import Contract, contract_id, parse
from stage0.ledger import manifest, records, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.ids import derive_id, legacy_id
from stage0.spans.proofs import check_proofs

PLATFORM = ("api", "1.0.0")


def tenant_contract_id(secret: bytes, tenant_id: str, name: str, version: str) -> str:
    return derive_id(secret, "contract", tenant_id, f"{name}@{version}")


def contract_span(conn: Connection, secret: bytes, tenant_id: str, name: str,
                   version: str) -> dict[str, Any] | None:
    """The contract NAME@VERSION of a tenant (`system`: the system's) the caller can see:
    under its keyed id, or (published before ids were keyed) under the old one. Only a
    contract span of that tenant counts, a kind no client can append."""
    ref = f"{name}@{version}"
    keyed, old = (contract_id(secret, name, version), legacy_id("contract", ref)) \
        if tenant_id == "system" else \
        (tenant_contract_id(secret, tenant_id, name, version),
         legacy_id("contract", tenant_id, ref))
    for span_id in (keyed, old):
        span = store.head(conn, span_id)
        if span is not None and span["entity_type"] == "contract" \
                and span["tenant_id"] == tenant_id:
            return span
    return None


def load_contract(conn: Connection, span_id: str, trusted: frozenset[str],
                  expected_hash: str | None = None) -> tuple[Contract, dict[str, Any]] | None:
    """A contract span the caller can see, checked (hash, signature, trusted key, and the
    exact version when `expected_hash` is given). None when absent or not visible."""
    span = store.head(conn, span_id)
    if span is None or span["entity_type"] != "contract":
        return None
    if expected_hash is not None and span["curr_hash"] != expected_hash:
        version = conn.execute(q("version_by_hash"), {"id": span_id, "hash": expected_hash}
                               ).fetchone()
        if version is None:
            raise LoglineError("CONTRACT_CHANGED", "the contract version this was decided "
                               "under is gone", span_id)
        span = store.span_from_row(version)
    proofs = check_proofs(span)
    if not proofs.ok or span["public_key"] not in trusted:
        raise LoglineError("CONTRACT_UNTRUSTED", proofs.detail or "signed by a key the "
                           "manifest does not trust", span_id)
    return parse(span["content"], span_id), span


def publish(conn: Connection, key: SigningKey, principal: Principal,
            contract: Contract, *, secret: bytes) -> dict[str, Any]:
    """Store a tenant's own contract (visible to that tenant only)."""
    span_id = tenant_contract_id(secret, principal.tenant_id, contract.name, contract.version)
    if contract.name == PLATFORM[0] or contract_span(
            conn, secret, "system", contract.name, contract.version):
        raise LoglineError("CONTRACT_EXISTS", f"{contract.ref} is a system contract")
    if store.head(conn, span_id) is not None or contract_span(
            conn, secret, principal.tenant_id, contract.name, contract.version):
        raise LoglineError("CONTRACT_EXISTS", f"{contract.ref} is already published; "
                           "publish a new version instead")
    [span] = store.append(conn, [{
        "id": span_id, "seq": 0, "entity_type": "contract", "who": principal.user_id,
        "did": "published", "this": contract.ref, "name": contract.name,
        "description": contract.description, "owner_id": principal.user_id,
        "tenant_id": principal.tenant_id, "visibility": "tenant", "status": "published",
        "content": contract.model_dump(mode="json"), "metadata": {"version": contract.version},
    }], key)
    return span


def activate(conn: Connection, key: SigningKey, root: str, principal: Principal,
             ref: str, trace_id: str, *, secret: bytes) -> dict[str, Any]:
    """Make NAME@VERSION the tenant's active version of NAME (a span, like everything)."""
    name, _, version = ref.partition("@")
    if not name or not version:
        raise LoglineError("CONTRACT_NOT_FOUND", "name a contract as NAME@VERSION", ref)
    trusted = manifest.trust_set(conn, root)
    for tenant in (principal.tenant_id, "system"):
        span = contract_span(conn, secret, tenant, name, version)
        found = load_contract(conn, span["id"], trusted) if span else None
        if found:
            break
    else:
        raise LoglineError("CONTRACT_NOT_FOUND", "no such contract is visible to you", ref)
    contract, span = found
    if contract.name == PLATFORM[0]:
        raise LoglineError("CONTRACT_NOT_FOUND", "the api contract is always active", ref)
    [activation] = store.append(conn, [{
        "entity_type": "contract_activation", "who": principal.user_id, "did": "activated",
        "this": contract.ref, "parent_id": span["id"], "owner_id": principal.user_id,
        "tenant_id": principal.tenant_id, "visibility": "tenant", "status": "active",
        "trace_id": trace_id,
        "content": {"contract_id": span["id"], "contract_hash": span["curr_hash"],
                    "name": contract.name, "version": contract.version},
    }], key)
    return activation


def active_contracts(conn: Connection, root: str,
                     tenant_id: str) -> list[tuple[Contract, dict[str, Any]]]:
    """The tenant's active contracts: activations count only when the platform signed them."""
    trusted = manifest.trust_set(conn, root)
    keys = sorted(records.platform(conn, root).keys)
    out = []
    for row in conn.execute(q("active_contract_activations"), {"tenant": tenant_id,
                                                                "keys": keys}):
        found = load_contract(conn, row["content"]["contract_id"], trusted,
                              row["content"]["contract_hash"])
        if found:
            out.append(found)
    return out


def contracts(conn: Connection, root: str, tenant_id: str
              ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The contracts a tenant can use (the system's and its own, signed by the platform),
    marked active or not; and the flags of the contract spans left out (not signed by the
    platform, or not readable as a contract). A contract seeded both before and after ids
    were keyed is listed once (the newer span), active if either is."""
    keys = records.platform(conn, root).keys
    active = {s["id"] for _, s in active_contracts(conn, root, tenant_id)}
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    flags = []
    for r in conn.execute(q("tenant_contracts"), {"tenant": tenant_id}):
        if r["public_key"] not in keys:
            flags.append(records.flag(r["id"], records.NOT_PLATFORM_SIGNED))
            continue
        try:
            content = r["content"]
            ref = f"{content['name']}@{content['version']}"
            actions = dict(content["actions"])
        except (KeyError, TypeError, ValueError) as exc:
            flags.append(records.flag(r["id"], records.MALFORMED, f"not a contract: {exc!r}"))
            continue
        before = listed.pop((r["tenant_id"], ref), None)
        listed[(r["tenant_id"], ref)] = {
            "id": r["id"], "ref": ref, "tenant_id": r["tenant_id"],
            "active": r["id"] in active or bool(before and before["active"]),
            "actions": actions}
    return list(listed.values()), flags


def resolve(action: str, contracts: list[tuple[Contract, dict[str, Any]]]
            ) -> tuple[Contract, dict[str, Any]] | gate.Decision | None:
    """Which active contract `action` belongs to: `domain.action` names it, a bare action
    must be in exactly one. A Decision (DENY) when that is impossible; None: no contract."""
    if not contracts:
        return None
    name = action.strip().lower()
    domain, dot, bare = name.rpartition(".")
    if dot:
        match = [c for c in contracts if c[0].name == domain]
        if not match:
            return gate.Decision("DENY", "G_NO_CONTRACT", f"no active contract {domain!r} "
                                 "for your tenant", action)
        return match[0]
    match = [c for c in contracts if name in c[0].actions]
    if len(match) > 1:
        return gate.Decision("DENY", "G_AMBIGUOUS_ACTION", f"{name!r} is an action of "
                             f"{', '.join(c[0].ref for c in match)}: name the domain", action)
    return match[0] if match else contracts[0]
