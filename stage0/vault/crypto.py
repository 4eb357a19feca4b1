"""AES-256-GCM sealing, pure: what the vault stores, and what encrypted transcripts and memory
will store too.

A sealed value is a JSON object {"alg", "nonce", "ciphertext"} (nonce and ciphertext in
base64): a fresh random 96-bit nonce per seal, the 128-bit tag at the end of the ciphertext.
The associated data (AAD) is authenticated but not stored in the ciphertext: the caller
rebuilds it from where the value sits (tenant, name, version...), so a ciphertext moved to
another tenant, name or version no longer opens. A Mapping AAD is encoded as sorted, compact
JSON, so the same fields always give the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stage0.errors import LoglineError

ALG = "AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12

Aad = Mapping[str, Any] | bytes


def new_key() -> bytes:
    """32 random bytes from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def aad_bytes(aad: Aad) -> bytes:
    if isinstance(aad, bytes):
        return aad
    return json.dumps(dict(aad), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def seal(key: bytes, plaintext: bytes | str, aad: Aad) -> dict[str, str]:
    """`plaintext` encrypted and authenticated under `key`, bound to `aad`."""
    _check_key(key)
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, data, aad_bytes(aad))
    return {"alg": ALG, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}


def open_(key: bytes, sealed: Mapping[str, Any], aad: Aad, where: str | None = None) -> bytes:
    """The plaintext of `sealed`, or SECRET_UNREADABLE when it does not open: another key,
    other associated data (moved to another tenant, name or version), or altered bytes. The
    message never carries key, nonce or ciphertext."""
    _check_key(key)
    try:
        if sealed.get("alg") != ALG:
            raise ValueError(f"algorithm {str(sealed.get('alg'))[:40]!r}, not {ALG}")
        nonce, data = _unb64(sealed.get("nonce")), _unb64(sealed.get("ciphertext"))
        if len(nonce) != NONCE_BYTES:
            raise ValueError("the nonce is not 12 bytes")
        return AESGCM(key).decrypt(nonce, data, aad_bytes(aad))
    except InvalidTag:
        raise LoglineError("SECRET_UNREADABLE", "the value does not open with this key and "
                           "these bindings (another master key or tenant key, a value moved "
                           "to another tenant, name or version, or altered bytes)",
                           where) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise LoglineError("SECRET_UNREADABLE", f"not a sealed value: {exc}", where) from None


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise LoglineError("MASTER_KEY_INVALID", "an AES-256 key is exactly 32 bytes")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("nonce and ciphertext are base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("nonce or ciphertext is not base64") from None
