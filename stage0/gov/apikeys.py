"""API keys: bearer tokens bound to a user, a tenant and roles; stored only as a hash.

A key is `llk_<key id>_<secret>`. The ledger holds an `api_key` span per key (id derived from
the key id with the platform's id secret, so nobody can take it first; owner = the user,
tenant = the tenant, private) whose metadata carries the key id, the BLAKE3 hash of the whole
token and the roles. The token itself is shown once, at creation, and never stored. Revoking
appends the next version with status `revoked`: the history of who could do what stays
verifiable like everything else.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import blake3
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.keys import derivation_secret
from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.ids import derive_id, legacy_id

ROLES = ("reader", "writer", "admin")
DEFAULT_ROLES = ("reader", "writer")
#: The platform operator's role: boot kernels over HTTP and read Prometheus /metrics (whose
#: counts span every tenant). One key holds it, the local operator's (stage0/gov/operator.py,
#: made by `logline up`): `create` never grants it, no route issues keys, and on any other
#: key it is ignored. A tenant admin operates a tenant, never the platform.
OPERATOR_ROLE = "operator"
OPERATOR_USER, OPERATOR_TENANT = "operator", "default"
_TOKEN = re.compile(r"^llk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}$")
#: The platform's own user and tenant. Its spans are the operator's (kernels, contracts, and
#: policies that may see every tenant: policy_agent's scope "all_tenants"), and whatever an
#: API key appends is signed by the operator key, so a key acting as `system` would be the
#: operator: none is issued, and none authenticates.
RESERVED = "system"


@dataclass(frozen=True)
class Principal:
    """Who is calling: what every request runs as."""

    key_id: str
    user_id: str
    tenant_id: str
    roles: tuple[str, ...]

    def can(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


def span_id_for(secret: bytes, key_id: str) -> str:
    """The api_key span's id (keys.id_secret gives `secret`)."""
    return derive_id(secret, "api_key", key_id)


def key_span(conn: Connection, secret: bytes, key_id: str) -> dict[str, Any] | None:
    """The api_key span of `key_id`: under its keyed id, or (a key issued before ids were
    keyed) under the old one. Only an api_key span counts, a kind no client can append."""
    for span_id in (span_id_for(secret, key_id), legacy_id("api_key", key_id)):
        span = store.head(conn, span_id)
        if span is not None and span["entity_type"] == "api_key":
            return span
    return None


def token_hash(token: str) -> str:
    return blake3.blake3(token.encode()).hexdigest()


def parse(token: str) -> str | None:
    """The key id of a well-formed token, else None."""
    match = _TOKEN.match(token.strip())
    return match.group(1) if match else None


def create(conn: Connection, key: SigningKey, user_id: str, tenant_id: str,
           roles: tuple[str, ...] = DEFAULT_ROLES,
           secret: bytes | None = None) -> tuple[str, dict[str, Any]]:
    """Append a new api_key span; return (the token, shown only now; the span). `secret`
    defaults to the one `key` derives, right when `key` is the root key."""
    if OPERATOR_ROLE in roles:
        raise LoglineError("APIKEY_RESERVED", f"'{OPERATOR_ROLE}' is held only by the local "
                           "operator's own key (`logline up` creates it, kept in "
                           "$LOGLINE_HOME/operator.apikey)", "--role")
    for what, value in (("--user", user_id), ("--tenant", tenant_id)):
        if not _NAME.match(value or ""):
            raise LoglineError("APIKEY_BAD_NAME", "use 1-200 letters, digits or _.@:-", what)
        if value == RESERVED:
            raise LoglineError("APIKEY_RESERVED", f"'{RESERVED}' is the platform's own user "
                               "and tenant: a key acting as it could publish policies that "
                               "read and write every tenant; seed such spans with the operator "
                               "key (`logline seed`) instead", what)
    known = known_roles(conn)
    unknown = sorted(set(roles) - set(known))
    if unknown or not roles:
        raise LoglineError("APIKEY_BAD_ROLE", f"unknown role {', '.join(unknown) or '(none)'}"
                           f"; roles are {', '.join(known)}", "--role")
    return _issue(conn, key, user_id, tenant_id, roles, secret)


def issue_operator(conn: Connection, key: SigningKey,
                   secret: bytes | None = None) -> tuple[str, dict[str, Any]]:
    """The local operator's key (tenant `default`, user `operator`): admin of its tenant and
    the platform's operator. Only stage0/gov/operator.py calls this."""
    return _issue(conn, key, OPERATOR_USER, OPERATOR_TENANT, ("admin", OPERATOR_ROLE), secret)


def _issue(conn: Connection, key: SigningKey, user_id: str, tenant_id: str,
           roles: tuple[str, ...], secret: bytes | None) -> tuple[str, dict[str, Any]]:
    key_id = secrets.token_hex(8)
    token = f"llk_{key_id}_{secrets.token_urlsafe(32)}"
    span = store.append(conn, [{
        "id": span_id_for(secret or derivation_secret(key), key_id), "seq": 0,
        "entity_type": "api_key", "who": "logline",
        "did": "issued", "this": f"api key {key_id}", "owner_id": user_id,
        "tenant_id": tenant_id, "visibility": "private", "status": "active",
        "metadata": {"key_id": key_id, "token_hash": token_hash(token),
                     "roles": sorted(set(roles))},
    }], key)[0]
    return token, span


def known_roles(conn: Connection) -> list[str]:
    """The platform's roles and every role a seeded or published contract declares (but not
    the implicit ones every caller has)."""
    declared = {r["role"] for r in conn.execute(q("contract_roles"))}
    return sorted((set(ROLES) | declared) - {"anyone", "member", OPERATOR_ROLE})


def holders(conn: Connection, tenant_id: str, role: str) -> set[str]:
    """Users of a tenant with an active key carrying `role` (read as the kernel: keys are
    private to their owners)."""
    return {r["owner_id"] for r in conn.execute(q("role_holders"),
                                                {"tenant": tenant_id, "role": role})}


def revoke(conn: Connection, key: SigningKey, key_id: str,
           secret: bytes | None = None) -> dict[str, Any]:
    current = key_span(conn, secret or derivation_secret(key), key_id)
    if current is None:
        raise LoglineError("APIKEY_NOT_FOUND", "no such key", key_id)
    if current["status"] == "revoked":
        raise LoglineError("APIKEY_REVOKED", "already revoked", key_id)
    draft = {k: v for k, v in current.items()
             if k not in ("at", "curr_hash", "signature", "public_key")}
    draft.update(seq=current["seq"] + 1, prev_hash=current["curr_hash"], status="revoked",
                 did="revoked")
    return store.append(conn, [draft], key)[0]


def listing(conn: Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(q("api_keys"), {"tenant": tenant_id}).fetchall()
    return [{"key_id": r["metadata"]["key_id"], "user_id": r["owner_id"],
             "tenant_id": r["tenant_id"], "roles": r["metadata"]["roles"],
             "status": r["status"]} for r in rows]


def authenticate(conn: Connection, token: str, secret: bytes) -> Principal | None:
    """The principal a token stands for, or None (malformed, unknown, revoked, wrong)."""
    key_id = parse(token)
    if key_id is None:
        return None
    return _principal(key_id, key_span(conn, secret, key_id), token)


def authenticate_many(conn: Connection, tokens: list[str],
                      secret: bytes) -> dict[str, Principal]:
    """The principals of the tokens that still authenticate, in one query (a live stream
    re-checks its key this way: revoked ones are missing from the answer)."""
    ids: dict[str, tuple[str, str]] = {}
    for token in tokens:
        if (key_id := parse(token)) is not None:
            ids[legacy_id("api_key", key_id)] = (key_id, token)
            ids[span_id_for(secret, key_id)] = (key_id, token)
    found = {}
    for row in conn.execute(q("heads_of"), {"ids": list(ids)}):
        span = store.span_from_row(row)
        key_id, token = ids[span["id"]]
        principal = _principal(key_id, span, token)
        if principal is not None:
            found[token] = principal
    return found


def _principal(key_id: str, span: dict[str, Any] | None, token: str) -> Principal | None:
    if span is None or span["entity_type"] != "api_key" or span["status"] != "active":
        return None
    if RESERVED in (span["owner_id"], span["tenant_id"]):  # issued before keys were refused
        return None
    meta = span["metadata"] or {}
    if not hmac.compare_digest(str(meta.get("token_hash", "")), token_hash(token)):
        return None
    roles = tuple(meta.get("roles", ()))
    if (span["owner_id"], span["tenant_id"]) != (OPERATOR_USER, OPERATOR_TENANT):
        roles = tuple(r for r in roles if r != OPERATOR_ROLE)  # fail closed: not the operator
    return Principal(key_id, span["owner_id"], span["tenant_id"], roles)
