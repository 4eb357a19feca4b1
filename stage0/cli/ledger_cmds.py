"""The `logline` commands that set up and look after the ledger: `init`, `migrate`, `keys`,
`sign`, `seed`, `verify`, `checkpoint` and `spans`."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stage0 import keys
from stage0.cli import base, governed
from stage0.cli.base import command, out, progress
from stage0.config import row_dir
from stage0.errors import LoglineError
from stage0.ledger import checkpoint, db, manifest, migrate, rows, seed, store, verify
from stage0.ledger.queries import q
from stage0.spans.canonical import FIELDS, normalise, now_at
from stage0.spans.proofs import check_proofs, public_key_hex, seal


@command("init", "create key, database and schema; seed ROW/ (idempotent)")
def cmd_init(args: argparse.Namespace) -> int:
    home = base.home()
    home.path.mkdir(parents=True, exist_ok=True)
    key, created = keys.ensure_operator_key(home)
    out(f"home      {home.path}")
    out(f"key       {'created' if created else 'kept'} {home.operator_key} "
        f"(public {public_key_hex(key)})")
    database = db.resolve(home, create=True)
    out(f"database  {database.dbname} ({'LOGLINE_DATABASE_URL' if _external() else 'embedded'})")
    applied = migrate.migrate(database)
    out(f"migrate   {', '.join(applied) if applied else 'up to date'}")
    with database.connect("kernel") as conn:
        _print_total(seed.seed(conn, [row_dir()], key, on_file=_print_file))
    out("\nnext: logline verify      (check every span's hash, signature and chain)")
    out("      logline new function hello   (your own code: docs/authoring.md)")
    return 0


def _external() -> bool:
    return bool(os.environ.get("LOGLINE_DATABASE_URL"))


@command("migrate", "apply pending schema migrations")
def cmd_migrate(args: argparse.Namespace) -> int:
    applied = migrate.migrate(db.resolve(base.home()))
    out(f"applied {', '.join(applied)}" if applied else "up to date")
    return 0


def keys_args(p: argparse.ArgumentParser) -> None:
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = ks.add_parser("gen", **base.about("create the operator key (or --out a new key file)"))
    gen.add_argument("--out", help="write a new key to this file instead")
    show = ks.add_parser("show", **base.about("print the public key"))
    show.add_argument("--key", help="a key file (default: the operator key)")
    ids = ks.add_parser("id-secret", **base.about("write the secret platform ids are derived "
                                                  "with, for a machine with its own key"))
    ids.add_argument("--out", required=True, help="the file to create (mode 0600)")
    trust = ks.add_parser("trust", **base.about("trust a public key (appends a manifest "
                                                "version)"))
    trust.add_argument("public_key")
    trust.add_argument("--name", required=True, help="who the key belongs to")
    trust.add_argument("--role", choices=("author", "platform"), default="author",
                       help="author (default): signs functions, policies and other tenant "
                       "kinds; platform: also the platform's records (another worker "
                       "machine's key)")
    untrust = ks.add_parser("untrust", **base.about("stop trusting a public key"))
    untrust.add_argument("public_key")


@command("keys", "the operator key and the keys the manifest trusts", keys_args)
def cmd_keys(args: argparse.Namespace) -> int:
    home = base.home()
    if args.keys_command == "gen":
        if args.out:
            key = keys.write_new_key(Path(args.out))
            out(f"created {args.out}\npublic key {public_key_hex(key)}")
        else:
            key, created = keys.ensure_operator_key(home)
            if not created:
                raise LoglineError("KEY_EXISTS", "the operator key already exists",
                                   str(home.operator_key))
            out(f"created {home.operator_key}\npublic key {public_key_hex(key)}")
        return 0
    if args.keys_command == "show":
        path = Path(args.key) if args.key else home.operator_key
        out(public_key_hex(keys.load_key(path)))
        return 0
    if args.keys_command == "id-secret":
        key = keys.operator_key(home)
        keys.write_id_secret(Path(args.out), keys.id_secret(home, key))
        out(f"created {args.out}: copy it to keys/{keys.ID_SECRET_FILE} of each machine that "
            "signs with its own key")
        return 0
    root = keys.operator_key(home)
    with db.resolve(home).connect("kernel") as conn:
        span = manifest.set_trust(conn, root, args.public_key, getattr(args, "name", None),
                                  trusted=args.keys_command == "trust",
                                  role=getattr(args, "role", None) or "author")
    verb = "trusted" if args.keys_command == "trust" else "no longer trusted"
    out(f"{args.public_key} {verb}: manifest seq {span['seq']} ({span['curr_hash'][:16]})")
    return 0


def sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--key", help="key file to sign with (default: the operator key)")


@command("sign", "sign NDJSON rows in place", sign_args)
def cmd_sign(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.load_key(Path(args.key)) if args.key else keys.operator_key(home)
    signer = public_key_hex(key)
    for path in rows.expand(Path(p) for p in args.paths):
        signed, kept, records = 0, 0, []
        for row in rows.read(path):
            try:
                record, changed = _sign_row(row.data, key, signer)
            except LoglineError as exc:
                raise exc.at(row.where) from None
            records.append(record)
            signed, kept = signed + changed, kept + (not changed)
        rows.write(path, records)
        out(f"{path}: {signed} signed, {kept} already signed")
    return 0


def _sign_row(data: dict[str, Any], key: Any, signer: str) -> tuple[dict[str, Any], bool]:
    if data.get("signature") and data.get("public_key") == signer:
        if check_proofs(normalise(data)).ok:
            return data, False
    draft = {k: v for k, v in data.items() if k not in ("curr_hash", "signature", "public_key")}
    draft["at"] = draft.get("at") or now_at()
    span = seal(normalise(draft), key)
    return {f: span[f] for f in FIELDS if span[f] is not None}, True


def seed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH")


@command("seed", "load NDJSON rows into the ledger (default: ROW/)", seed_args)
def cmd_seed(args: argparse.Namespace) -> int:
    home = base.home()
    key = keys.operator_key(home)
    paths = [Path(p) for p in args.paths] or [row_dir()]
    with db.resolve(home).connect("kernel") as conn:
        rows_in = seed.count_rows(paths)
        steps = seed.STEPS_PER_ROW * rows_in if rows_in >= PROGRESS_FROM_ROWS else 0
        with progress(steps, f"seeding {rows_in:,} rows") as advance:
            _print_total(seed.seed(conn, paths, key, on_file=_print_file, progress=advance))
    return 0


#: Fewer rows than this seed in about a second: no bar.
PROGRESS_FROM_ROWS = 2000


def _print_file(r: seed.SeedResult) -> None:
    out(f"seed      {r.path}: {r.appended} appended, {r.unchanged} unchanged")


def _print_total(results: Sequence[seed.SeedResult]) -> None:
    appended = sum(r.appended for r in results)
    out(f"seed      {appended} span(s) appended from {len(results)} file(s)")


def verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--export", metavar="FILE", help="check an audit export (JSON lines) "
                   "instead: every span's hash, signature and key trust")
    p.add_argument("--jobs", type=base.positive, default=None,
                   help="processes (default: all cores)")
    p.add_argument("--checkpoint", metavar="FILE", help="also check the ledger still holds "
                   "the tip a `logline checkpoint` file pins (CHAIN_TRUNCATED, CHAIN_FORKED)")


@command("verify", "check every span: hash, signature, trust, chain", verify_args)
def cmd_verify(args: argparse.Namespace) -> int:
    if args.export:
        return governed.verify_export(args.export)
    home = base.home()
    pinned = checkpoint.load(Path(args.checkpoint), base.root(home)) if args.checkpoint else None
    with db.resolve(home).connect("kernel") as conn:
        total = db.one(conn.execute(q("count_spans")))["n"]
        with progress(total, "verifying") as advance:
            report = verify.verify(conn, base.root(home), jobs=args.jobs, progress=advance,
                                   checkpoint=pinned)
    if args.json:
        out(json.dumps(report.as_dict(), indent=2))
    else:
        rate = report.spans / report.seconds if report.seconds else 0
        out(f"verified {report.spans} spans of {report.ids} ids in {report.seconds:.2f}s "
            f"({rate:,.0f}/s, {report.jobs} jobs)")
        for f in report.failures:
            out(f"FAIL {f.id} seq {f.seq} {f.reason}: {f.detail}")
        if report.tip:
            out(f"ledger tip: position {report.tip['position']} {report.tip['chain_hash']}")
        if pinned and report.ok:
            out(f"checkpoint: position {pinned['position']} of {pinned['at']} still holds")
        out("ok: every hash, signature, key and chain checks out" if report.ok
            else f"{len(report.failures)} failure(s)")
    return 0 if report.ok else 1


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="write it to FILE (default: print it)")


@command("checkpoint", "sign the ledger's tip into a file kept elsewhere", checkpoint_args)
def cmd_checkpoint(args: argparse.Namespace) -> int:
    home = base.home()
    with db.resolve(home).connect("kernel") as conn:
        point = checkpoint.take(conn, keys.operator_key(home))
    text = json.dumps(point, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        out(f"checkpoint: position {point['position']} {point['chain_hash']} -> {args.out}")
    else:
        out(text.rstrip())
    return 0


def spans_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entity-type")
    p.add_argument("--status")
    p.add_argument("--tenant")
    p.add_argument("--limit", type=base.positive, default=50, help="at most N spans (default 50)")
    p.add_argument("--json", action="store_true", help="one span per line (NDJSON)")


@command("spans", "list the latest version of spans", spans_args)
def cmd_spans(args: argparse.Namespace) -> int:
    params = {"entity_type": args.entity_type, "status": args.status, "tenant_id": args.tenant,
              "limit": args.limit}
    with db.resolve(base.home()).connect("kernel") as conn:
        spans = [store.span_from_row(r) for r in conn.execute(q("list_spans"), params)]
    if args.json:
        for span in spans:
            out(json.dumps({k: v for k, v in span.items() if v is not None}, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("at", "id", "seq", "entity_type", "status", "tenant", "this")
    for column in table.columns[:2]:
        column.no_wrap, column.min_width = True, 24 if column.header == "at" else 36
    table.columns[-1].no_wrap, table.columns[-1].overflow = True, "ellipsis"
    for s in spans:
        table.add_row(s["at"], s["id"], str(s["seq"]), s["entity_type"], _status(s),
                      s["tenant_id"] or "", s["this"] or "")
    Console(width=max(Console().width, 160)).print(table)
    return 0


def _status(span: dict[str, Any]) -> str:
    """The status, with the reason code when the span carries one (`denied QUOTA_EXCEEDED`)."""
    error = span.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return f"{span['status'] or ''} {code}".strip() if code else span["status"] or ""
