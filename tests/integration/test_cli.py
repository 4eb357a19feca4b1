"""The `logline` CLI as a user meets it (issue 2, items 5 and 7) on a real ledger: keys,
trust, sign, seed, error messages, show and trace. The commands run in this process (the `cli`
fixture, helpers/cli.py). (Without a ledger: tests/unit/test_cli_without_a_ledger.py; as its
own process: tests/acceptance/test_cli_process.py.)"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import DB_ENV, logline
from helpers.ledger import count_spans, read_rows, write_rows

from stage0.ledger import store
from stage0.spans.canonical import normalise
from stage0.spans.proofs import check_proofs, public_key_hex


def row(**fields: Any) -> dict[str, Any]:
    base = {"id": str(uuid.uuid4()), "entity_type": "policy_draft", "who": "alice",
            "did": "wrote", "this": "a policy", "owner_id": "alice", "tenant_id": "acme"}
    base.update(fields)
    return base


def manifest(cli) -> dict[str, Any]:
    [span] = [json.loads(x) for x in cli("spans", "--entity-type", "manifest", "--json")
              .stdout.splitlines()]
    return span


# --- keys ---------------------------------------------------------------------------------


def test_keys_show_prints_the_public_key(cli, operator):
    assert cli("keys", "show").stdout.strip() == public_key_hex(operator)


def test_keys_gen_out_makes_an_author_key(cli, home, tmp_path):
    operator_before = home.operator_key.read_bytes()
    path = tmp_path / "author.key"
    proc = cli("keys", "gen", "--out", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() not in proc.stdout + proc.stderr
    public = cli("keys", "show", "--key", str(path)).stdout.strip()
    assert len(public) == 64 and public in proc.stdout
    assert public != cli("keys", "show").stdout.strip()
    assert home.operator_key.read_bytes() == operator_before


def test_keys_gen_out_refuses_an_existing_file(cli, tmp_path):
    path = tmp_path / "taken.key"
    path.write_text("precious\n")
    proc = cli("keys", "gen", "--out", str(path), check=False)
    assert proc.returncode == 2 and "KEY_EXISTS" in proc.stderr
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize("command", [("keys", "show", "--key", "{key}"),
                                     ("sign", "{rows}", "--key", "{key}"),
                                     ("seed", "{rows}")])
def test_a_key_file_readable_by_others_is_refused(cli, home, seeded, tmp_path, command):
    rows = write_rows(tmp_path / "r.ndjson", [row()])
    key = tmp_path / "author.key"
    cli("keys", "gen", "--out", str(key))
    if command[0] == "seed":
        key = home.operator_key  # seed signs with the operator key
    key.chmod(0o644)
    before_rows, before_count = rows.read_bytes(), count_spans(seeded)
    proc = cli(*(a.format(key=key, rows=rows) for a in command), check=False)
    assert proc.returncode == 2
    assert "KEY_PERMISSIONS" in proc.stderr and str(key) in proc.stderr
    assert rows.read_bytes() == before_rows
    assert count_spans(seeded) == before_count


def test_a_missing_key_file_is_named(cli, tmp_path):
    proc = cli("sign", str(write_rows(tmp_path / "r.ndjson", [row()])), "--key",
               str(tmp_path / "nope.key"), check=False)
    assert proc.returncode == 2
    assert "KEY_NOT_FOUND" in proc.stderr and "nope.key" in proc.stderr


# --- trust --------------------------------------------------------------------------------


@pytest.fixture
def author(cli, tmp_path) -> tuple[Path, str]:
    """alice's key file and public key (not trusted yet)."""
    path = tmp_path / "alice.key"
    cli("keys", "gen", "--out", str(path))
    return path, cli("keys", "show", "--key", str(path)).stdout.strip()


@pytest.fixture
def authored(cli, author, tmp_path) -> Path:
    """An NDJSON file of two rows signed by alice with `logline sign --key`."""
    path = write_rows(tmp_path / "alice.ndjson", [row(), row(this="another policy")])
    out = cli("sign", str(path), "--key", str(author[0])).stdout
    assert "2 signed" in out
    return path


def test_seed_refuses_rows_signed_by_an_untrusted_key(cli, seeded, author, authored):
    before = count_spans(seeded)
    proc = cli("seed", str(authored), check=False)
    assert proc.returncode == 2
    assert "KEY_UNTRUSTED" in proc.stderr
    assert author[1] in proc.stderr
    assert str(authored) in proc.stderr
    assert count_spans(seeded) == before


def test_trusting_the_author_key_lets_its_rows_seed(cli, seeded, author, authored):
    proc = cli("keys", "trust", author[1], "--name", "alice")
    assert "manifest seq 1" in proc.stdout
    span = manifest(cli)
    assert span["seq"] == 1
    assert {"name": "alice", "public_key": author[1], "role": "author"} in \
        span["metadata"]["trusted_keys"]
    assert span["metadata"]["kernels"]  # the rest of the manifest is carried over

    assert "2 appended" in cli("seed", str(authored)).stdout
    before = count_spans(seeded)
    assert "0 appended, 2 unchanged" in cli("seed", str(authored)).stdout
    assert count_spans(seeded) == before
    with seeded.connect("kernel") as conn:
        for r in read_rows(authored):
            assert store.head(conn, r["id"]) == normalise(r)  # stored exactly as signed
    assert cli("verify").returncode == 0


def test_reseeding_row_keeps_the_author_trusted(cli, author, authored):
    cli("keys", "trust", author[1], "--name", "alice")
    out = cli("seed").stdout
    assert "manifest.ndjson: 0 appended" in out
    span = manifest(cli)
    assert span["seq"] == 1
    assert author[1] in [e["public_key"] for e in span["metadata"]["trusted_keys"]]
    assert "2 appended" in cli("seed", str(authored)).stdout


def test_untrusting_the_author_makes_verify_name_its_spans(cli, author, authored):
    cli("keys", "trust", author[1], "--name", "alice")
    cli("seed", str(authored))
    assert "manifest seq 2" in cli("keys", "untrust", author[1]).stdout
    assert author[1] not in json.dumps(manifest(cli)["metadata"])

    proc = cli("verify", check=False)
    assert proc.returncode == 1
    for r in read_rows(authored):
        assert f"FAIL {r['id']} seq 0 KEY_UNTRUSTED" in proc.stdout
    report = json.loads(cli("verify", "--json", check=False).stdout)
    assert not report["ok"]
    assert {(f["id"], f["reason"]) for f in report["failures"]} == {
        (r["id"], "KEY_UNTRUSTED") for r in read_rows(authored)}


@pytest.mark.parametrize("args,code", [
    (("trust", "not-a-key", "--name", "x"), "KEY_INVALID"),
    (("trust", "ab" * 33, "--name", "x"), "KEY_INVALID"),
    (("untrust", "ab" * 32), "KEY_NOT_TRUSTED"),
    (("trust", "{root}", "--name", "me"), "KEY_IS_ROOT"),
    (("untrust", "{root}"), "KEY_IS_ROOT"),
])
def test_trust_refusals(cli, seeded, operator, args, code):
    before = count_spans(seeded)
    proc = cli("keys", *(a.format(root=public_key_hex(operator)) for a in args), check=False)
    assert proc.returncode == 2 and code in proc.stderr
    assert count_spans(seeded) == before


# --- sign ---------------------------------------------------------------------------------


def test_sign_signs_rows_in_place_in_normal_form(cli, operator, tmp_path):
    raw = [row(id=str(uuid.uuid4()).upper(), at="2025-03-01T10:00:00.123456+01:00",
               metadata={"b": 1, "a": [1.5, "x"]}),
           row()]  # no `at`: signing stamps one
    path = write_rows(tmp_path / "r.ndjson", raw)
    out = cli("sign", str(path)).stdout
    assert f"{path}: 2 signed, 0 already signed" in out
    signed = read_rows(path)
    for before, after in zip(raw, signed, strict=True):
        assert after["public_key"] == public_key_hex(operator)
        assert len(after["curr_hash"]) == 64 and len(after["signature"]) == 128
        assert check_proofs(normalise(after)).ok
        assert after == {k: v for k, v in normalise(after).items() if v is not None}
        assert after["id"] == before["id"].lower()
        assert (after["seq"], after["visibility"], after["is_deleted"]) == (0, "private", False)
    assert signed[0]["at"] == "2025-03-01T09:00:00.123Z"
    assert signed[1]["at"].endswith("Z") and len(signed[1]["at"]) == 24


def test_sign_twice_leaves_the_file_byte_identical(cli, tmp_path):
    path = write_rows(tmp_path / "r.ndjson", [row(), row(this="ünïcødé 😀")])
    cli("sign", str(path))
    once = path.read_bytes()
    out = cli("sign", str(path)).stdout
    assert "0 signed, 2 already signed" in out
    assert path.read_bytes() == once


def test_sign_resigns_an_edited_row(cli, tmp_path):
    path = write_rows(tmp_path / "r.ndjson", [row(), row()])
    cli("sign", str(path))
    first, second = read_rows(path)
    second_edited = {**second, "this": "edited by hand"}
    write_rows(path, [first, second_edited])
    out = cli("sign", str(path)).stdout
    assert "1 signed, 1 already signed" in out
    again_first, again_second = read_rows(path)
    assert again_first == first
    assert again_second["this"] == "edited by hand"
    assert again_second["curr_hash"] != second["curr_hash"]
    assert again_second["at"] == second["at"]
    assert check_proofs(normalise(again_second)).ok


def test_sign_refuses_a_bad_row_and_leaves_the_file_untouched(cli, tmp_path):
    path = tmp_path / "r.ndjson"
    path.write_text(json.dumps(row()) + "\n" + json.dumps(row(visibility="world")) + "\n")
    before = path.read_bytes()
    proc = cli("sign", str(path), check=False)
    assert proc.returncode == 2
    assert f"{path}:2: visibility: SPAN_INVALID_VISIBILITY" in proc.stderr
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_rows_signed_by_the_operator_seed_exactly_as_signed(cli, seeded, tmp_path):
    path = write_rows(tmp_path / "r.ndjson", [row()])
    cli("sign", str(path))
    [signed] = read_rows(path)
    assert "1 appended" in cli("seed", str(path)).stdout
    with seeded.connect("kernel") as conn:
        assert store.head(conn, signed["id"]) == normalise(signed)


# --- error messages -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["seed", "sign"])
def test_a_missing_row_file_is_named(cli, tmp_path, command):
    missing = tmp_path / "nope.ndjson"
    proc = cli(command, str(missing), check=False)
    assert proc.returncode == 2
    assert f"{missing}: ROW_NOT_FOUND" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [("spans",), ("verify",), ("seed",)])
def test_a_database_that_was_never_migrated_says_run_init(home, empty_database, command):
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env.update(LOGLINE_HOME=str(home.path), LOGLINE_DATABASE_URL=empty_database.admin_url)
    proc = logline(*command, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "NOT_INITIALISED" in proc.stderr and "logline init" in proc.stderr
    assert "Traceback" not in proc.stderr


ANY_ID = "3f2b8f9e-1c4d-4e5f-8a6b-7c8d9e0f1a2b"


@pytest.mark.parametrize("given", ["fibonacci", "42", "3f2b8f9e-1c4d"])
def test_boot_of_something_that_is_not_an_id_says_so(cli, seeded, given):
    before = count_spans(seeded)
    proc = cli("boot", given, check=False)
    assert proc.returncode == 2
    assert "BAD_ID" in proc.stderr and f"{given!r} is not a span id" in proc.stderr
    assert "logline schedule ID" in proc.stderr
    assert "parent_id" not in proc.stderr
    assert count_spans(seeded) == before  # nothing to record a refusal against


def test_boot_of_a_function_says_to_schedule_it(cli, tmp_path):
    path = write_rows(tmp_path / "f.ndjson", [row(entity_type="function", code="def main(i):\n"
                                                  "    return 1\n")])
    cli("seed", str(path))
    proc = cli("boot", read_rows(path)[0]["id"], check=False)
    assert proc.returncode == 2
    assert "BOOT_NOT_ALLOWED" in proc.stderr and "logline schedule ID" in proc.stderr


def test_schedule_of_a_function_without_owner_names_what_to_pass(cli, seeded, tmp_path):
    fn = row(entity_type="function", code="def main(i):\n    return 1\n")
    del fn["owner_id"]
    cli("seed", str(write_rows(tmp_path / "f.ndjson", [fn])))
    proc = cli("schedule", fn["id"], check=False)
    assert proc.returncode == 2
    assert "REQUESTER_REQUIRED" in proc.stderr and "no owner_id" in proc.stderr
    assert "--user USER" in proc.stderr and "SPAN_MISSING_FIELD" not in proc.stderr
    request_id = cli("schedule", fn["id"], "--user", "alice").stdout.strip()
    with seeded.connect("kernel") as conn:
        request = store.head(conn, request_id)
    assert (request["owner_id"], request["tenant_id"], request["status"]) == \
        ("alice", "acme", "scheduled")


# --- show and trace -----------------------------------------------------------------------


def test_show_gives_versions_signers_and_verification(cli, seeded, author, authored):
    cli("keys", "trust", author[1], "--name", "alice")
    cli("seed", str(authored))
    [first, _] = read_rows(authored)
    shown = cli("show", first["id"]).stdout
    assert f"policy_draft {first['id']}" in shown
    assert "signed by alice (author)" in shown
    assert "verified: hash, signature, trusted signer and chain of 1 version(s)" in shown
    described = json.loads(cli("show", first["id"], "--json").stdout)
    assert described["span"]["id"] == first["id"]
    assert [(v["seq"], v["signer"], v["role"], v["ok"]) for v in described["versions"]] == [
        (0, "alice", "author", True)]

    cli("keys", "untrust", author[1])
    refused = cli("show", first["id"], check=False)
    assert refused.returncode == 1
    assert "FAIL seq 0: KEY_UNTRUSTED" in refused.stdout

    missing = cli("show", ANY_ID, check=False)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    assert "BAD_ID" in cli("show", "hello", check=False).stderr


def test_trace_is_a_tree_from_request_to_execution_to_policy_output(cli, seeded, tmp_path):
    fn = row(entity_type="function", code="def main(input):\n    return {'twice': "
             "input['n'] * 2}\n", name="twice")
    cli("seed", str(write_rows(tmp_path / "f.ndjson", [fn])))
    request = cli("schedule", fn["id"], "--input", '{"n": 21}').stdout.strip()
    cli("worker", "--once")
    tree = json.loads(cli("trace", request, "--json").stdout)
    [root] = tree["roots"]
    assert (root["entity_type"], root["id"], root["statuses"]) == (
        "request", request, ["scheduled", "complete"])
    assert root["took_ms"] >= 0
    [execution] = root["children"]
    assert execution["entity_type"] == "execution" and execution["output"] == {"twice": 42}
    assert execution["duration_ms"] is not None and execution["after_ms"] >= 0
    policy_kinds = {c["entity_type"] for c in execution["children"]}
    assert "metric" in policy_kinds  # metrics_exec_duration's output, under the execution
    assert all(c["owner_id"].startswith("policy:") for c in execution["children"])
    # The same tree from any span of the trace, or from the trace id.
    assert json.loads(cli("trace", execution["id"], "--json").stdout) == tree
    assert json.loads(cli("trace", tree["trace_id"], "--json").stdout) == tree

    text = cli("trace", request).stdout
    assert text.startswith(f"trace {tree['trace_id']}")
    assert "└── request " in text and "scheduled -> complete" in text
    assert '    └── execution ' in text and 'output {"twice": 42}' in text
    assert "by policy:metrics_exec_duration" in text
    nothing = cli("trace", "no-such-trace", check=False)
    assert nothing.returncode == 2 and "NOT_FOUND" in nothing.stderr
