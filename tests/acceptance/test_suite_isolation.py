"""Two test runs on one machine do not share temporary files (tests/conftest.py): each run
works under /tmp/logline-tests-<its pid> and removes it when it ends; a run's xdist workers
share its root and one PostgreSQL, which the run stops when its last worker has left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from helpers.run import run_root

PROBE = '''
import os, time

def test_where(tmp_path_factory, tmp_path):
    (tmp_path / "mine").write_text(str(os.getpid()))
    print("ROOT", tmp_path_factory.getbasetemp(), "PID", os.getpid())
    time.sleep(1.5)  # the other run starts, and would prune or clear a shared root now
    assert (tmp_path / "mine").read_text() == str(os.getpid())
'''


def _start(probe: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    env.pop("LOGLINE_KEEP_TEST_TMP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "conftest",
         "--rootdir", str(probe.parent), str(probe)],
        env=env, cwd=probe.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_runs_at_once_each_get_their_own_root_and_remove_it(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    runs = [_start(probe), _start(probe)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    roots = []
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        [line] = [ln for ln in output.splitlines() if ln.startswith("ROOT ")]
        root, pid = Path(line.split()[1]), int(line.split()[3])
        assert root == run_root(pid)
        assert not root.exists(), "a run's root outlives it"
        roots.append(root)
    assert roots[0] != roots[1]


def test_an_explicit_basetemp_is_kept(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE.replace("time.sleep(1.5)", "pass"))
    chosen = tmp_path / "chosen"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "conftest",
         "--rootdir", str(tmp_path), f"--basetemp={chosen}", str(probe)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ROOT {chosen} " in proc.stdout
    assert chosen.is_dir()  # the caller chose it: theirs to keep or remove


XDIST_PROBE = '''
import os, pathlib, pytest

@pytest.mark.parametrize("n", range(4))
def test_note(n, run_dir, server, tmp_path_factory):
    out = pathlib.Path(os.environ["PROBE_OUT"]) / f"{n}"
    out.write_text(f"{run_dir} {tmp_path_factory.getbasetemp()} {server.admin_url}")
'''


def test_a_runs_workers_share_its_root_and_one_server_which_it_stops(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(XDIST_PROBE)
    notes = tmp_path / "notes"
    notes.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PROBE_OUT": str(notes),
           "LOGLINE_KEEP_TEST_TMP": "1"}  # kept, to look at the server it leaves behind
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
         "-n", "2", "--rootdir", str(tmp_path), str(probe)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=300)[0]
    root = run_root(proc.pid)
    try:
        assert proc.returncode == 0, output
        seen = [(notes / f"{n}").read_text().split() for n in range(4)]
        assert {s[0] for s in seen} == {str(root)}  # one root for the run
        assert all(Path(s[1]).parent == root and Path(s[1]).name.startswith("popen-gw")
                   for s in seen)  # each worker's own basetemp under it
        assert len({s[2] for s in seen}) == 1  # one server for every worker
        if not os.environ.get("LOGLINE_DATABASE_URL"):
            assert (root / "pg" / "pgdata" / "PG_VERSION").is_file()
            assert not (root / "pg" / "pgdata" / "postmaster.pid").exists()  # stopped
    finally:
        shutil.rmtree(root, ignore_errors=True)
