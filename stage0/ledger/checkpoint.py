"""Signed checkpoints of the ledger's tip, kept outside the database.

The ledger-wide chain (every row's chain_hash extends the one before it) shows an edited or
removed row in the middle, and verify compares the last row with `ledger.chain_tip`; but a
database superuser can delete the newest rows and rewrite the tip, or restore an older
backup, and what is left is a consistent, shorter ledger. A checkpoint, written to a file
that lives elsewhere (another machine, a ticket, a git repository), pins the tip as it was:

    logline checkpoint --out tip.json          # {position, chain_hash, spans, at, ...}
    logline verify --checkpoint tip.json       # CHAIN_TRUNCATED / CHAIN_FORKED if it moved

The file is signed by the root key, so it cannot be edited to match a rolled-back ledger
either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from stage0.errors import LoglineError
from stage0.ledger.db import Connection, one
from stage0.ledger.queries import q
from stage0.spans.canonical import now_at
from stage0.spans.proofs import public_key_hex

KIND = "logline_checkpoint/v1"
_SIGNED = ("kind", "position", "chain_hash", "spans", "at", "root_public_key")


def _message(data: dict[str, Any]) -> bytes:
    return json.dumps({k: data[k] for k in _SIGNED}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def take(conn: Connection, root: SigningKey) -> dict[str, Any]:
    """The current tip (the newest row's position and chain hash), signed by root."""
    row = conn.execute(q("checkpoint_tip")).fetchone()
    if row is None:
        raise LoglineError("CHECKPOINT_EMPTY", "the ledger holds no rows yet")
    data = {"kind": KIND, "position": row["position"], "chain_hash": row["chain_hash"],
            "spans": row["spans"], "at": now_at(), "root_public_key": public_key_hex(root)}
    data["signature"] = root.sign(_message(data)).signature.hex()
    return data


def load(path: Path, root_key: str) -> dict[str, Any]:
    """A checkpoint file, after checking its form and its root signature."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoglineError("CHECKPOINT_INVALID", "no such file", str(path)) from None
    except ValueError as exc:
        raise LoglineError("CHECKPOINT_INVALID", f"not JSON: {exc}", str(path)) from None
    if not isinstance(data, dict) or data.get("kind") != KIND or \
            any(k not in data for k in (*_SIGNED, "signature")):
        raise LoglineError("CHECKPOINT_INVALID", f"not a {KIND} file", str(path))
    if data["root_public_key"] != root_key:
        raise LoglineError("CHECKPOINT_INVALID", "signed for another root key "
                           f"({data['root_public_key']})", str(path))
    try:
        VerifyKey(bytes.fromhex(root_key)).verify(_message(data),
                                                  bytes.fromhex(str(data["signature"])))
    except (BadSignatureError, ValueError):
        raise LoglineError("CHECKPOINT_INVALID", "the signature does not verify: the file "
                           "was edited or not made by this ledger's root key",
                           str(path)) from None
    return data


def check(conn: Connection, point: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when the ledger no longer holds the checkpoint's tip, else None."""
    row = conn.execute(q("chain_hash_at"), {"position": point["position"]}).fetchone()
    if row is None:
        newest = one(conn.execute(q("newest_position")))["p"]
        return ("CHAIN_TRUNCATED", f"the checkpoint of {point['at']} pins position "
                f"{point['position']}, which the ledger no longer holds (newest: {newest}): "
                "rows were deleted or an older backup was restored")
    if row["chain_hash"] != point["chain_hash"]:
        return ("CHAIN_FORKED", f"position {point['position']} has chain hash "
                f"{row['chain_hash']}, the checkpoint of {point['at']} pinned "
                f"{point['chain_hash']}: history before it was rewritten")
    return None
