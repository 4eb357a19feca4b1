"""`logline up`: one command serves the API, the console and a worker on the embedded
database, prints the URL and an operator key, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_for
from helpers.cli import DB_ENV, logline
from helpers.run import reachable_by_postgres

FUNCTION = "def main(input):\n    return {'doubled': input['n'] * 2}\n"


@pytest.mark.slow
def test_up_serves_console_api_and_worker_then_stops_on_ctrl_c(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env["LOGLINE_HOME"] = str(reachable_by_postgres(tmp_path) / "home")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stage0.cli", "up", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        def key_line():
            line = proc.stdout.readline()
            lines.append(line)
            return line.strip() if line.startswith("llk_") else None

        token = wait_for(key_line, 60, "the operator key line")
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ok(f"{base}/healthz"), 30, "the API")
        auth = {"Authorization": f"Bearer {token}"}
        assert "<html" in httpx.get(base + "/").text.lower()
        created = httpx.post(base + "/api/spans", headers=auth, json={
            "entity_type": "function", "who": "operator", "this": "double",
            "name": "double", "code": FUNCTION, "status": "active", "visibility": "tenant"})
        assert created.status_code == 201, created.text
        run = httpx.post(base + "/api/execute", headers=auth,
                         json={"span_id": created.json()["id"], "input": {"n": 21}})
        assert run.status_code == 202, run.text

        def executed():
            page = httpx.get(base + "/api/spans", headers=auth,
                             params={"entity_type": "execution"}).json()["items"]
            return page[0] if page else None

        execution = wait_for(executed, 30, "the worker to execute the request")
        assert execution["status"] == "complete" and execution["output"] == {"doubled": 42}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=40)
        finally:
            logline("db", "stop", env=env, timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert '"action": "worker_stopped"' in err


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_up_on_a_taken_port_says_so_and_announces_nothing(tmp_path: Path):
    """`up` binds before it announces: with the port taken it names the problem and the way
    out, starts no worker, and never prints a URL that is someone else's server."""
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env["LOGLINE_HOME"] = str(reachable_by_postgres(tmp_path) / "home")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        try:
            proc = logline("up", "--port", str(port), env=env, cwd=tmp_path)
        finally:  # up's init started the home's embedded server: not left running
            logline("db", "stop", env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PORT_IN_USE" in proc.stderr and "--port" in proc.stderr
    assert "LogLine is up" not in proc.stdout
    assert "worker pid" not in proc.stdout
