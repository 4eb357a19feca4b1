"""docs/authoring.md works as written: every ```bash block runs, in order, in one shell, in
an empty directory, against a fresh home and an empty migrated database (the guide's own
`logline init` seeds it), with the real CLI, worker and API. The ```python blocks are what
`logline new` writes. Plus `logline new` and `logline try` on their own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, free_port
from helpers.cli import Ran
from helpers.cli import logline as run_logline

from stage0.cli import scaffold

GUIDE = REPO / "docs" / "authoring.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
GUIDE_PORT = "8000"
MARK = "::block::"


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == language]


def script(port: int) -> str:
    """The guide's bash blocks as one script; each block announces itself first. The API's
    port is a free one (8000 may be taken on this machine)."""
    parts = ["set -euo pipefail"]
    for number, body in enumerate(blocks("bash"), start=1):
        parts.append(f"echo '{MARK} {number}' >&2")
        parts.append(body.replace(GUIDE_PORT, str(port)))
    return "\n".join(parts) + "\n"


def test_every_block_of_the_guide_is_bash_python_or_output():
    languages = [lang for lang, _ in FENCE.findall(GUIDE.read_text())]
    assert set(languages) <= {"bash", "python", "text"}, languages
    assert languages.count("bash") >= 10
    assert GUIDE_PORT in "".join(blocks("bash"))


def test_the_guides_code_is_what_logline_new_writes():
    function, policy = blocks("python")
    assert function == scaffold.template("function", "hello")
    assert policy == scaffold.template("policy", "alert_on_error", ["execution"])


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_guide_runs_as_written(database, tmp_path):
    if not shutil.which("curl") or not shutil.which("jq"):
        pytest.skip("the guide's HTTP part needs curl and jq")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLINE_")}
    env.update(LOGLINE_HOME=str(tmp_path / "home"), LOGLINE_DATABASE_URL=database.admin_url,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.Popen(["bash", "-c", script(free_port())], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        try:  # whatever the guide left running (the API, if a block failed before `kill`)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    ran = [line for line in stderr.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0, (f"the guide failed in bash block {ran[-1] if ran else '?'}"
                                  f"\n--- stdout\n{stdout[-4000:]}\n--- stderr\n"
                                  f"{stderr[-6000:]}")
    assert len(ran) == len(blocks("bash"))

    # What the guide says the reader sees.
    for shown in ('"greeting": "hello, Ada"',  # logline try, and the execution's output
                  'output {"greeting": "hello, Ada"}',  # logline trace
                  'output {"letters": 5, "greeting": "hello, Grace"}',  # the next version
                  "signed by alice (author)", "ok: 1 exported span(s) verify",
                  '{"entity_type":"execution","status":"complete","output":{"text":"HI"}}',
                  '"status": "complete"', '"source": "throttle.per_tenant_daily_exec_limit"',
                  "1 action(s), each one the policy agent would take",
                  "SANDBOX_RUNTIME_ERROR: line 5: ValueError: no please",
                  "by policy:alert_on_error", "tenant acme: 1000 executions a day from now on"):
        assert shown in stdout, f"{shown!r} not in:\n{stdout}"
    assert "Traceback" not in stderr


# --- logline new and logline try, on their own -------------------------------------------
def logline(*args: str, cwd: Path, check: bool = True) -> Ran:
    """`logline ARGS` in `cwd`, in this process (helpers/cli.py)."""
    proc = run_logline(*args, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_new_writes_code_once_and_versions_the_row(tmp_path, operator):
    from stage0.cli.ledger_cmds import _sign_row
    from stage0.spans.proofs import public_key_hex

    first = scaffold.write("function", "hello", tmp_path, tenant="acme", owner="alice")
    assert first.wrote_code and first.changed
    assert (tmp_path / "hello.py").read_text() == scaffold.template("function", "hello")
    row = json.loads((tmp_path / "hello.ndjson").read_text())
    assert (row["entity_type"], row["name"], row["tenant_id"], row["owner_id"]) == (
        "function", "hello", "acme", "alice")
    assert row["code"] == (tmp_path / "hello.py").read_text() and "seq" not in row

    again = scaffold.write("function", "hello", tmp_path)  # nothing changed
    assert not again.changed and not again.wrote_code and again.row["id"] == row["id"]

    signed, _ = _sign_row(row, operator, public_key_hex(operator))
    (tmp_path / "hello.ndjson").write_text(json.dumps(signed) + "\n")
    (tmp_path / "hello.py").write_text("def main(input):\n    return 2\n")
    nxt = scaffold.write("function", "hello", tmp_path)
    assert nxt.changed and nxt.row["id"] == row["id"]
    assert (nxt.row["seq"], nxt.row["prev_hash"]) == (1, signed["curr_hash"])
    assert "signature" not in nxt.row and "at" not in nxt.row
    assert nxt.row["tenant_id"] == "acme"  # kept from the file


@pytest.mark.parametrize("args,code", [
    (("function", "Hello"), "NEW_BAD_NAME"),
    (("function", "bad-name"), "NEW_BAD_NAME"),
    (("function", "x", "--code", "missing.py"), "ROW_NOT_FOUND"),
    (("policy", "p", "--on", "Execution"), "SPAN_INVALID_KIND"),
])
def test_new_refuses(tmp_path, args, code):
    proc = logline("new", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and code in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_names_code_that_cannot_run_and_a_changed_tenant(tmp_path):
    (tmp_path / "bad.py").write_text("def main(input):\n    return (\n")
    proc = logline("new", "function", "bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "NEW_CODE_INVALID" in proc.stderr and "line" in proc.stderr
    (tmp_path / "nomain.py").write_text("def run(input):\n    return 1\n")
    proc = logline("new", "function", "nomain", cwd=tmp_path, check=False)
    assert "NEW_CODE_INVALID" in proc.stderr and "main" in proc.stderr
    assert not (tmp_path / "bad.ndjson").exists()

    made = logline("new", "function", "mine", "--tenant", "acme", cwd=tmp_path)
    assert made.stdout.strip() == json.loads((tmp_path / "mine.ndjson").read_text())["id"]
    assert "wrote mine.py" in made.stderr and "logline sign mine.ndjson" in made.stderr
    moved = logline("new", "function", "mine", "--tenant", "globex", cwd=tmp_path, check=False)
    assert moved.returncode == 2 and "LEDGER_OWNERSHIP_CHANGE" in moved.stderr


def test_try_runs_in_the_sandbox_and_checks_a_policys_actions(tmp_path):
    (tmp_path / "sneaky.py").write_text("import os\n\ndef main(input):\n    return 1\n")
    refused = logline("try", "sneaky.py", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "SANDBOX_FORBIDDEN" in refused.stderr

    (tmp_path / "forger.py").write_text(
        'ON_ENTITY_TYPES = ["note"]\n\ndef main(span):\n'
        '    return [{"emit_span": {"entity_type": "execution", "this": "fake"}},\n'
        '            {"emit_span": {"entity_type": "note", "this": "ok", "tenant_id": "b"}},\n'
        '            {"emit_span": {"entity_type": "note", "this": "fine"}}, "what"]\n')
    tried = logline("try", "forger.py", "--input", '{"id": "x"}', cwd=tmp_path, check=False)
    assert tried.returncode == 1, tried.stdout + tried.stderr
    assert "REFUSED action 0: emit_span: 'execution' is written by the platform only" in \
        tried.stdout
    assert "REFUSED action 1: emit_span may not set tenant_id" in tried.stdout
    assert "action 2" not in tried.stdout
    assert "REFUSED action 3: not an object" in tried.stdout

    no_span = logline("try", "forger.py", cwd=tmp_path, check=False)
    assert no_span.returncode == 2 and "INPUT_BAD_JSON" in no_span.stderr
