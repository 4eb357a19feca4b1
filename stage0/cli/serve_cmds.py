"""The `logline` commands of the HTTP API: `apikey` (its bearer tokens), `serve` (the API and
web console) and `up` (init, then the API, console and a worker in one command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.cli.ledger_cmds import cmd_init
from stage0.errors import LoglineError
from stage0.ledger import db


def apikey_args(p: argparse.ArgumentParser) -> None:
    aks = p.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    create = aks.add_parser("create", **base.about("issue a key (printed once, on the last "
                                                   "line)"))
    create.add_argument("--user", required=True, help="the user the key acts as")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--role", action="append",
                        help="repeatable; default reader and writer. Also any role a contract "
                             "declares (requester, approver, viewer, agent for personal_ops)")
    revoke = aks.add_parser("revoke", **base.about("revoke a key by its key id"))
    revoke.add_argument("key_id")
    lst = aks.add_parser("list", **base.about("list keys (never the secrets)"))
    lst.add_argument("--tenant", help="only this tenant")


@command("apikey", "API keys: bearer tokens bound to a user, a tenant and roles", apikey_args)
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


def server_args(p: argparse.ArgumentParser) -> None:
    """`serve` and `up`: where to listen, rate limits, the edge's deadlines and connections."""
    from stage0.api.edge import EdgeConfig

    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--port", type=base.positive, default=8000, help="port (default 8000)")
    p.add_argument("--rate", action="append", metavar="CLASS=PER_SECOND[:BURST]",
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
        p.add_argument(flag, type=base.positive_number(kind), default=default,
                       metavar="N" if kind is int else "SECONDS",
                       help=f"{text} (default {default:g})")


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


@command("serve", "serve the API and web console", server_args)
def cmd_serve(args: argparse.Namespace) -> int:
    _serve(args, lambda: out(f"LogLine API on http://{args.host}:{args.port}  (console at /, "
                             "OpenAPI at /openapi.json)"))
    return 0


@command("up", "init, then the API, console and worker in one command", server_args)
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
