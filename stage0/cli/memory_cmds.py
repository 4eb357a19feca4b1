"""`logline memory`: the operator's view of memory (stage0/memory, docs/memory.md): write,
read, search, forget and export a user's memories in a tenant, rebuild the indexes, expire,
and say whether this database searches by vector or by text only.

The commands act for the `--tenant` and `--user` given, with exactly what that user may see
(the same service the kernels and the API use); they need the master key for non-public
memory, like `logline secrets`.
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.errors import LoglineError
from stage0.ledger import db
from stage0.memory import service
from stage0.vault import credentials
from stage0.vault import master as masters

SCOPES = ("session", "private", "tenant", "public")


def _who(p: argparse.ArgumentParser, session: bool = True) -> None:
    p.add_argument("--tenant", required=True)
    p.add_argument("--user", required=True, help="the user whose memory this is")
    if session:
        p.add_argument("--session", help="the session (as X-LogLine-Session)")


def memory_args(p: argparse.ArgumentParser) -> None:
    about = base.about
    ms = p.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    add = ms.add_parser("add", **about("remember a text for a user (encrypted unless public)"),
                        epilog="example: logline memory add 'prefers the aisle seat' "
                               "--tenant acme --user ana --tag travel")
    add.add_argument("text")
    _who(add)
    add.add_argument("--layer", choices=service.LAYERS)
    add.add_argument("--type", default="note")
    add.add_argument("--sensitivity", choices=service.SENSITIVITIES, default="internal")
    add.add_argument("--visibility", choices=service.VISIBILITIES)
    add.add_argument("--tag", action="append", default=[], help="repeatable")
    add.add_argument("--ttl-s", type=base.positive, help="expire after this many seconds")
    add.add_argument("--schema-id", help="a memory_contract span to validate --data against")
    add.add_argument("--data", help="structured content, a JSON object")
    add.add_argument("--embed-sensitive", action="store_true",
                     help="store a vector even for a secret or pii memory")
    add.add_argument("--json", action="store_true")
    get = ms.add_parser("get", **about("one memory, decrypted, as the user sees it"))
    get.add_argument("id")
    _who(get, session=False)
    se = ms.add_parser("search", **about("search what the user may see (session, own, "
                                         "tenant, public): text and vector"))
    se.add_argument("query")
    _who(se)
    se.add_argument("--budget", type=base.positive, default=1000, help="tokens (default 1000)")
    se.add_argument("--limit", type=base.positive, default=10)
    se.add_argument("--scope", action="append", choices=SCOPES,
                    help="repeatable; default all four")
    se.add_argument("--json", action="store_true")
    fo = ms.add_parser("forget", **about("forget for good: the last memory, a session, one "
                                         "memory or all of the user's (destroys their keys)"))
    fo.add_argument("what", choices=("last", "session", "span", "me"))
    fo.add_argument("--id", help="the memory to forget (with `span`)")
    _who(fo)
    ex = ms.add_parser("export", **about("the user's memories, decrypted, with span ids and "
                                         "hashes (a data subject request)"))
    _who(ex, session=False)
    ex.add_argument("--out", metavar="FILE", help="write the bundle there (0600), not stdout")
    ri = ms.add_parser("reindex", **about("rebuild the text and vector indexes from the "
                                          "ledger"))
    ri.add_argument("--tenant", help="only this tenant (default: every tenant)")
    st = ms.add_parser("status", **about("vector or text-only search, and how much is indexed"))
    st.add_argument("--tenant")
    st.add_argument("--json", action="store_true")
    ms.add_parser("expire", **about("make memories past their ttl_at unreadable (the TTL "
                                    "reaper's work)"))
    pr = ms.add_parser("promote", **about("make a memory permanent through review: its owner "
                                          "asks, another user answers as the tenant's admin"),
                       epilog="example: logline memory promote ID --tenant acme --user ana; "
                              "then: logline memory promote ID --tenant acme --user pat "
                              "--approve")
    pr.add_argument("id")
    _who(pr, session=False)
    answer = pr.add_mutually_exclusive_group()
    answer.add_argument("--approve", dest="approve", action="store_const", const=True,
                        help="answer as --user (never the owner who asked): approve")
    answer.add_argument("--reject", dest="approve", action="store_const", const=False,
                        help="answer as --user: reject")
    pr.add_argument("--json", action="store_true")
    em = ms.add_parser("embedder", **about("the tenant's default embedder for the memory "
                                           "kernels: wordllama (local) or a provider"),
                       epilog="example: logline memory embedder set openai-embed --tenant acme")
    em.add_argument("choice", choices=("set", "show"))
    em.add_argument("name", nargs="?", help="with set: wordllama or a provider's name")
    em.add_argument("--tenant", required=True)


@command("memory", "memory as ledger rows: add, get, search, forget, export, reindex, "
         "status, expire, promote, embedder", memory_args)
def cmd_memory(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.operator_key(home)
    action = args.memory_command
    if action == "promote":
        return _promote(args, home, key)
    if action == "embedder":
        return _embedder(args, home, key)
    with db.resolve(home).connect("kernel") as conn:
        master: Any = home
        if action == "add" and args.sensitivity != "public":
            master = credentials.master_for_write(conn, home)
        elif action in ("status", "reindex", "expire", "forget"):
            master = _optional_master(home)
        memory = service.Memory(conn, key, master, id_secret=keys.id_secret(home, key),
                                root_key=base.root(home))
        caller = service.Caller(args.user, args.tenant, getattr(args, "session", None)) \
            if hasattr(args, "user") else None
        if action == "add":
            assert caller is not None
            item: dict[str, Any] = {"text": args.text, "type": args.type,
                                    "sensitivity": args.sensitivity, "tags": args.tag,
                                    "embed_sensitive": args.embed_sensitive}
            for name in ("layer", "visibility", "ttl_s", "schema_id"):
                if getattr(args, name) is not None:
                    item[name] = getattr(args, name)
            if args.data is not None:
                item["data"] = base.json_arg(args.data, "--data")
            [done] = memory.upsert(caller, [item])
            if args.json:
                out(json.dumps(done))
            else:
                out(f"remembered {done['span_id']} ({done['layer']}, {done['sensitivity']}"
                    f"{', vector ' + done['vector'] if done['vector'] else ', no vector'})")
            return 0
        if action == "get":
            assert caller is not None
            out(json.dumps(memory.get(caller, base.span_id(args.id, "the memory's id")),
                           indent=2, ensure_ascii=False))
            return 0
        if action == "search":
            assert caller is not None
            found = memory.search(caller, args.query, budget=args.budget, limit=args.limit,
                                  scopes=args.scope or SCOPES)
            _print_search(found, args.json)
            return 0
        if action == "forget":
            assert caller is not None
            span = base.span_id(args.id, "the memory to forget") if args.id else None
            done = memory.forget(caller, args.what, span_id=span)
            if not done["forgotten"] and done["redaction_id"] is None:
                out(f"nothing to forget for {args.user} in {args.tenant}")
                return 0
            out(f"forgot {done['forgotten']} memor{'y' if done['forgotten'] == 1 else 'ies'} "
                f"of {args.user} in {args.tenant} (redaction {done['redaction_id']}); their "
                "keys are destroyed")
            return 0
        if action == "export":
            assert caller is not None
            bundle = json.dumps(memory.export(caller), indent=2, ensure_ascii=False)
            if args.out:
                _write_private(Path(args.out), bundle + "\n")
                out(f"wrote {args.out}")
            else:
                out(bundle)
            return 0
        if action == "reindex":
            done = memory.reindex(args.tenant)
            out(f"indexed {done['indexed']} memories ({done['skipped']} forgotten or expired "
                f"left out); vectors: {'yes' if done['vectors'] else 'no (no pgvector)'}")
            return 0
        if action == "expire":
            out(f"expired {memory.expire()['expired']} memories")
            return 0
        status = memory.status(args.tenant)
        if args.json:
            out(json.dumps(status))
        else:
            out(f"search: {status['mode']}"
                + (f" (pgvector {status['pgvector']})" if status["vectors"] else "")
                + f"; {status['indexed']} memories indexed, {status['keys']} keys"
                + (f", {status['vectors']} vectors" if status["vectors"] else ""))
            if status.get("note"):
                out(status["note"])
    return 0


def _promote(args: argparse.Namespace, home: Any, key: Any) -> int:
    """The API's review (stage0/gov/memory_review.py), with the operator acting as --user:
    asking (no --approve/--reject) only for their own memory; answering with the tenant's
    admin role, never for a promotion --user asked for (G_SOD_VIOLATION)."""
    from stage0.gov import memory_review
    from stage0.gov.apikeys import Principal

    span_id = base.span_id(args.id, "the memory's id")
    principal = Principal("cli", args.user, args.tenant, ("admin",))
    with db.resolve(home).connect("kernel") as conn:
        done = memory_review.promote(conn, key, home,
                                     keys.id_secret(home, key), base.root(home), principal,
                                     span_id, args.approve, f"cli-{uuid.uuid4()}")
    if args.json:
        out(json.dumps(done))
        return 0
    out(f"promotion {done['promotion_id']} of {span_id}: {done['status']} ({done['reason']}, "
        f"{done['approvals']}/{done['required']} approvals)")
    if done.get("memory"):
        out(f"memory {span_id} is permanent now (version {done['memory'].get('seq')})")
    return 0


def _embedder(args: argparse.Namespace, home: Any, key: Any) -> int:
    from stage0.ledger import records
    from stage0.memory import settings

    root = base.root(home)
    with db.resolve(home).connect("kernel") as conn:
        if args.choice == "set":
            if args.name is None:
                raise LoglineError("MEMORY_INVALID", "name the embedder: wordllama or a "
                                   "provider's name", "name")
            settings.set_embedder(conn, key, root, keys.id_secret(home, key), args.tenant,
                                  args.name)
            name = args.name
        else:
            name = settings.embedder(conn, keys.id_secret(home, key),
                                     records.platform(conn, root).keys, args.tenant)
    out(f"tenant {args.tenant}: memory embeds with "
        + ("wordllama (the local model)" if name == settings.LOCAL else f"provider {name}"))
    return 0


def _optional_master(home: Any) -> Any:
    """The home's master key if there is one; None lets text-only work go on (public
    memories) and refuses only what needs decryption."""
    try:
        return masters.load(home)
    except Exception:
        return None


def _print_search(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out(json.dumps(found, ensure_ascii=False))
        return
    if found.get("note"):
        out(f"({found['note']})")
    if not found["hits"]:
        out("no memories found")
    for hit in found["hits"]:
        out(f"{hit['score']:.4f}  {hit['scope']:<7} {hit['layer']:<9} {hit['span_id']}  "
            f"{hit['preview']}")


def _write_private(path: Path, text: str) -> None:
    import os
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LoglineError("KEY_EXISTS", "the export file already exists: never "
                           "overwritten", str(path)) from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
