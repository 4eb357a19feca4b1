"""The `logline` commands that say what happened and why: `show` (a span, its versions and
their verification), `trace` (a request's trace as a tree) and `quota` (daily execution
quotas: what is used and left, and the limits)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.ledger import db, explain, manifest, quota
from stage0.ledger.db import Connection

OUTPUT_CHARS = 160


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


# --- show ---------------------------------------------------------------------------------
def show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("span_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable")


@command("show", "a span: its latest version, every version with its signer, and whether "
         "they verify", show_args)
def cmd_show(args: argparse.Namespace) -> int:
    span_id = base.span_id(args.span_id, "`logline show` takes a span id (`logline spans` lists "
                       "them)")
    home = base.home()
    with db.resolve(home).connect("kernel") as conn:
        found = explain.describe(conn, base.root(home), span_id)
    if args.json:
        out(_json(found))
        return 0 if found["verification"]["ok"] else 1
    span = found["span"]
    out(f"{span['entity_type']} {span['id']}  {span['this']!r}  tenant {span['tenant_id']}  "
        f"owner {span['owner_id']}  {span['visibility']}")
    error = span.get("error")
    if isinstance(error, dict) and error.get("code"):
        out(f"status {span['status']}: {error['code']}: {error.get('message', '')}")
    elif span.get("status"):
        out(f"status {span['status']}")
    code = span.get("code")
    out(_json({k: v for k, v in span.items() if v is not None and k != "code"}))
    if code:
        out("code:")
        out("    " + code.rstrip().replace("\n", "\n    "))
    out("versions:")
    for v in found["versions"]:
        out(f"  seq {v['seq']:<3} {v['at']}  {v['status'] or '-':<10} "
            f"{(v['error'] or ''):<16} signed by {v['signer']} ({v['role']}) "
            f"{v['public_key'][:12]}…  {'ok' if v['ok'] else v['reason']}")
    check = found["verification"]
    if check["ok"]:
        out(f"verified: hash, signature, trusted signer and chain of {check['versions']} "
            "version(s)")
        return 0
    for failure in check["failures"]:
        out(f"FAIL {failure}")
    return 1


# --- trace --------------------------------------------------------------------------------
def trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="a request id (what `logline schedule` prints), "
                   "any span of the trace, or a trace id")
    p.add_argument("--json", action="store_true", help="machine-readable")


@command("trace", "a request's trace as a tree: request -> execution -> policy output, with "
         "statuses and durations", trace_args)
def cmd_trace(args: argparse.Namespace) -> int:
    with db.resolve(base.home()).connect("kernel") as conn:
        found = explain.trace(conn, args.id)
    if args.json:
        out(_json(found))
        return 0
    out(f"trace {found['trace_id']} ({found['spans']} spans)")
    for i, root in enumerate(found["roots"]):
        _branch(root, "", i == len(found["roots"]) - 1)
    return 0


def _branch(node: dict[str, Any], indent: str, last: bool) -> None:
    out(f"{indent}{'└── ' if last else '├── '}{_line(node)}")
    for i, child in enumerate(node["children"]):
        _branch(child, indent + ("    " if last else "│   "), i == len(node["children"]) - 1)


def _line(node: dict[str, Any]) -> str:
    statuses = [s for i, s in enumerate(node["statuses"]) if s and s not in node["statuses"][:i]]
    parts = [f"{node['entity_type']} {node['id'][:8]}  {node['this']}",
             " -> ".join(statuses) or "-"]
    if node["duration_ms"] is not None:
        parts.append(f"ran {node['duration_ms']} ms")
    if node["took_ms"] is not None:
        parts.append(f"took {node['took_ms']} ms")
    if node["after_ms"] is not None:
        parts.append(f"+{node['after_ms']} ms")
    owner = str(node["owner_id"])
    parts.append(f"by {owner if owner.startswith('policy:') else node['who']}")
    error = node["error"]
    if isinstance(error, dict) and error.get("code"):
        parts.append(f"{error['code']}: {str(error.get('message', ''))[:OUTPUT_CHARS]}")
    elif node["output"] is not None:
        text = json.dumps(node["output"], ensure_ascii=False)
        parts.append("output " + (text if len(text) <= OUTPUT_CHARS
                                  else text[:OUTPUT_CHARS] + "…"))
    return "  ".join(parts)


# --- quota --------------------------------------------------------------------------------
def quota_args(p: argparse.ArgumentParser) -> None:
    qs = p.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    show = qs.add_parser("show", **base.about("each tenant's limit, executions today and what "
                                              "is left (tenants with an override or runs "
                                              "today)"))
    show.add_argument("--tenant", help="only this tenant")
    show.add_argument("--json", action="store_true", help="one JSON object per tenant")
    st = qs.add_parser("set", **base.about("a tenant's daily limit (a new manifest version, "
                                           "signed by the operator key)"))
    st.add_argument("limit", metavar="LIMIT", help="executions per UTC day, a whole number "
                    ">= 0; or `default` to drop the tenant's override")
    st.add_argument("--tenant", required=True, help="the tenant (the default for all is "
                    "throttle.per_tenant_daily_exec_limit in ROW/manifest)")


@command("quota", "daily execution quotas per tenant: what is used and left, and the limits",
         quota_args)
def cmd_quota(args: argparse.Namespace) -> int:
    home = base.home()
    if args.quota_command == "set":
        limit = quota.parse_limit(args.limit)
        with db.resolve(home).connect("kernel") as conn:
            span = quota.set_limit(conn, keys.operator_key(home), args.tenant, limit)
            meta = span.get("metadata") or {}
            now = quota.limit_for(meta, args.tenant)[0]
        how = "back to the default, " if limit is None else ""
        out(f"tenant {args.tenant}: {how}{now} executions a day from now on (manifest seq "
            f"{span['seq']})")
        return 0
    with db.resolve(home).connect("kernel") as conn:
        meta = manifest.latest(conn, base.root(home)).get("metadata") or {}
        tenants = [args.tenant] if args.tenant else _known_tenants(conn, meta)
        quotas = [quota.of_tenant(conn, meta, t) for t in tenants]
    if args.json:
        for one in quotas:
            out(json.dumps(one.as_dict(), sort_keys=True))
        return 0
    default, source = quota.limit_for({"throttle": (meta.get("throttle") or {})
                                       | {quota.OVERRIDES_KEY: {}}}, None)
    out(f"default: {default} executions per tenant per UTC day ({source})")
    for one in quotas:
        out(f"tenant {one.tenant_id}: {one.used} of {one.limit} used on {one.day} (UTC), "
            f"{one.remaining} left, resets in {_duration(one.resets_in_s)}; limit from "
            f"{one.source}{'  SPENT' if one.spent else ''}")
    return 0


def _known_tenants(conn: Connection, meta: dict[str, Any]) -> list[str]:
    overrides = (meta.get("throttle") or {}).get(quota.OVERRIDES_KEY)
    named = set(overrides) if isinstance(overrides, dict) else set()
    return sorted(named | set(quota.used_today(conn)))


def _duration(seconds: int) -> str:
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"
