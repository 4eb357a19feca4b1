"""Ed25519 key files: 64 hex characters of seed, one line, mode 0600. Never printed."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.signing import SigningKey

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.spans.proofs import public_key_hex


def write_new_key(path: Path) -> SigningKey:
    """Create a key file that did not exist (never overwrites a key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LoglineError("KEY_EXISTS", "a key already exists here; refusing to overwrite it",
                           str(path)) from None
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    return key


def load_key(path: Path) -> SigningKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise LoglineError("KEY_NOT_FOUND", "no key file; create one with `logline keys gen`",
                           str(path)) from None
    if path.stat().st_mode & 0o077:
        raise LoglineError("KEY_PERMISSIONS", "key file is readable by others; chmod 600 it",
                           str(path))
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise LoglineError("KEY_INVALID", "not a 32-byte hex Ed25519 seed", str(path)) from None
    return SigningKey(seed)


def ensure_operator_key(home: Home) -> tuple[SigningKey, bool]:
    """The operator (root) key, created and pinned on first use. Returns (key, created)."""
    created = not home.operator_key.exists()
    key = write_new_key(home.operator_key) if created else load_key(home.operator_key)
    config = home.read_config()
    pinned = config.get("root_public_key")
    if pinned and pinned != public_key_hex(key):
        raise LoglineError("ROOT_KEY_MISMATCH", "the operator key is not the pinned root key "
                           f"{pinned}", str(home.operator_key))
    if not pinned:
        config["root_public_key"] = public_key_hex(key)
        home.write_config(config)
    return key, created


def operator_key(home: Home) -> SigningKey:
    if not home.operator_key.exists() and not home.config_file.exists():
        raise LoglineError("NOT_INITIALISED", f"{home.path} is not a LogLine home yet (no "
                           "operator key, no config.json): run `logline init`")
    return load_key(home.operator_key)


def _subkey(root: SigningKey, purpose: bytes) -> bytes:
    """32 bytes derived from the root seed for one purpose (BLAKE3 keyed hash)."""
    import blake3

    return blake3.blake3(purpose, key=bytes(root)).digest()


def edge_key(root: SigningKey) -> SigningKey:
    """The key the API signs what clients post with (POST /api/spans). Derived from the
    root key, so every server of one ledger signs with the same one; the manifest lists its
    public key with role `edge`, which makes it trusted for every kind but the platform's
    (stage0.spans.kinds). A tenant's span can therefore never pass for a platform record."""
    return SigningKey(_subkey(root, b"logline/edge-key/v1"))


def derivation_secret(root: SigningKey) -> bytes:
    """The secret that keys every id the platform derives (stage0.spans.ids): without it, nobody
    can compute such an id before the platform does, so nobody can squat on it."""
    return _subkey(root, b"logline/id-derivation/v1")


ID_SECRET_FILE = "id.secret"


def write_id_secret(path: Path, secret: bytes) -> None:
    """Write the id secret (64 hex characters, mode 0600) for a machine that signs with its
    own key; never overwrites one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LoglineError("KEY_EXISTS", "an id secret already exists here; refusing to "
                           "overwrite it", str(path)) from None
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")


def id_secret(home: Home, key: SigningKey) -> bytes:
    """The secret this process derives ids with, the same in every process of one ledger:
    derivation_secret(root). A process holding the root key computes it; one that signs with
    a key of its own (a worker machine) reads it from keys/id.secret, copied from the
    operator's home (`logline keys id-secret --out FILE`). Without that file such a process
    would derive other ids (a second policy cursor per policy, contracts not found), so it
    is refused instead (ID_SECRET_MISSING)."""
    path = home.keys / ID_SECRET_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise LoglineError("KEY_PERMISSIONS", "id secret file is readable by others; "
                               "chmod 600 it", str(path))
        try:
            secret = bytes.fromhex(path.read_text().strip())
            if len(secret) != 32:
                raise ValueError
        except ValueError:
            raise LoglineError("KEY_INVALID", "not 32 bytes of hex", str(path)) from None
        return secret
    root = home.read_config().get("root_public_key")
    if root and public_key_hex(key) != root:
        raise LoglineError("ID_SECRET_MISSING", "this home signs with a key other than the "
                           "root key and has no keys/id.secret: copy it from the operator's "
                           "home (`logline keys id-secret --out FILE` there)", str(path))
    return derivation_secret(key)
