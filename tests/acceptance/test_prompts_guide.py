"""docs/prompts.md's walkthrough works as written: every ```bash block of its "Walkthrough"
section runs, in order, in one shell, in an empty directory, against a fresh home and an
empty migrated database (the guide's own `logline init` seeds it), with the real CLI and a
loopback model server (tests/helpers/llm_server.py) at $MODEL_URL answering in the output
contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from helpers.llm_server import LlmServer
from helpers.prompts import contract

GUIDE = REPO / "docs" / "prompts.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
MARK = "::block::"


def walkthrough() -> list[str]:
    text = GUIDE.read_text()
    start = text.index("## Walkthrough")
    end = text.index("\n## ", start + 1)
    return [body for lang, body in FENCE.findall(text[start:end]) if lang == "bash"]


def test_the_walkthrough_has_its_steps():
    blocks = walkthrough()
    assert len(blocks) >= 6
    joined = "".join(blocks)
    for command in ("logline prompt build", "logline prompt run", "logline prompt eval",
                    "logline prompt select", "logline provider add", "logline seed"):
        assert command in joined


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_walkthrough_runs_as_written(database, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    parts = ["set -euo pipefail"]
    for number, body in enumerate(walkthrough(), start=1):
        parts.append(f"echo '{MARK} {number}' >&2")
        parts.append(body)
    with LlmServer() as model:
        model.answer = contract("Your parcel left our depot today.", 0.9)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLINE_")}
        env.update(LOGLINE_HOME=str(tmp_path / "home"), LOGLINE_DATABASE_URL=database.admin_url,
                   MODEL_URL=model.url,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        proc = subprocess.run(["bash", "-c", "\n".join(parts) + "\n"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=280)
        sent = [r.body["messages"] for r in model.requests]
    ran = [line for line in proc.stderr.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0, (f"the walkthrough failed in bash block "
                                  f"{ran[-1] if ran else '?'}\n--- stdout\n"
                                  f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    assert len(ran) == len(walkthrough())
    out = proc.stdout
    for shown in ("PROMPT_VARIABLE_MISSING",  # the first build, refused
                  "You answer for Acme support. Never promise a refund.\n\nAnswer with one",
                  "-- compiled_hash ", "Your parcel left our depot today.",
                  "-- prompt_run ", "pass parcel (happy)", "pass no-tools (tool_unavailable)",
                  "-- 2/2 passed", "-- chose 5a5a0000-0000-4000-8000-000000000010 for support",
                  "prompt_eval_result"):
        assert shown in out + proc.stderr, f"{shown!r} not in:\n{out}\n{proc.stderr}"
    assert all(messages[0]["role"] == "system" and "Where is my parcel" not in
               messages[0]["content"] for messages in sent)
    assert "Traceback" not in proc.stderr
