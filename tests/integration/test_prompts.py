"""Prompts as ledger code (issue 14) on a real ledger: the build kernel compiles a seeded
variant's blocks by priority, strictly, hashes it and records one prompt_build per variant
version and vars; it reads only verified rows of the caller's tenant or the system's."""

from __future__ import annotations

import uuid

import blake3
import pytest

from stage0.ledger import store

BUILD = "00000000-0000-4000-8000-000000000011"
CONCISE = "00000000-0000-4000-8000-000000000421"
DOCTRINE = "00000000-0000-4000-8000-000000000401"

pytestmark = pytest.mark.integration


def boot(loader, kernel, args, tenant="acme", user="alice"):
    return loader.boot(kernel, args, user_id=user, tenant_id=tenant,
                       trace_id=str(uuid.uuid4()))


def spans(loader, kind):
    rows = loader.conn.execute("SELECT * FROM ledger.universal_registry WHERE entity_type = "
                               "%s ORDER BY position", (kind,)).fetchall()
    return [store.span_from_row(r) for r in rows]


def author(loader, tenant, kind, metadata, content=None, name="x"):
    span = {"id": str(uuid.uuid4()), "entity_type": kind, "who": "author", "this": name,
            "name": name, "owner_id": "alice", "tenant_id": tenant, "visibility": "tenant",
            "status": "active", "metadata": metadata}
    if content is not None:
        span["content"] = content
    return store.append(loader.conn, [span], loader.key)[0]["id"]


def test_the_seeded_variant_builds_by_priority_and_is_recorded_once(loader):
    out = boot(loader, BUILD, {"variant_id": CONCISE})
    assert out["ok"] and out["error"] is None
    compiled = out["compiled"]
    assert compiled.startswith("You are the assistant of LogLine.")
    assert [b["priority"] for b in out["blocks"]] == [120, 120, 100, 90, 70]
    assert compiled.index("Answer with one JSON object") < compiled.index("keeps every record") \
        < compiled.index("inside the LogLine console") < compiled.index("at most three")
    assert "{{" not in compiled
    assert out["compiled_hash"] == blake3.blake3(compiled.encode()).hexdigest()
    again = boot(loader, BUILD, {"variant_id": CONCISE})
    assert again["build_id"] == out["build_id"]
    [record] = spans(loader, "prompt_build")
    assert record["id"] == out["build_id"] and record["tenant_id"] == "acme"
    assert record["metadata"]["compiled_hash"] == out["compiled_hash"]
    assert record["parent_id"] == CONCISE and record["output"]["compiled"] == compiled
    other = boot(loader, BUILD, {"variant_id": CONCISE, "vars": {"app": "CLI"}})
    assert "inside the CLI" in other["compiled"] and other["build_id"] != out["build_id"]


def test_a_missing_variable_is_an_error_naming_it_never_an_empty_string(loader):
    block = author(loader, "acme", "prompt_block", {"priority": 70},
                   "Greet {{customer}} from {{team}}.")
    variant = author(loader, "acme", "prompt_variant",
                     {"family": "greet", "block_ids": [block],
                      "vars": {"customer": None, "team": "support"}})
    out = boot(loader, BUILD, {"variant_id": variant})
    assert not out["ok"]
    assert out["error"]["code"] == "PROMPT_VARIABLE_MISSING"
    assert "'customer'" in out["error"]["message"]
    assert out["error"]["where"] == f"block {block}: {{{{customer}}}}"
    ok = boot(loader, BUILD, {"variant_id": variant, "vars": {"customer": "Ana"}})
    assert ok["compiled"] == "Greet Ana from support."
    undeclared = boot(loader, BUILD, {"variant_id": variant, "vars": {"customer": "Ana",
                                                                      "sneaky": "x"}})
    assert undeclared["error"]["code"] == "PROMPT_VARIABLE_UNDECLARED"
    assert undeclared["error"]["where"] == "vars.sneaky"
    assert boot(loader, BUILD, {"variant_id": variant, "vars": {"customer": 3}})[
        "error"]["code"] == "PROMPT_VARIABLE_INVALID"
    assert not spans(loader, "prompt_build")[1:]  # only the successful build is recorded


def test_another_tenants_variant_or_block_is_not_found(loader):
    theirs = author(loader, "globex", "prompt_block", {"priority": 100}, "globex secret")
    variant = author(loader, "acme", "prompt_variant", {"family": "f",
                                                        "block_ids": [DOCTRINE, theirs]})
    out = boot(loader, BUILD, {"variant_id": variant})
    assert out["error"]["code"] == "PROMPT_NOT_FOUND"
    assert out["error"]["where"] == "metadata.block_ids[1]"
    assert boot(loader, BUILD, {"variant_id": variant}, tenant="globex")[
        "error"]["code"] == "PROMPT_NOT_FOUND"
    assert boot(loader, BUILD, {"variant_id": "not-an-id"})["error"]["where"] == "variant_id"
    assert boot(loader, BUILD, {"variant_id": DOCTRINE})["error"]["code"] == "PROMPT_NOT_FOUND"


def test_bad_blocks_and_variants_are_refused_with_the_field(loader):
    no_priority = author(loader, "acme", "prompt_block", {"layer": "task"}, "x")
    variant = author(loader, "acme", "prompt_variant", {"family": "f",
                                                        "block_ids": [no_priority]})
    out = boot(loader, BUILD, {"variant_id": variant})
    assert out["error"]["code"] == "PROMPT_BLOCK_INVALID"
    assert out["error"]["where"].endswith("metadata.priority")
    empty = author(loader, "acme", "prompt_variant", {"family": "f", "block_ids": []})
    assert boot(loader, BUILD, {"variant_id": empty})["error"]["code"] == \
        "PROMPT_VARIANT_INVALID"
    unclosed = author(loader, "acme", "prompt_block", {"priority": 1}, "Hi {{name")
    variant = author(loader, "acme", "prompt_variant", {"family": "f",
                                                        "block_ids": [unclosed]})
    assert boot(loader, BUILD, {"variant_id": variant})["error"]["code"] == \
        "PROMPT_TEMPLATE_INVALID"
