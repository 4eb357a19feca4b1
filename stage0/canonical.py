"""Normal form and canonical bytes of a span. Pure: no database, no keys.

A span is normalised (types checked, defaults filled, UUIDs and hex lowercased, `at` rendered
like JavaScript's Date.toISOString()), then its canonical bytes are the RFC 8785 (JCS)
serialisation of the normalised span without `curr_hash`, `signature` and null fields.
docs/canonical-form.md is the specification; tests/vectors/ holds reference vectors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785

from .errors import LoglineError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_INT32 = 2**31 - 1
MAX_JSON_DEPTH = 64
#: Largest canonical form accepted, in bytes (documented in docs/canonical-form.md).
MAX_SPAN_BYTES = 1024 * 1024

UUID_FIELDS = ("id", "parent_id")
INT_FIELDS = ("seq", "duration_ms")
TEXT_FIELDS = (
    "entity_type", "who", "did", "this", "owner_id", "tenant_id", "visibility", "status",
    "name", "description", "code", "language", "runtime", "trace_id",
)
HEX_FIELDS = {"prev_hash": 64, "curr_hash": 64, "signature": 128, "public_key": 64}
JSON_FIELDS = ("input", "output", "error", "metadata", "content")
#: Every column of a span, in table order (the ledger's `position` is not part of a span).
FIELDS = (
    "id", "seq", "entity_type", "who", "did", "this", "at", "parent_id", "related_to",
    "owner_id", "tenant_id", "visibility", "status", "is_deleted", "name", "description", "code",
    "language", "runtime", "input", "output", "error", "duration_ms", "trace_id", "prev_hash",
    "curr_hash", "signature", "public_key", "metadata", "content",
)
REQUIRED = ("id", "entity_type", "who", "this", "at")
VISIBILITIES = ("private", "tenant", "public")
#: Length bounds the ledger's CHECK constraints enforce (NOTIFY envelopes carry these fields).
LENGTHS = {"entity_type": 100, "owner_id": 200, "tenant_id": 200}
UNSIGNED = ("curr_hash", "signature")


def _bad(field: str, message: str, code: str = "SPAN_INVALID_FIELD") -> LoglineError:
    return LoglineError(code, message, field)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {type(value).__name__}")
    if value.isascii():  # the common case: no surrogates possible
        if "\x00" in value:
            raise _bad(field, "contains a NUL character (\\u0000), which PostgreSQL cannot "
                       "store", "SPAN_NUL_CHARACTER")
        return value
    if "\x00" in value:
        raise _bad(field, "contains a NUL character (\\u0000), which PostgreSQL cannot store",
                   "SPAN_NUL_CHARACTER")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(field, "contains a lone surrogate: not valid Unicode",
                   "SPAN_INVALID_UNICODE") from None
    return value


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uuid(value: Any, field: str) -> str:
    text = _text(value, field)
    if not _UUID.fullmatch(text):
        raise _bad(field, f"is not a UUID in 8-4-4-4-12 form: {text[:60]!r}",
                   "SPAN_INVALID_UUID")
    return text.lower()


def _int(value: Any, field: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer, got {type(value).__name__}")
    if not 0 <= value <= upper:
        raise _bad(field, f"must be between 0 and {upper}, got {value}", "SPAN_OUT_OF_RANGE")
    return value


def _hex(value: Any, field: str, length: int) -> str:
    text = _text(value, field).lower()
    if len(text) != length or any(c not in "0123456789abcdef" for c in text):
        raise _bad(field, f"must be {length} hex digits", "SPAN_INVALID_HEX")
    return text


def parse_at(value: Any, field: str = "at") -> datetime:
    """An aware datetime truncated to the millisecond, from a datetime or an ISO 8601 string."""
    if isinstance(value, str):
        text = _text(value, field)
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _bad(field, f"is not an ISO 8601 timestamp: {text[:60]!r}",
                       "SPAN_INVALID_TIMESTAMP") from None
    if not isinstance(value, datetime):
        raise _bad(field, "must be an ISO 8601 timestamp string", "SPAN_INVALID_TIMESTAMP")
    if value.tzinfo is None:
        raise _bad(field, "timestamp needs a time zone (use Z for UTC)", "SPAN_INVALID_TIMESTAMP")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise _bad(field, "falls outside years 0001-9999 once converted to UTC",
                   "SPAN_INVALID_TIMESTAMP") from None
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def format_at(value: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly like JavaScript's Date.prototype.toISOString()."""
    v = value.astimezone(UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z")


def now_at() -> str:
    return format_at(datetime.now(UTC))


def check_json(value: Any, where: str, depth: int = 0) -> bool:
    """Validate a JSON value in place. True when it needs the general JCS path
    (it holds a float, or a key outside the Basic Multilingual Plane)."""
    if depth > MAX_JSON_DEPTH:
        raise _bad(where, f"nests deeper than {MAX_JSON_DEPTH} levels", "SPAN_JSON_TOO_DEEP")
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _bad(where, f"integer {value} is beyond +-(2^53-1) and cannot round-trip "
                              "through JSON clients exactly", "SPAN_INTEGER_RANGE")
        return False
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _bad(where, "NaN and Infinity are not JSON numbers", "SPAN_NON_FINITE_NUMBER")
        return True
    if isinstance(value, str):
        _text(value, where)
        return False
    if isinstance(value, list):
        slow = False
        for i, item in enumerate(value):
            slow = check_json(item, f"{where}[{i}]", depth + 1) or slow
        return slow
    if isinstance(value, dict):
        slow = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise _bad(where, f"object key {key!r} is not a string")
            _text(key, f"{where}.{key}")
            slow = slow or (not key.isascii() and any(ord(c) > 0xFFFF for c in key))
            slow = check_json(item, f"{where}.{key}", depth + 1) or slow
        return slow
    raise _bad(where, f"{type(value).__name__} is not a JSON value")


def normalise(span: Mapping[str, Any]) -> dict[str, Any]:
    """The normal form of a span: every field present (None when absent), defaults filled.

    Raises LoglineError naming the field for anything that cannot be stored and re-hashed
    exactly. Does not fill `at`: a span without a time is incomplete (see ledger.prepare).
    """
    if not isinstance(span, Mapping):
        raise LoglineError("SPAN_NOT_OBJECT", f"a span is a JSON object, got {type(span).__name__}")
    unknown = sorted(set(span) - set(FIELDS))
    if unknown:
        raise LoglineError("SPAN_UNKNOWN_FIELD", f"unknown field(s): {', '.join(unknown)}",
                           unknown[0])
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    for field in REQUIRED:
        if span.get(field) is None:
            raise _bad(field, "is required", "SPAN_MISSING_FIELD")
    for field, value in span.items():
        if value is None:
            continue
        if field in UUID_FIELDS:
            out[field] = _uuid(value, field)
        elif field in INT_FIELDS:
            out[field] = _int(value, field, MAX_INT32)
        elif field in TEXT_FIELDS:
            out[field] = _text(value, field)
        elif field in HEX_FIELDS:
            out[field] = _hex(value, field, HEX_FIELDS[field])
        elif field in JSON_FIELDS:
            check_json(value, field)
            out[field] = value
        elif field == "at":
            out[field] = format_at(parse_at(value))
        elif field == "is_deleted":
            if not isinstance(value, bool):
                raise _bad(field, f"must be true or false, got {type(value).__name__}")
            out[field] = value
        elif field == "related_to":
            if not isinstance(value, list):
                raise _bad(field, "must be a list of UUIDs")
            out[field] = [_uuid(v, f"related_to[{i}]") for i, v in enumerate(value)]
    out["seq"] = 0 if out["seq"] is None else out["seq"]
    out["visibility"] = out["visibility"] or "private"
    out["is_deleted"] = bool(out["is_deleted"])
    for field, upper in LENGTHS.items():
        if out[field] is not None and not 1 <= len(out[field]) <= upper:
            raise _bad(field, f"must be 1 to {upper} characters", "SPAN_OUT_OF_RANGE")
    if out["visibility"] not in VISIBILITIES:
        raise _bad("visibility", f"must be one of {', '.join(VISIBILITIES)}, "
                                 f"got {out['visibility']!r}", "SPAN_INVALID_VISIBILITY")
    if (out["seq"] == 0) != (out["prev_hash"] is None):
        raise _bad("prev_hash", "seq 0 has no prev_hash; every later seq needs one",
                   "SPAN_PREV_HASH_REQUIRED")
    return out


def signing_view(span: Mapping[str, Any]) -> dict[str, Any]:
    """What the hash covers: every non-null field except curr_hash and signature."""
    return {k: v for k, v in span.items() if v is not None and k not in UNSIGNED}


def _general(value: Any) -> bool:
    """True when a (validated) JSON value needs the general JCS path: it holds a float or an
    object key outside the Basic Multilingual Plane. Types only; no validation."""
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_general(v) for v in value)
    if isinstance(value, dict):
        return any((not k.isascii() and any(ord(c) > 0xFFFF for c in k)) or _general(v)
                   for k, v in value.items())
    return False


def canonical_bytes(span: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a *normalised* span (see `normalise`)."""
    view = signing_view(span)
    slow = any(_general(view[f]) for f in JSON_FIELDS if f in view)
    data = rfc8785.dumps(view) if slow else _fast_jcs(view)
    if len(data) > MAX_SPAN_BYTES:
        raise LoglineError("SPAN_TOO_LARGE", f"canonical form is {len(data)} bytes; the limit "
                                             f"is {MAX_SPAN_BYTES}", span.get("id"))
    return data


def _fast_jcs(view: Mapping[str, Any]) -> bytes:
    # For values holding no float and no astral-plane key, RFC 8785 coincides with sorted,
    # compact, non-ASCII-escaping JSON: same string escapes, same integer digits, and code
    # point order equals UTF-16 order below U+10000. tests/test_canonical.py proves it.
    return json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")
