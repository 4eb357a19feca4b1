"""`logline secrets`: credentials kept encrypted in the ledger (stage0/vault).

Values come from standard input (never argv, which other users see in `ps` and the shell
keeps in its history); on a terminal the value is asked for without echo. Nothing here prints
a value: `list` shows names, versions, status and dates.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger import db
from stage0.vault import credentials, crypto, rotation
from stage0.vault import master as masters


def secrets_args(p: argparse.ArgumentParser) -> None:
    about = base.about
    ss = p.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    for name, text in (("set", "store a secret's value, read from standard input"),
                       ("rotate", "replace an existing secret's value (standard input)")):
        one = ss.add_parser(name, **about(text),
                            epilog="example: printf %s \"$OPENAI_API_KEY\" | logline secrets "
                                   f"{name} openai_api_key --tenant acme")
        one.add_argument("name", help="the secret's name, e.g. openai_api_key")
        one.add_argument("--tenant", required=True)
    rv = ss.add_parser("revoke", **about("stop a secret from being used until a new value "
                                         "is set"))
    rv.add_argument("name")
    rv.add_argument("--tenant", required=True)
    ls = ss.add_parser("list", **about("a tenant's secrets: names, versions, status, dates"))
    ls.add_argument("--tenant", required=True)
    ls.add_argument("--json", action="store_true", help="one secret per line")
    rk = ss.add_parser("rotate-key", **about("a new data key version for a tenant; its "
                                             "secrets are sealed again by it"))
    rk.add_argument("--tenant", required=True)
    rm = ss.add_parser("rotate-master", **about("re-wrap every tenant's data key with a new "
                                                "master key (the old key file is kept)"))
    rm.add_argument("--new-key-file", metavar="FILE",
                    help="put the new master key in FILE (created 0600; used as it is when it "
                         "exists) and leave the home's key files alone; required when the "
                         f"key comes from {masters.ENV}")


@command("secrets", "credentials, encrypted in the ledger: set, rotate, revoke, "
         "list (never shows values)", secrets_args)
def cmd_secrets(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.operator_key(home)
    action = args.secrets_command
    if action in ("set", "rotate"):
        value = _read_value(args.name)  # before connecting: nothing waits on the database
    with db.resolve(home).connect("kernel") as conn:
        if action == "list":
            _print_list(credentials.names(conn, args.tenant, root_key=base.root(home)), args)
            return 0
        if action == "revoke":
            done = credentials.revoke(conn, key, args.tenant, args.name,
                                      root_key=base.root(home))
            out(f"revoked {done['name']} for tenant {done['tenant_id']} (v{done['version']}); "
                "`secrets set` gives it a new value")
            return 0
        if action == "rotate-master":
            return _rotate_master(conn, home, key, args.new_key_file)
        if action == "rotate-key":
            done = rotation.rotate_data_key(conn, key, masters.load(home), args.tenant,
                                            root_key=base.root(home))
            out(f"tenant {done['tenant_id']}: data key version {done['key_version']}, "
                f"{done['secrets']} secret(s) sealed again")
            return 0
        write = credentials.put if action == "set" else credentials.rotate
        stored = write(conn, key, home, args.tenant, args.name, value,
                       id_secret=keys.id_secret(home, key), root_key=base.root(home))
    out(f"stored {stored['name']} v{stored['version']} for tenant {stored['tenant_id']} "
        "(encrypted; the value is not shown)")
    return 0


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name} (not echoed): ")
    else:
        try:
            value = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:  # its message would quote the value's bytes
            raise LoglineError("SECRET_NOT_TEXT", "the value on standard input is not UTF-8 "
                               "text", "stdin") from None
    # One line's end is the shell's (`echo "$KEY" |`), not the secret's.
    return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")


def _print_list(items: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        for item in items:
            out(json.dumps(item))
        return
    if not items:
        out(f"tenant {args.tenant} has no secrets")
    for item in items:
        out(f"{item['name']:<32} v{item['version']:<4} {item['status']:<8} created "
            f"{item['created_at']}  updated {item['updated_at']}")


def _rotate_master(conn: db.Connection, home: Home, key: SigningKey,
                   new_file: str | None) -> int:
    """Re-wrap every data key with a new master key. The new key goes to keys/master.key.new
    (or --new-key-file) BEFORE the ledger changes, so an interruption never loses it: running
    the command again picks it up and finishes. Then, for the home's own key file, the old
    key is kept as keys/master.key.retired-<UTC time> (backups of the database taken before
    now need it) and the new one takes its place."""
    old = masters.load(home)
    from_env = old.source == masters.ENV
    if from_env and not new_file:
        raise LoglineError("MASTER_KEY_FROM_ENV", f"the master key comes from {masters.ENV}, "
                           "which this command cannot change: pass --new-key-file FILE, then "
                           f"set {masters.ENV} to its content", "--new-key-file")
    pending = Path(new_file) if new_file else home.keys / masters.PENDING
    if pending.exists():
        new = masters.read_file(pending)
        out(f"using the new master key already in {pending}")
    else:
        new = masters.Master(crypto.new_key(), str(pending))
        masters.write_file(pending, new.key)
    done = rotation.rewrap_all(conn, key, old, new, root_key=base.root(home))
    out(f"re-wrapped {done['rewrapped']} tenant data key(s) with master key {new.key_id} "
        f"({done['kept']} already were)")
    if new_file:
        out(f"the new master key is in {pending}: " + (
            f"set {masters.ENV} to its content" if from_env else
            f"install it as {masters.path(home)} (the ledger no longer opens with the old one)"))
        return 0
    current = masters.path(home)
    stamp = datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')
    for n in range(1000):  # two rotations in one second each keep their old key
        retired = current.with_name(f"{masters.FILE}.retired-{stamp}" + (f".{n}" if n else ""))
        try:
            os.link(current, retired)
            break
        except FileExistsError:
            continue
    else:
        raise LoglineError("KEY_EXISTS", f"{retired} and 999 more names taken: the old master "
                           "key is not overwritten", str(current.parent))
    os.replace(pending, current)
    out(f"{current} is the new master key; the old one is kept as {retired} for backups "
        "taken before now (delete it when they expire)")
    return 0
