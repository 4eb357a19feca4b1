"""Client text in platform records, bounded.

Whatever a client controls (a path, a user agent, a proxy's client address, an action name,
arguments, a reason) and the platform writes into its own spans (denials, gate decisions,
approvals) is cut to CLIP_CHARS characters. A cut value is not lost: the record carries the
original's length and BLAKE3 hash (of its UTF-8 bytes) under `clipped`, so what was sent can
still be matched exactly against a copy, while a hostile client cannot make each of its
requests cost the ledger kilobytes forever.
"""

from __future__ import annotations

import json
from typing import Any

import blake3

CLIP_CHARS = 512
#: A JSON value recorded whole only up to this size (its canonical text); beyond, only its
#: length and hash are kept.
CLIP_JSON_CHARS = 4096


def digest(text: str) -> dict[str, Any]:
    """What identifies `text` once it has been cut: its length and BLAKE3 hash."""
    return {"length": len(text),
            "blake3": blake3.blake3(text.encode("utf-8", "surrogatepass")).hexdigest()}


def clip(text: str, limit: int = CLIP_CHARS) -> tuple[str, dict[str, Any] | None]:
    """(text cut to `limit` characters, None if it was not cut, else its digest)."""
    if len(text) <= limit:
        return text, None
    return text[:limit], digest(text)


def clip_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with every string value cut, plus `clipped: {name: digest}` if any was."""
    out: dict[str, Any] = {}
    cut: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            value, note = clip(value)
            if note:
                cut[name] = note
        out[name] = value
    if cut:
        out["clipped"] = cut
    return out


def clip_json(value: Any) -> tuple[Any, dict[str, Any]]:
    """(value with every string and key cut, {JSON path: digest} of what was cut). When the
    two together are still over CLIP_JSON_CHARS, the value is replaced by None and the
    digest of its JSON text, under path "$"."""
    notes: dict[str, Any] = {}
    cut = _walk(value, "$", notes)
    if len(_text([cut, notes])) > CLIP_JSON_CHARS:
        return None, {"$": digest(_text(value))}
    return cut, notes


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _walk(value: Any, path: str, notes: dict[str, Any]) -> Any:
    if isinstance(value, str):
        short, note = clip(value)
        if note:
            notes[path] = note
        return short
    if isinstance(value, list):
        return [_walk(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            short, note = clip(key)
            if note:
                notes[f"{path}.{short}"] = note
            out[short] = _walk(v, f"{path}.{short}", notes)
        return out
    return value
