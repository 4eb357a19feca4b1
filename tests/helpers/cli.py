"""Running `logline` the way a test needs it.

`logline(*args, env=..., cwd=...)` calls `stage0.cli.main.main(args)` in this process, with
exactly `env` as the environment and `cwd` as the working directory for the duration of the
call, and gives back what a subprocess would have: the exit code, stdout and stderr. That
skips starting an interpreter and importing the platform (~0.5 s a call).

What makes a command unfit to run in-process runs as a real subprocess (`python -m
stage0.cli`) instead, whatever the caller asked: commands that serve until stopped (`serve`,
`up`, `worker` and `agent run` without --once) and `bench` (it replaces sys.argv and runs a
script). `own_process=True` asks for a subprocess anyway: the tests in tests/acceptance that
check the console script itself (its real process, terminal and environment) do.

Process-wide state a command may change is put back after it: os.environ, the working
directory, sys.argv and the SIGTERM/SIGINT handlers (`worker --once` and `agent run --once`
install their own).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where `env` does not say: no database configured (tests that want one pass it).
DB_ENV = ("LOGLINE_DATABASE_URL", "LOGLINE_APP_DATABASE_URL", "LOGLINE_KERNEL_DATABASE_URL")
SERVES = {"serve", "up", "bench"}
SERVES_UNLESS_ONCE = {("worker",), ("agent", "run")}


@dataclass(frozen=True)
class Ran:
    """What `subprocess.run(..., capture_output=True, text=True)` gives, for either way."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def needs_own_process(args: Sequence[str]) -> bool:
    words = [a for a in args if not a.startswith("-")]
    if not words or "--help" in args or "-h" in args:  # argparse answers before it runs
        return False
    if words[0] in SERVES:
        return True
    return any(tuple(words[:len(cmd)]) == cmd for cmd in SERVES_UNLESS_ONCE) \
        and "--once" not in args


def logline(*args: str, env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
            check: bool = False, timeout: float = 120, own_process: bool = False) -> Ran:
    """Run `logline ARGS` (env: the whole environment, default this process's)."""
    env = dict(os.environ if env is None else env)
    if own_process or needs_own_process(args):
        proc = subprocess.run([sys.executable, "-m", "stage0.cli", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        ran = Ran(list(args), proc.returncode, proc.stdout, proc.stderr)
    else:
        ran = in_process(list(args), env, cwd)
    if check and ran.returncode != 0:
        raise AssertionError(f"logline {' '.join(args)} exited {ran.returncode}\n"
                             f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}")
    return ran


def in_process(args: list[str], env: Mapping[str, str], cwd: Path | str | None = None) -> Ran:
    from stage0.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with _process_state(env, cwd), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = _exit_status(exc.code)
        except Exception:  # what the interpreter would print, and its exit status
            traceback.print_exc()
            code = 1
    return Ran(args, code, out.getvalue(), err.getvalue())


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _process_state(env: Mapping[str, str], cwd: Path | str | None):
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv[:]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ.clear()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
