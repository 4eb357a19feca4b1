"""Hash, sign and verify spans: BLAKE3-256 over the canonical bytes, Ed25519 over the digest.

Pure: keys come in as objects, spans as normalised dicts. The order is fixed and is what makes
a span verifiable by anyone: set `public_key` first (it is covered by the hash), then hash,
then sign the 32 raw digest bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .canonical import canonical_bytes
from .errors import LoglineError


def digest(span: Mapping[str, Any]) -> bytes:
    return blake3.blake3(canonical_bytes(span)).digest()


def public_key_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()


def seal(span: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """Set public_key, curr_hash and signature on a normalised span (in place, returned)."""
    span["public_key"] = public_key_hex(key)
    raw = digest(span)
    span["curr_hash"] = raw.hex()
    span["signature"] = key.sign(raw).signature.hex()
    return span


@dataclass(frozen=True)
class Check:
    """Outcome of checking one span's own proofs. `reason` is a stable code or None."""

    ok: bool
    reason: str | None = None
    detail: str = ""


def check_proofs(span: Mapping[str, Any]) -> Check:
    """Hash and signature of a normalised span (trust and chain are checked elsewhere)."""
    if not span.get("curr_hash"):
        return Check(False, "HASH_MISSING", "span has no curr_hash")
    try:
        raw = digest(span)
    except LoglineError as exc:  # stored content no signer could have produced
        return Check(False, "HASH_MISMATCH", f"content cannot be canonicalised: {exc}")
    if raw.hex() != span["curr_hash"]:
        return Check(False, "HASH_MISMATCH",
                     f"content hashes to {raw.hex()}, stored curr_hash is {span['curr_hash']}")
    if not span.get("signature") or not span.get("public_key"):
        return Check(False, "SIGNATURE_MISSING", "span carries no signature or public_key")
    try:
        VerifyKey(bytes.fromhex(span["public_key"])).verify(raw, bytes.fromhex(span["signature"]))
    except (BadSignatureError, ValueError):
        return Check(False, "SIGNATURE_INVALID",
                     f"signature does not verify under public_key {span['public_key']}")
    return Check(True)
