"""`logline provider add|list|show|test|enable|disable|transcripts|transcript`: LLM provider
rows and a tenant's opt-in transcripts (docs/providers.md).

The operator's commands, on the database with the operator key (a provider row is a platform
record). `test` makes one real call through the same checks a kernel's call goes through
(egress, limits, breaker, budget) and records it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.ledger import db, records
from stage0.llm import admin, providers, transcripts
from stage0.llm.host import LlmHost, credential_source
from stage0.spans.display import visible


def _config(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"name": args.name, "kind": args.kind, "base_url": args.base_url,
                            "model": args.model, "tenant_id": args.tenant,
                            "enabled": not args.disabled,
                            "egress": {"hosts": args.host or [],
                                       "addresses": args.address or []}}
    for field in ("params", "limits", "prices"):
        value = base.json_arg(getattr(args, field), f"--{field}")
        if value is not None:
            data[field] = value
    if args.credential:
        data["credential"] = args.credential
    return data


def provider_args(p: argparse.ArgumentParser) -> None:
    about = base.about
    ps = p.add_subparsers(dest="provider_command", required=True, metavar="ACTION")
    add = ps.add_parser("add", **about("add a provider row, or change the one with this name "
                                       "(e.g. add local --kind ollama --base-url "
                                       "http://127.0.0.1:11434 --model llama3.2 "
                                       "--address 127.0.0.1)"))
    add.add_argument("name")
    add.add_argument("--kind", required=True, help="openai, ollama or anthropic")
    add.add_argument("--base-url", required=True,
                     help="e.g. https://api.openai.com/v1 or http://127.0.0.1:11434")
    add.add_argument("--model", required=True)
    add.add_argument("--credential", help="the name of the tenant's secret holding the key")
    add.add_argument("--host", action="append",
                     help="a host calls may go to (repeatable; default: base-url's host)")
    add.add_argument("--address", action="append", help="a private or loopback address the "
                     "host may resolve to (repeatable; needed for a local server)")
    add.add_argument("--params", help="default parameters as JSON, e.g. '{\"temperature\": 0}'")
    add.add_argument("--limits", help="limits as JSON, e.g. '{\"daily_token_budget\": 50000}'")
    add.add_argument("--prices", help="'{\"input_per_1k\": 0.15, \"output_per_1k\": 0.6}'")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    ls = ps.add_parser("list", **about("provider rows (a tenant's own and the system's)"))
    ls.add_argument("--json", action="store_true")
    show = ps.add_parser("show", **about("one provider's configuration"))
    test = ps.add_parser("test", **about("one small real call, recorded (exit 1 if it fails)"))
    on = ps.add_parser("enable", **about("enable a provider"))
    off = ps.add_parser("disable", **about("disable a provider (calls are refused)"))
    for q in (show, test, on, off):
        q.add_argument("name")
    for q in (show, test):
        q.add_argument("--json", action="store_true")
    for q in (add, show, test, on, off):
        q.add_argument("--tenant", default="system",
                       help="the provider's tenant (default system: every tenant's)")
    ls.add_argument("--tenant", help="only what this tenant can use")
    tr = ps.add_parser("transcripts", **about("whether a tenant keeps the prompts and answers "
                                              "of its calls, encrypted (default: off, only "
                                              "hashes and lengths)"))
    tr.add_argument("keep", choices=("on", "off", "show"))
    tr.add_argument("--tenant", required=True)
    one = ps.add_parser("transcript", **about("the prompt and answer a tenant that keeps "
                                              "transcripts sent and got in one call"))
    one.add_argument("execution_id", metavar="ID",
                     help="the call's provider_execution id (its answer's execution_id)")
    one.add_argument("--tenant", required=True)
    one.add_argument("--json", action="store_true")


@command("provider", "LLM providers: add, list, show, test, enable, disable, transcripts "
         "(docs/providers.md)", provider_args)
def cmd_provider(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.operator_key(home)
    root = base.root(home)
    with db.resolve(home).connect("kernel") as conn:
        action = args.provider_command
        if action == "add":
            provider = providers.parse(_config(args), "provider")
            span = admin.add(conn, key, root, keys.id_secret(home, key), provider)
            out(f"{'added' if span['seq'] == 0 else 'changed'} provider {provider.name} "
                f"for tenant {provider.tenant_id} ({span['id']} seq {span['seq']}, "
                f"{span['status']})")
        elif action == "list":
            rows = admin.listed(conn, root, args.tenant)
            for row in rows:
                if args.json:
                    out(json.dumps(row, sort_keys=True))
                else:
                    what = row.get("problem") or f"{row.get('kind')} {row.get('model')} " \
                        f"{row.get('base_url')}"
                    out(visible(f"{row['name']:<16} {row['tenant_id']:<10} "
                                f"{row['status']:<9} {what}"))
            if not rows and not args.json:
                out("no providers (`logline provider add --help`)")
        elif action == "show":
            shown = admin.show(conn, root, args.name, args.tenant)
            out(json.dumps(shown, indent=None if args.json else 2, sort_keys=True))
        elif action == "transcripts":
            _transcripts(conn, home, key, root, args)
        elif action == "transcript":
            shown = transcripts.read(conn, home, root, args.tenant, args.execution_id)
            if args.json:
                out(json.dumps(shown, sort_keys=True, ensure_ascii=False))
            else:
                out(f"call {shown['execution_id']} of tenant {shown['tenant_id']} at "
                    f"{shown['at']}")
                out(visible("input:  " + json.dumps(shown["input"], ensure_ascii=False)))
                out(visible("output: " + json.dumps(shown["output"], ensure_ascii=False)))
        elif action in ("enable", "disable"):
            span = admin.set_enabled(conn, key, root, args.name, args.tenant,
                                     action == "enable")
            out(f"{action}d provider {args.name} for tenant {args.tenant} (seq {span['seq']})")
        else:
            return _test(conn, home, key, root, args)
    return 0


def _transcripts(conn: db.Connection, home: Any, key: Any, root: str,
                 args: argparse.Namespace) -> None:
    if args.keep == "show":
        on = transcripts.keeps(conn, records.platform(conn, root).keys, args.tenant)
    else:
        on = args.keep == "on"
        transcripts.set_keep(conn, key, root, keys.id_secret(home, key), args.tenant, on,
                             master=home)
    out(f"tenant {args.tenant}: " + ("keeps the prompts and answers of its calls, encrypted "
                                     "with its data key" if on else
                                     "keeps hashes and lengths only (no transcripts)"))


def _test(conn: db.Connection, home: Any, key: Any, root: str, args: argparse.Namespace) -> int:
    database = db.resolve(home)
    host = LlmHost(lambda: database.connect("kernel"), key, root,
                   credential_source(conn, home), worker="cli", master=home,
                   id_secret=keys.id_secret(home, key))
    try:
        answer = admin.test(host, args.name, args.tenant)
    finally:
        host.close()
    if args.json:
        out(json.dumps(answer, sort_keys=True))
    elif answer["ok"]:
        out(f"ok: {answer['model']} answered in {answer['latency_ms']} ms "
            f"({answer['tokens_in']} tokens in, {answer['tokens_out']} out); recorded as "
            f"{answer['execution_id']}")
    else:
        error = answer["error"] or {}
        out(visible(f"failed: {error.get('code')}: {error.get('message')} (recorded as "
                    f"{answer['execution_id']})"))
    return 0 if answer["ok"] else 1
