"""Stage-0: what boots, what is refused (with which reason code), and what gets recorded."""

from __future__ import annotations

import json

import pytest
from helpers.kernels import CTX_ECHO as ECHO
from helpers.kernels import allow, function_span
from nacl.signing import SigningKey

from stage0.boot.loader import BootRefused, Loader
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS
from stage0.spans.canonical import normalise, now_at
from stage0.spans.proofs import seal


@pytest.fixture
def loader(seeded, home):
    with Loader(seeded, home) as ld:
        yield ld


def refusals(conn, function_id: str) -> list[dict]:
    return conn.execute("SELECT status, error FROM ledger.universal_registry WHERE "
                        "entity_type = 'boot_refused' AND parent_id = %s", (function_id,)
                        ).fetchall()


def test_boot_records_boot_event_and_returns_output(loader, kernel_conn, operator):
    [fn] = store.append(kernel_conn, [function_span()], operator)
    allow(kernel_conn, operator, fn["id"])
    assert loader.boot(fn["id"], {"x": 1}, tenant_id="acme") == {"echo": {"x": 1},
                                                                 "tenant": "acme"}
    events = kernel_conn.execute(
        "SELECT metadata FROM ledger.universal_registry WHERE entity_type = 'boot_event' "
        "AND parent_id = %s", (fn["id"],)).fetchall()
    assert [e["metadata"]["function_hash"] for e in events] == [fn["curr_hash"]]


def test_observer_kernel_boots(loader):
    assert loader.boot(KERNELS["observer_bot"]) == {"scheduled": [], "skipped": 0,
                                                    "denied": []}


def test_id_not_in_manifest_is_refused_and_recorded(loader, kernel_conn, operator):
    [fn] = store.append(kernel_conn, [function_span()], operator)
    with pytest.raises(BootRefused) as refused:
        loader.boot(fn["id"])
    assert refused.value.code == "BOOT_NOT_ALLOWED"
    [row] = refusals(kernel_conn, fn["id"])
    assert row["error"]["reason"] == "BOOT_NOT_ALLOWED"


def test_missing_function_is_refused(loader, kernel_conn, operator):
    missing = "00000000-0000-4000-8000-00000000abcd"
    allow(kernel_conn, operator, missing)
    with pytest.raises(BootRefused) as refused:
        loader.boot(missing)
    assert refused.value.code == "FUNCTION_NOT_FOUND"


def test_function_signed_by_untrusted_key_is_refused(loader, kernel_conn, operator):
    stranger = SigningKey.generate()
    span = seal(normalise({**function_span(), "id": "00000000-0000-4000-8000-00000000beef",
                           "at": now_at()}), stranger)
    store.insert(kernel_conn, [span])
    kernel_conn.commit()
    allow(kernel_conn, operator, span["id"])
    with pytest.raises(BootRefused) as refused:
        loader.boot(span["id"])
    assert refused.value.code == "KEY_UNTRUSTED"
    assert refusals(kernel_conn, span["id"])


def test_unsigned_function_is_refused(loader, seeded, kernel_conn, operator):
    fid = "00000000-0000-4000-8000-00000000f00d"
    with seeded.connect("admin") as admin:
        admin.execute("INSERT INTO ledger.universal_registry (id, seq, entity_type, who, this, "
                      "at, code, owner_id, tenant_id, visibility) VALUES (%s, 0, 'function', "
                      "'mallory', 'x', date_trunc('milliseconds', now()), %s, 'system', 'system', "
                      "'public')", (fid, ECHO))
    allow(kernel_conn, operator, fid)
    with pytest.raises(BootRefused) as refused:
        loader.boot(fid)
    assert refused.value.code == "HASH_MISSING"


def test_function_edited_behind_the_back_is_refused(loader, seeded, kernel_conn, operator):
    [fn] = store.append(kernel_conn, [function_span()], operator)
    allow(kernel_conn, operator, fn["id"])
    assert loader.boot(fn["id"], 1)["echo"] == 1
    with seeded.connect("admin") as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE ledger.universal_registry SET code = %s WHERE id = %s",
                      (ECHO.replace("echo", "evil"), fn["id"]))
    with pytest.raises(BootRefused) as refused:
        loader.boot(fn["id"], 1)
    assert refused.value.code == "HASH_MISMATCH"


def test_manifest_not_signed_by_root_is_refused(loader, seeded, kernel_conn, operator):
    with seeded.connect("admin") as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE ledger.universal_registry SET metadata = metadata || "
                      "'{\"allowed_boot_ids\": []}' WHERE id = %s", (manifest.MANIFEST_ID,))
    with pytest.raises(Exception) as refused:
        loader.boot(KERNELS["observer_bot"])
    assert getattr(refused.value, "code", None) == "MANIFEST_UNTRUSTED"


def test_new_kernel_seq_is_picked_up_without_restart(loader, kernel_conn, operator):
    [fn] = store.append(kernel_conn, [function_span()], operator)
    allow(kernel_conn, operator, fn["id"])
    assert "echo" in loader.boot(fn["id"], 1)
    store.append(kernel_conn, [function_span(code="def main(ctx):\n    return 'v2'\n",
                                              id=fn["id"])], operator)
    assert loader.boot(fn["id"], 1) == "v2"
    hashes = kernel_conn.execute(
        "SELECT metadata->>'function_seq' AS seq FROM ledger.universal_registry "
        "WHERE entity_type = 'boot_event' AND parent_id = %s ORDER BY position",
        (fn["id"],)).fetchall()
    assert [h["seq"] for h in hashes] == ["0", "1"]


def test_kernel_sql_must_be_a_literal_of_its_source(loader, kernel_conn, operator):
    code = ("def main(ctx):\n    table = 'ledger.universal_registry'\n"
            "    return ctx.sql('SELECT count(*) AS n FROM ' + table)\n")
    [fn] = store.append(kernel_conn, [function_span(code=code)], operator)
    allow(kernel_conn, operator, fn["id"])
    with pytest.raises(Exception) as refused:
        loader.boot(fn["id"])
    assert getattr(refused.value, "code", None) == "KERNEL_SQL_NOT_LITERAL"


@pytest.mark.parametrize("body, code", [
    ("import os\n    return os.getcwd()", "KERNEL_ERROR"),
    ("return ctx._conn", "KERNEL_COMPILE_ERROR"),
    ("return ctx.sql.__self__", "KERNEL_COMPILE_ERROR"),
    ("return open('/etc/passwd').read()", "KERNEL_ERROR"),
])
def test_kernel_cannot_reach_past_its_capabilities(loader, kernel_conn, operator, body, code):
    [fn] = store.append(kernel_conn, [function_span(code=f"def main(ctx):\n    {body}\n")],
                         operator)
    allow(kernel_conn, operator, fn["id"])
    with pytest.raises(Exception) as refused:
        loader.boot(fn["id"])
    assert getattr(refused.value, "code", None) == code


def test_cli_boot_prints_output_and_refusal_exits_nonzero(cli):
    ok = cli("boot", KERNELS["observer_bot"])
    assert json.loads(ok.stdout) == {"scheduled": [], "skipped": 0, "denied": []}
    bad = cli("boot", "00000000-0000-4000-8000-000000000999", check=False)
    assert bad.returncode == 2 and "BOOT_NOT_ALLOWED" in bad.stderr


def test_a_called_kernels_new_seq_and_an_edit_behind_its_back_are_seen_at_the_next_boot(
        loader, seeded, kernel_conn, operator):
    """A boot reads the heads of the kernels its function called last time with its own
    (one round trip): a new version of a callee runs at the next boot, and a callee edited
    behind the loader's back is refused, as when it was read on its own."""
    [callee] = store.append(kernel_conn, [function_span(
        code="def main(ctx):\n    return 'v1'\n")], operator)
    [caller] = store.append(kernel_conn, [function_span(
        code=f"def main(ctx):\n    return ctx.call('{callee['id']}', 1)\n")], operator)
    allow(kernel_conn, operator, callee["id"], caller["id"])
    assert loader.boot(caller["id"]) == "v1"
    assert loader.boot(caller["id"]) == "v1"
    store.append(kernel_conn, [function_span(code="def main(ctx):\n    return 'v2'\n",
                                              id=callee["id"])], operator)
    assert loader.boot(caller["id"]) == "v2"
    with seeded.connect("admin") as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE ledger.universal_registry SET code = %s WHERE id = %s "
                      "AND seq = 1", ("def main(ctx):\n    return 'evil'\n", callee["id"]))
    with pytest.raises(Exception) as refused:
        loader.boot(caller["id"])
    assert getattr(refused.value, "code", None) == "HASH_MISMATCH"


def test_ctx_record_appends_new_drafts_later_and_refuses_anything_else(
        loader, kernel_conn, operator):
    """ctx.record: a new span with an id the boot minted is appended by the host's recorder
    (readable once flushed); an id the boot did not mint (another span's) is refused."""
    from stage0.llm import host

    body = ("i = ctx.new_id()\n    ctx.record([{'id': i, 'entity_type': 'note', 'who': 'k', "
            "'this': 'x', 'owner_id': 'system', 'tenant_id': 'system', "
            "'visibility': 'tenant'}])\n    return i")
    [fn] = store.append(kernel_conn, [function_span(code=f"def main(ctx):\n    {body}\n")],
                        operator)
    allow(kernel_conn, operator, fn["id"])
    recorded = loader.boot(fn["id"])
    host.for_loader(loader).flush()
    assert store.head(kernel_conn, recorded)["entity_type"] == "note"
    body = (f"ctx.record([{{'id': '{fn['id']}', 'entity_type': 'note', 'who': 'k', "
            "'this': 'x', 'owner_id': 'system', 'tenant_id': 'system', "
            "'visibility': 'tenant'}])")
    [bad] = store.append(kernel_conn, [function_span(code=f"def main(ctx):\n    {body}\n")],
                         operator)
    allow(kernel_conn, operator, bad["id"])
    with pytest.raises(Exception) as refused:
        loader.boot(bad["id"])
    assert getattr(refused.value, "code", None) == "KERNEL_RECORD_INVALID"
    assert store.head(kernel_conn, fn["id"])["entity_type"] == "function"
