"""`logline provider ...` in a subprocess against a real ledger and the loopback model server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.llm_server import LlmServer


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


def test_add_list_show_test_disable(cli, model_server):
    url = model_server.url
    added = cli("provider", "add", "local", "--kind", "ollama", "--base-url", url,
                "--model", "tiny", "--address", "127.0.0.1", "--tenant", "acme",
                "--limits", '{"daily_token_budget": 1000}')
    assert "added provider local for tenant acme" in added.stdout
    listed = cli("provider", "list", "--tenant", "acme").stdout
    assert "local" in listed and "ollama tiny" in listed
    assert "openai" in listed and "disabled" in listed  # the seeded examples
    shown = json.loads(cli("provider", "show", "local", "--tenant", "acme", "--json").stdout)
    assert shown["limits"]["daily_token_budget"] == 1000
    assert shown["egress"]["addresses"] == ["127.0.0.1"]
    ok = cli("provider", "test", "local", "--tenant", "acme")
    assert ok.stdout.startswith("ok: tiny answered") and "recorded as" in ok.stdout
    assert model_server.requests[-1].path == "/api/chat"
    cli("provider", "disable", "local", "--tenant", "acme")
    failed = cli("provider", "test", "local", "--tenant", "acme", check=False)
    assert failed.returncode == 1 and "PROVIDER_DISABLED" in failed.stdout


def test_a_loopback_provider_without_its_address_is_refused(cli, model_server):
    cli("provider", "add", "sneaky", "--kind", "openai", "--base-url",
        model_server.url + "/v1", "--model", "m")
    failed = cli("provider", "test", "sneaky", check=False)
    assert failed.returncode == 1 and "EGRESS_DENIED" in failed.stdout


@pytest.mark.parametrize("args,code", [
    (["--kind", "gemini"], "PROVIDER_KIND_UNKNOWN"),
    (["--kind", "openai", "--limits", '{"rps": "fast"}'], "PROVIDER_INVALID"),
])
def test_bad_rows_are_refused_with_their_code(cli, args, code):
    proc = cli("provider", "add", "x", "--base-url", "https://a.example/v1", "--model", "m",
               *args, check=False)
    assert proc.returncode == 2 and code in proc.stderr


def secrets_set(home, seeded, name, value):
    """`logline secrets set NAME --tenant system` with the value on stdin (never argv)."""
    env = {**os.environ, "LOGLINE_HOME": str(home.path),
           "LOGLINE_DATABASE_URL": seeded.admin_url}
    proc = subprocess.run([sys.executable, "-m", "stage0.cli", "secrets", "set", name,
                           "--tenant", "system"], input=value, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_provider_that_needs_a_missing_credential(cli, home, seeded, model_server):
    cli("provider", "add", "keyed", "--kind", "openai", "--base-url", model_server.url + "/v1",
        "--model", "m", "--address", "127.0.0.1", "--credential", "nope")
    failed = cli("provider", "test", "keyed", check=False)
    assert failed.returncode == 1 and "MASTER_KEY_MISSING" in failed.stdout  # no vault yet
    secrets_set(home, seeded, "other", "sk-other")
    failed = cli("provider", "test", "keyed", check=False)
    assert failed.returncode == 1 and "CREDENTIAL_MISSING" in failed.stdout
    secrets_set(home, seeded, "nope", "sk-loopback-key")
    assert cli("provider", "test", "keyed").stdout.startswith("ok:")
    assert model_server.requests[-1].headers["authorization"] == "Bearer sk-loopback-key"


def test_logline_boot_provider_exec(cli, model_server):
    cli("provider", "add", "local", "--kind", "anthropic", "--base-url", model_server.url,
        "--model", "tiny", "--address", "127.0.0.1")
    args = {"provider": "local", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "hi"}],
            "params": {"stream": True}}
    out = cli("boot", "00000000-0000-4000-8000-000000000005", "--tenant", "acme",
              "--user", "alice", "--input", json.dumps(args)).stdout
    answer = json.loads(out)
    assert answer["ok"] and answer["text"] == "Hello from the loopback model."
    spans = [json.loads(line) for line in cli("spans", "--entity-type", "provider_execution",
                                              "--json").stdout.splitlines()]
    assert [(s["tenant_id"], s["owner_id"], s["status"]) for s in spans] == \
        [("acme", "alice", "complete")]


def test_transcripts_on_keep_the_prompt_and_answer_for_the_tenant(cli, model_server):
    cli("provider", "add", "kept", "--kind", "openai", "--base-url",
        model_server.url + "/v1", "--model", "tiny", "--address", "127.0.0.1")
    assert "hashes and lengths only" in cli("provider", "transcripts", "show",
                                            "--tenant", "acme").stdout
    assert "keeps the prompts and answers" in cli("provider", "transcripts", "on",
                                                  "--tenant", "acme").stdout
    tested = cli("provider", "test", "kept", "--tenant", "acme").stdout
    execution = tested.rsplit("recorded as ", 1)[1].strip().rstrip(")")
    shown = json.loads(cli("provider", "transcript", execution, "--tenant", "acme",
                           "--json").stdout)
    assert shown["input"][0]["content"] == "Reply with the single word: pong"
    assert shown["output"] == "Hello from the loopback model."
    other = cli("provider", "transcript", execution, "--tenant", "globex", check=False)
    assert other.returncode != 0 and "TRANSCRIPT_NOT_FOUND" in other.stderr
    cli("provider", "transcripts", "off", "--tenant", "acme")
    later = cli("provider", "test", "kept", "--tenant", "acme").stdout
    execution = later.rsplit("recorded as ", 1)[1].strip().rstrip(")")
    none = cli("provider", "transcript", execution, "--tenant", "acme", check=False)
    assert none.returncode != 0 and "TRANSCRIPT_NOT_FOUND" in none.stderr
