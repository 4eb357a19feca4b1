"""`logline`: thin commands over the library. Each prints what it did and exits non-zero with
a reason code when it refuses."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stage0 import keys
from stage0.cli import author, base, governed, inspection
from stage0.cli.base import command, out, progress
from stage0.config import row_dir
from stage0.errors import LoglineError
from stage0.ledger import checkpoint, db, manifest, migrate, rows, seed, store, verify
from stage0.ledger.queries import q
from stage0.spans.canonical import FIELDS, normalise, now_at
from stage0.spans.proofs import check_proofs, public_key_hex, seal


@command("init")
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
    import os
    return bool(os.environ.get("LOGLINE_DATABASE_URL"))


@command("migrate")
def cmd_migrate(args: argparse.Namespace) -> int:
    applied = migrate.migrate(db.resolve(base.home()))
    out(f"applied {', '.join(applied)}" if applied else "up to date")
    return 0


@command("keys")
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


@command("sign")
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


@command("seed")
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


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    if args.export:

        return governed.verify_export(args.export)
    home = base.home()
    pinned = checkpoint.load(Path(args.checkpoint), base.root(home)) if args.checkpoint else None
    with db.resolve(home).connect("kernel") as conn:
        total = conn.execute(q("count_spans")).fetchone()["n"]
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


@command("checkpoint")
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


@command("spans")
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


@command("boot")
def cmd_boot(args: argparse.Namespace) -> int:
    from stage0.boot.loader import Loader

    base.span_id(args.function_id, "`logline boot` runs a kernel by its id (`logline spans "
             "--entity-type function --tenant system` lists them); to run your own function, "
             "`logline schedule ID`")
    home = base.home()
    with Loader(db.resolve(home), home) as loader:
        output = loader.boot(args.function_id, base.json_arg(args.input, "--input"),
                             user_id=args.user, tenant_id=args.tenant)
    out(json.dumps(output, indent=2, ensure_ascii=False))
    return 0


@command("schedule")
def cmd_schedule(args: argparse.Namespace) -> int:
    from stage0.runtime.requests import schedule

    home = base.home()
    with db.resolve(home).connect("kernel") as conn:
        request = schedule(conn, keys.operator_key(home), args.function_id,
                           base.json_arg(args.input, "--input"), user_id=args.user,
                           tenant_id=args.tenant, idempotency_key=args.idempotency_key)
    out(request["id"])
    return 0


@command("worker")
def cmd_worker(args: argparse.Namespace) -> int:
    from stage0.runtime.worker import Worker

    home = base.home()
    worker = Worker(db.resolve(home), home, worker_id=args.id, sandbox_size=args.sandbox)
    worker.install_signal_handlers()
    worker.run(max_cycles=1 if args.once else None)
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from stage0.cli.demo import run_demo

    cmd_init(args)
    out("")
    home = base.home()
    result = run_demo(db.resolve(home), home, out)
    return 0 if result["verify_ok"] else 1


@command("apikey")
def cmd_apikey(args: argparse.Namespace) -> int:
    from stage0.gov import apikeys

    home = base.home()
    key = keys.operator_key(home)
    with db.resolve(home).connect("kernel") as conn:
        if args.apikey_command == "create":
            token, span = apikeys.create(conn, key, args.user, args.tenant,
                                         tuple(args.role or apikeys.DEFAULT_ROLES),
                                         keys.id_secret(home, key))
            meta = span["metadata"]
            out(f"key id  {meta['key_id']}  user {args.user}  tenant {args.tenant}  "
                f"roles {','.join(meta['roles'])}")
            out("shown once; only its hash is stored:")
            out(token)
        elif args.apikey_command == "revoke":
            apikeys.revoke(conn, key, args.key_id, keys.id_secret(home, key))
            out(f"revoked {args.key_id}")
        else:
            for k in apikeys.listing(conn, args.tenant):
                out(f"{k['key_id']}  {k['status']:<8} {k['tenant_id']}/{k['user_id']}  "
                    f"{','.join(k['roles'])}")
    return 0


def _serve(args: argparse.Namespace, on_listening: Callable[[], None] | None = None) -> None:
    from stage0.api.app import create_app
    from stage0.api.edge import EdgeConfig, serve
    from stage0.api.ratelimit import DEFAULT_LIMITS, Limit, RateLimiter
    from stage0.api.state import ServerState

    limits = dict(DEFAULT_LIMITS)
    for spec in args.rate or []:
        name, _, value = spec.partition("=")
        rate, _, burst = value.partition(":")
        try:
            limits[name] = Limit(float(rate), int(burst or float(rate)))
            assert name in DEFAULT_LIMITS and limits[name].per_second > 0
        except (ValueError, AssertionError):
            raise LoglineError("BAD_RATE", f"expected CLASS=PER_SECOND[:BURST] with CLASS one "
                               f"of {', '.join(DEFAULT_LIMITS)}", spec) from None
    edge = EdgeConfig(request_timeout_s=args.request_timeout,
                      header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                      max_connections=args.max_connections,
                      audit_interval_s=args.audit_interval)
    home = base.home()
    state = ServerState(db.resolve(home), home, limiter=RateLimiter(limits), edge=edge)
    serve(create_app(state), state, args.host, args.port, on_listening)


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    _serve(args, lambda: out(f"LogLine API on http://{args.host}:{args.port}  (console at /, "
                             "OpenAPI at /openapi.json)"))
    return 0


@command("up")
def cmd_up(args: argparse.Namespace) -> int:
    import os
    import signal
    import subprocess

    from stage0.gov.operator import operator_token

    cmd_init(args)
    home = base.home()
    token = operator_token(home, db.resolve(home))
    workers: list[subprocess.Popen] = []
    url = f"http://{args.host}:{args.port}"

    def announce() -> None:  # only once the port is ours: never someone else's server
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "stage0.cli", "worker", "--id", "up"],
            env={**os.environ, "LOGLINE_HOME": str(home.path)}))
        out(f"\nLogLine is up: {url}/  (worker pid {workers[0].pid})")
        out(f"API key for the local operator (tenant default, user operator; admin and "
            f"operator; kept in {home.path / 'operator.apikey'}):\n{token}")
        out("For the CLI's API commands (propose, ask, approvals, agent) in another shell:\n"
            f"  export LOGLINE_URL={url}")
        out("Ctrl-C stops the API and the worker.")

    try:
        _serve(args, announce)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    from stage0.config import PROJECT_ROOT, from_checkout

    script = PROJECT_ROOT / "tools" / f"bench_{args.what}.py"
    if not from_checkout() or not script.is_file():
        raise LoglineError("BENCH_NEEDS_CHECKOUT", f"the benchmarks live in tools/ of a LogLine "
                           f"checkout; {script} is not there (clone the repository and run "
                           "`pip install -e .` in it)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


@command("db")
def cmd_db(args: argparse.Namespace) -> int:
    home = base.home()
    if args.db_command == "stop":
        out("stopped" if db.stop_embedded(home) else "not running")
    elif args.db_command == "url":
        out(db.resolve(home).url(args.role))
    return 0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("logline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        import tomllib

        from stage0.config import PROJECT_ROOT

        with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]


class _Version(argparse.Action):
    """--version, looked up only when asked for (not on every command's start)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"logline {version()}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    from stage0.api.edge import EdgeConfig

    p = argparse.ArgumentParser(prog="logline", description="LogLine: a ledger of signed spans "
                                "on PostgreSQL. State lives in $LOGLINE_HOME (default ./.logline)."
                                " LOGLINE_DATABASE_URL selects an external server.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("init", **base.about("create key, database and schema; seed ROW/ (idempotent)"))
    sub.add_parser("migrate", **base.about("apply pending schema migrations"))
    k = sub.add_parser("keys", **base.about("the operator key and the keys the manifest trusts"))
    ks = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = ks.add_parser("gen", **base.about("create the operator key (or --out a new key file)"))
    gen.add_argument("--out", help="write a new key to this file instead")
    show = ks.add_parser("show", **base.about("print the public key"))
    show.add_argument("--key", help="a key file (default: the operator key)")
    ids = ks.add_parser("id-secret", **base.about("write the secret platform ids are derived with, "
                                              "for a machine with its own key"))
    ids.add_argument("--out", required=True, help="the file to create (mode 0600)")
    trust = ks.add_parser("trust", **base.about("trust a public key (appends a manifest version)"))
    trust.add_argument("public_key")
    trust.add_argument("--name", required=True, help="who the key belongs to")
    trust.add_argument("--role", choices=("author", "platform"), default="author",
                       help="author (default): signs functions, policies and other tenant "
                       "kinds; platform: also the platform's records (another worker "
                       "machine's key)")
    untrust = ks.add_parser("untrust", **base.about("stop trusting a public key"))
    untrust.add_argument("public_key")
    s = sub.add_parser("sign", **base.about("sign NDJSON rows in place"))
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--key", help="key file to sign with (default: the operator key)")
    sd = sub.add_parser("seed", **base.about("load NDJSON rows into the ledger (default: ROW/)"))
    sd.add_argument("paths", nargs="*", metavar="PATH")
    v = sub.add_parser("verify", **base.about("check every span: hash, signature, trust, chain"))
    v.add_argument("--json", action="store_true", help="machine-readable report")
    v.add_argument("--export", metavar="FILE", help="check an audit export (JSON lines) "
                   "instead: every span's hash, signature and key trust")
    v.add_argument("--jobs", type=base.positive, default=None,
                   help="processes (default: all cores)")
    v.add_argument("--checkpoint", metavar="FILE", help="also check the ledger still holds "
                   "the tip a `logline checkpoint` file pins (CHAIN_TRUNCATED, CHAIN_FORKED)")
    cp = sub.add_parser("checkpoint", **base.about("sign the ledger's tip into a file kept "
                                               "elsewhere"))
    cp.add_argument("--out", metavar="FILE", help="write it to FILE (default: print it)")
    sp = sub.add_parser("spans", **base.about("list the latest version of spans"))
    sp.add_argument("--entity-type")
    sp.add_argument("--status")
    sp.add_argument("--tenant")
    sp.add_argument("--limit", type=base.positive, default=50, help="at most N spans (default 50)")
    sp.add_argument("--json", action="store_true", help="one span per line (NDJSON)")
    b = sub.add_parser("boot", **base.about("verify and run a kernel by id (prints its output)"))
    b.add_argument("function_id")
    b.add_argument("--input", help="JSON input for the kernel")
    b.add_argument("--user", default="system", help="identity the kernel runs for")
    b.add_argument("--tenant", default="system")
    sc = sub.add_parser("schedule", **base.about("append a scheduled request for a function"))
    sc.add_argument("function_id")
    sc.add_argument("--input", help="JSON input for the function")
    sc.add_argument("--user", help="requester (default: the function's owner)")
    sc.add_argument("--tenant", help="tenant (default: the function's tenant)")
    sc.add_argument("--idempotency-key", help="schedule at most once per key and tenant")
    w = sub.add_parser("worker", **base.about("run observer, request worker and policy agent"))
    w.add_argument("--id", help="worker id in logs and spans (default worker-PID)")
    w.add_argument("--once", action="store_true", help="one cycle of each kernel, then exit")
    w.add_argument("--sandbox", type=int, default=2, help="sandbox processes (default 2)")
    sub.add_parser("demo", **base.about("init, then function -> request -> execution -> policies"))
    ak = sub.add_parser("apikey", **base.about("API keys: bearer tokens bound to a user, a tenant "
                                            "and roles"))
    aks = ak.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    create = aks.add_parser("create", **base.about("issue a key (printed once, on the last line)"))
    create.add_argument("--user", required=True, help="the user the key acts as")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--role", action="append",
                        help="repeatable; default reader and writer. Also any role a contract "
                             "declares (requester, approver, viewer, agent for personal_ops)")
    revoke = aks.add_parser("revoke", **base.about("revoke a key by its key id"))
    revoke.add_argument("key_id")
    lst = aks.add_parser("list", **base.about("list keys (never the secrets)"))
    lst.add_argument("--tenant", help="only this tenant")
    for name, text in (("serve", "serve the API and web console"),
                       ("up", "init, then the API, console and worker in one command")):
        srv = sub.add_parser(name, **base.about(text))
        srv.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
        srv.add_argument("--port", type=base.positive, default=8000, help="port (default 8000)")
        srv.add_argument("--rate", action="append", metavar="CLASS=PER_SECOND[:BURST]",
                         help="rate limit per API key for a route class (read, write, "
                              "stream, admin); repeatable")
        edge = EdgeConfig()
        for flag, kind, default, text in (
                ("--request-timeout", float, edge.request_timeout_s,
                 "seconds a request may take (504 after)"),
                ("--header-timeout", float, edge.header_timeout_s,
                 "seconds a connection may take to send its request head (closed after)"),
                ("--body-timeout", float, edge.body_timeout_s,
                 "seconds a request may take to send its body (408 after)"),
                ("--max-connections", int, edge.max_connections,
                 "client connections held open (lowered to fit the descriptor limit)"),
                ("--audit-interval", float, edge.audit_interval_s,
                 "seconds between the spans that sum up anonymous denials")):
            srv.add_argument(flag, type=base.positive_number(kind), default=default,
                             metavar="N" if kind is int else "SECONDS",
                             help=f"{text} (default {default:g})")
    bench = sub.add_parser("bench", **base.about("run a benchmark from tools/ (figures beside "
                                             "their peers)"))
    bench.add_argument("what", choices=["ingest", "pipeline", "api"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options "
                       "(e.g. --quick; see logline bench WHAT --help)")
    d = sub.add_parser("db", **base.about("the database server"))
    ds = d.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    ds.add_parser("stop", **base.about("stop the embedded server"))
    url = ds.add_parser("url", **base.about("print a connection string"))
    url.add_argument("--role", choices=["admin", "app", "kernel"], default="app")
    for commands in (governed, inspection, author):
        commands.add_parsers(sub, base.about)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return base.COMMANDS[args.command](args)
    except LoglineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except db.DatabaseError as exc:
        refusal = db.unmigrated(exc)
        if refusal is None:
            raise
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `logline spans --json | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
