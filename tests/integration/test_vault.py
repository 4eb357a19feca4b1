"""The vault (stage0/vault): AES-256-GCM envelope encryption of credentials in the ledger.

Attacks covered here: a wrong or missing master key, another tenant asking for a secret or its
names, a ciphertext copied into another tenant's or name's span, a tenant's own API-key role
reading the rows, and the plaintext (or its base64/hex) anywhere in the database.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Any

import pytest
from helpers.vault import VALUE, assert_nowhere, database_text

from stage0 import keys
from stage0.errors import LoglineError
from stage0.ledger import store, verify
from stage0.spans.proofs import public_key_hex
from stage0.vault import credentials, crypto, rotation, tenant_keys
from stage0.vault import master as masters


@pytest.fixture
def master() -> masters.Master:
    return masters.Master(crypto.new_key(), "test")


@pytest.fixture
def root(operator) -> str:
    return public_key_hex(operator)


def put(conn, operator, master, tenant="acme", name="openai", value=VALUE, root=None):
    return credentials.put(conn, operator, master, tenant, name, value, root_key=root)


# --- sealing (pure) -------------------------------------------------------------------------
def test_a_sealed_value_opens_only_with_its_key_and_its_bindings():
    key = crypto.new_key()
    sealed = crypto.seal(key, VALUE, {"tenant_id": "acme", "name": "n", "version": 1})
    assert crypto.open_(key, sealed, {"version": 1, "name": "n", "tenant_id": "acme"}) \
        == VALUE.encode()
    attempts = [(crypto.new_key(), sealed, {"tenant_id": "acme", "name": "n", "version": 1}),
                (key, sealed, {"tenant_id": "globex", "name": "n", "version": 1}),
                (key, sealed, {"tenant_id": "acme", "name": "n", "version": 2}),
                (key, {**sealed, "ciphertext": base64.b64encode(
                    b"\0" + base64.b64decode(sealed["ciphertext"])[1:]).decode()},
                 {"tenant_id": "acme", "name": "n", "version": 1}),
                (key, {**sealed, "alg": "none"}, {}), (key, {"alg": crypto.ALG}, {})]
    for k, s, aad in attempts:
        with pytest.raises(LoglineError) as caught:
            crypto.open_(k, s, aad)
        assert caught.value.code == "SECRET_UNREADABLE"
        assert_nowhere(str(caught.value))


def test_every_seal_has_a_fresh_nonce():
    key = crypto.new_key()
    nonces = {crypto.seal(key, "same", b"")["nonce"] for _ in range(200)}
    assert len(nonces) == 200


# --- the master key ---------------------------------------------------------------------------
def test_the_master_key_comes_from_the_environment_first_in_hex_or_base64(home, monkeypatch):
    raw = crypto.new_key()
    masters.write_file(masters.path(home), crypto.new_key())
    for text in (raw.hex(), base64.b64encode(raw).decode()):
        monkeypatch.setenv(masters.ENV, text)
        found = masters.load(home)
        assert (found.key, found.source) == (raw, masters.ENV)
        assert raw.hex() not in repr(found) and text not in repr(found)
    monkeypatch.setenv(masters.ENV, "not a key")
    with pytest.raises(LoglineError) as caught:
        masters.load(home)
    assert caught.value.code == "MASTER_KEY_INVALID" and "not a key" not in str(caught.value)


def test_no_master_key_is_a_refusal_and_a_readable_key_file_too(home, monkeypatch):
    monkeypatch.delenv(masters.ENV, raising=False)
    with pytest.raises(LoglineError) as caught:
        masters.load(home)
    assert caught.value.code == "MASTER_KEY_MISSING"
    masters.write_file(masters.path(home), crypto.new_key())
    assert stat.S_IMODE(masters.path(home).stat().st_mode) == 0o600
    os.chmod(masters.path(home), 0o644)
    with pytest.raises(LoglineError) as caught:
        masters.load(home)
    assert caught.value.code == "KEY_PERMISSIONS"


# --- storing and revealing ----------------------------------------------------------------------
def test_a_secret_is_stored_encrypted_and_revealed_only_in_stage0(kernel_conn, operator, master,
                                                                 root):
    first = put(kernel_conn, operator, master, root=root)
    assert first == {"name": "openai", "version": 1, "tenant_id": "acme", "status": "active",
                     "created_at": first["created_at"], "updated_at": first["created_at"]}
    assert credentials.reveal(kernel_conn, master, "acme", "openai", root_key=root) == VALUE
    assert_nowhere(database_text(kernel_conn))
    [span] = store.versions(kernel_conn, credentials.span_id(
        keys.derivation_secret(operator), "acme", "openai"))
    assert (span["entity_type"], span["owner_id"], span["visibility"]) == \
        ("secret", "system", "private")
    assert set(span["content"]) == {"name", "version", "key_version", "alg", "nonce",
                                    "ciphertext", "aad"}
    assert verify.verify(kernel_conn, root).ok


def test_versions_are_listed_never_values(kernel_conn, operator, master, root):
    put(kernel_conn, operator, master, value="first-value-1234", root=root)
    credentials.rotate(kernel_conn, operator, master, "acme", "openai", VALUE, root_key=root)
    put(kernel_conn, operator, master, name="anthropic", value="other-value-5678", root=root)
    listed = credentials.names(kernel_conn, "acme", root_key=root)
    assert [(s["name"], s["version"]) for s in listed] == [("anthropic", 1), ("openai", 2)]
    assert listed[1]["created_at"] < listed[1]["updated_at"]
    for value in ("first-value-1234", VALUE, "other-value-5678"):
        assert_nowhere(repr(listed), value)
        assert_nowhere(database_text(kernel_conn), value)
    assert credentials.reveal(kernel_conn, master, "acme", "openai") == VALUE


@pytest.mark.parametrize(("value", "code"), [("", "SECRET_EMPTY"), ("  \n", "SECRET_EMPTY"),
                                             ("x" * 65537, "SECRET_TOO_LARGE")])
def test_an_empty_or_oversized_value_is_refused(kernel_conn, operator, master, value, code):
    with pytest.raises(LoglineError) as caught:
        put(kernel_conn, operator, master, value=value)
    assert caught.value.code == code


@pytest.mark.parametrize(("tenant", "name"), [("acme", ""), ("acme", "a b"), ("", "n"),
                                              ("acme", "n\u200b"), ("acme", "x" * 129)])
def test_a_bad_name_is_refused(kernel_conn, operator, master, tenant, name):
    with pytest.raises(LoglineError) as caught:
        put(kernel_conn, operator, master, tenant=tenant, name=name)
    assert caught.value.code == "SECRET_BAD_NAME"


def test_rotating_a_secret_that_does_not_exist_is_refused(kernel_conn, operator, master):
    with pytest.raises(LoglineError) as caught:
        credentials.rotate(kernel_conn, operator, master, "acme", "nope", VALUE)
    assert caught.value.code == "SECRET_NOT_FOUND"


# --- wrong and missing master keys ------------------------------------------------------------
def test_a_wrong_master_key_is_a_clear_refusal(kernel_conn, operator, master):
    put(kernel_conn, operator, master)
    wrong = masters.Master(crypto.new_key(), "elsewhere")
    for attempt in (lambda: credentials.reveal(kernel_conn, wrong, "acme", "openai"),
                    lambda: put(kernel_conn, operator, wrong, name="other")):
        with pytest.raises(LoglineError) as caught:
            attempt()
        assert caught.value.code == "MASTER_KEY_WRONG"
        assert_nowhere(str(caught.value))
        assert wrong.key.hex() not in str(caught.value)
    assert [s["name"] for s in credentials.names(kernel_conn, "acme")] == ["openai"]


def test_a_master_key_forged_into_the_span_still_does_not_open(kernel_conn, operator, master):
    """Copying the right master key id next to data keys wrapped by another master key."""
    put(kernel_conn, operator, master)
    wrong = masters.Master(crypto.new_key(), "elsewhere")
    head = _tenant_key(kernel_conn, operator)
    tampered = {**head, "content": {**head["content"], "master_key_id": wrong.key_id}}
    with pytest.raises(LoglineError) as caught:
        tenant_keys.unwrap(tampered, wrong)
    assert caught.value.code == "SECRET_UNREADABLE"


def test_no_master_key_means_nothing_is_read_or_written(kernel_conn, operator, home, master,
                                                        monkeypatch):
    monkeypatch.delenv(masters.ENV, raising=False)
    put(kernel_conn, operator, master)  # the ledger now holds a data key wrapped by `master`
    for attempt in (lambda: credentials.reveal(kernel_conn, home, "acme", "openai"),
                    lambda: put(kernel_conn, operator, home, name="other")):
        with pytest.raises(LoglineError) as caught:
            attempt()
        assert caught.value.code == "MASTER_KEY_MISSING"
    assert not masters.path(home).exists()  # never replaced by a new, unrelated key


def test_the_first_secret_of_a_ledger_creates_the_master_key_file(kernel_conn, operator, home,
                                                                  monkeypatch):
    monkeypatch.delenv(masters.ENV, raising=False)
    put(kernel_conn, operator, home)
    assert stat.S_IMODE(masters.path(home).stat().st_mode) == 0o600
    assert credentials.reveal(kernel_conn, home, "acme", "openai") == VALUE
    assert_nowhere(masters.path(home).read_text())


# --- tenants ------------------------------------------------------------------------------------
def test_another_tenant_can_neither_reveal_nor_list_a_secret(kernel_conn, operator, master):
    put(kernel_conn, operator, master)
    with pytest.raises(LoglineError) as caught:
        credentials.reveal(kernel_conn, master, "globex", "openai")
    assert caught.value.code == "SECRET_NOT_FOUND"
    assert credentials.names(kernel_conn, "globex") == []


def _secret(conn, operator, tenant="acme", name="openai") -> dict[str, Any]:
    return store.head(conn, credentials.span_id(keys.derivation_secret(operator), tenant, name))


def _tenant_key(conn, operator, tenant="acme") -> dict[str, Any]:
    return store.head(conn, tenant_keys.span_id(keys.derivation_secret(operator), tenant))


def _plant(conn, operator, tenant, name, content) -> None:
    """A platform-signed secret span of `tenant` carrying someone else's ciphertext."""
    existing = _secret(conn, operator, tenant, name)
    store.append(conn, [{
        "id": credentials.span_id(keys.derivation_secret(operator), tenant, name),
        **({"seq": existing["seq"] + 1, "prev_hash": existing["curr_hash"]} if existing
           else {"seq": 0}),
        "entity_type": "secret", "who": "logline", "this": "planted", "name": name,
        "owner_id": "system", "tenant_id": tenant, "visibility": "private",
        "content": content}], operator)


def test_a_ciphertext_copied_into_another_tenants_span_does_not_open(kernel_conn, operator,
                                                                      master):
    put(kernel_conn, operator, master)
    put(kernel_conn, operator, master, tenant="globex", name="openai", value="globex-own-9876")
    theirs = _secret(kernel_conn, operator)["content"]
    _plant(kernel_conn, operator, "globex", "openai", theirs)
    with pytest.raises(LoglineError) as caught:
        credentials.reveal(kernel_conn, master, "globex", "openai")
    assert caught.value.code == "SECRET_UNREADABLE"
    assert_nowhere(str(caught.value))
    # Even with acme's own data key copied over too, the bindings (tenant) refuse it.
    acme_key = _tenant_key(kernel_conn, operator)
    keys_of_acme = tenant_keys.unwrap(acme_key, master)
    with pytest.raises(LoglineError) as caught:
        crypto.open_(keys_of_acme.key(1), theirs, credentials.aad("globex", "openai", 2))
    assert caught.value.code == "SECRET_UNREADABLE"


def test_a_ciphertext_moved_to_another_name_of_the_same_tenant_does_not_open(
        kernel_conn, operator, master):
    """Same tenant, same data key: only the associated data (the name) stops it."""
    put(kernel_conn, operator, master)
    content = _secret(kernel_conn, operator)["content"]
    _plant(kernel_conn, operator, "acme", "stolen", {**content, "name": "stolen"})
    with pytest.raises(LoglineError) as caught:
        credentials.reveal(kernel_conn, master, "acme", "stolen")
    assert caught.value.code == "SECRET_UNREADABLE"


def test_a_wrapped_data_key_copied_to_another_tenant_does_not_open(kernel_conn, operator,
                                                                   master):
    put(kernel_conn, operator, master)
    head = _tenant_key(kernel_conn, operator)
    moved = {**head, "tenant_id": "globex", "curr_hash": "0" * 64}
    with pytest.raises(LoglineError) as caught:
        tenant_keys.unwrap(moved, master)
    assert caught.value.code == "SECRET_UNREADABLE"


def test_no_api_key_role_can_read_the_rows_not_even_the_tenants_own(seeded, kernel_conn,
                                                                     operator, master):
    put(kernel_conn, operator, master)
    with seeded.connect("app") as app:
        for user in ("alice", "system", "operator"):
            app.execute("SELECT set_config('app.tenant_id', 'acme', false), "
                        "set_config('app.user_id', %s, false)", (user,))
            found = app.execute("SELECT count(*) AS n FROM ledger.universal_registry "
                                "WHERE entity_type IN ('secret', 'tenant_key')").fetchone()
            assert found["n"] == (2 if user == "system" else 0)
    # `system` is the platform's own user: no API key is ever issued for it (apikeys.RESERVED).


# --- rotation -----------------------------------------------------------------------------------
def test_a_new_master_key_rewraps_every_tenant_and_values_stay_readable(kernel_conn, operator,
                                                                       master, root):
    put(kernel_conn, operator, master)
    put(kernel_conn, operator, master, tenant="globex", value="globex-own-9876")
    new = masters.Master(crypto.new_key(), "new")
    assert rotation.rewrap_all(kernel_conn, operator, master, new, root) == \
        {"rewrapped": 2, "kept": 0}
    assert credentials.reveal(kernel_conn, new, "acme", "openai") == VALUE
    assert credentials.reveal(kernel_conn, new, "globex", "openai") == "globex-own-9876"
    with pytest.raises(LoglineError) as caught:
        credentials.reveal(kernel_conn, master, "acme", "openai")
    assert caught.value.code == "MASTER_KEY_WRONG"
    # again (an interrupted rotation run a second time): nothing left to do
    assert rotation.rewrap_all(kernel_conn, operator, master, new, root) == \
        {"rewrapped": 0, "kept": 2}
    assert [s["version"] for s in credentials.names(kernel_conn, "acme")] == [1]
    assert verify.verify(kernel_conn, root).ok


def test_a_rotation_from_the_wrong_master_key_changes_nothing(kernel_conn, operator, master):
    put(kernel_conn, operator, master)
    wrong, new = (masters.Master(crypto.new_key(), n) for n in ("wrong", "new"))
    before = _tenant_key(kernel_conn, operator)
    with pytest.raises(LoglineError) as caught:
        rotation.rewrap_all(kernel_conn, operator, wrong, new)
    assert caught.value.code == "MASTER_KEY_WRONG"
    assert _tenant_key(kernel_conn, operator)["seq"] == before["seq"]


def test_a_new_data_key_version_reseals_the_tenants_secrets(kernel_conn, operator, master,
                                                             root):
    put(kernel_conn, operator, master)
    put(kernel_conn, operator, master, name="anthropic", value="other-value-5678")
    done = rotation.rotate_data_key(kernel_conn, operator, master, "acme", root)
    assert done == {"tenant_id": "acme", "key_version": 2, "secrets": 2}
    assert credentials.reveal(kernel_conn, master, "acme", "openai") == VALUE
    assert credentials.reveal(kernel_conn, master, "acme", "anthropic") == "other-value-5678"
    assert _secret(kernel_conn, operator)["content"]["key_version"] == 2
    assert [s["version"] for s in credentials.names(kernel_conn, "acme")] == [2, 2]
    assert_nowhere(database_text(kernel_conn))
    assert verify.verify(kernel_conn, root).ok


def test_the_vault_kinds_are_platform_kinds_in_the_code_and_the_manifest():
    import json

    from stage0.config import row_dir
    from stage0.spans import kinds

    [manifest] = [json.loads(line) for line in
                  (row_dir() / "manifest" / "manifest.ndjson").read_text().splitlines()]
    declared = set(manifest["metadata"]["platform_kinds"])
    assert declared == set(kinds.PLATFORM_KINDS)
    assert {"secret", "tenant_key"} <= declared & kinds.NEVER_EMITTED


def test_a_look_alike_signed_by_another_key_is_never_counted(kernel_conn, operator, master,
                                                             root):
    """A `secret` span of acme's under another id, signed by a key that is not the
    platform's (as if a trusted author had slipped one in): ignored when the root key is
    known, and a refusal (never a guess) when only the master key is."""
    from nacl.signing import SigningKey

    put(kernel_conn, operator, master)
    real = _secret(kernel_conn, operator)
    store.append(kernel_conn, [{
        "entity_type": "secret", "who": "mallory", "this": "look-alike", "name": "openai",
        "owner_id": "system", "tenant_id": "acme", "visibility": "private",
        "content": real["content"]}], SigningKey.generate())
    assert credentials.reveal(kernel_conn, master, "acme", "openai", root_key=root) == VALUE
    assert len(credentials.names(kernel_conn, "acme", root_key=root)) == 1
    with pytest.raises(LoglineError) as caught:
        credentials.reveal(kernel_conn, master, "acme", "openai")
    assert caught.value.code == "SECRET_UNREADABLE"


# --- values at rest (transcripts, memory) --------------------------------------------------------
def test_a_value_sealed_for_a_tenant_opens_only_for_it_and_its_bindings(kernel_conn, operator,
                                                                        master):
    from stage0.vault import at_rest

    aad = {"purpose": "transcript", "execution_id": "e1"}
    sealed = at_rest.seal_for(kernel_conn, operator, master, "acme", VALUE, aad)
    assert sealed["key_version"] == 1 and VALUE not in repr(sealed)
    assert at_rest.open_for(kernel_conn, master, "acme", sealed, aad) == VALUE.encode()
    put(kernel_conn, operator, master)  # the same data key serves the tenant's secrets
    assert credentials.reveal(kernel_conn, master, "acme", "openai") == VALUE
    at_rest.seal_for(kernel_conn, operator, master, "globex", "theirs", aad)
    for tenant, bindings in (("globex", aad), ("acme", {**aad, "execution_id": "e2"}),
                             ("acme", {**aad, "tenant_id": "globex"})):
        with pytest.raises(LoglineError) as caught:
            at_rest.open_for(kernel_conn, master, tenant, sealed, bindings)
        assert caught.value.code == "SECRET_UNREADABLE"
    rotation.rotate_data_key(kernel_conn, operator, master, "acme")
    assert at_rest.open_for(kernel_conn, master, "acme", sealed, aad) == VALUE.encode()
    assert at_rest.seal_for(kernel_conn, operator, master, "acme", "x", aad)["key_version"] == 2


def test_concurrent_first_secrets_of_a_tenant_share_one_data_key(seeded, operator, master):
    import threading

    barrier, errors = threading.Barrier(4), []

    def one(i: int) -> None:
        with seeded.connect("kernel") as conn:
            barrier.wait()
            try:
                put(conn, operator, master, name="shared", value=f"value-{i}-abcdef")
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with seeded.connect("kernel") as conn:
        [listed] = credentials.names(conn, "acme")
        assert listed["version"] == 4
        assert credentials.reveal(conn, master, "acme", "shared").startswith("value-")
        assert _tenant_key(conn, operator)["seq"] == 0


def test_two_processes_creating_the_master_key_end_with_one(home, monkeypatch):
    import threading

    monkeypatch.delenv(masters.ENV, raising=False)
    barrier, made = threading.Barrier(8), []

    def one() -> None:
        barrier.wait()
        made.append(masters.create(home).key)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(made) == 8 and len(set(made)) == 1
    assert [p.name for p in home.keys.iterdir() if "master" in p.name] == ["master.key"]
    assert masters.load(home).key == made[0]


def test_a_revoked_secret_is_not_revealed_until_a_new_value_is_set(kernel_conn, operator,
                                                                   master, root):
    put(kernel_conn, operator, master)
    put(kernel_conn, operator, master, name="other", value="other-value-5678")
    done = credentials.revoke(kernel_conn, operator, "acme", "openai", root_key=root)
    assert (done["version"], done["status"]) == (2, "revoked")
    for attempt in (lambda: credentials.reveal(kernel_conn, master, "acme", "openai"),
                    lambda: credentials.revoke(kernel_conn, operator, "acme", "openai")):
        with pytest.raises(LoglineError) as caught:
            attempt()
        assert caught.value.code == "SECRET_REVOKED"
    assert "ciphertext" not in _secret(kernel_conn, operator)["content"]
    assert rotation.rotate_data_key(kernel_conn, operator, master, "acme")["secrets"] == 1
    assert [(s["name"], s["status"]) for s in credentials.names(kernel_conn, "acme")] == \
        [("openai", "revoked"), ("other", "active")]
    credentials.put(kernel_conn, operator, master, "acme", "openai", "sk-new-0000")
    assert credentials.reveal(kernel_conn, master, "acme", "openai") == "sk-new-0000"
    with pytest.raises(LoglineError) as caught:
        credentials.revoke(kernel_conn, operator, "globex", "openai")
    assert caught.value.code == "SECRET_NOT_FOUND"
    assert verify.verify(kernel_conn, root).ok
