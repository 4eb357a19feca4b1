"""The `logline` commands that run code: `boot` (a kernel, by stage 0), `schedule` (a
request for a function), `worker` (the kernels that run requests and policies) and `demo`."""

from __future__ import annotations

import argparse
import json

from stage0 import keys
from stage0.cli import base
from stage0.cli.base import command, out
from stage0.cli.ledger_cmds import cmd_init
from stage0.ledger import db


def boot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("function_id")
    p.add_argument("--input", help="JSON input for the kernel")
    p.add_argument("--user", default="system", help="identity the kernel runs for")
    p.add_argument("--tenant", default="system")


@command("boot", "verify and run a kernel by id (prints its output)", boot_args)
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


def schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("function_id")
    p.add_argument("--input", help="JSON input for the function")
    p.add_argument("--user", help="requester (default: the function's owner)")
    p.add_argument("--tenant", help="tenant (default: the function's tenant)")
    p.add_argument("--idempotency-key", help="schedule at most once per key and tenant")


@command("schedule", "append a scheduled request for a function", schedule_args)
def cmd_schedule(args: argparse.Namespace) -> int:
    from stage0.runtime.requests import schedule

    home = base.home()
    with db.resolve(home).connect("kernel") as conn:
        request = schedule(conn, keys.operator_key(home), args.function_id,
                           base.json_arg(args.input, "--input"), user_id=args.user,
                           tenant_id=args.tenant, idempotency_key=args.idempotency_key)
    out(request["id"])
    return 0


def worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", help="worker id in logs and spans (default worker-PID)")
    p.add_argument("--once", action="store_true", help="one cycle of each kernel, then exit")
    p.add_argument("--sandbox", type=int, default=2, help="sandbox processes (default 2)")


@command("worker", "run observer, request worker and policy agent", worker_args)
def cmd_worker(args: argparse.Namespace) -> int:
    from stage0.runtime.worker import Worker

    home = base.home()
    worker = Worker(db.resolve(home), home, worker_id=args.id, sandbox_size=args.sandbox)
    worker.install_signal_handlers()
    worker.run(max_cycles=1 if args.once else None)
    return 0


@command("demo", "init, then function -> request -> execution -> policies")
def cmd_demo(args: argparse.Namespace) -> int:
    from stage0.cli.demo import run_demo

    cmd_init(args)
    out("")
    home = base.home()
    result = run_demo(db.resolve(home), home, out)
    return 0 if result["verify_ok"] else 1
