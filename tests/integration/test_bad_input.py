"""Bad input is refused with a clear error and leaves nothing half-done (issue 2, item 8).

Every case goes through the real `logline seed FILE` (exit code 2, the reason code on stderr,
no traceback, the ledger unchanged); the location of each error (file:line and field) is
checked through the library, whose message is exactly what the CLI prints after `error: `.
Line 1 of every file is a valid row, so "nothing appended" also proves a file is
all-or-nothing. The same bad spans are then sent through `store.append`, the write path the
HTTP API's POST uses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.ledger import count_spans
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import seed, store
from stage0.ledger.manifest import MANIFEST_ID
from stage0.spans.canonical import MAX_SPAN_BYTES, normalise
from stage0.spans.proofs import seal

SAFE = 2**53 - 1


def row(**fields: Any) -> dict[str, Any]:
    """A valid unsigned row; keyword arguments override or add fields (None removes one)."""
    base = {"id": str(uuid.uuid4()), "entity_type": "note", "who": "tester", "did": "wrote",
            "this": "a note", "owner_id": "user-1", "tenant_id": "tenant-1"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def signed(key: SigningKey, **fields: Any) -> dict[str, Any]:
    """A row signed by `key`, as `logline sign` writes it."""
    span = seal(normalise(row(at="2025-01-01T00:00:00.000Z", **fields)), key)
    return {k: v for k, v in span.items() if v is not None}


@dataclass(frozen=True)
class Case:
    """A bad row (line 2 unless `lines` builds the whole file) and what the refusal names."""

    code: str
    bad: bytes | None = None
    field: str | None = None
    line: int = 2
    lines: Callable[[SigningKey], list[bytes]] | None = None

    def content(self, key: SigningKey) -> bytes:
        lines = self.lines(key) if self.lines else [line(row()), self.bad or b""]
        return b"\n".join(lines) + b"\n"


def _tampered(key: SigningKey) -> list[bytes]:
    span = signed(key)
    span["this"] = "edited after signing"
    return [line(row()), line(span)]


def _bad_signature(key: SigningKey) -> list[bytes]:
    span = signed(key)
    span["signature"] = signed(key)["signature"]  # a valid signature, of another span
    return [line(row()), line(span)]


def _seq_gap_new_id(key: SigningKey) -> list[bytes]:
    # seq 1 of an id the ledger has never seen: seq 0 is missing.
    return [line(row()), line(signed(key, seq=1, prev_hash="ab" * 32))]


def _seq_gap_existing_id(key: SigningKey) -> list[bytes]:
    first = signed(key)
    third = signed(key, id=first["id"], seq=2, prev_hash=first["curr_hash"])
    return [line(first), line(third)]


def _prev_hash_mismatch(key: SigningKey) -> list[bytes]:
    first = signed(key)
    second = signed(key, id=first["id"], seq=1, prev_hash="cd" * 32)
    return [line(first), line(second)]


def _too_large(key: SigningKey) -> list[bytes]:
    return [line(row()), line(row(code="x" * MAX_SPAN_BYTES))]



CASES = {
    "malformed JSON": Case("ROW_BAD_JSON", b'{"id": "00000000-0000-4000-8000-000000000001",'),
    "trailing garbage": Case("ROW_BAD_JSON", line(row()) + b" x"),
    "not an object": Case("ROW_NOT_OBJECT", b'["a", "list"]'),
    "a bare string": Case("ROW_NOT_OBJECT", b'"just text"'),
    "duplicate key": Case("ROW_BAD_JSON", line(row())[:-1] + b', "this": "again"}', "this"),
    "unknown column": Case("SPAN_UNKNOWN_FIELD", line(row(colour="red")), "colour"),
    "invalid uuid": Case("SPAN_INVALID_UUID", line(row(id="not-a-uuid")), "id"),
    "uuid in braces": Case("SPAN_INVALID_UUID",
                           line(row(id="{12345678-1234-4234-8234-123456789abc}")), "id"),
    "invalid parent uuid": Case("SPAN_INVALID_UUID", line(row(parent_id="12")), "parent_id"),
    "invalid related uuid": Case("SPAN_INVALID_UUID", line(row(related_to=["x"])),
                                 "related_to[0]"),
    "NUL in a text field": Case("SPAN_NUL_CHARACTER", line(row(this="a\x00b")), "this"),
    "NUL inside JSON": Case("SPAN_NUL_CHARACTER", line(row(metadata={"k": ["ok", "a\x00"]})),
                            "metadata.k[1]"),
    "raw NUL byte": Case("ROW_BAD_JSON", b'{"id": "x", "this": "a\x00b"}'),
    "lone surrogate": Case("SPAN_INVALID_UNICODE", b'{"id": "00000000-0000-4000-8000-00000000'
                           b'0b01", "entity_type": "n", "who": "w", "this": "\\ud800"}', "this"),
    "integer above 2^53-1": Case("SPAN_INTEGER_RANGE", line(row(metadata={"n": SAFE + 1})),
                                 "metadata.n"),
    "integer below -(2^53-1)": Case("SPAN_INTEGER_RANGE", line(row(input=[-SAFE - 1])),
                                    "input[0]"),
    "NaN literal": Case("ROW_BAD_JSON", line(row())[:-1] + b', "metadata": {"x": NaN}}',
                        "NaN"),
    "Infinity literal": Case("ROW_BAD_JSON", line(row())[:-1] + b', "output": Infinity}',
                             "Infinity"),
    "-Infinity literal": Case("ROW_BAD_JSON", line(row())[:-1] + b', "output": -Infinity}',
                              "-Infinity"),
    "number overflowing to infinity": Case("SPAN_NON_FINITE_NUMBER",
                                           line(row())[:-1] + b', "output": 1e400}', "output"),
    "bad visibility": Case("SPAN_INVALID_VISIBILITY", line(row(visibility="secret")),
                           "visibility"),
    "missing required field": Case("SPAN_MISSING_FIELD", line(row(who=None)), "who"),
    "bad timestamp": Case("SPAN_INVALID_TIMESTAMP", line(row(at="yesterday")), "at"),
    "timestamp without zone": Case("SPAN_INVALID_TIMESTAMP", line(row(at="2025-01-01T00:00:00")),
                                   "at"),
    "negative duration": Case("SPAN_OUT_OF_RANGE", line(row(duration_ms=-1)), "duration_ms"),
    "is_deleted not a bool": Case("SPAN_INVALID_FIELD", line(row(is_deleted="no")),
                                  "is_deleted"),
    "unsigned row with seq": Case("SEED_UNSIGNED_CHAIN_FIELDS", line(row(seq=1)), "seq"),
    "unsigned row with prev_hash": Case("SEED_UNSIGNED_CHAIN_FIELDS",
                                        line(row(prev_hash="ab" * 32)), "prev_hash"),
    "missing id": Case("SEED_ID_REQUIRED", line(row(id=None)), "id"),
    "non-UTF-8 bytes": Case("ROW_BAD_ENCODING",
                            line(row())[:-1] + b', "description": "caf\xe9"}'),
    "tampered signed row": Case("HASH_MISMATCH", lines=_tampered),
    "signature of another span": Case("SIGNATURE_INVALID", lines=_bad_signature),
    "seq gap on a new id": Case("LEDGER_SEQ_GAP", lines=_seq_gap_new_id),
    "wrong prev_hash": Case("LEDGER_PREV_HASH_MISMATCH", lines=_prev_hash_mismatch),
    "row over 1 MiB": Case("SPAN_TOO_LARGE", lines=_too_large),
}

#: Cases refused only when the batch is appended, after every row was parsed and drafted.
APPEND_STAGE = {"tampered signed row", "signature of another span", "seq gap on a new id",
                "wrong prev_hash", "row over 1 MiB"}


def _params(mark_late: bool) -> list:
    return [pytest.param(CASES[name], id=name,
                         marks=[])
            for name in CASES]


@pytest.mark.parametrize("case", _params(mark_late=False))
def test_seed_refuses_bad_row_and_appends_nothing(cli, seeded, operator, tmp_path, case):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(case.content(operator))
    before = count_spans(seeded)

    proc = cli("seed", str(path), check=False)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{case.code}:" in proc.stderr
    assert str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "appended" not in proc.stdout
    assert count_spans(seeded) == before


@pytest.mark.parametrize("case", _params(mark_late=True))
def test_seed_error_names_file_line_and_field(seeded, operator, tmp_path, case):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(case.content(operator))
    with seeded.connect("kernel") as conn, pytest.raises(LoglineError) as caught:
        seed.seed(conn, [path], operator)
    message = str(caught.value)
    assert caught.value.code == case.code
    assert f"{path}:{case.line}" in message
    if case.field:
        assert case.field in message


def test_seq_gap_on_an_existing_id_is_refused(cli, seeded, operator, tmp_path):
    path = tmp_path / "gap.ndjson"
    path.write_bytes(b"\n".join(_seq_gap_existing_id(operator)) + b"\n")
    before = count_spans(seeded)
    proc = cli("seed", str(path), check=False)
    assert proc.returncode == 2
    assert "LEDGER_SEQ_" in proc.stderr
    assert count_spans(seeded) == before


def test_seq_gap_on_an_existing_id_is_called_a_gap(cli, operator, tmp_path):
    path = tmp_path / "gap.ndjson"
    path.write_bytes(b"\n".join(_seq_gap_existing_id(operator)) + b"\n")
    proc = cli("seed", str(path), check=False)
    assert "LEDGER_SEQ_GAP:" in proc.stderr


def test_limits_themselves_are_accepted(cli, seeded, tmp_path):
    """The boundaries of the refusals above are valid input."""
    edge = row(metadata={"max": SAFE, "min": -SAFE, "float": 1.5e300, "nul_escaped": "\\u0000"},
               visibility="public", this="ünïcødé ✓ 😀", at="2025-01-01T12:00:00.123456+02:00")
    path = tmp_path / "edge.ndjson"
    path.write_bytes(line(edge) + b"\r\n\n")  # CRLF and a trailing blank line are fine
    cli("seed", str(path))
    with seeded.connect("kernel") as conn:
        stored = store.head(conn, edge["id"])
    assert stored["metadata"] == edge["metadata"]
    assert stored["this"] == edge["this"]
    assert stored["at"] == "2025-01-01T10:00:00.123Z"


def test_row_just_under_the_size_limit_is_accepted(seeded, operator, tmp_path):
    big = row(code="x" * (MAX_SPAN_BYTES - 2000))
    path = tmp_path / "big.ndjson"
    path.write_bytes(line(big) + b"\n")
    with seeded.connect("kernel") as conn:
        [result] = seed.seed(conn, [path], operator)
        assert result.appended == 1
        assert store.head(conn, big["id"])["code"] == big["code"]


@pytest.mark.parametrize("entries", [[{"name": "bob"}], "not-a-list"], ids=["no key", "string"])
def test_malformed_trusted_keys_in_a_manifest_row(cli, seeded, tmp_path, entries):
    manifest_row = row(id=MANIFEST_ID, entity_type="manifest", owner_id="system",
                       tenant_id="system", visibility="public", metadata={"trusted_keys": entries})
    path = tmp_path / "manifest.ndjson"
    path.write_bytes(line(manifest_row) + b"\n")
    before = count_spans(seeded)
    proc = cli("seed", str(path), check=False)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    assert f"{path}:1" in proc.stderr and "trusted_keys" in proc.stderr
    assert count_spans(seeded) == before


# The write path behind POST /api/spans: store.append refuses the same spans, all or nothing.

APPEND_CASES = {
    "unknown column": ({"colour": "red"}, "SPAN_UNKNOWN_FIELD", "colour"),
    "invalid uuid": ({"parent_id": "nope"}, "SPAN_INVALID_UUID", "parent_id"),
    "NUL in a text field": ({"who": "a\x00"}, "SPAN_NUL_CHARACTER", "who"),
    "NUL in a JSON key": ({"metadata": {"a\x00": 1}}, "SPAN_NUL_CHARACTER", "metadata"),
    "integer beyond 2^53-1": ({"output": {"n": -(SAFE + 1)}}, "SPAN_INTEGER_RANGE", "output.n"),
    "NaN": ({"metadata": {"x": float("nan")}}, "SPAN_NON_FINITE_NUMBER", "metadata.x"),
    "Infinity": ({"input": [float("inf")]}, "SPAN_NON_FINITE_NUMBER", "input[0]"),
    "not JSON": ({"metadata": {"when": {1, 2}}}, "SPAN_INVALID_FIELD", "metadata.when"),
    "bad visibility": ({"visibility": "PUBLIC"}, "SPAN_INVALID_VISIBILITY", "visibility"),
    "seq beyond int32": ({"seq": 2**31, "prev_hash": "ab" * 32}, "SPAN_OUT_OF_RANGE", "seq"),
    "over 1 MiB": ({"content": "x" * MAX_SPAN_BYTES}, "SPAN_TOO_LARGE", None),
}


@pytest.mark.parametrize("fields,code,field", list(APPEND_CASES.values()), ids=list(APPEND_CASES))
def test_append_refuses_bad_span_and_writes_nothing(seeded, operator, fields, code, field):
    good, bad = row(), row(**fields)
    before = count_spans(seeded)
    with seeded.connect("kernel") as conn, pytest.raises(LoglineError) as caught:
        store.append(conn, [good, bad], operator)
    assert caught.value.code == code
    assert "span[1]" in str(caught.value)
    if field:
        assert field in str(caught.value)
    assert count_spans(seeded) == before
