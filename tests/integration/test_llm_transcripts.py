"""Opt-in transcripts (stage0/llm/transcripts.py) on a real ledger with the real vault: off by
default (hashes and lengths only, nothing kept); on, the prompt and the answer are kept
sealed with the tenant's data key, never in clear in the database, readable back only as
that tenant; a sealed transcript moved to another call does not open; a tenant that keeps
transcripts and has no master key is refused before anything is sent."""

from __future__ import annotations

import uuid

import pytest
from helpers.llm_server import ANSWER, LlmServer

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger import records, store
from stage0.llm import admin, host, providers, transcripts

PROVIDER_EXEC = "00000000-0000-4000-8000-000000000005"
PROMPT = "Tell nobody: the walrus-unique-prompt is in the cupboard"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


@pytest.fixture
def loader(seeded, home, model_server):
    model_server.requests.clear()
    with Loader(seeded, home) as ld:
        host.attach(ld, credentials=lambda t, n: None)
        p = providers.parse({"name": "local", "kind": "openai",
                             "base_url": model_server.url + "/v1", "model": "tiny",
                             "egress": {"addresses": ["127.0.0.1"]}})
        admin.add(ld.conn, ld.key, ld.root, keys.id_secret(home, ld.key), p)
        yield ld


def run(loader, tenant="acme"):
    out = loader.boot(PROVIDER_EXEC, {"provider": "local", "messages": MESSAGES},
                      user_id="alice", tenant_id=tenant, trace_id=str(uuid.uuid4()))
    host.for_loader(loader).flush()
    return out


def keep(loader, tenant, on):
    return transcripts.set_keep(loader.conn, loader.key, loader.root,
                                keys.id_secret(loader.home, loader.key), tenant, on,
                                master=loader.home)


def kept(loader):
    return loader.conn.execute("SELECT * FROM ledger.universal_registry "
                               "WHERE entity_type = 'provider_transcript'").fetchall()


def dump(loader):
    return loader.conn.execute("SELECT string_agg(u::text, '') AS t "
                               "FROM ledger.universal_registry u").fetchone()["t"]


def test_off_by_default_nothing_is_kept(loader):
    out = run(loader)
    assert out["ok"] and not kept(loader)
    assert not transcripts.keeps(loader.conn, loader.platform_keys(), "acme")
    with pytest.raises(LoglineError) as exc:
        transcripts.read(loader.conn, loader.home, loader.root, "acme", out["execution_id"])
    assert exc.value.code == "TRANSCRIPT_NOT_FOUND"
    assert "walrus-unique-prompt" not in dump(loader) and ANSWER not in dump(loader)


def test_on_the_prompt_and_answer_are_kept_sealed_and_read_back(loader):
    keep(loader, "acme", True)
    out = run(loader)
    assert out["ok"] and out["text"] == ANSWER
    [row] = kept(loader)
    span = store.span_from_row(row)
    assert span["parent_id"] == out["execution_id"] and span["tenant_id"] == "acme"
    assert span["visibility"] == "private" and span["owner_id"] == "system"
    assert span["public_key"] in records.platform(loader.conn, loader.root).keys
    text = dump(loader)
    assert "walrus-unique-prompt" not in text and ANSWER not in text
    shown = transcripts.read(loader.conn, loader.home, loader.root, "acme",
                             out["execution_id"])
    assert shown["input"] == MESSAGES and shown["output"] == ANSWER
    # another tenant does not find it; a look-alike id is not found either
    for tenant, execution in (("globex", out["execution_id"]), ("acme", "not-a-uuid")):
        with pytest.raises(LoglineError) as exc:
            transcripts.read(loader.conn, loader.home, loader.root, tenant, execution)
        assert exc.value.code == "TRANSCRIPT_NOT_FOUND"
    # off again: later calls keep nothing more; what was kept stays readable
    keep(loader, "acme", False)
    assert run(loader)["ok"] and len(kept(loader)) == 1
    assert transcripts.read(loader.conn, loader.home, loader.root, "acme",
                            out["execution_id"])["output"] == ANSWER


def test_a_transcript_moved_to_another_call_does_not_open(loader):
    keep(loader, "acme", True)
    first, second = run(loader), run(loader)
    rows = {str(r["parent_id"]): store.span_from_row(r) for r in kept(loader)}
    moved = {k: rows[first["execution_id"]][k] for k in
             ("entity_type", "who", "this", "owner_id", "tenant_id", "visibility", "status")}
    moved.update(parent_id=second["execution_id"], content=rows[first["execution_id"]][
        "content"])
    store.append(loader.conn, [moved], loader.key)  # newer than second's own: read first
    with pytest.raises(LoglineError) as exc:
        transcripts.read(loader.conn, loader.home, loader.root, "acme",
                         second["execution_id"])
    assert exc.value.code == "SECRET_UNREADABLE"


def test_a_tenant_that_keeps_transcripts_without_a_master_key_is_refused(seeded, home,
                                                                          model_server,
                                                                          tmp_path):
    with Loader(seeded, home) as ld:
        keep(ld, "acme", True)
        host.attach(ld, credentials=lambda t, n: None, master=Home(tmp_path / "keyless"))
        p = providers.parse({"name": "local", "kind": "openai",
                             "base_url": model_server.url + "/v1", "model": "tiny",
                             "egress": {"addresses": ["127.0.0.1"]}})
        admin.add(ld.conn, ld.key, ld.root, keys.id_secret(home, ld.key), p)
        model_server.requests.clear()
        out = run(ld)
        assert out["error"]["code"] == "MASTER_KEY_MISSING" and not model_server.requests
        [row] = ld.conn.execute("SELECT status FROM ledger.universal_registry WHERE "
                                "entity_type = 'provider_execution'").fetchall()
        assert row["status"] == "denied" and not kept(ld)
        # another tenant, which does not keep transcripts, is not affected
        assert run(ld, tenant="globex")["ok"]


def test_a_tenant_cannot_post_a_look_alike_setting(loader):
    """A tenant_setting signed by another key (what a client could post) is not a setting."""
    from nacl.signing import SigningKey

    forged = {"entity_type": "tenant_setting", "who": "mallory", "this": "llm_transcripts",
              "name": "llm_transcripts", "owner_id": "mallory", "tenant_id": "acme",
              "visibility": "tenant", "status": "active"}
    store.append(loader.conn, [forged], SigningKey.generate())
    assert not transcripts.keeps(loader.conn, loader.platform_keys(), "acme")
    assert run(loader)["ok"] and not kept(loader)
