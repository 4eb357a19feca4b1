"""Hash, sign and verify spans: BLAKE3-256 over the canonical bytes, Ed25519 over the digest.

Pure: keys come in as objects, spans as normalised dicts. The order is fixed and is what makes
a span verifiable by anyone: set `public_key` first (it is covered by the hash), then hash,
then sign the 32 raw digest bytes.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import blake3
from nacl.bindings import (
    crypto_sign,
    crypto_sign_BYTES,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.spans.canonical import canonical_bytes, encode_span


def digest(span: Mapping[str, Any], general: bool | None = None) -> bytes:
    return blake3.blake3(canonical_bytes(span, general)).digest()


def public_key_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()


#: Per signing key: its public key in hex and the 64-byte secret libsodium signs with, so a
#: signature is one libsodium call (SigningKey.sign also builds a SignedMessage around it).
#: Keyed by the key object's identity (SigningKey.__eq__ is a constant-time comparison, too
#: slow for a lookup per span); an entry goes away with its key.
_SIGNERS: dict[int, tuple[weakref.ref[SigningKey], str, bytes]] = {}


def _signer(key: SigningKey) -> tuple[str, bytes]:
    found = _SIGNERS.get(id(key))
    if found is None or found[0]() is not key:
        public, secret = crypto_sign_seed_keypair(bytes(key))
        ident = id(key)
        found = _SIGNERS[ident] = (
            weakref.ref(key, lambda _: _SIGNERS.pop(ident, None)), public.hex(), secret)
    return found[1], found[2]


def seal(span: dict[str, Any], key: SigningKey, general: bool | None = None) -> dict[str, Any]:
    """Set public_key, curr_hash and signature on a normalised span (in place, returned).
    `general` is normalise_checked's answer for the span, when the caller has it."""
    seal_encoded(span, key, general)
    return span


def seal_encoded(span: dict[str, Any], key: SigningKey, general: bool | None = None
                 ) -> dict[str, str] | None:
    """seal(), returning what canonical.encode_span gives besides the bytes it hashed: the
    JSON text of each JSON field (None on the general path)."""
    public_key, secret = _signer(key)
    span["public_key"] = public_key
    data, texts = encode_span(span, general)
    raw = blake3.blake3(data).digest()
    span["curr_hash"] = raw.hex()
    span["signature"] = crypto_sign(raw, secret)[:crypto_sign_BYTES].hex()
    return texts


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
        # What VerifyKey(public_key).verify(raw, signature) does, without the objects.
        public_key, signature = bytes.fromhex(span["public_key"]), \
            bytes.fromhex(span["signature"])
        if len(public_key) != 32 or len(signature) != crypto_sign_BYTES:
            raise ValueError("wrong length")
        crypto_sign_open(signature + raw, public_key)
    except (BadSignatureError, ValueError):
        return Check(False, "SIGNATURE_INVALID",
                     f"signature does not verify under public_key {span['public_key']}")
    return Check(True)
