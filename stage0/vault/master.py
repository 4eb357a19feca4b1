"""The master key: 32 bytes that wrap every tenant's data key, held outside the database.

Where it comes from, first match wins:

1. LOGLINE_MASTER_KEY: 64 hex characters or the base64 of 32 bytes (a secret manager or a
   service's environment holds it; nothing is written to disk);
2. $LOGLINE_HOME/keys/master.key: 64 hex characters, one line, mode 0600 (like the operator
   key: a file readable by group or others is refused).

Neither = MASTER_KEY_MISSING: nothing is decrypted and nothing is encrypted (fail closed).
`create()` writes the file once, when the ledger holds no data key yet (a lost master key is
never silently replaced by a new one: the data keys it wrapped would be unreadable for good).
The key's *id* is a keyed BLAKE3 hash of a constant: stored beside each wrapped data key, it
tells "wrong master key" apart from "altered ciphertext" without revealing anything.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.vault.crypto import KEY_BYTES, new_key

ENV = "LOGLINE_MASTER_KEY"
FILE = "master.key"
#: An interrupted `logline secrets rotate-master` leaves the new key here (see rotation.py).
PENDING = "master.key.new"
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Master:
    """A master key and where it came from (for messages: never the key itself)."""

    key: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def __repr__(self) -> str:
        return f"Master(id={self.key_id}, source={self.source!r})"


def key_id(key: bytes) -> str:
    """16 hex characters naming a master key (a keyed hash: reveals nothing about it)."""
    return blake3.blake3(b"logline/master-key-id/v1", key=key).hexdigest()[:16]


def path(home: Home) -> Path:
    return home.keys / FILE


def parse(text: str, where: str) -> bytes:
    """32 bytes from 64 hex characters or base64; MASTER_KEY_INVALID otherwise (the message
    says what was wrong, never what was given)."""
    text = text.strip()
    if _HEX.match(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise LoglineError("MASTER_KEY_INVALID", "a master key is 32 bytes, written as 64 hex "
                           "characters or in base64 (e.g. `openssl rand -hex 32`)", where)
    return raw


def load(home: Home | None) -> Master:
    """The master key from LOGLINE_MASTER_KEY, else from the home's keys/master.key."""
    if os.environ.get(ENV, "").strip():
        return Master(parse(os.environ[ENV], ENV), ENV)
    if home is None:
        raise LoglineError("MASTER_KEY_MISSING", f"no master key: set {ENV}")
    return read_file(path(home))


def read_file(file: Path) -> Master:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise LoglineError("MASTER_KEY_MISSING", f"no master key: nothing is encrypted or "
                           f"decrypted without one. `logline secrets set` creates {FILE} in "
                           f"the home's keys/ the first time, or set {ENV}",
                           str(file)) from None
    if file.stat().st_mode & 0o077:
        raise LoglineError("KEY_PERMISSIONS", "master key file is readable by others; chmod "
                           "600 it", str(file))
    return Master(parse(text, str(file)), str(file))


def write_file(file: Path, key: bytes) -> None:
    """Write a key file that did not exist (mode 0600; never overwrites one). The key is
    written and synced under a temporary name first, then linked into place: a reader never
    sees a half-written key, and of two processes creating one, one wins (KEY_EXISTS)."""
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, file)
    except FileExistsError:
        raise LoglineError("KEY_EXISTS", "a master key already exists here; refusing to "
                           "overwrite it", str(file)) from None
    finally:
        tmp.unlink(missing_ok=True)


def create(home: Home) -> Master:
    """A new master key in the home's keys/master.key (the caller checked that no data key
    exists yet); the one another process created meanwhile, if it won."""
    key = new_key()
    try:
        write_file(path(home), key)
    except LoglineError as exc:
        if exc.code != "KEY_EXISTS":
            raise
        return read_file(path(home))
    return Master(key, str(path(home)))


def resolve(home_or_master: Home | Master | bytes) -> Master:
    """What the vault's functions accept: a home (its key, as load() finds it), a Master, or
    the 32 raw bytes."""
    if isinstance(home_or_master, Master):
        return home_or_master
    if isinstance(home_or_master, bytes):
        if len(home_or_master) != KEY_BYTES:
            raise LoglineError("MASTER_KEY_INVALID", "a master key is exactly 32 bytes")
        return Master(home_or_master, "bytes")
    return load(home_or_master)
