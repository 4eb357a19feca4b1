"""The `logline` commands for people who write their own code (docs/authoring.md): `new`
(a function or policy as NAME.py and NAME.ndjson, ready to sign and seed) and `try` (run it
in the sandbox before committing it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stage0.cli import base, scaffold
from stage0.cli.base import command, out
from stage0.errors import LoglineError
from stage0.gov.operator import TENANT, USER

FUNCTION_TIMEOUT_MS = 30000  # the manifest's policy.timeout_ms default


def say(text: str) -> None:
    """What `new` did, on stderr: stdout carries the span's id alone (`FN=$(logline new ...)`)."""
    print(text, file=sys.stderr, flush=True)


def new_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=scaffold.KINDS)
    p.add_argument("name", metavar="NAME", help="lowercase letters, digits and _ (the files' "
                   "and the span's name)")
    p.add_argument("--tenant", help=f"the tenant it belongs to (default {TENANT}, the "
                   "tenant of `logline up`'s API key)")
    p.add_argument("--owner", help=f"its owner, who runs it by default (default {USER})")
    p.add_argument("--public", action="store_true", help="a function any tenant may run "
                   "(default: its tenant only)")
    p.add_argument("--code", metavar="FILE", help="take the code from FILE instead of "
                   "NAME.py")
    p.add_argument("--on", action="append", metavar="KIND[,KIND]", help="policy: the kinds "
                   "of span it sees (written into NAME.py's ON_ENTITY_TYPES the first time; "
                   "default execution)")
    p.add_argument("--dir", default=".", help="where the files are (default: here)")


@command("new", "write your own function or policy: NAME.py (the code) and NAME.ndjson (the "
         "row to sign and seed)", new_args)
def cmd_new(args: argparse.Namespace) -> int:
    on = [k for part in args.on or [] for k in part.split(",") if k] if args.kind == "policy" \
        else None
    done = scaffold.write(args.kind, args.name, Path(args.dir), tenant=args.tenant,
                          owner=args.owner, visibility="public" if args.public else None,
                          code_path=Path(args.code) if args.code else None, on=on,
                          defaults=(TENANT, USER))
    row = done.row
    if done.wrote_code:
        say(f"wrote {done.code_path}: the code (edit it, then run this command again)")
    version = f"version {row.get('seq', 0)}"
    if done.changed:
        say(f"wrote {done.row_path}: {done.kind} {row['name']} ({version}), tenant "
            f"{row['tenant_id']}, owner {row['owner_id']}, code from {done.code_path}")
    else:
        say(f"{done.row_path} is up to date ({version} holds {done.code_path}'s code)")
    say(f"next: logline sign {done.row_path} --key YOUR.key && logline seed {done.row_path}")
    out(row["id"])
    return 0


def try_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="NAME.ndjson (from `logline new`) or NAME.py")
    p.add_argument("--input", help="JSON: the function's input, or the span a policy sees")


@command("try", "run a function's or policy's main() in the sandbox before committing it "
         "(no database needed)", try_args)
def cmd_try(args: argparse.Namespace) -> int:
    from stage0.sandbox.pool import Limits, SandboxPool

    kind, code, metadata = scaffold.code_of(Path(args.path))
    given = base.json_arg(args.input, "--input")
    if kind == "policy" and not isinstance(given, dict):
        raise LoglineError("INPUT_BAD_JSON", "a policy is tried on a span: --input '{...}' "
                           "(e.g. one line of `logline spans --json`)", "--input")
    timeout = int(metadata.get("timeout_ms") or FUNCTION_TIMEOUT_MS)
    with SandboxPool(size=1, limits=Limits(wall_ms=timeout)) as pool:
        result = pool.run(code, given)
    if result.stdout:
        out(f"printed:\n{result.stdout.rstrip()}")
    if not result.ok:
        error = result.error or {}
        raise LoglineError(error.get("code", "SANDBOX_ERROR"), error.get("message", ""),
                           args.path)
    out(json.dumps(result.output, ensure_ascii=False, indent=2))
    out(f"ran in {result.duration_ms} ms (cpu {result.cpu_ms} ms)")
    if kind != "policy":
        return 0
    problems = scaffold.action_problems(result.output)
    for problem in problems:
        out(f"REFUSED {problem}")
    if problems:
        return 1
    out(f"{len(result.output)} action(s), each one the policy agent would take"
        if result.output else "no action: the policy does nothing with this span")
    return 0
