"""The governed-execution commands of `logline`: contracts (operator, on the database),
approvals and intents (a person, over the API with their own key), the agent, and the audit
export."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from stage0 import keys
from stage0.agent.client import Client
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.errors import LoglineError
from stage0.gov import audit, contract_store
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import load as load_contract_file
from stage0.ledger import db, manifest, records
from stage0.spans.display import visible

DEFAULT_URL = "http://127.0.0.1:8000"


def _operator(tenant: str) -> Principal:
    return Principal("cli", "operator", tenant, ("admin",))


def _client(args: argparse.Namespace) -> Client:
    token = args.token or os.environ.get("LOGLINE_TOKEN")
    if not token:
        raise LoglineError("TOKEN_REQUIRED", "pass --token or set LOGLINE_TOKEN (an API key: "
                           "`logline apikey create`)")
    return Client(args.url or os.environ.get("LOGLINE_URL") or DEFAULT_URL, token)


def _api_options(p: argparse.ArgumentParser) -> None:
    """Where the commands that go over the API find it, and whose key they use."""
    p.add_argument("--url", help=f"the API (default $LOGLINE_URL or {DEFAULT_URL})")
    p.add_argument("--token", help="your API key (default $LOGLINE_TOKEN)")


# --- contracts ----------------------------------------------------------------------------
def contract_args(p: argparse.ArgumentParser) -> None:
    cs = p.add_subparsers(dest="contract_command", required=True, metavar="ACTION")
    cl = cs.add_parser("list", **base.about("contracts a tenant can use, and the active ones"))
    cp = cs.add_parser("publish", **base.about("publish a contract YAML for one tenant"))
    cp.add_argument("file", help="NAME@VERSION.yaml")
    ca = cs.add_parser("activate", **base.about("make NAME@VERSION the tenant's active "
                                                "version"))
    ca.add_argument("ref", help="NAME@VERSION, e.g. personal_ops@1.0.0")
    for action in (cl, cp, ca):
        action.add_argument("--tenant", required=True)


@command("contract", "contracts: list, publish and activate per tenant", contract_args)
def cmd_contract(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.operator_key(home)
    with db.resolve(home).connect("kernel") as conn:
        if args.contract_command == "list":
            items, flags = contract_store.contracts(conn, base.root(home), args.tenant)
            for c in items:
                mark = "active" if c["active"] else "      "
                out(visible(f"{mark}  {c['ref']:<24} {c['tenant_id']:<10} "
                            f"{', '.join(c['actions'])}"))
            _print_flags(flags)
        elif args.contract_command == "publish":
            contract = load_contract_file(Path(args.file))
            span = contract_store.publish(conn, key, _operator(args.tenant), contract,
                                      secret=keys.id_secret(home, key))
            out(f"published {contract.ref} for tenant {args.tenant} ({span['id']})")
        else:
            span = contract_store.activate(conn, key, base.root(home), _operator(args.tenant),
                                       args.ref, str(uuid.uuid4()),
                                       secret=keys.id_secret(home, key))
            out(f"activated {span['this']} for tenant {args.tenant} ({span['id']})")
    return 0


# --- proposals, intents, approvals (over the API, as the key's principal) ----------------
# What the server sends back was partly written by others (file names from an agent, args
# from a requester): every line goes out through visible(), and a field of the wrong shape
# is shown as it is instead of stopping the command.
def _print_flags(flags: list[dict[str, Any]] | None, indent: str = "") -> None:
    for f in flags or []:
        out(visible(f"{indent}flagged {f.get('id')} {f.get('reason')}: {f.get('detail', '')}"))


def _op_line(op: Any) -> str:
    if not isinstance(op, dict):
        return f"    {json.dumps(op)}"
    to = f" -> {op['to']}" if op.get("to") else ""
    return f"    {op.get('op')!s:<7} {op.get('path')}{to}  {op.get('size', '?')} bytes"


#: Why delete_duplicates kept the other copy rather than this one (stage0/agent/fsops.py).
KEPT_BECAUSE = {"name": "its name is not copy-like", "older": "the older file",
                "path": "same age, first by path"}


def _kept_line(op: Any) -> str | None:
    """For a duplicate the plan trashes: the file it duplicates, which is the copy kept."""
    if not isinstance(op, dict) or not op.get("duplicate_of"):
        return None
    why = op.get("kept_because")
    why = KEPT_BECAUSE.get(why, why) if isinstance(why, str) else None
    return f"      duplicates {op['duplicate_of']}, which is kept" + (f" ({why})" if why else "")


def _result_line(r: Any) -> str:
    if not isinstance(r, dict):
        return f"    {json.dumps(r)}"
    return (f"    {r.get('status')!s:<8} {r.get('op')!s:<7} {r.get('path')}"
            + (f" -> {r['to']}" if r.get("to") else "")
            + (f"  {r['code']}" if r.get("code") else ""))


def _print_decision(d: dict[str, Any]) -> None:
    out(f"{d['outcome']} {d['reason']}: {d['message']}")
    for name in ("proposal_id", "job_id", "trace_id"):
        if d.get(name):
            out(f"  {name:<12} {d[name]}")


def propose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", help="CONTRACT.ACTION, e.g. personal_ops.delete")
    p.add_argument("--args", default="{}", help="the action's arguments as JSON")
    _api_options(p)


@command("propose", "ask for a governed action (the gate answers)", propose_args)
def cmd_propose(args: argparse.Namespace) -> int:
    try:
        action_args = json.loads(args.args)
    except ValueError as exc:
        raise LoglineError("BAD_JSON", str(exc), "--args") from None
    _print_decision(_client(args).post("/api/proposals", {"action": args.action,
                                                          "args": action_args}))
    return 0


def ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+")
    _api_options(p)


@command("ask", "a sentence like 'delete duplicates in photos', parsed against your "
         "contracts, then proposed", ask_args)
def cmd_ask(args: argparse.Namespace) -> int:
    answer = _client(args).post("/api/intents", {"text": " ".join(args.text)})
    out(f"understood: {answer['parsed']['action']} {json.dumps(answer['parsed']['args'])}")
    _print_decision(answer)
    return 0


def proposal_args(p: argparse.ArgumentParser) -> None:
    pss = p.add_subparsers(dest="proposal_command", required=True, metavar="ACTION")
    show = pss.add_parser("show", **base.about("show one request (its id from propose or ask)"))
    show.add_argument("proposal_id")
    show.add_argument("--json", action="store_true", help="the API's answer as JSON")
    _api_options(show)


@command("proposal", "a governed request: state, approvals, jobs and their results",
         proposal_args)
def cmd_proposal(args: argparse.Namespace) -> int:
    p = _client(args).get(f"/api/proposals/{args.proposal_id}")
    if args.json:
        out(json.dumps(p, indent=2, sort_keys=True))
        return 0
    def show(text: str) -> None:
        out(visible(text))

    show(f"{p['id']}  {p['state']}  {p['contract']} {p['action']} {json.dumps(p['args'])}")
    show(f"  requested by {p['requester']} at {p['at']}; trace {p['trace_id']}")
    for a in p["approvals"]:
        show(f"  {a['status']:<9} by {a['approver']} at {a['at']}: {a['reason']}")
    for kind, job in sorted(p["jobs"].items()):
        show(f"  job {kind:<8} {job['state']:<11} {job['id']}"
             + (f"  (agent {job['agent']})" if job["agent"] else ""))
        output = (job["result"] or {}).get("output")
        output = output if isinstance(output, dict) else {}
        if "code" in output:
            show(f"    refused: {output['code']} {output.get('message', '')}")
        results = output.get("results")
        for r in (results if isinstance(results, list) else [])[:50]:
            show(_result_line(r))
        for name in ("files", "groups", "ops"):
            listed = output.get(name)
            if isinstance(listed, list):
                show(f"    {output.get('count', len(listed))} {name}")
                for item in listed[:50]:
                    show(f"      {json.dumps(item, sort_keys=True)}")
    _print_flags(p.get("flags"), "  ")
    return 0


def approvals_args(p: argparse.ArgumentParser) -> None:
    aps = p.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")
    al = aps.add_parser("list", **base.about("your tenant's approval requests and their plans"))
    al.add_argument("--state", default="pending",
                    help="comma-separated states (default pending; '' for all)")
    al.add_argument("--json", action="store_true", help="one request per line")
    _api_options(al)
    for name in ("approve", "reject"):
        answer = aps.add_parser(name, **base.about(f"{name} a request, with a reason"))
        answer.add_argument("proposal_id")
        answer.add_argument("--reason", required=True)
        _api_options(answer)


@command("approvals", "approval requests: list, approve, reject", approvals_args)
def cmd_approvals(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.approvals_command == "list":
        answer = client.get("/api/approvals", state=args.state)
        items = answer["items"]
        if args.json:  # JSON escapes every non-ASCII character itself
            for item in items:
                out(json.dumps(item, sort_keys=True))
            for f in answer.get("flags") or []:
                print(json.dumps({"flag": f}, sort_keys=True), file=sys.stderr)
            return 0
        for p in items:
            out(visible(f"{p['id']}  {p['state']:<10} {p['contract']} {p['action']} "
                        f"{json.dumps(p['args'])}  by {p['requester']}  "
                        f"({len([a for a in p['approvals'] if a['status'] == 'approved'])}"
                        f"/{p['required']} approvals)"))
            for op in (p["plan"] or [])[:20]:
                out(visible(_op_line(op)))
                kept = _kept_line(op)
                if kept:
                    out(visible(kept))
            if p["plan"] and len(p["plan"]) > 20:
                out(f"    ... and {len(p['plan']) - 20} more")
            _print_flags(p.get("flags"), "    ")
        _print_flags(answer.get("flags"))
        if not items:
            out("nothing to show")
        return 0
    decision = "approve" if args.approvals_command == "approve" else "reject"
    _print_decision(client.post(f"/api/approvals/{args.proposal_id}",
                                {"decision": decision, "reason": args.reason}))
    return 0


# --- the agent ----------------------------------------------------------------------------
def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else base.home().path / "agent"


def agent_args(p: argparse.ArgumentParser) -> None:
    ags = p.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    conf = ags.add_parser("configure", **base.about("point the agent at a server, key and "
                                                    "root"))
    conf.add_argument("--url", required=True)
    conf.add_argument("--token", required=True, help="an API key with the agent role")
    conf.add_argument("--root", required=True, help="the only directory it may touch")
    run = ags.add_parser("run", **base.about("claim and run jobs until stopped (Ctrl-C)"))
    run.add_argument("--once", action="store_true", help="stop when no job is queued")
    st = ags.add_parser("status", **base.about("configuration, local journal, server "
                                               "reachability"))
    for action in (conf, run, st):
        action.add_argument("--state", help="state directory (default $LOGLINE_HOME/agent)")


@command("agent", "the governed local agent", agent_args)
def cmd_agent(args: argparse.Namespace) -> int:
    from stage0.agent import runner

    state = _state_dir(args)
    if args.agent_command == "configure":
        me = runner.configure(state, args.url, args.token, args.root)
        out(f"agent configured: {me['user_id']} of tenant {me['tenant_id']} on {args.url}, "
            f"root {Path(args.root).resolve()} (state in {state})")
        return 0
    agent = runner.Agent(state)
    if args.agent_command == "run":
        done = agent.run(once=args.once)
        out(f"agent stopped after {done} job(s)")
        return 0
    status = agent.status()
    try:
        me = agent.client.get("/api/me")
        status["server"] = {"reachable": True, "user_id": me["user_id"],
                            "tenant_id": me["tenant_id"], "roles": me["roles"]}
    except LoglineError as exc:
        status["server"] = {"reachable": False, "error": str(exc)}
    out(json.dumps(status, indent=2, sort_keys=True))
    return 0 if status["server"]["reachable"] else 1


# --- audit --------------------------------------------------------------------------------
def audit_args(p: argparse.ArgumentParser) -> None:
    aus = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    ex = aus.add_parser("export", **base.about("spans of a trace or a tenant as JSONL or CSV"))
    ex.add_argument("--tenant", help="only this tenant")
    ex.add_argument("--trace", help="one governed request (its trace id)")
    ex.add_argument("--type", help="comma-separated entity types (default: all)")
    ex.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ex.add_argument("--since", type=int, help="only after this position")
    ex.add_argument("--limit", type=int, default=audit.EXPORT_MAX)
    ex.add_argument("--out", help="write to this file (default: stdout)")


@command("audit", "audit trail export", audit_args)
def cmd_audit(args: argparse.Namespace) -> int:
    home = base.home()
    types = args.type.split(",") if args.type else None
    with db.resolve(home).connect("kernel") as conn:
        spans = audit.rows(conn, base.root(home), trace_id=args.trace, tenant=args.tenant,
                           types=types, after=args.since, limit=args.limit)
    text = audit.render(spans, args.format)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(spans)} span(s) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def verify_export(path: str) -> int:
    """`logline verify --export FILE`: every line's hash, signature and key trust."""
    home = base.home()
    with db.resolve(home).connect("kernel") as conn:
        trusted = manifest.trust_set(conn, base.root(home))
        platform = records.platform(conn, base.root(home))
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise LoglineError("EXPORT_UNREADABLE", exc.strerror or str(exc), path) from None
    report = audit.check_export(lines, trusted, platform)
    for line, span_id, reason in report.failures:
        out(visible(f"FAIL {path}:{line} {span_id} {reason}"))
    out(f"ok: {report.spans} exported span(s) verify (hash, signature, trusted key, platform "
        f"kinds signed by the platform): {report.platform} platform record(s), "
        f"{report.tenant} written by tenants" if report.ok
        else f"{len(report.failures)} of {report.spans} span(s) fail")
    return 0 if report.ok else 1
