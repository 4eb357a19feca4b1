"""The `logline` commands about this machine: `bench` (a benchmark of the checkout's tools/)
and `db` (the embedded database server)."""

from __future__ import annotations

import argparse
import sys

from stage0.cli import base
from stage0.cli.base import command, out
from stage0.errors import LoglineError
from stage0.ledger import db


def bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["ingest", "pipeline", "api", "llm", "prompts", "memory"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options "
                   "(e.g. --quick; see logline bench WHAT --help)")


@command("bench", "run a benchmark from tools/ (figures beside their peers)", bench_args)
def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    from stage0.config import PROJECT_ROOT, from_checkout

    script = PROJECT_ROOT / "tools" / f"bench_{args.what}.py"
    if not from_checkout() or not script.is_file():
        raise LoglineError("BENCH_NEEDS_CHECKOUT", f"the benchmarks live in tools/ of a LogLine "
                           f"checkout; {script} is not there (clone the repository and run "
                           "`pip install -e .` in it)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def db_args(p: argparse.ArgumentParser) -> None:
    ds = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    ds.add_parser("stop", **base.about("stop the embedded server"))
    url = ds.add_parser("url", **base.about("print a connection string"))
    url.add_argument("--role", choices=["admin", "app", "kernel"], default="app")


@command("db", "the database server", db_args)
def cmd_db(args: argparse.Namespace) -> int:
    home = base.home()
    if args.db_command == "stop":
        out("stopped" if db.stop_embedded(home) else "not running")
    elif args.db_command == "url":
        out(db.resolve(home).url(args.role))
    return 0
