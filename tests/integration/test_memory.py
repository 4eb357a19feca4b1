"""Memory as ledger rows (stage0/memory, issue 12): encrypted content, the audit chain,
contracts, search by text (and by vector with pgvector), scopes and isolation, forgetting by
destroying keys, export, expiry and reindexing, on the real PostgreSQL.
"""

from __future__ import annotations

import pytest
from helpers.vault import assert_nowhere, database_text

from stage0.errors import LoglineError
from stage0.ledger import store, verify
from stage0.memory.service import Caller, Memory
from stage0.spans.proofs import public_key_hex
from stage0.vault import crypto
from stage0.vault import master as masters

SECRET_TEXT = "Ana prefers the aisle seat and is allergic to penicillin"
ACME_ANA = Caller("ana", "acme")
ACME_BO = Caller("bo", "acme")
GLOBEX_ANA = Caller("ana", "globex")


@pytest.fixture
def master() -> masters.Master:
    return masters.Master(crypto.new_key(), "test")


@pytest.fixture
def memory(kernel_conn, operator, master) -> Memory:
    return Memory(kernel_conn, operator, master)


def add(memory: Memory, caller: Caller, text: str, **fields) -> dict:
    return memory.upsert(caller, [{"text": text, **fields}])[0]


def code_of(fn, *args, **kwargs) -> tuple[str, str | None]:
    with pytest.raises(LoglineError) as caught:
        fn(*args, **kwargs)
    return caught.value.code, caught.value.where


# --- writing --------------------------------------------------------------------------------
def test_a_memory_is_a_signed_span_whose_content_is_ciphertext(memory, kernel_conn, operator):
    written = add(memory, ACME_ANA, SECRET_TEXT, type="preference", tags=["travel"])
    span = store.head(kernel_conn, written["span_id"])
    assert span["entity_type"] == "memory" and span["owner_id"] == "ana"
    assert span["tenant_id"] == "acme" and span["visibility"] == "private"
    assert span["content"]["redacted"] is True and "text" not in span["content"]
    assert span["metadata"]["sensitivity"] == "internal"
    assert span["metadata"]["layer"] == "temporary" and span["metadata"]["tags"] == ["travel"]
    got = memory.get(ACME_ANA, written["span_id"])
    assert got["text"] == SECRET_TEXT and got["curr_hash"] == span["curr_hash"]
    assert_nowhere(database_text(kernel_conn), SECRET_TEXT)
    assert_nowhere(database_text(kernel_conn), "penicillin")
    assert verify.verify(kernel_conn, public_key_hex(operator)).ok


def test_every_write_extends_the_tenants_memory_audit_chain(memory, kernel_conn):
    first = add(memory, ACME_ANA, "one")
    second = add(memory, ACME_ANA, "two")
    audits = kernel_conn.execute(
        "SELECT seq, content, prev_hash, curr_hash FROM ledger.universal_registry "
        "WHERE entity_type = 'memory_audit' AND tenant_id = 'acme' ORDER BY seq").fetchall()
    assert [a["seq"] for a in audits] == [0, 1]
    assert audits[1]["prev_hash"] == audits[0]["curr_hash"]
    assert audits[0]["content"]["spans"] == [[first["span_id"], 0, first["curr_hash"]]]
    assert audits[1]["content"]["spans"][0][0] == second["span_id"]
    assert audits[1]["content"]["op"] == "upsert" and audits[1]["content"]["by"] == "ana"


def test_a_public_memory_is_stored_as_it_is(memory, kernel_conn):
    written = add(memory, ACME_ANA, "The office opens at nine", sensitivity="public",
                  visibility="public")
    assert store.head(kernel_conn, written["span_id"])["content"]["text"] == \
        "The office opens at nine"


def test_without_a_master_key_non_public_memory_is_refused(kernel_conn, operator):
    bare = Memory(kernel_conn, operator, None)
    assert code_of(add, bare, ACME_ANA, SECRET_TEXT)[0] == "MASTER_KEY_MISSING"
    assert kernel_conn.execute("SELECT count(*) AS n FROM ledger.universal_registry "
                               "WHERE entity_type = 'memory'").fetchone()["n"] == 0
    add(bare, ACME_ANA, "public notice", sensitivity="public")  # nothing to encrypt


def test_a_wrong_master_key_reads_nothing(memory, kernel_conn, operator):
    written = add(memory, ACME_ANA, SECRET_TEXT)
    other = Memory(kernel_conn, operator, masters.Master(crypto.new_key(), "other"))
    assert code_of(other.get, ACME_ANA, written["span_id"])[0] == "MASTER_KEY_WRONG"


@pytest.mark.parametrize(("fields", "where"), [
    ({"layer": "forever"}, "memories[0].layer"),
    ({"sensitivity": "top"}, "memories[0].sensitivity"),
    ({"layer": "session"}, "memories[0].session_id"),
    ({"visibility": "public"}, "memories[0].visibility"),
    ({"tags": ["ok", "not ok"]}, "memories[0].tags"),
    ({"ttl_at": "tomorrow"}, "memories[0].ttl_at"),
    ({"colour": "red"}, "memories[0].colour"),
    ({"text": ""}, "memories[0].text"),
    ({"layer": "permanent"}, "memories[0].layer"),  # only through review (promote)
])
def test_a_bad_field_is_refused_by_name_and_nothing_is_written(memory, kernel_conn, fields,
                                                               where):
    assert code_of(memory.upsert, ACME_ANA, [{"text": "fine"}, {"text": "x", **fields}]) \
        != ("MEMORY_INVALID", where)  # the first is fine: the error names the second
    assert code_of(memory.upsert, ACME_ANA, [{"text": "x", **fields}]) == \
        ("MEMORY_INVALID", where)
    assert kernel_conn.execute("SELECT count(*) AS n FROM ledger.universal_registry "
                               "WHERE entity_type IN ('memory', 'memory_audit')"
                               ).fetchone()["n"] == 0


def contract(kernel_conn, operator, tenant="acme", schema=None) -> str:
    [span] = store.append(kernel_conn, [{
        "entity_type": "memory_contract", "who": "admin", "this": "contact",
        "owner_id": "admin", "tenant_id": tenant, "visibility": "tenant",
        "content": {"schema": schema or {
            "type": "object", "required": ["email"],
            "properties": {"email": {"type": "string", "pattern": "@"},
                           "age": {"type": "integer", "minimum": 0}}}}}], operator)
    return span["id"]


def test_a_memory_contract_validates_data_and_names_the_field(memory, kernel_conn, operator):
    schema_id = contract(kernel_conn, operator)
    ok = add(memory, ACME_ANA, "Ana's contact", schema_id=schema_id,
             data={"email": "ana@example.com", "age": 30})
    assert memory.get(ACME_ANA, ok["span_id"])["data"]["email"] == "ana@example.com"
    assert code_of(add, memory, ACME_ANA, "bad", schema_id=schema_id,
                   data={"email": "ana@example.com", "age": -1}) == \
        ("MEMORY_CONTRACT_VIOLATION", "memories[0].data.age")
    assert code_of(add, memory, ACME_ANA, "bad", schema_id=schema_id, data={}) == \
        ("MEMORY_CONTRACT_VIOLATION", "memories[0].data")
    # another tenant's contract is not found; nor a span of another kind
    assert code_of(add, memory, GLOBEX_ANA, "x", schema_id=schema_id, data={})[0] == \
        "MEMORY_CONTRACT_NOT_FOUND"
    assert code_of(add, memory, ACME_ANA, "x", schema_id=ok["span_id"], data={})[0] == \
        "MEMORY_CONTRACT_NOT_FOUND"


def test_only_the_owner_writes_a_next_version(memory, kernel_conn):
    written = add(memory, ACME_ANA, "draft", visibility="tenant")
    updated = memory.upsert(ACME_ANA, [{"id": written["span_id"], "text": "final",
                                        "visibility": "tenant"}])[0]
    assert updated["seq"] == 1 and memory.get(ACME_BO, written["span_id"])["text"] == "final"
    assert code_of(memory.upsert, ACME_BO, [{"id": written["span_id"], "text": "mine"}])[0] \
        == "MEMORY_NOT_FOUND"
    assert code_of(memory.upsert, ACME_ANA, [{"id": written["span_id"], "text": "x",
                                              "sensitivity": "public"}])[0] == "MEMORY_INVALID"


# --- search ---------------------------------------------------------------------------------
def test_search_finds_by_words_in_scope_order_within_a_budget(memory):
    session = Caller("ana", "acme", "s-1")
    add(memory, session, "aisle seat preference for flights", layer="session")
    add(memory, ACME_ANA, "prefers an aisle seat on long flights")
    add(memory, ACME_BO, "the team books aisle seats for flights", visibility="tenant")
    add(memory, ACME_BO, "Bo's private aisle seat note about flights")
    add(memory, GLOBEX_ANA, "globex aisle seat flights note")
    found = memory.search(session, "aisle seat flights")
    scopes = [h["scope"] for h in found["hits"]]
    assert scopes == ["session", "private", "tenant"], found
    assert all(set(h) >= {"span_id", "score", "preview", "layer"} for h in found["hits"])
    assert found["hits"][0]["layer"] == "session"
    assert all(h["score"] > 0 for h in found["hits"])  # nearest scope first, then score
    small = memory.search(session, "aisle seat flights", budget=10)
    assert len(small["hits"]) == 1 and small["hits"][0]["tokens"] <= 10
    only = memory.search(session, "aisle seat flights", scopes=["tenant"])
    assert [h["scope"] for h in only["hits"]] == ["tenant"]


def test_other_tenants_and_other_users_find_nothing(memory):
    add(memory, ACME_ANA, SECRET_TEXT)
    for caller in (ACME_BO, GLOBEX_ANA, Caller("ana", "acme2")):
        assert memory.search(caller, "aisle penicillin")["hits"] == []
    assert memory.search(ACME_ANA, "penicillin")["hits"][0]["preview"] == SECRET_TEXT


def test_public_memories_are_found_from_every_tenant(memory):
    add(memory, ACME_ANA, "LogLine docs live at docs/memory.md", sensitivity="public",
        visibility="public")
    [hit] = memory.search(GLOBEX_ANA, "memory docs")["hits"]
    assert hit["scope"] == "public"


def test_a_passed_ttl_leaves_search_at_once(memory):
    add(memory, ACME_ANA, "a temporary parking code 4411", ttl_at="2000-01-01T00:00:00Z")
    add(memory, ACME_ANA, "a lasting parking code 5522", ttl_s=3600)
    assert [h["preview"] for h in memory.search(ACME_ANA, "parking code")["hits"]] == \
        ["a lasting parking code 5522"]
    assert memory.expire()["expired"] == 1


def test_search_by_meaning_with_pgvector(memory, has_pgvector):
    if not has_pgvector:
        pytest.skip("this PostgreSQL has no pgvector: memory searches by text only")
    add(memory, ACME_ANA, "My dog Rex loves chasing tennis balls in the park")
    add(memory, ACME_ANA, "Quarterly revenue grew by eight percent")
    found = memory.search(ACME_ANA, "puppy playing fetch")
    assert found["mode"] == "text+vector" and found["vectors"] is True
    assert "Rex" in found["hits"][0]["preview"]


def test_without_pgvector_search_says_it_is_text_only(memory, has_pgvector):
    if has_pgvector:
        pytest.skip("this PostgreSQL has pgvector (the text-only path is tested on one "
                    "without it: CI's PostgreSQL 15)")
    add(memory, ACME_ANA, SECRET_TEXT)
    found = memory.search(ACME_ANA, "penicillin")
    assert found["mode"] == "text" and "pgvector" in found["note"]
    assert memory.status()["mode"] == "text"


def test_secret_memories_get_no_vector_unless_the_writer_opts_in(memory, has_pgvector):
    if not has_pgvector:
        pytest.skip("this PostgreSQL has no pgvector: there are no vectors to leave out")
    assert add(memory, ACME_ANA, "card ends 4242", sensitivity="pii")["vector"] is None
    assert add(memory, ACME_ANA, "card ends 4242", sensitivity="pii",
               embed_sensitive=True)["vector"] == "wordllama-l2_supercat-256"
    assert add(memory, ACME_ANA, "likes tea")["vector"] == "wordllama-l2_supercat-256"


# --- forgetting, export, reindex ------------------------------------------------------------
def test_forget_last_session_and_me_destroy_keys_for_good(memory, kernel_conn, operator):
    session = Caller("ana", "acme", "s-9")
    a = add(memory, ACME_ANA, "forgettable alpha note")
    b = add(memory, session, "forgettable beta note", layer="session")
    c = add(memory, session, "forgettable gamma note", layer="session")
    kept = add(memory, ACME_BO, "forgettable note of bo")

    last = memory.forget(session, "last")
    assert last["span_ids"] == [c["span_id"]]
    assert code_of(memory.get, ACME_ANA, c["span_id"])[0] == "MEMORY_FORGOTTEN"
    assert memory.forget(session, "session")["span_ids"] == [b["span_id"]]
    assert [h["span_id"] for h in memory.search(ACME_ANA, "forgettable")["hits"]] == \
        [a["span_id"]]
    assert memory.forget(ACME_ANA, "me")["span_ids"] == [a["span_id"]]
    assert memory.forget(ACME_ANA, "last") == {"forgotten": 0, "span_ids": [],
                                               "redaction_id": None}
    assert memory.search(ACME_ANA, "forgettable")["hits"] == []
    assert memory.get(ACME_BO, kept["span_id"])["text"] == "forgettable note of bo"
    keys = kernel_conn.execute("SELECT owner_id FROM ledger.memory_keys").fetchall()
    assert [k["owner_id"] for k in keys] == ["bo"]
    redactions = kernel_conn.execute(
        "SELECT content FROM ledger.universal_registry WHERE entity_type = 'memory_redaction' "
        "ORDER BY position").fetchall()
    assert [r["content"]["what"] for r in redactions] == ["last", "session", "me"]
    # the ciphertext is still in the ledger (append-only), with no key left to open it
    assert store.versions(kernel_conn, a["span_id"])[0]["content"]["sealed"]["ciphertext"]
    assert verify.verify(kernel_conn, public_key_hex(operator)).ok


def test_export_bundles_the_users_memories_decrypted_with_ids_and_hashes(memory, kernel_conn):
    a = add(memory, ACME_ANA, "export me one")
    b = add(memory, ACME_ANA, "export me two", sensitivity="public")
    add(memory, ACME_BO, "not ana's")
    memory.forget(ACME_ANA, "span", span_id=a["span_id"])
    bundle = memory.export(ACME_ANA)
    assert [(m["span_id"], m.get("text"), m.get("forgotten")) for m in bundle["memories"]] == \
        [(a["span_id"], None, True), (b["span_id"], "export me two", None)]
    assert bundle["memories"][1]["curr_hash"] == b["curr_hash"]
    record = store.head(kernel_conn, bundle["export_id"])
    assert record["entity_type"] == "memory_export"
    assert record["content"]["bundle_blake3"] == bundle["bundle_blake3"]


def test_reindex_rebuilds_the_derived_indexes_from_the_ledger(memory, kernel_conn):
    add(memory, ACME_ANA, "reindexed walrus fact")
    gone = add(memory, ACME_ANA, "forgotten walrus fact")
    memory.forget(ACME_ANA, "span", span_id=gone["span_id"])
    kernel_conn.execute("DELETE FROM ledger.memory_index")
    assert memory.search(ACME_ANA, "walrus")["hits"] == []
    assert memory.reindex()["indexed"] == 1
    assert [h["preview"] for h in memory.search(ACME_ANA, "walrus")["hits"]] == \
        ["reindexed walrus fact"]
    assert memory.status("acme")["indexed"] == 1


# --- the kernels ----------------------------------------------------------------------------
UPSERT = "00000000-0000-4000-8000-000000000009"
SEARCH = "00000000-0000-4000-8000-000000000010"


@pytest.fixture
def master_env(monkeypatch) -> None:
    monkeypatch.setenv(masters.ENV, crypto.new_key().hex())


def test_the_memory_kernels_write_and_search_as_their_caller(loader, master_env, kernel_conn):
    written = loader.boot(UPSERT, {"memories": [{"text": SECRET_TEXT, "tags": ["health"]}],
                                   "session_id": "chat-1"}, user_id="ana", tenant_id="acme")
    [one] = written["written"]
    assert one["layer"] == "session" and one["sensitivity"] == "internal"
    found = loader.boot(SEARCH, {"query": "penicillin allergy", "session_id": "chat-1"},
                        user_id="ana", tenant_id="acme")
    assert [(h["span_id"], h["scope"], h["preview"]) for h in found["hits"]] == \
        [(one["span_id"], "session", SECRET_TEXT)]
    for user, tenant in (("bo", "acme"), ("ana", "globex")):
        assert loader.boot(SEARCH, {"query": "penicillin allergy"}, user_id=user,
                           tenant_id=tenant)["hits"] == []
    assert_nowhere(database_text(kernel_conn), "penicillin")


def test_the_upsert_kernel_refuses_a_bad_memory_by_field(loader, master_env):
    with pytest.raises(LoglineError) as caught:
        loader.boot(UPSERT, {"memories": [{"text": "x", "sensitivity": "loud"}]},
                    user_id="ana", tenant_id="acme")
    assert (caught.value.code, caught.value.where) == ("MEMORY_INVALID",
                                                      "memories[0].sensitivity")
