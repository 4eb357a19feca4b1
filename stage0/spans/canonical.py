"""Normal form and canonical bytes of a span. Pure: no database, no keys.

A span is normalised (types checked, defaults filled, UUIDs and hex lowercased, `at` rendered
like JavaScript's Date.toISOString()), then its canonical bytes are the RFC 8785 (JCS)
serialisation of the normalised span without `curr_hash`, `signature` and null fields.
docs/canonical-form.md is the specification; tests/vectors/ holds reference vectors.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785

from stage0.errors import LoglineError
from stage0.spans.kinds import check_kind

try:  # the json module's C encoder, built once (json.dumps builds one per call)
    # typeshed does not declare the C accelerator json.encoder imports when it has one
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - CPython always has it
    _c_make_encoder = None

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
#: A JSON value, such as a JSON field holds: the one name for it in type hints. Any, because
#: its shape is checked at run time (normalise) and every layer reads it as it likes.
JSON = Any
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
_FIELD_SET = frozenset(FIELDS)


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


_LOWER_HEX = re.compile("[0-9a-f]*")


def _hex(value: Any, field: str, length: int) -> str:
    text = _text(value, field).lower()
    if len(text) != length or not _LOWER_HEX.fullmatch(text):
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
        utc = value.astimezone(UTC)
    except OverflowError:
        raise _bad(field, "falls outside years 0001-9999 once converted to UTC",
                   "SPAN_INVALID_TIMESTAMP") from None
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


#: `at` already in its normal form; such a string is its own normal form once it parses.
_AT_NORMAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _at(value: Any, field: str = "at") -> str:
    """The normal form of `at`: format_at(parse_at(value)), without the round trip when
    `value` is already written that way."""
    if type(value) is str and _AT_NORMAL.fullmatch(value):
        try:
            datetime.fromisoformat(value[:-1])
        except ValueError:
            pass  # e.g. month 13: parse_at names the problem
        else:
            return value
    return format_at(parse_at(value, field))


def format_at(value: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly like JavaScript's Date.prototype.toISOString()."""
    v = value.astimezone(UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z")


_NOW: tuple[int, str] = (-1, "")


def now_at() -> str:
    """The current time as format_at writes it (made once per millisecond)."""
    global _NOW
    ms = time.time_ns() // 1_000_000
    if ms != _NOW[0]:
        at = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        _NOW = (ms, format_at(at))
    return _NOW[1]


class _Unusual(Exception):
    """_scan met something it does not decide itself: _check_json decides (and names it)."""


def _plain_text(value: str) -> bool:
    """A str that needs no closer look: no NUL and, if it is not ASCII, no lone surrogate."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scan_items(items: Iterable[Any], depth: int) -> bool:
    """_scan of a container's members, with the scalars checked inline (the common case)."""
    general = False
    for item in items:
        ti = type(item)
        if ti is str:
            if not _plain_text(item):
                raise _Unusual
        elif ti is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _Unusual
        elif item is not None and ti is not bool and _scan(item, depth + 1):
            general = True
    return general


def _scan(value: Any, depth: int) -> bool:
    """check_json's fast path for the common case: exact JSON types, everything valid.
    Returns the same answer as _check_json; raises _Unusual for anything else (an invalid
    value, a subclass of a JSON type, nesting near the limit), whose verdict and error
    message are then _check_json's. Builds no error paths while it walks."""
    t = type(value)
    if t is dict:
        if depth >= MAX_JSON_DEPTH:
            raise _Unusual
        general = False
        for key in value:
            if type(key) is not str or not _plain_text(key):
                raise _Unusual
            if not key.isascii() and max(key) > "\uffff":
                general = True
        return _scan_items(value.values(), depth) or general
    if t is list:
        if depth >= MAX_JSON_DEPTH:
            raise _Unusual
        return _scan_items(value, depth)
    if t is str:
        if not _plain_text(value):
            raise _Unusual
        return False
    if t is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _Unusual
        return False
    if value is None or t is bool:
        return False
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unusual
        return True
    raise _Unusual


def check_json(value: Any, where: str, depth: int = 0) -> bool:
    """Validate a JSON value in place. True when it needs the general JCS path
    (it holds a float, or a key outside the Basic Multilingual Plane)."""
    try:
        if depth < MAX_JSON_DEPTH:
            return _scan(value, depth)
    except _Unusual:
        pass
    return _check_json(value, where, depth)


def _check_json(value: Any, where: str, depth: int = 0) -> bool:
    """The reference check: the one that decides, and names what and where is wrong."""
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
            slow = _check_json(item, f"{where}[{i}]", depth + 1) or slow
        return slow
    if isinstance(value, dict):
        slow = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise _bad(where, f"object key {key!r} is not a string")
            _text(key, f"{where}.{key}")
            slow = slow or (not key.isascii() and any(ord(c) > 0xFFFF for c in key))
            slow = _check_json(item, f"{where}.{key}", depth + 1) or slow
        return slow
    raise _bad(where, f"{type(value).__name__} is not a JSON value")


def _related(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise _bad(field, "must be a list of UUIDs")
    return [_uuid(v, f"related_to[{i}]") for i, v in enumerate(value)]


def _boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(field, f"must be true or false, got {type(value).__name__}")
    return value


#: How normalise() treats each field (JSON fields are handled in its loop).
_NORMALISERS: dict[str, Callable[[Any, str], Any]] = {
    **{f: _uuid for f in UUID_FIELDS},
    **{f: (lambda v, f: _int(v, f, MAX_INT32)) for f in INT_FIELDS},
    **{f: _text for f in TEXT_FIELDS},
    **{f: (lambda v, f: _hex(v, f, HEX_FIELDS[f])) for f in HEX_FIELDS},
    "at": _at, "is_deleted": _boolean, "related_to": _related,
}


def normalise(span: Mapping[str, Any]) -> dict[str, Any]:
    """The normal form of a span: every field present (None when absent), defaults filled.

    Raises LoglineError naming the field for anything that cannot be stored and re-hashed
    exactly. Does not fill `at`: a span without a time is incomplete (see ledger.prepare).
    """
    return normalise_checked(span)[0]


def normalise_checked(span: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """normalise(span), and whether its canonical bytes need the general JCS path (what
    canonical_bytes would otherwise find out by walking the JSON fields again)."""
    if not isinstance(span, Mapping):
        raise LoglineError("SPAN_NOT_OBJECT", f"a span is a JSON object, got {type(span).__name__}")
    if not span.keys() <= _FIELD_SET:
        unknown = sorted(set(span) - set(FIELDS))
        raise LoglineError("SPAN_UNKNOWN_FIELD", f"unknown field(s): {', '.join(unknown)}",
                           unknown[0])
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    for field in REQUIRED:
        if span.get(field) is None:
            raise _bad(field, "is required", "SPAN_MISSING_FIELD")
    general = False
    for field, value in span.items():
        if value is None:
            continue
        if field in JSON_FIELDS:
            if check_json(value, field):
                general = True
            out[field] = value
        else:
            out[field] = _NORMALISERS[field](value, field)
    if out["seq"] is None:
        out["seq"] = 0
    out["visibility"] = out["visibility"] or "private"
    out["is_deleted"] = bool(out["is_deleted"])
    for field, upper in LENGTHS.items():
        if out[field] is not None and not 1 <= len(out[field]) <= upper:
            raise _bad(field, f"must be 1 to {upper} characters", "SPAN_OUT_OF_RANGE")
    check_kind(out["entity_type"])
    if out["visibility"] not in VISIBILITIES:
        raise _bad("visibility", f"must be one of {', '.join(VISIBILITIES)}, "
                                 f"got {out['visibility']!r}", "SPAN_INVALID_VISIBILITY")
    if (out["seq"] == 0) != (out["prev_hash"] is None):
        raise _bad("prev_hash", "seq 0 has no prev_hash; every later seq needs one",
                   "SPAN_PREV_HASH_REQUIRED")
    return out, general


def signing_view(span: Mapping[str, Any]) -> dict[str, Any]:
    """What the hash covers: every non-null field except curr_hash and signature."""
    return {k: v for k, v in span.items() if v is not None and k not in UNSIGNED}


def _general(value: Any) -> bool:
    """True when a (validated) JSON value needs the general JCS path: it holds a float or an
    object key outside the Basic Multilingual Plane. Types only; no validation."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return _general_reference(value)
            if not k.isascii() and max(k) > "\uffff":
                return True
            tv = type(v)
            if tv is not str and tv is not int and v is not None and tv is not bool \
                    and _general(v):
                return True
        return False
    if t is list:
        for v in value:
            tv = type(v)
            if tv is not str and tv is not int and v is not None and tv is not bool \
                    and _general(v):
                return True
        return False
    if t is str or t is int or value is None or t is bool:
        return False
    return _general_reference(value)


def _general_reference(value: Any) -> bool:
    """_general by isinstance, for subclasses of the JSON types and anything unusual."""
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_general_reference(v) for v in value)
    if isinstance(value, dict):
        return any((not k.isascii() and any(ord(c) > 0xFFFF for c in k))
                   or _general_reference(v) for k, v in value.items())
    return False


def canonical_bytes(span: Mapping[str, Any], general: bool | None = None) -> bytes:
    """RFC 8785 bytes of a *normalised* span (see `normalise`). `general` is what
    normalise_checked returned for this span, if the caller has it (else it is worked out)."""
    if general is None:
        general = any(_general(span.get(f)) for f in JSON_FIELDS)
    if not general and _ENCODE is not None and span.keys() == _FIELD_SET:
        data = _assemble(span, None)
    else:
        view = signing_view(span)
        data = rfc8785.dumps(view) if general else _fast_jcs(view)
    if len(data) > MAX_SPAN_BYTES:
        raise LoglineError("SPAN_TOO_LARGE", f"canonical form is {len(data)} bytes; the limit "
                                             f"is {MAX_SPAN_BYTES}", span.get("id"))
    return data


#: The encoder of json.dumps(v, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
#: allow_nan=False), built once: (value, indent level) -> the text in chunks.
_ENCODE: Callable[[object, int], Iterable[str]] | None = None
if _c_make_encoder is not None:
    _ENCODE = _c_make_encoder(
        None, json.JSONEncoder().default, json.encoder.encode_basestring, None, ":", ",",
        True, False, False)  # markers, default, strings, indent, separators, sort, skip, nan


def _fast_jcs(view: Mapping[str, Any]) -> bytes:
    # For values holding no float and no astral-plane key, RFC 8785 coincides with sorted,
    # compact, non-ASCII-escaping JSON: same string escapes, same integer digits, and code
    # point order equals UTF-16 order below U+10000. tests/unit/test_canonical.py proves it.
    # The encoder is json.dumps's own, built once; it skips the check for circular
    # references, which normalise's depth limit already refuses.
    if _ENCODE is None:  # pragma: no cover
        return json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    return "".join(_ENCODE(view, 0)).encode("utf-8")


#: The signed fields in JCS order (ASCII names: code point order is byte order).
_SIGNED_ORDER = tuple(sorted(f for f in FIELDS if f not in UNSIGNED))
_MEMBER = {f: f'"{f}":' for f in FIELDS}
_JSON_SET = frozenset(JSON_FIELDS)
_encode_string = json.encoder.encode_basestring


def encode_span(span: Mapping[str, Any], general: bool | None = None
                ) -> tuple[bytes, dict[str, str] | None]:
    """canonical_bytes(span), and on the fast path also the JSON text of each non-null JSON
    field as it appears in those bytes (sorted and compact: what the ledger's jsonb columns
    can be given as is)."""
    if general is None:
        general = any(_general(span.get(f)) for f in JSON_FIELDS)
    if general or _ENCODE is None or span.keys() != _FIELD_SET:
        return canonical_bytes(span, general), None
    texts: dict[str, str] = {}
    data = _assemble(span, texts)
    if len(data) > MAX_SPAN_BYTES:
        raise LoglineError("SPAN_TOO_LARGE", f"canonical form is {len(data)} bytes; the limit "
                                             f"is {MAX_SPAN_BYTES}", span.get("id"))
    return data, texts


def _assemble(span: Mapping[str, Any], texts: dict[str, str] | None) -> bytes:
    """_fast_jcs(signing_view(span)) for a span with exactly the FIELDS keys, written member
    by member with the same encoder (no view to build, no keys to sort); the JSON fields'
    texts go to `texts` when it is given."""
    encode = _ENCODE
    assert encode is not None  # only called on the fast path, which needs the encoder
    members = []
    for f in _SIGNED_ORDER:
        v = span[f]
        if v is None:
            continue
        t = type(v)
        if f in _JSON_SET:
            text = "".join(encode(v, 0))
            if texts is not None:
                texts[f] = text
        elif t is str:
            text = _encode_string(v)
        elif t is int:
            text = int.__repr__(v)
        else:
            text = "".join(encode(v, 0))
        members.append(_MEMBER[f] + text)
    return ("{" + ",".join(members) + "}").encode("utf-8")
