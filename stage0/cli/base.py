"""What every `logline` command shares: the command table, output, progress bars, the home
and root key, and the argument parsers for ids, JSON and positive numbers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger import rows

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One `logline NAME`: its summary, its arguments and the function that runs it."""

    name: str
    summary: str
    run: Handler
    args: Callable[[argparse.ArgumentParser], object] | None

    def add_to(self, sub: Any) -> None:
        """Add this command's parser to `logline`'s subparsers."""
        parser = sub.add_parser(self.name, **about(self.summary))
        if self.args:
            self.args(parser)


#: Every command, by name, in the order its module defines them (cli/main.py orders the
#: modules for `logline --help`).
COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str,
            args: Callable[[argparse.ArgumentParser], object] | None = None,
            ) -> Callable[[Handler], Handler]:
    """Register `logline NAME`: `summary` is its line in `logline --help` and the top of its
    own --help; `args(parser)`, declared right above the handler, adds its arguments."""
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, summary, fn, args)
        return fn
    return register


def out(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def progress(total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; silent otherwise (logs and pipes
    stay clean), and for a total of 0 (nothing worth a bar)."""
    if not sys.stderr.isatty() or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    # Lines printed meanwhile go above the bar when stdout is the same terminal, and stay on
    # stdout when it is a pipe or a file.
    with Progress(console=Console(stderr=True), transient=True,
                  redirect_stdout=sys.stdout.isatty()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def home() -> Home:
    return Home.from_env()


def root(home: Home) -> str:
    return home.root_public_key()


def json_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return rows.parse_line(text)
    except ValueError as exc:
        raise LoglineError("INPUT_BAD_JSON", str(exc), flag) from None


def span_id(text: str, hint: str) -> str:
    """A span id (a UUID, any case) or BAD_ID with a hint of what the command wants."""
    from stage0.spans.canonical import _UUID

    if not _UUID.fullmatch(text.strip()):
        raise LoglineError("BAD_ID", f"{text!r} is not a span id (a UUID such as "
                           f"3f2b8f9e-1c4d-4e5f-8a6b-7c8d9e0f1a2b): {hint}")
    return text.strip().lower()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got "
                                             f"{text!r}")
        return value

    return parse


class About(TypedDict):
    help: str
    description: str


def about(text: str) -> About:
    """The same words in the command list and at the top of the command's own --help."""
    return {"help": text, "description": text}
