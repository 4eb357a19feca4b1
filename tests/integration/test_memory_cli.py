"""`logline memory` (stage0/cli/memory_cmds.py): add, get, search, forget, export, reindex,
status and expire through the CLI, in-process, against the test's ledger. Another user or
tenant finds nothing; forgetting and exporting do what they say."""

from __future__ import annotations

import json
import stat

import pytest
from helpers.vault import assert_nowhere, database_text

from stage0.vault import master as masters

TEXT = "Ana's locker code is 7719 and she parks on level three"


@pytest.fixture
def memcli(cli, monkeypatch):
    monkeypatch.delenv(masters.ENV, raising=False)

    def run(*args: str, code: int = 0):
        ran = cli("memory", *args, check=False)
        assert ran.returncode == code, f"{args}: {ran.returncode}\n{ran.stdout}{ran.stderr}"
        assert "Traceback" not in ran.stderr
        return ran

    return run


ANA = ("--tenant", "acme", "--user", "ana")


def test_add_search_get_forget_through_the_cli(memcli, kernel_conn, home):
    added = json.loads(memcli("add", TEXT, *ANA, "--tag", "parking", "--json").stdout)
    # the first non-public memory of a ledger made the master key, as `secrets set` does
    assert stat.S_IMODE(masters.path(home).stat().st_mode) == 0o600
    found = json.loads(memcli("search", "locker code", *ANA, "--json").stdout)
    assert [h["span_id"] for h in found["hits"]] == [added["span_id"]]
    assert found["hits"][0]["preview"] == TEXT
    for who in (("--tenant", "acme", "--user", "bo"), ("--tenant", "globex", "--user", "ana")):
        assert memcli("search", "locker code", *who).stdout.splitlines()[-1] == \
            "no memories found"
        assert "MEMORY_NOT_FOUND" in memcli("get", added["span_id"], *who, code=2).stderr
    shown = json.loads(memcli("get", added["span_id"], *ANA).stdout)
    assert shown["text"] == TEXT and shown["tags"] == ["parking"]
    assert_nowhere(database_text(kernel_conn), "locker")
    done = memcli("forget", "last", *ANA).stdout
    assert "forgot 1 memory of ana in acme" in done
    assert "MEMORY_FORGOTTEN" in memcli("get", added["span_id"], *ANA, code=2).stderr
    assert memcli("search", "locker code", *ANA).stdout.splitlines()[-1] == "no memories found"


def test_a_bad_field_is_named(memcli):
    ran = memcli("add", "x", *ANA, "--layer", "session", code=2)
    assert "MEMORY_INVALID" in ran.stderr and "memories[0].session_id" in ran.stderr


def test_export_writes_a_private_bundle(memcli, tmp_path):
    memcli("add", "export this one", *ANA)
    memcli("add", "public fact", *ANA, "--sensitivity", "public")
    target = tmp_path / "ana.json"
    memcli("export", *ANA, "--out", str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    bundle = json.loads(target.read_text())
    assert [m["text"] for m in bundle["memories"]] == ["export this one", "public fact"]
    assert all(len(m["curr_hash"]) == 64 for m in bundle["memories"])
    assert "KEY_EXISTS" in memcli("export", *ANA, "--out", str(target), code=2).stderr


def test_status_and_reindex_say_what_search_uses(memcli, has_pgvector):
    memcli("add", "reindex me", *ANA)
    status = json.loads(memcli("status", "--tenant", "acme", "--json").stdout)
    assert status["indexed"] == 1 and status["keys"] == 1
    assert status["mode"] == ("text+vector" if has_pgvector else "text")
    if not has_pgvector:
        assert "no pgvector" in memcli("status").stdout
    assert "indexed 1 memories" in memcli("reindex").stdout
    assert "expired 0 memories" in memcli("expire").stdout


def test_promote_goes_through_the_same_review_as_the_api(memcli):
    added = json.loads(memcli("add", "the badge reader resets at six", *ANA, "--ttl-s",
                              "3600", "--json").stdout)
    span = added["span_id"]
    asked = json.loads(memcli("promote", span, *ANA, "--json").stdout)
    assert (asked["status"], asked["reason"]) == ("pending", "G_APPROVAL_REQUIRED")
    # only the owner asks; the owner never answers their own request
    assert "MEMORY_NOT_FOUND" in memcli("promote", span, "--tenant", "acme", "--user", "bo",
                                        code=2).stderr
    assert "G_SOD_VIOLATION" in memcli("promote", span, *ANA, "--approve", code=2).stderr
    assert "MEMORY_NOT_FOUND" in memcli("promote", span, "--tenant", "globex", "--user",
                                        "pat", "--approve", code=2).stderr
    assert json.loads(memcli("get", span, *ANA).stdout)["layer"] == "temporary"
    done = memcli("promote", span, "--tenant", "acme", "--user", "pat", "--approve").stdout
    assert "approved (G_APPROVED, 1/1 approvals)" in done and "permanent now" in done
    shown = json.loads(memcli("get", span, *ANA).stdout)
    assert (shown["layer"], shown["ttl_at"]) == ("permanent", None)
    assert "MEMORY_INVALID" in memcli("promote", span, *ANA, code=2).stderr


def test_a_rejected_promotion_through_the_cli_changes_nothing(memcli):
    span = json.loads(memcli("add", "spot B12 for today", *ANA, "--json").stdout)["span_id"]
    memcli("promote", span, *ANA)
    assert "rejected (G_REJECTED" in memcli("promote", span, "--tenant", "acme", "--user",
                                            "boss", "--reject").stdout
    assert json.loads(memcli("get", span, *ANA).stdout)["layer"] != "permanent"


def test_the_embedder_setting_is_shown_and_set(memcli):
    assert "memory embeds with wordllama" in memcli("embedder", "show", "--tenant",
                                                    "acme").stdout
    ran = memcli("embedder", "set", "nowhere", "--tenant", "acme", code=2)
    assert "MEMORY_INVALID" in ran.stderr and "no provider named nowhere" in ran.stderr
    assert "MEMORY_INVALID" in memcli("embedder", "set", "--tenant", "acme", code=2).stderr
    memcli("embedder", "set", "wordllama", "--tenant", "acme")
    assert "wordllama" in memcli("embedder", "show", "--tenant", "acme").stdout
