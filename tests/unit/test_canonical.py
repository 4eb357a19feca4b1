"""The canonical form of a span, without a database: the published reference vectors, the
documented refusals, and properties over arbitrary JSON (docs/canonical-form.md)."""

from __future__ import annotations

import importlib.util
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from helpers import REPO
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import rows
from stage0.spans.canonical import (
    FIELDS,
    MAX_SAFE_INTEGER,
    MAX_SPAN_BYTES,
    _fast_jcs,
    canonical_bytes,
    check_json,
    normalise,
    signing_view,
)
from stage0.spans.proofs import check_proofs, seal

VECTORS_FILE = REPO / "tests" / "vectors" / "vectors.json"
DOC = REPO / "docs" / "canonical-form.md"
VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
KEY = SigningKey(bytes.fromhex(VECTORS["seed_hex"]))
OTHER_KEY = SigningKey(bytes(range(1, 33)))


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_vectors", REPO / "tools" /
                                                  "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refuse(span: Any) -> LoglineError:
    with pytest.raises(LoglineError) as info:
        canonical_bytes(normalise(span))
    return info.value


def _base(**fields: Any) -> dict[str, Any]:
    return {"id": "7e570001-0000-4000-8000-000000000001", "entity_type": "note", "who": "w",
            "this": "t", "at": "2024-05-01T12:00:00.000Z", **fields}


# -- reference vectors ---------------------------------------------------------------------

def test_vectors_file_is_exactly_what_the_generator_makes():
    assert _load_generator().render() == VECTORS_FILE.read_text(encoding="utf-8"), \
        "tests/vectors/vectors.json is stale: run python tools/make_vectors.py"


def test_vectors_are_signed_by_the_published_seed():
    assert bytes(KEY.verify_key).hex() == VECTORS["public_key"]
    assert VECTORS["seed_hex"] == bytes(range(32)).hex()


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector_reproduces_byte_for_byte(vector):
    normal = normalise(vector["input"])
    assert {k: v for k, v in normal.items() if v is not None} == vector["normalised"]
    sealed = seal(normal, KEY)
    data = canonical_bytes(sealed)
    assert data == vector["canonical"].encode("utf-8")
    assert data == rfc8785.dumps(signing_view(sealed))
    assert (sealed["curr_hash"], sealed["public_key"], sealed["signature"]) == (
        vector["curr_hash"], vector["public_key"], vector["signature"])
    assert check_proofs(sealed).ok


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_signed_vector_is_a_fixed_point_of_normalise(vector):
    """What `logline sign` writes (non-null normal form) normalises to itself, so any client
    can hash the span as written."""
    written = {**vector["normalised"], "public_key": vector["public_key"],
               "curr_hash": vector["curr_hash"], "signature": vector["signature"]}
    again = normalise(written)
    assert {k: v for k, v in again.items() if v is not None} == written
    assert check_proofs(again).ok


@pytest.mark.parametrize("refusal", VECTORS["refusals"], ids=lambda r: r["name"])
def test_refusal_has_its_documented_code_and_place(refusal):
    exc = _refuse(rows.parse_line(refusal["input_json"]))
    assert (exc.code, exc.where) == (refusal["code"], refusal["where"])


def test_every_refusal_code_is_documented():
    doc = DOC.read_text(encoding="utf-8")
    codes = {r["code"] for r in VECTORS["refusals"]} | {"SPAN_TOO_LARGE"}
    assert sorted(c for c in codes if f"`{c}`" not in doc) == []


def test_worked_example_in_the_docs_is_the_vector():
    doc = DOC.read_text(encoding="utf-8")
    [vector] = [v for v in VECTORS["vectors"] if v["name"] == "worked-example"]
    for value in (vector["canonical"], vector["curr_hash"], vector["public_key"],
                  vector["signature"], VECTORS["seed_hex"]):
        assert value in doc


# -- refusals that cannot be written as JSON text, and the limits -------------------------

@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(number):
    exc = _refuse(_base(input={"deep": [1, number]}))
    assert (exc.code, exc.where) == ("SPAN_NON_FINITE_NUMBER", "input.deep[1]")


@pytest.mark.parametrize("value, ok", [(MAX_SAFE_INTEGER, True), (-MAX_SAFE_INTEGER, True),
                                       (MAX_SAFE_INTEGER + 1, False),
                                       (-MAX_SAFE_INTEGER - 1, False), (10**30, False)])
def test_integer_range_is_plus_minus_2_pow_53_minus_1(value, ok):
    span = _base(metadata={"n": value})
    if ok:
        assert canonical_bytes(normalise(span)).count(str(value).encode()) == 1
    else:
        assert _refuse(span).code == "SPAN_INTEGER_RANGE"


def test_size_limit_is_one_mebibyte_of_canonical_bytes():
    empty = len(canonical_bytes(normalise(_base(metadata=""))))
    at_limit = _base(metadata="x" * (MAX_SPAN_BYTES - empty))
    assert len(canonical_bytes(normalise(at_limit))) == MAX_SPAN_BYTES
    exc = _refuse(_base(metadata="x" * (MAX_SPAN_BYTES - empty + 1)))
    assert exc.code == "SPAN_TOO_LARGE"
    assert str(MAX_SPAN_BYTES) in exc.message


def test_size_limit_counts_utf8_bytes_not_characters():
    empty = len(canonical_bytes(normalise(_base(metadata=""))))
    emoji = "\U0001F600" * ((MAX_SPAN_BYTES - empty) // 4 + 1)  # 4 bytes each in UTF-8
    assert len(emoji) < MAX_SPAN_BYTES
    assert _refuse(_base(metadata=emoji)).code == "SPAN_TOO_LARGE"


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_outside_the_representable_range_is_refused_with_a_reason(at):
    try:
        exc = _refuse(_base(at=at))
    except OverflowError as bug:
        raise AssertionError(f"OverflowError escaped: {bug}") from None
    assert (exc.code, exc.where) == ("SPAN_INVALID_TIMESTAMP", "at")


# -- properties over arbitrary JSON --------------------------------------------------------

SPECIAL = ["\x01", "\x1f", "\x7f", "\x80", '"', "\\", "/", "\u2028", "\u2029", "\ud7ff",
           "\ue000", "\uff61", "\ufffd", "\uffff", "\U00010000", "\U0001F600", "\U0010FFFF",
           "e\u0301", "\u200d"]
PIECES = st.one_of(st.characters(codec="utf-8", exclude_characters="\x00"),
                   st.sampled_from(SPECIAL))
TEXT = st.lists(PIECES, max_size=8).map("".join)
BMP_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00",
                                 max_codepoint=0xFFFF), max_size=8)
INTS = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars: st.SearchStrategy, keys: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        st.none() | st.booleans() | scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=12)


ANY_JSON = json_values(INTS | FLOATS | TEXT, TEXT)
FLOATLESS_BMP_KEYS = json_values(INTS | TEXT, BMP_TEXT | st.sampled_from(SPECIAL[:14]))


def spans(payload: st.SearchStrategy = ANY_JSON) -> st.SearchStrategy:
    """Spans as a client would send them: required fields, any subset of the others."""
    text_fields = ("did", "name", "description", "code", "status", "trace_id", "language",
                   "runtime")
    bounded = TEXT.filter(lambda t: 1 <= len(t) <= 100)  # the ledger's length limits
    optional = {
        **{f: payload for f in ("input", "output", "error", "metadata", "content")},
        **{f: TEXT for f in text_fields},
        "owner_id": bounded, "tenant_id": bounded,
        "related_to": st.lists(st.uuids().map(str), max_size=3),
        "visibility": st.sampled_from(["private", "tenant", "public"]),
        "duration_ms": st.integers(0, 2**31 - 1), "is_deleted": st.booleans(),
        "seq": st.integers(1, 2**31 - 1),
    }
    required = {
        "id": st.uuids().map(str), "entity_type": st.from_regex(r"\A[a-z][a-z0-9_]{0,63}\Z"),
        "who": TEXT, "this": TEXT,
        "at": st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.just(UTC))
        .map(datetime.isoformat),
    }
    return st.fixed_dictionaries(required, optional=optional).map(
        lambda s: {**s, "prev_hash": "ab" * 32} if "seq" in s else s)


@settings(max_examples=150, deadline=None)
@given(spans())
@example(_base(metadata={"\U0001F600": 1, "\ue000": 2}, input=[-0.0, 1e21, 5e-324]))
def test_canonical_bytes_equal_rfc8785_byte_for_byte(span):
    normal = seal(normalise(span), KEY)
    assert canonical_bytes(normal) == rfc8785.dumps(signing_view(normal))


@settings(max_examples=150, deadline=None)
@given(spans(FLOATLESS_BMP_KEYS))
def test_fast_path_equals_rfc8785_when_it_is_taken(span):
    """_fast_jcs is used exactly when no JSON field holds a float or an astral-plane key;
    for those views it must agree with the reference implementation."""
    view = signing_view(seal(normalise(span), KEY))
    assert not any(check_json(view[f], f) for f in ("input", "output", "error", "metadata",
                                                    "content") if f in view)
    assert _fast_jcs(view) == rfc8785.dumps(view)


@settings(max_examples=100, deadline=None)
@given(spans())
def test_normal_form_is_idempotent(span):
    once = normalise(span)
    twice = normalise({k: v for k, v in once.items() if v is not None})
    assert canonical_bytes(twice) == canonical_bytes(once)


def _other_uuid(value: str | None) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, value or "none"))


def _flip_hex(value: str) -> str:
    return ("1" if value[0] != "1" else "2") + value[1:]


def _changed(field: str, value: Any) -> Any:
    """A different, still well-typed value for `field`."""
    if field in ("id", "parent_id"):
        return _other_uuid(value)
    if field == "related_to":
        return [*(value or []), _other_uuid(None)]
    if field in ("seq", "duration_ms"):
        return (value or 0) + 1
    if field == "is_deleted":
        return not value
    if field == "at":
        return "2000-01-01T00:00:00.000Z" if value != "2000-01-01T00:00:00.000Z" else \
            "2000-01-01T00:00:00.001Z"
    if field in ("prev_hash", "curr_hash", "signature"):
        return _flip_hex(value) if value else "cd" * 32
    if field == "public_key":
        return bytes(OTHER_KEY.verify_key).hex()
    if field in ("input", "output", "error", "metadata", "content"):
        return {"was": value}
    return (value or "") + "x"


@settings(max_examples=60, deadline=None)
@given(spans())
def test_sealed_span_verifies_and_any_change_breaks_it(span):
    sealed = seal(normalise(span), KEY)
    assert check_proofs(sealed).ok
    for field in FIELDS:
        tampered = {**sealed, field: _changed(field, sealed[field])}
        check = check_proofs(tampered)
        assert not check.ok, f"changing {field} went unnoticed"
        expected = "SIGNATURE_INVALID" if field == "signature" else "HASH_MISMATCH"
        assert check.reason == expected, (field, check)
        if sealed[field] is not None and field not in ("curr_hash", "signature"):
            assert check_proofs({**sealed, field: None}).reason == "HASH_MISMATCH", field


def test_signature_by_another_key_over_the_same_hash_fails():
    sealed = seal(normalise(_base()), KEY)
    forged = {**sealed, "signature": OTHER_KEY.sign(bytes.fromhex(sealed["curr_hash"]))
              .signature.hex()}
    assert check_proofs(forged).reason == "SIGNATURE_INVALID"
