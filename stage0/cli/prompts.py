"""`logline prompt build|run|eval|select`: prompts as ledger code (docs/prompts.md).

Each runs a prompt kernel through stage 0 on this machine's ledger, as `--user` of
`--tenant`, exactly as the API does: `build` compiles a variant (and records the
prompt_build), `run` answers a message and records the prompt_run, `eval` runs a variant
against a fixtures file (exit 1 when a fixture fails), `select` lets the bandit choose a
family's variant. A kernel's refusal is printed as `error: CODE: message (where)` with exit
status 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stage0.cli import base
from stage0.cli.base import command, out
from stage0.errors import LoglineError
from stage0.ledger import db

BUILD_ID = "00000000-0000-4000-8000-000000000011"
RUN_ID = "00000000-0000-4000-8000-000000000012"
EVAL_ID = "00000000-0000-4000-8000-000000000013"
BANDIT_ID = "00000000-0000-4000-8000-000000000014"


def _vars(pairs: list[str] | None) -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise LoglineError("INPUT_BAD_JSON", f"--var takes NAME=VALUE, got {pair!r}",
                               "--var")
        values[name] = value
    return values


def prompt_args(p: argparse.ArgumentParser) -> None:
    about = base.about
    ps = p.add_subparsers(dest="prompt_command", required=True, metavar="ACTION")
    build = ps.add_parser("build", **about("compile a variant's blocks into its system "
                                           "prompt (recorded as a prompt_build)"))
    build.add_argument("variant_id")
    run = ps.add_parser("run", **about("answer a message with a prompt family or variant "
                                       "(recorded as a prompt_run)"))
    which = run.add_mutually_exclusive_group()
    which.add_argument("--family", help="a prompt family (default assistant)")
    which.add_argument("--variant", help="a prompt_variant id")
    run.add_argument("--message", required=True, help="the user's text")
    run.add_argument("--provider", help="a provider row's name (default: the variant's)")
    run.add_argument("--context", help="earlier turns as JSON: [{\"role\", \"content\"}]")
    run.add_argument("--params", help="model parameters as JSON, e.g. '{\"max_tokens\": 200}'")
    ev = ps.add_parser("eval", **about("run a variant against fixtures (a JSON file: a list "
                                       "of fixtures); each outcome is recorded"))
    ev.add_argument("variant_id")
    ev.add_argument("--fixtures", required=True, help="the fixtures' JSON file")
    ev.add_argument("--suite", default="default", help="a name for this set of fixtures")
    ev.add_argument("--provider", help="a provider row's name (default: the variant's)")
    sel = ps.add_parser("select", **about("let the bandit (UCB1 over eval pass rate, "
                                          "confidence and errors) choose a family's variant"))
    sel.add_argument("family")
    sel.add_argument("--seed", type=int, help="replay a choice's tie-break")
    sel.add_argument("--exploration", type=float, default=0.5, help="UCB1's weight (0.5)")
    for q in (build, run):
        q.add_argument("--var", action="append", metavar="NAME=VALUE",
                       help="a variable the variant declares (repeatable)")
    for q in (build, run, ev, sel):
        q.add_argument("--tenant", default="system", help="the tenant it runs as")
        q.add_argument("--user", default="system", help="the user it runs as")
        q.add_argument("--json", action="store_true", help="the kernel's whole output")


def _boot(kernel: str, input: Any, args: argparse.Namespace) -> dict[str, Any]:
    from stage0.boot.loader import Loader

    home = base.home()
    with Loader(db.resolve(home), home, worker_id="cli-prompt") as loader:
        output: dict[str, Any] = loader.boot(kernel, input, user_id=args.user,
                                             tenant_id=args.tenant)
    return output


def _refused(output: dict[str, Any]) -> LoglineError:
    error = output.get("error") or {}
    return LoglineError(str(error.get("code")), str(error.get("message")), error.get("where"))


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        fixtures = json.loads(Path(args.fixtures).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoglineError("INPUT_BAD_JSON", str(exc), args.fixtures) from None
    output = _boot(EVAL_ID, {"variant_id": args.variant_id, "fixtures": fixtures,
                             "suite": args.suite,
                             **({"provider": args.provider} if args.provider else {})}, args)
    if args.json:
        out(json.dumps(output, indent=2, ensure_ascii=False))
    if not output.get("ok"):
        raise _refused(output)
    if not args.json:
        for result in output["results"]:
            mark = "pass" if result["passed"] else "FAIL"
            out(f"{mark} {result['fixture']} ({result['type']})"
                + ("" if result["passed"] else ": " + "; ".join(result["failures"])))
        out(f"-- {output['passed']}/{output['total']} passed (eval {output['eval_id']})")
    return 0 if output["passed"] == output["total"] else 1


def _select(args: argparse.Namespace) -> int:
    output = _boot(BANDIT_ID, {"family": args.family, "exploration": args.exploration,
                               **({"seed": args.seed} if args.seed else {})}, args)
    if args.json:
        out(json.dumps(output, indent=2, ensure_ascii=False))
    if not output.get("ok"):
        raise _refused(output)
    if not args.json:
        for score in output["scores"]:
            mark = "*" if score["variant_id"] == output["variant_id"] else " "
            mean = "-" if score["mean"] is None else f"{score['mean']:.3f}"
            value = "untried" if score["score"] is None else f"{score['score']:.3f}"
            out(f"{mark} {score['variant_id']}  n={score['n']}  mean={mean}  score={value}")
        out(f"-- chose {output['variant_id']} for {output['family']} (selection "
            f"{output['selection_id']}, seed {output['seed']})")
    return 0


@command("prompt", "prompts as ledger code: build, run, eval, select "
         "(docs/prompts.md)", prompt_args)
def cmd_prompt(args: argparse.Namespace) -> int:
    if args.prompt_command == "eval":
        return _eval(args)
    if args.prompt_command == "select":
        return _select(args)
    if args.prompt_command == "build":
        output = _boot(BUILD_ID, {"variant_id": args.variant_id, "vars": _vars(args.var)},
                       args)
        if args.json:
            out(json.dumps(output, indent=2, ensure_ascii=False))
        if not output.get("ok"):
            raise _refused(output)
        if not args.json:
            out(output["compiled"])
            out(f"-- compiled_hash {output['compiled_hash']} (prompt_build "
                f"{output['build_id']}, {len(output['blocks'])} blocks)")
        return 0
    input: dict[str, Any] = {"user": args.message, "vars": _vars(args.var),
                             "context": base.json_arg(args.context, "--context"),
                             "params": base.json_arg(args.params, "--params")}
    input.update({"variant_id": args.variant} if args.variant else
                 {"family": args.family or "assistant"})
    if args.provider:
        input["provider"] = args.provider
    output = _boot(RUN_ID, input, args)
    if args.json:
        out(json.dumps(output, indent=2, ensure_ascii=False))
    if output.get("run_id") is None or not output.get("ok"):
        if output.get("run_id") and not args.json:
            out(f"-- prompt_run {output['run_id']} recorded with status error")
        raise _refused(output)
    if not args.json:
        answer = output["answer"]
        out(answer["text"])
        if answer.get("follow_up_question"):
            out(f"? {answer['follow_up_question']}")
        for action in answer.get("actions") or []:
            out(f"proposed (not run): {action['action']} {json.dumps(action.get('args') or {})}"
                " (`logline propose` sends it through the gate)")
        out(f"-- prompt_run {output['run_id']}: {output['model']}, confidence "
            f"{answer['confidence']}, {output['latency_ms']} ms, {output['tokens_in']} tokens "
            f"in, {output['tokens_out']} out")
    return 0
