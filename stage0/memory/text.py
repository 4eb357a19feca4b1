"""The blind text index: what a memory's words become before PostgreSQL sees them. Pure.

Words (Unicode letters and digits, lowercased, a plural `s` dropped, stop words left out)
are hashed with a key (BLAKE3 keyed mode) and written as 12 letters a-p, so the text index
(`ledger.memory_index.terms`, a tsvector) holds no word of any memory: PostgreSQL still
matches and ranks them (GIN, ts_rank), and a database dump shows hashes. Non-public memories
are hashed under a key derived from their tenant's data key, public ones under a fixed key
that every tenant's query also uses.
"""

from __future__ import annotations

import math
import re

import blake3

_WORD = re.compile(r"\w+", re.UNICODE)
_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
#: Common English words that would match everything.
STOP = frozenset("""a an and are as at be but by for from has have he her his i if in into is
it its me my no not of on or our she so that the their them then there these they this to
was we were what when where which who will with you your""".split())
PUBLIC_KEY = blake3.blake3(b"logline/memory-terms/public/v1").digest()
PREVIEW_CHARS = 280


def terms_key(data_key: bytes) -> bytes:
    """The key a tenant's terms are hashed with, derived from its data key."""
    return blake3.blake3(b"logline/memory-terms/v1", key=data_key).digest()


def words(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOP or (len(word) < 2 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word[:64])
    return out


def term(key: bytes, word: str) -> str:
    return blake3.blake3(word.encode("utf-8"), key=key).hexdigest(6).translate(_LETTERS)


def terms(key: bytes, text: str) -> str:
    """The document's terms, space separated, repeats kept (ts_rank counts them)."""
    return " ".join(term(key, w) for w in words(text))


def query(keys: list[bytes], text: str, every: bool = False) -> str | None:
    """A tsquery matching any word of `text` under any of `keys` (with `every`: all of its
    words, under one key); None for no words."""
    found = sorted(set(words(text)))
    if not found:
        return None
    if every:
        return " | ".join("(" + " & ".join(term(k, w) for w in found) + ")" for k in keys)
    return " | ".join(sorted({term(k, w) for w in found for k in keys}))


def tokens(text: str) -> int:
    """An estimate of a text's length in model tokens (about 4 characters each)."""
    return max(1, math.ceil(len(text) / 4))


def preview(text: str, chars: int = PREVIEW_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars - 1].rstrip() + "…"
