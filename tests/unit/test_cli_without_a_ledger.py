"""The `logline` CLI where no ledger is reached: keys in a fresh home, what a user is told when
there is no database, an unreachable one or a home never initialised, --version and every
command's --help. The commands run in this process (helpers/cli.py), each with exactly the
environment it is given. (With a ledger: tests/integration/test_cli.py.)"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
from helpers.cli import DB_ENV, logline

from stage0.cli import base
from stage0.cli import main as cli_module


def test_keys_gen_creates_a_private_operator_key_and_never_prints_it(bare_env):
    proc = logline("keys", "gen", env=bare_env)
    assert proc.returncode == 0, proc.stderr
    key = Path(bare_env["LOGLINE_HOME"]) / "keys" / "operator.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_text().strip()
    assert len(secret) == 64
    assert secret not in proc.stdout + proc.stderr
    assert secret.upper() not in (proc.stdout + proc.stderr).upper()
    shown = logline("keys", "show", env=bare_env)
    assert shown.stdout.strip() in proc.stdout  # it prints the public key instead


def test_keys_gen_refuses_to_replace_the_operator_key(bare_env):
    assert logline("keys", "gen", env=bare_env).returncode == 0
    key = Path(bare_env["LOGLINE_HOME"]) / "keys" / "operator.key"
    before = key.read_bytes()
    proc = logline("keys", "gen", env=bare_env)
    assert proc.returncode == 2
    assert "KEY_EXISTS" in proc.stderr and str(key) in proc.stderr
    assert key.read_bytes() == before


@pytest.mark.parametrize("command", [("verify",), ("seed",), ("spans",), ("migrate",),
                                     ("init",), ("keys", "trust", "ab" * 32, "--name", "x")])
def test_an_unreachable_database_is_a_clear_error(home, tmp_path, command):
    closed = tmp_path / "no-server-here"
    closed.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env.update(LOGLINE_HOME=str(home.path),
               LOGLINE_DATABASE_URL=f"postgresql:///logline?host={closed}&connect_timeout=5")
    proc = logline(*command, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DB_UNAVAILABLE" in proc.stderr
    assert "Traceback" not in proc.stderr


ANY_ID = "3f2b8f9e-1c4d-4e5f-8a6b-7c8d9e0f1a2b"


NEEDS_A_LEDGER = [("spans",), ("verify",), ("seed",), ("migrate",), ("db", "url"),
                  ("checkpoint",), ("apikey", "list"), ("schedule", ANY_ID),
                  ("boot", ANY_ID), ("keys", "trust", "ab" * 32, "--name", "x"),
                  ("worker", "--once"), ("show", ANY_ID), ("trace", ANY_ID),
                  ("quota", "show"), ("quota", "set", "5", "--tenant", "acme")]


@pytest.mark.parametrize("command", NEEDS_A_LEDGER, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("state", ["empty", "key only"])
def test_an_uninitialised_home_says_run_init_and_starts_nothing(bare_env, command, state):
    home = Path(bare_env["LOGLINE_HOME"])
    if state == "key only":
        assert logline("keys", "gen", env=bare_env).returncode == 0
    proc = logline(*command, env=bare_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "NOT_INITIALISED" in proc.stderr and "run `logline init`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (home / "pgdata").exists()  # no PostgreSQL was started (or left running)


def test_the_help_covers_every_command():
    assert {"new", "try", "show", "trace", "quota", "ask", "contract"} <= set(ALL_COMMANDS)


def test_version(bare_env):
    from stage0.cli.main import version

    proc = logline("--version", env=bare_env)
    assert proc.returncode == 0 and proc.stdout == f"logline {version()}\n"
    assert version().count(".") >= 2


cli_module.parser()  # importing stage0.cli.main registered every command group (its GROUPS)
ALL_COMMANDS = sorted(base.COMMANDS)


def _flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


def _help_lines() -> dict[str, str]:
    sub = next(a for a in cli_module.parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.help for action in sub._choices_actions}


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_has_help(bare_env, command):
    proc = logline(command, "--help", env=bare_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: logline {command}")
    assert proc.stderr == ""
    assert _help_lines()[command]  # listed with a summary in `logline --help`
    assert _flat(_help_lines()[command]) in _flat(logline("--help", env=bare_env).stdout)


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_help_says_what_it_does(bare_env, command):
    proc = logline(command, "--help", env=bare_env)
    assert _flat(_help_lines()[command]) in _flat(proc.stdout)
