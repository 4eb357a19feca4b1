"""The `logline` CLI as its own process (`python -m stage0.cli`, what the console script runs):
the README's first command on the product's default path (the embedded server), and the
progress bar it shows only on a terminal. (Every other CLI test runs the commands in-process:
tests/unit/test_cli_without_a_ledger.py, tests/integration/test_cli.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid

import pytest
from helpers.cli import logline
from helpers.ledger import count_spans, write_rows
from helpers.run import reachable_by_postgres


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_init_twice_in_an_empty_directory_on_the_embedded_server(tmp_path, bare_env):
    """The README's first command, on the product's default path: the embedded server, even
    when the suite itself runs against another PostgreSQL (LOGLINE_DATABASE_URL)."""
    project = tmp_path / "project"
    project.mkdir()
    reachable_by_postgres(project)
    env = {**bare_env, "LOGLINE_HOME": str(project / ".logline")}
    try:
        first = logline("init", env=env, cwd=project, timeout=300, own_process=True)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "key       created" in first.stdout
        assert "(embedded)" in first.stdout
        assert "next: logline verify" in first.stdout

        second = logline("init", env=env, cwd=project, timeout=300, own_process=True)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "key       kept" in second.stdout
        assert "migrate   up to date" in second.stdout
        assert "seed      0 span(s) appended" in second.stdout

        verified = logline("verify", env=env, cwd=project, timeout=300,
                           own_process=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ok: every hash, signature, key and chain checks out" in verified.stdout
        assert sorted(p.name for p in project.iterdir()) == [".logline"]
        key = project / ".logline" / "keys" / "operator.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    finally:
        stopped = logline("db", "stop", env=env, cwd=project, timeout=120,
                          own_process=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert not (project / ".logline" / "pgdata" / "postmaster.pid").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(os.geteuid() != 0, reason="what LogLine does as root (CI runs as root)")
def test_as_root_init_never_opens_a_closed_directory(tmp_path, bare_env):
    """As root the embedded PostgreSQL runs as the OS user pgserver, which pgserver alone would
    let through by chmod-ing every directory above the data folder (a 0700 one became 0755).
    `init` in a home under a 0700 directory refuses instead, naming it and the remedies, and
    changes nothing; once the operator opens it for traversal, init works and leaves it so."""
    private = reachable_by_postgres(tmp_path) / "private"
    private.mkdir()
    private.chmod(0o700)
    env = {**bare_env, "LOGLINE_HOME": str(private / "home")}
    refused = logline("init", env=env, cwd=tmp_path, timeout=300, own_process=True)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "EMBEDDED_AS_ROOT" in refused.stderr
    assert f"{private} (mode 0700" in refused.stderr
    assert f"chmod o+x {private};" in refused.stderr
    assert "LOGLINE_HOME" in refused.stderr and "LOGLINE_DATABASE_URL" in refused.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert not (private / "home" / "pgdata" / "PG_VERSION").exists()

    private.chmod(0o711)  # what the refusal suggests: traversal, not listing
    try:
        done = logline("init", env=env, cwd=tmp_path, timeout=300, own_process=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(embedded)" in done.stdout
    finally:
        logline("db", "stop", env=env, cwd=tmp_path, timeout=120, own_process=True)
    assert stat.S_IMODE(private.stat().st_mode) == 0o711  # pgserver would make it 0755


def _run_with_terminal_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `logline ARGS` with stderr on a pseudo-terminal (stdout stays a pipe)."""
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stage0.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


def test_a_long_seed_shows_a_progress_bar_on_a_terminal_and_nothing_in_a_pipe(
        cli, home, seeded, tmp_path):
    rows = [{"id": str(uuid.uuid4()), "entity_type": "note", "who": "alice", "did": "wrote",
             "this": f"note {n}", "owner_id": "alice", "tenant_id": "acme"}
            for n in range(6000)]
    first = write_rows(tmp_path / "first.ndjson", rows[:3000])
    second = write_rows(tmp_path / "second.ndjson", rows[3000:])
    env = {**os.environ, "LOGLINE_HOME": str(home.path), "LOGLINE_DATABASE_URL":
           seeded.admin_url, "COLUMNS": "120", "TERM": "xterm"}
    code, stdout, terminal = _run_with_terminal_stderr(["seed", str(first)], env)
    assert code == 0, stdout + terminal
    assert "3000 appended" in stdout
    assert "seeding 3,000 rows" in terminal and "%" in terminal

    piped = cli("seed", str(second))
    assert "3000 appended" in piped.stdout
    assert piped.stderr == ""  # pipes and logs stay clean
    assert count_spans(seeded) >= 6000
