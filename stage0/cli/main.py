"""`logline`: thin commands over the library. Each prints what it did and exits non-zero with
a reason code when it refuses. A command and its arguments are declared together in the
module of its group (`@command` of cli/base.py); this module builds the parser from them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from stage0.cli import (
    author,
    base,
    governed,
    inspection,
    ledger_cmds,
    machine_cmds,
    memory_cmds,
    prompts,
    providers,
    run_cmds,
    secrets_cmds,
    serve_cmds,
)
from stage0.errors import LoglineError
from stage0.ledger import db

#: The order of `logline --help`: these groups in turn, each one's commands in the order it
#: defines them (importing a group registers its commands).
GROUPS = (ledger_cmds, run_cmds, serve_cmds, machine_cmds, governed, inspection, author,
          secrets_cmds, providers, prompts, memory_cmds)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("logline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        import tomllib

        from stage0.config import PROJECT_ROOT

        with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]


class _Version(argparse.Action):
    """--version, looked up only when asked for (not on every command's start)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"logline {version()}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logline", description="LogLine: a ledger of signed spans "
                                "on PostgreSQL. State lives in $LOGLINE_HOME (default ./.logline)."
                                " LOGLINE_DATABASE_URL selects an external server.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    order = [group.__name__ for group in GROUPS]
    for cmd in sorted(base.COMMANDS.values(), key=lambda c: order.index(c.run.__module__)):
        cmd.add_to(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return base.COMMANDS[args.command].run(args)
    except LoglineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except db.DatabaseError as exc:
        refusal = db.db_error(exc, "command")
        if refusal.code != "NOT_INITIALISED":  # anything else is a bug: its traceback
            raise
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `logline spans --json | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
