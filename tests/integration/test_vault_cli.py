"""`logline secrets`: the real CLI in subprocesses, the value on standard input. Whatever a
command prints (stdout and stderr, refusals included) never holds the value."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from helpers.vault import VALUE, assert_nowhere, database_text

from stage0 import keys
from stage0.ledger import verify
from stage0.spans.proofs import public_key_hex
from stage0.vault import credentials, crypto
from stage0.vault import master as masters


@pytest.fixture
def logline(home, seeded, monkeypatch):
    monkeypatch.delenv(masters.ENV, raising=False)
    printed: list[str] = []

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None,
            code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "stage0.cli", *args], input=stdin, text=True,
            capture_output=True, timeout=120,
            env={**os.environ, "LOGLINE_HOME": str(home.path),
                 "LOGLINE_DATABASE_URL": seeded.admin_url, **(env or {})})
        printed.append(proc.stdout + proc.stderr)
        assert proc.returncode == code, f"{args}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc

    run.printed = printed  # type: ignore[attr-defined]
    return run


def reveal(seeded, home, name="openai_api_key", tenant="acme") -> str:
    with seeded.connect("kernel") as conn:
        return credentials.reveal(conn, home, tenant, name)


def test_set_rotate_and_list_never_show_the_value(logline, seeded, home, operator):
    done = logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE + "\n")
    assert "stored openai_api_key v1 for tenant acme" in done.stdout
    assert stat.S_IMODE(masters.path(home).stat().st_mode) == 0o600
    assert reveal(seeded, home) == VALUE  # the shell's line end is not part of it
    logline("secrets", "rotate", "openai_api_key", "--tenant", "acme", stdin="sk-second-0000")
    listed = logline("secrets", "list", "--tenant", "acme").stdout
    assert listed.startswith("openai_api_key") and " v2 " in listed
    assert logline("secrets", "list", "--tenant", "globex").stdout.strip() == \
        "tenant globex has no secrets"
    assert reveal(seeded, home) == "sk-second-0000"
    logline("spans", "--entity-type", "secret", "--tenant", "acme", "--json")
    logline("show", credentials.span_id(keys.derivation_secret(operator), "acme",
                                        "openai_api_key"))
    logline("verify")
    for value in (VALUE, "sk-second-0000"):
        assert_nowhere("\n".join(logline.printed), value)
        with seeded.connect("kernel") as conn:
            assert_nowhere(database_text(conn), value)
    with seeded.connect("kernel") as conn:
        assert verify.verify(conn, public_key_hex(operator)).ok


@pytest.mark.parametrize(("stdin", "code"), [("", "SECRET_EMPTY"), ("\n", "SECRET_EMPTY"),
                                             (" \t\n", "SECRET_EMPTY")])
def test_an_empty_value_is_refused(logline, stdin, code):
    proc = logline("secrets", "set", "k", "--tenant", "acme", stdin=stdin, code=2)
    assert code in proc.stderr


def test_a_value_that_is_not_text_is_refused_without_quoting_it(logline, home, seeded):
    proc = subprocess.run(
        [sys.executable, "-m", "stage0.cli", "secrets", "set", "k", "--tenant", "acme"],
        input=b"sk-\xff\xfe-binary", capture_output=True, timeout=120,
        env={**os.environ, "LOGLINE_HOME": str(home.path),
             "LOGLINE_DATABASE_URL": seeded.admin_url})
    assert proc.returncode == 2 and b"SECRET_NOT_TEXT" in proc.stderr
    assert b"Traceback" not in proc.stderr and b"0xff" not in proc.stderr


def test_rotating_a_name_never_set_is_refused(logline):
    proc = logline("secrets", "rotate", "nope", "--tenant", "acme", stdin=VALUE, code=2)
    assert "SECRET_NOT_FOUND" in proc.stderr
    assert_nowhere("\n".join(logline.printed))


def test_a_wrong_master_key_in_the_environment_is_refused_without_the_value(logline):
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    wrong = {masters.ENV: crypto.new_key().hex()}
    proc = logline("secrets", "set", "other", "--tenant", "acme", stdin="sk-other-1111",
                   env=wrong, code=2)
    assert "MASTER_KEY_WRONG" in proc.stderr and wrong[masters.ENV] not in proc.stderr
    proc = logline("secrets", "set", "other", "--tenant", "acme", stdin=VALUE,
                   env={masters.ENV: "nope"}, code=2)
    assert "MASTER_KEY_INVALID" in proc.stderr
    assert_nowhere("\n".join(logline.printed))
    assert_nowhere("\n".join(logline.printed), "sk-other-1111")


def test_a_lost_master_key_is_refused_not_replaced(logline, home, seeded):
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    masters.path(home).unlink()
    proc = logline("secrets", "set", "other", "--tenant", "globex", stdin=VALUE, code=2)
    assert "MASTER_KEY_MISSING" in proc.stderr and "restore" in proc.stderr
    assert not masters.path(home).exists()
    assert "openai_api_key" in logline("secrets", "list", "--tenant", "acme").stdout


def test_rotate_master_swaps_the_key_file_and_keeps_the_old_one(logline, home, seeded):
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    logline("secrets", "set", "openai_api_key", "--tenant", "globex", stdin="sk-globex-2222")
    old = masters.path(home).read_text()
    proc = logline("secrets", "rotate-master")
    assert "re-wrapped 2 tenant data key(s)" in proc.stdout
    [retired] = list(home.keys.glob("master.key.retired-*"))
    assert retired.read_text() == old and stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert masters.path(home).read_text() != old
    assert not (home.keys / masters.PENDING).exists()
    assert reveal(seeded, home) == VALUE
    assert reveal(seeded, home, tenant="globex") == "sk-globex-2222"
    assert "re-wrapped 2" in logline("secrets", "rotate-master").stdout  # and again
    assert reveal(seeded, home) == VALUE
    assert_nowhere("\n".join(logline.printed))


def test_an_interrupted_master_rotation_finishes_when_run_again(logline, home, seeded, operator):
    """The ledger was re-wrapped with the pending key, then the process died before the files
    were swapped: the next run uses that pending key and only swaps."""
    from stage0.vault import rotation

    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    new = crypto.new_key()
    masters.write_file(home.keys / masters.PENDING, new)
    with seeded.connect("kernel") as conn:
        rotation.rewrap_all(conn, operator, masters.load(home), masters.Master(new, "pending"))
    proc = logline("secrets", "rotate-master")
    assert "using the new master key already in" in proc.stdout
    assert "re-wrapped 0 tenant data key(s)" in proc.stdout and "(1 already were)" in proc.stdout
    assert masters.load(home).key == new and reveal(seeded, home) == VALUE


def test_rotate_master_with_the_key_in_the_environment_needs_a_file(logline, home, seeded,
                                                                    tmp_path, monkeypatch):
    env = {masters.ENV: crypto.new_key().hex()}
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE, env=env)
    assert not masters.path(home).exists()  # the environment's key: nothing written
    proc = logline("secrets", "rotate-master", env=env, code=2)
    assert "MASTER_KEY_FROM_ENV" in proc.stderr
    new_file = tmp_path / "new.key"
    logline("secrets", "rotate-master", "--new-key-file", str(new_file), env=env)
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    monkeypatch.setenv(masters.ENV, new_file.read_text().strip())
    assert reveal(seeded, home) == VALUE
    assert env[masters.ENV] not in "\n".join(logline.printed)
    assert new_file.read_text().strip() not in "\n".join(logline.printed)


def test_rotate_key_reseals_with_a_new_data_key_version(logline, home, seeded):
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    proc = logline("secrets", "rotate-key", "--tenant", "acme")
    assert "data key version 2, 1 secret(s) sealed again" in proc.stdout
    assert reveal(seeded, home) == VALUE
    assert " v2 " in logline("secrets", "list", "--tenant", "acme").stdout


def test_revoke_stops_a_secret_until_it_is_set_again(logline, home, seeded):
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin=VALUE)
    assert "revoked openai_api_key" in logline("secrets", "revoke", "openai_api_key",
                                               "--tenant", "acme").stdout
    assert " revoked " in logline("secrets", "list", "--tenant", "acme").stdout
    proc = logline("secrets", "revoke", "openai_api_key", "--tenant", "acme", code=2)
    assert "SECRET_REVOKED" in proc.stderr
    logline("secrets", "set", "openai_api_key", "--tenant", "acme", stdin="sk-new-0000")
    assert reveal(seeded, home) == "sk-new-0000"


def test_every_secrets_command_has_help_with_what_it_does(logline):
    text = logline("secrets", "--help").stdout
    for action in ("set", "rotate", "revoke", "list", "rotate-key", "rotate-master"):
        assert action in text
    assert "standard input" in logline("secrets", "set", "--help").stdout
