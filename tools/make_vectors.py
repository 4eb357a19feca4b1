"""Generate tests/vectors/vectors.json: reference vectors for the canonical form of a span.

    python tools/make_vectors.py           # rewrite tests/vectors/vectors.json
    python tools/make_vectors.py --check   # exit 1 if the file is not what this script makes

Deterministic: a fixed Ed25519 seed (bytes 0..31), fixed ids and fixed `at` values, and
Ed25519 signatures are deterministic, so running it twice gives the same bytes. Each vector
holds the `input` a client sends, the `normalised` span (non-null fields, before `public_key`
is set), the `canonical` text (its UTF-8 encoding is what is hashed), `curr_hash`,
`public_key` and `signature`. Each refusal holds `input_json` (the JSON text of one NDJSON
line) and the reason `code` and `where` that stage0 must refuse it with. The file is pure
ASCII: non-ASCII characters and lone surrogates appear as JSON \\u escapes.
docs/canonical-form.md is the specification these vectors illustrate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.spans.canonical import canonical_bytes, normalise
from stage0.spans.proofs import seal

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "vectors.json"
SEED = bytes(range(32))
AT = "2024-05-01T12:00:00.000Z"
ID = "00000000-0000-4000-8000-00000000f00d"


def _id(n: int) -> str:
    return f"7e57{n:04x}-0000-4000-8000-{n:012x}"


def _span(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": _id(n), "entity_type": "note", "who": "vectors", "this": "t", "at": AT,
            **fields}


def _nest(depth: int, leaf: Any) -> Any:
    """`leaf` inside `depth` arrays: the leaf sits at depth `depth` below the field."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


PREV = "9f" * 32

VECTORS: list[tuple[str, str, dict[str, Any]]] = [
    ("worked-example", "the example of docs/canonical-form.md", {
        "id": "0E9A3F4C-6B1D-4C2A-9F3E-1A2B3C4D5E6F", "entity_type": "note", "who": "alice",
        "did": "wrote", "this": "caf\u00e9 \u2615 \U0001F680",
        "at": "2024-05-01T14:03:07.123456+02:00", "owner_id": "alice", "tenant_id": "acme",
        "metadata": {"tags": ["\u00fcn\u00efcode", "\U0001F600"], "score": 0.5, "n": 1e21,
                     "count": 3},
    }),
    ("minimal", "only the required fields; seq, visibility and is_deleted are defaulted",
     _span(1)),
    ("every-field", "every column set (seq 1 therefore carries prev_hash)", {
        "id": _id(2), "seq": 1, "entity_type": "function", "who": "operator", "did": "defined",
        "this": "a kernel", "at": "2024-05-01T12:34:56.789Z", "parent_id": _id(3),
        "related_to": [_id(4), _id(5)], "owner_id": "u1", "tenant_id": "t1",
        "visibility": "tenant", "status": "active", "is_deleted": True, "name": "run_code",
        "description": "executes a function span", "code": "def main(ctx):\n    return 1\n",
        "language": "python", "runtime": "python3.11", "input": {"x": 1},
        "output": {"y": [1, 2]}, "error": {"message": "none"}, "duration_ms": 2147483647,
        "trace_id": "trace-1", "prev_hash": PREV, "metadata": {"k": "v"},
        "content": {"text": "hello"},
    }),
    ("unicode-bmp", "BMP text is written as raw UTF-8, never \\u-escaped", _span(
        6, this="Gr\u00fc\u00dfe, \u4e16\u754c",
        name="\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
        metadata={"\u043a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447\u0435\u043d\u0438\u0435",
                  "\u65e5\u672c": "\u8a9e", "\uff61": "halfwidth", "\ufffd": "replacement"})),
    ("unicode-astral-keys", "keys sort by UTF-16 code units: U+1F600 (D83D DE00) sorts "
     "before U+E000 and U+FF61, unlike code point order", _span(
         7, this="\U0001D11E \U00010348 \U0001F600",
         metadata={"\ue000": 1, "\U0001F600": 2, "a": 3, "\uff61": 4, "\U00010000": 5,
                   "z": {"\U0001F680": "rocket", "\ufb01": "ligature"}})),
    ("combining-marks", "no Unicode normalisation: e+U+0301 and U+00E9 stay distinct keys",
     _span(8, this="e\u0301 \u00e9 a\u0308\u0304",
           metadata={"e\u0301": "decomposed", "\u00e9": "precomposed"})),
    ("emoji", "emoji sequences (ZWJ, flags, skin tones) are plain code points", _span(
        9, this="\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 "
                "\U0001F1E7\U0001F1F7 \U0001F44B\U0001F3FD",
        metadata={"\U0001F3F3\ufe0f\u200d\U0001F308": ["\u2764\ufe0f",
                                                          "\U0001F9D1\u200d\U0001F4BB"]})),
    ("escapes", "control characters, quote and backslash are escaped; '/', DEL, C1 controls "
     "and U+2028/U+2029 are not", _span(
         10, this="tab\there \"quoted\" back\\slash /slash",
         code="line1\nline2\r\n\b\f\x01\x1f\x7f\x80\x9f\u2028\u2029",
         metadata={"ctl": "".join(chr(c) for c in range(1, 32)), "quote\"key": "\\",
                   "new\nline": "ok", "": "empty key"})),
    ("integers", "integers up to +-(2^53-1) (no float present: the fast path)", _span(
        11, metadata={"zero": 0, "one": 1, "neg": -1, "max": 2**53 - 1, "min": -(2**53 - 1),
                      "int32": 2147483647}, duration_ms=0)),
    ("numbers", "floats render as ECMAScript Number.prototype.toString", _span(
        12, metadata={
            "list": [0, -0.0, 1.0, 1e21, 1e-7, 5e-324, 2**53 - 1, -(2**53 - 1), 0.1 + 0.2,
                     123.456],
            "boundaries": [1e20, 9.999999999999999e20, 1e-6, 1.5e-7, 1e16, 1.7976931348623157e308,
                           2.2250738585072014e-308, -1.5, 100.0, 4.35, 0.000001234],
            "negzero": -0.0, "half": 0.5,
        })),
    ("nested", "arrays and objects nested, booleans and nulls inside JSON", _span(
        13, input={"a": [1, {"b": [True, False, None, {"c": {"d": []}}]}], "e": {"f": {}}},
        output=[[], [[]], {"x": [{"y": None}]}])),
    ("max-depth", "a value nested exactly 64 levels below the field is accepted", _span(
        14, metadata={"deep": _nest(63, 1)})),
    ("empty", "empty containers and empty strings are kept (only null fields are dropped)",
     _span(15, input={}, output=[], error="", metadata={"a": {}, "b": [], "c": ""},
           content="", did="", related_to=[])),
    ("json-scalars", "JSON columns may hold any JSON value, not only objects", _span(
        16, input="just a string", output=42, error=False, metadata=[1, "two"],
        content=None)),
    ("related-to", "related_to keeps its order and duplicates; UUIDs are lowercased", _span(
        17, related_to=[_id(20).upper(), _id(19), _id(20)], parent_id=_id(18).upper())),
    ("uppercase", "uppercase UUIDs and hex are lowercased before hashing", {
        "id": "ABCDEF01-2345-4678-9ABC-DEF012345678", "seq": 3, "entity_type": "note",
        "who": "w", "this": "t", "at": AT, "parent_id": "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF",
        "prev_hash": "ABCDEF" + "0" * 58,
    }),
    ("at-negative-offset", "offset converted to UTC; microseconds truncated, not rounded",
     _span(21, at="2024-02-29T23:59:59.999999-03:00")),
    ("at-positive-offset", "half-hour offset, no fraction",
     _span(22, at="2024-01-01T05:30:00+05:30")),
    ("at-nanoseconds", "digits beyond the millisecond are dropped", _span(
        23, at="2024-01-01T00:00:00.123456789Z")),
    ("at-year-0001", "four-digit years, zero padded", _span(24, at="0001-01-01T00:00:00Z")),
    ("at-year-9999", "the last millisecond Python can represent", _span(
        25, at="9999-12-31T23:59:59.999999Z")),
    ("js-property-names", "keys that are special in JavaScript objects are ordinary keys", _span(
        26, metadata={"__proto__": {"polluted": True}, "toJSON": "not a function",
                      "constructor": 1, "hasOwnProperty": [], "length": 0})),
]


INF, NEG_INF = "__1e400__", "__-1e400__"


Refusal = tuple[str, str, str, str | None]


def _refusal(name: str, span: Any, code: str, where: str | None) -> Refusal:
    """`span` as one NDJSON line. Lone surrogates become \\u escapes; INF and NEG_INF become
    1e400 and -1e400, which JSON parsers read as infinite doubles."""
    text = json.dumps(span).replace(f'"{INF}"', "1e400").replace(f'"{NEG_INF}"', "-1e400")
    return name, text, code, where


REFUSALS: list[Refusal] = [
    _refusal("nul-in-text", _span(40, this="a\x00b"), "SPAN_NUL_CHARACTER", "this"),
    _refusal("nul-in-json-string", _span(40, metadata={"k": ["ok", "a\x00"]}),
             "SPAN_NUL_CHARACTER", "metadata.k[1]"),
    _refusal("nul-in-key", _span(40, metadata={"a\x00": 1}), "SPAN_NUL_CHARACTER",
             "metadata.a\x00"),
    _refusal("lone-high-surrogate", _span(40, this="\ud800x"), "SPAN_INVALID_UNICODE", "this"),
    _refusal("lone-low-surrogate-in-key", _span(40, metadata={"\udc00": 1}),
             "SPAN_INVALID_UNICODE", "metadata.\udc00"),
    _refusal("integer-above-2^53-1", _span(40, metadata={"n": 2**53}), "SPAN_INTEGER_RANGE",
             "metadata.n"),
    _refusal("integer-below-minus-2^53-1", _span(40, input=[-(2**53)]), "SPAN_INTEGER_RANGE",
             "input[0]"),
    _refusal("infinity", _span(40, metadata={"x": INF}), "SPAN_NON_FINITE_NUMBER",
             "metadata.x"),
    _refusal("negative-infinity", _span(40, output=[1, NEG_INF]), "SPAN_NON_FINITE_NUMBER",
             "output[1]"),
    _refusal("too-deep", _span(40, metadata=_nest(65, 1)), "SPAN_JSON_TOO_DEEP",
             "metadata" + "[0]" * 65),
    _refusal("invalid-uuid", _span(40, id="not-a-uuid"), "SPAN_INVALID_UUID", "id"),
    _refusal("uuid-without-hyphens", _span(40, id=_id(40).replace("-", "")),
             "SPAN_INVALID_UUID", "id"),
    _refusal("uuid-in-braces", _span(40, parent_id="{" + _id(41) + "}"), "SPAN_INVALID_UUID",
             "parent_id"),
    _refusal("related-to-bad-uuid", _span(40, related_to=[_id(41), "x"]), "SPAN_INVALID_UUID",
             "related_to[1]"),
    _refusal("at-without-zone", _span(40, at="2024-05-01T12:00:00"), "SPAN_INVALID_TIMESTAMP",
             "at"),
    _refusal("at-not-a-timestamp", _span(40, at="yesterday"), "SPAN_INVALID_TIMESTAMP", "at"),
    _refusal("bad-visibility", _span(40, visibility="secret"), "SPAN_INVALID_VISIBILITY",
             "visibility"),
    _refusal("unknown-field", _span(40, colour="blue"), "SPAN_UNKNOWN_FIELD", "colour"),
    _refusal("missing-who", {k: v for k, v in _span(40).items() if k != "who"},
             "SPAN_MISSING_FIELD", "who"),
    _refusal("seq-negative", _span(40, seq=-1), "SPAN_OUT_OF_RANGE", "seq"),
    _refusal("seq-above-int32", _span(40, seq=2**31, prev_hash=PREV), "SPAN_OUT_OF_RANGE",
             "seq"),
    _refusal("seq-float", _span(40, seq=1.0, prev_hash=PREV), "SPAN_INVALID_FIELD", "seq"),
    _refusal("seq-without-prev-hash", _span(40, seq=1), "SPAN_PREV_HASH_REQUIRED", "prev_hash"),
    _refusal("seq-0-with-prev-hash", _span(40, prev_hash=PREV), "SPAN_PREV_HASH_REQUIRED",
             "prev_hash"),
    _refusal("prev-hash-not-hex", _span(40, seq=1, prev_hash="g" * 64), "SPAN_INVALID_HEX",
             "prev_hash"),
    _refusal("is-deleted-string", _span(40, is_deleted="false"), "SPAN_INVALID_FIELD",
             "is_deleted"),
    _refusal("text-field-number", _span(40, who=7), "SPAN_INVALID_FIELD", "who"),
    _refusal("not-an-object", [1, 2], "SPAN_NOT_OBJECT", None),
]


def refusal_error(input_json: str) -> LoglineError:
    """The LoglineError stage0 raises for one refusal's JSON text (AssertionError if none)."""
    span = json.loads(input_json)
    try:
        canonical_bytes(normalise(span))
    except LoglineError as exc:
        return exc
    raise AssertionError(f"accepted: {input_json[:80]}")


def build() -> dict[str, Any]:
    key = SigningKey(SEED)
    vectors = []
    for name, description, span in VECTORS:
        normal = normalise(span)
        shown = {k: v for k, v in normal.items() if v is not None}
        sealed = seal(dict(normal), key)
        vectors.append({
            "name": name, "description": description, "input": span, "normalised": shown,
            "canonical": canonical_bytes(sealed).decode("utf-8"),
            "curr_hash": sealed["curr_hash"], "public_key": sealed["public_key"],
            "signature": sealed["signature"],
        })
    refusals = []
    for name, input_json, code, where in REFUSALS:
        exc = refusal_error(input_json)
        if (exc.code, exc.where) != (code, where):
            raise AssertionError(f"refusal {name}: expected {code} at {where!r}, "
                                 f"got {exc.code} at {exc.where!r}")
        refusals.append({"name": name, "input_json": input_json, "code": code, "where": where})
    return {
        "about": "LogLine canonical form reference vectors; see docs/canonical-form.md. "
                 "Generated by tools/make_vectors.py: do not edit by hand.",
        "seed_hex": SEED.hex(), "public_key": bytes(key.verify_key).hex(),
        "vectors": vectors, "refusals": refusals,
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python tools/make_vectors.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(VECTORS)} vectors and {len(REFUSALS)} refusals to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
