"""The agent's journal: a job runs at most once, even across a SIGKILL; results wait for acks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from stage0.agent.fsops import TRASH_DIR, Root
from stage0.agent.journal import Journal
from stage0.errors import LoglineError


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def code_of(fn, *args) -> str:
    with pytest.raises(LoglineError) as info:
        fn(*args)
    return info.value.code


CRASHING_AGENT = textwrap.dedent("""
    import os, signal, sys
    from stage0.agent.fsops import Root
    from stage0.agent.journal import Journal

    root, journal = Root(sys.argv[1]), Journal(sys.argv[2])
    ops = root.plan("delete", {"paths": ["a.txt", "b.txt"]})
    assert journal.begin("job-1", {"action": "delete", "ops": ops})

    def on_op(index, result):
        journal.op_done("job-1", index, result)
        os.kill(os.getpid(), signal.SIGKILL)  # the agent dies right after the first op

    root.execute(ops, on_op=on_op)
    journal.finish("job-1", "done", {"never": "reached"})
""")


def test_a_job_killed_midway_is_never_run_again_and_its_files_are_restorable(tmp_path):
    rootdir, state = tmp_path / "root", tmp_path / "state"
    rootdir.mkdir()
    (rootdir / "a.txt").write_bytes(b"first file")
    (rootdir / "b.txt").write_bytes(b"second file")
    script = tmp_path / "agent.py"
    script.write_text(CRASHING_AGENT)
    proc = subprocess.run([sys.executable, str(script), str(rootdir), str(state)], env=env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    journal = Journal(state)  # the restarted agent
    assert journal.interrupted() == ["job-1"]
    assert journal.begin("job-1", {"action": "delete"}) is False  # never run twice
    assert journal.status()["interrupted"] == 1
    assert not (rootdir / "a.txt").exists()
    assert (rootdir / "b.txt").read_bytes() == b"second file"  # the second op never ran

    result = journal.close_interrupted("job-1", {"note": "agent restarted"})
    assert result["note"] == "agent restarted"
    assert [(op["path"], op["status"]) for op in result["ops_done"]] == [("a.txt", "done")]
    assert result["ops_done"][0]["to"].startswith(f"{TRASH_DIR}/")
    assert journal.interrupted() == []
    assert journal.unacked() == [("job-1", "interrupted", result)]
    assert Journal(state).begin("job-1", {}) is False

    with Root(rootdir) as root:
        (restored,) = root.restore(["a.txt"])
    assert restored["status"] == "done"
    assert (rootdir / "a.txt").read_bytes() == b"first file"

    journal.ack("job-1")
    assert Journal(state).unacked() == []


def test_begin_is_once_per_job_id_forever(tmp_path):
    j = Journal(tmp_path)
    assert j.begin("j1", {"action": "list_files"}) is True
    assert j.begin("j1", {"action": "list_files"}) is False
    j.finish("j1", "done", {"files": []})
    j.ack("j1")
    assert j.begin("j1", {}) is False
    assert Journal(tmp_path).begin("j1", {}) is False
    assert Journal(tmp_path).job("j1")["job"] == {"action": "list_files"}


def test_results_are_kept_until_acknowledged_across_restarts(tmp_path):
    j = Journal(tmp_path)
    for job_id, status in [("j1", "done"), ("j2", "failed"), ("j3", "done")]:
        j.begin(job_id, {})
        j.op_done(job_id, 0, {"status": "done"})
        j.finish(job_id, status, {"id": job_id})
    j.begin("j4", {})  # running (or crashed): not a result yet
    j.ack("j2")
    j.ack("j2")  # idempotent
    again = Journal(tmp_path)
    assert again.unacked() == [("j1", "done", {"id": "j1"}), ("j3", "done", {"id": "j3"})]
    assert again.status() == {"begun": 4, "finished": 3, "unacked": 2, "interrupted": 1,
                              "last_begun": "j4", "last_finished": "j3"}
    assert again.job("j1")["ops"] == [{"status": "done"}]


def test_misuse_is_refused_with_codes(tmp_path):
    j = Journal(tmp_path)
    assert code_of(j.op_done, "nope", 0, {}) == "J_NOT_RUNNING"
    assert code_of(j.finish, "nope", "done", {}) == "J_NOT_RUNNING"
    assert code_of(j.ack, "nope") == "J_UNKNOWN_JOB"
    assert code_of(j.begin, "", {}) == "J_BAD_ARGS"
    j.begin("j1", {})
    assert code_of(j.ack, "j1") == "J_NOT_FINISHED"
    assert code_of(j.finish, "j1", "interrupted", {}) == "J_BAD_STATUS"
    assert code_of(j.op_done, "j1", -1, {}) == "J_BAD_ARGS"
    j.finish("j1", "done", {})
    assert code_of(j.finish, "j1", "failed", {}) == "J_NOT_RUNNING"
    assert code_of(j.op_done, "j1", 1, {}) == "J_NOT_RUNNING"
    assert code_of(j.close_interrupted, "j1") == "J_NOT_RUNNING"
    assert j.unacked() == [("j1", "done", {})]


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path):
    j = Journal(tmp_path)
    j.begin("j1", {})
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"t":"begin","job":"j2","at":"2026-01-')  # the crash hit mid-write
    again = Journal(tmp_path)
    assert again.interrupted() == ["j1"]
    assert again.begin("j2", {}) is True  # j2 was never begun: begin() had not returned
    lines = (tmp_path / "journal.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["job"] for line in lines] == ["j1", "j2"]
    assert Journal(tmp_path).interrupted() == ["j1", "j2"]


def test_a_damaged_line_in_the_middle_is_refused(tmp_path):
    j = Journal(tmp_path)
    j.begin("j1", {})
    j.begin("j2", {})
    path = tmp_path / "journal.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0][:10] + b"\n" + lines[1])
    with pytest.raises(LoglineError) as info:
        Journal(tmp_path)
    assert info.value.code == "J_CORRUPT" and info.value.where == f"{path}:1"


RACER = textwrap.dedent("""
    import sys
    from stage0.agent.journal import Journal
    j = Journal(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # all racers start together
    print(" ".join(f"j{i}" for i in range(100) if j.begin(f"j{i}", {"by": sys.argv[2]})))
""")


def test_agents_sharing_a_state_dir_never_begin_the_same_job(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    state = tmp_path / "state"
    procs = [subprocess.Popen([sys.executable, str(script), str(state), str(n)], env=env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in range(4)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    won = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    everything = [job for jobs in won for job in jobs]
    assert sorted(everything) == sorted(f"j{i}" for i in range(100))  # each exactly once
    assert Journal(state).status()["begun"] == 100
