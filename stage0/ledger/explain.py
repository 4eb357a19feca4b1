"""What a span is, and what happened in a trace: the library under `logline show` and
`logline trace`.

`describe` gives a span's latest version, every version (who signed it, its status and
error) and the verification of the whole chain: hash and signature of each version, the
signer's trust and role (a platform kind counts only when a platform key signed it), and the
version chain. `trace` gives the spans that share a trace id as a tree (request -> execution
-> what policies made of it), each with its status, error and timing.
"""

from __future__ import annotations

from typing import Any

from stage0.errors import LoglineError
from stage0.ledger import manifest, store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q
from stage0.spans.canonical import _UUID, parse_at
from stage0.spans.proofs import check_proofs

TRACE_LIMIT = 2000


def _key_names(meta: dict[str, Any], root: str) -> dict[str, tuple[str, str]]:
    """public key -> (name, role) as the manifest names them."""
    names = {root: ("operator", "root")}
    for entry in meta.get("trusted_keys") or []:
        if isinstance(entry, dict) and entry.get("public_key") not in names:
            names[entry["public_key"]] = (str(entry.get("name")), entry.get("role", "author"))
    return names


def describe(conn: Connection, root: str, span_id: str) -> dict[str, Any]:
    """The span `span_id`, its versions and their verification (the kernel role sees all)."""
    versions = store.versions(conn, span_id.strip().lower())
    if not versions:
        raise LoglineError("NOT_FOUND", "no span with this id", span_id)
    try:
        meta = manifest.latest(conn, root).get("metadata") or {}
    except LoglineError as exc:
        if exc.code != "MANIFEST_NOT_FOUND":
            raise
        meta = {}
    signers, names = manifest.signers_of({"metadata": meta}, root), _key_names(meta, root)
    rows, failures = [], []
    for i, version in enumerate(versions):
        reason = _version_problem(version, versions[i - 1] if i else None, i, signers, root)
        name, role = names.get(version["public_key"], ("untrusted key", "none"))
        rows.append({"seq": version["seq"], "at": version["at"], "status": version["status"],
                     "error": _code(version), "curr_hash": version["curr_hash"],
                     "public_key": version["public_key"], "signer": name, "role": role,
                     "ok": reason is None, "reason": reason})
        if reason:
            failures.append(f"seq {version['seq']}: {reason}")
    return {"span": versions[-1], "versions": rows,
            "verification": {"ok": not failures, "failures": failures,
                             "versions": len(versions)}}


def _version_problem(version: dict[str, Any], previous: dict[str, Any] | None, index: int,
                     signers: manifest.Signers, root: str) -> str | None:
    check = check_proofs(version)
    if not check.ok:
        return f"{check.reason}: {check.detail}"
    if version["seq"] != index or (previous and version["prev_hash"] != previous["curr_hash"]):
        return "CHAIN_BROKEN: this version does not follow the one before"
    if version["entity_type"] == "manifest" and version["public_key"] != root:
        return "MANIFEST_UNTRUSTED: a manifest must be signed by the root key"
    violation = signers.violation(version)
    if violation == "KEY_UNTRUSTED":
        return "KEY_UNTRUSTED: signed by a key the manifest does not trust"
    if violation:
        return f"{violation}: a {version['entity_type']} counts only when a platform key signs it"
    return None


def _code(span: dict[str, Any]) -> str | None:
    error = span.get("error")
    return error.get("code") if isinstance(error, dict) else None


# --- traces -------------------------------------------------------------------------------
def trace_id_of(conn: Connection, ident: str) -> str:
    """The trace `ident` names: a span id (its trace), or a trace id itself."""
    ident = ident.strip()
    if _UUID.fullmatch(ident):
        span = store.head(conn, ident.lower())
        if span is not None:
            if not span["trace_id"]:
                raise LoglineError("NOT_FOUND", f"this {span['entity_type']} belongs to no "
                                   "trace (it has no trace_id)", ident)
            trace_id: str = span["trace_id"]
            return trace_id
    return ident


def trace(conn: Connection, ident: str) -> dict[str, Any]:
    """{"trace_id", "spans", "roots"}: the trace's spans as a tree of nodes, oldest first."""
    trace_id = trace_id_of(conn, ident)
    rows = [store.span_from_row(r) for r in conn.execute(
        q("trace_spans"), {"trace_id": trace_id, "limit": TRACE_LIMIT})]
    if not rows:
        raise LoglineError("NOT_FOUND", "no span with this id, and no trace with this id",
                           ident)
    nodes: dict[str, dict[str, Any]] = {}
    for span in rows:  # in position order: a node's first version comes first
        node = nodes.get(span["id"])
        if node is None:
            nodes[span["id"]] = _node(span)
        else:
            _advance(node, span)
    roots = []
    for node in nodes.values():
        parent = _parent(node, nodes)
        if parent is None:
            roots.append(node)
        else:
            node["after_ms"] = _ms_between(parent["at"], node["at"])
            parent["children"].append(node)
    return {"trace_id": trace_id, "spans": len(nodes), "roots": roots}


def _node(span: dict[str, Any]) -> dict[str, Any]:
    return {"id": span["id"], "entity_type": span["entity_type"], "this": span["this"],
            "who": span["who"], "owner_id": span["owner_id"], "tenant_id": span["tenant_id"],
            "statuses": [span["status"]], "status": span["status"], "error": span["error"],
            "output": span["output"], "duration_ms": span["duration_ms"], "at": span["at"],
            "last_at": span["at"], "took_ms": None, "after_ms": None,
            "links": [span["parent_id"], *(span["related_to"] or [])], "children": []}


def _advance(node: dict[str, Any], span: dict[str, Any]) -> None:
    """A later version of a node: its status, error and output now, and how long it took
    from the first version (a request: scheduled -> complete)."""
    node["statuses"].append(span["status"])
    node.update(status=span["status"], error=span["error"], last_at=span["at"],
                took_ms=_ms_between(node["at"], span["at"]))
    if span["output"] is not None:
        node["output"] = span["output"]


def _parent(node: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The first of parent_id, then related_to, that is in the trace (an execution's parent
    is its function, outside the trace; it relates to its request, inside)."""
    for link in node.pop("links"):
        if link and link != node["id"] and link in nodes:
            return nodes[link]
    return None


def _ms_between(first: str, then: str) -> int:
    return round((parse_at(then) - parse_at(first)).total_seconds() * 1000)
