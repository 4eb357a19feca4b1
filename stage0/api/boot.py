"""POST /api/boot/{id} runs the boot in a child process, so that a boot the request stops
waiting for stops too.

A thread cannot be stopped: a boot that outlived its request (504) used to run on, commit
its kernel's transaction and leave its spans after the client was told it had failed. The
child (`python -m stage0.api.boot`, the job on stdin, the answer on stdout) is its own
process group and names its database session `logline-boot-<trace id>`. When the request
ends before the child does (timeout, client gone, server stopping), the group gets SIGTERM
(the loader closes its sandbox), then SIGKILL, and the session is terminated by name, so
the kernel's open transaction rolls back: nothing it did is committed. The boot_event
appended before the kernel ran stays; it records that the boot started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from stage0.errors import LoglineError

TERM_GRACE_S = 1.0  # SIGTERM, then this long before SIGKILL


async def run(state: Any, function_id: str, input: Any, user_id: str, tenant_id: str,
              trace_id: str) -> Any:
    """The kernel's output, or LoglineError with the loader's code."""
    name = f"logline-boot-{trace_id}"
    job = {"database": state.database.admin_url, "home": str(state.home.path),
           "function_id": function_id, "input": input, "user_id": user_id,
           "tenant_id": tenant_id, "trace_id": trace_id}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stage0.api.boot", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PGAPPNAME": name},
        start_new_session=True)
    try:
        out, _ = await proc.communicate(json.dumps(job).encode())
    finally:
        if proc.returncode is None:
            with anyio.CancelScope(shield=True):
                await stop(proc)
                ended = await anyio.to_thread.run_sync(state.end_sessions, name)
                state.log("boot_stopped", trace_id=trace_id, function_id=function_id,
                          sessions_ended=ended)
    try:
        answer = json.loads(out)
    except ValueError:
        raise LoglineError("BOOT_FAILED", f"the boot process exited {proc.returncode} "
                           "without an answer (see the server log)") from None
    if "error" in answer:
        error = answer["error"]
        raise LoglineError(error["code"], error["message"], error.get("where"))
    return answer["output"]


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the child's process group, SIGKILL after TERM_GRACE_S; reaped."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
            return


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the loader: its sandbox is closed


def main() -> int:
    from stage0.boot.loader import Loader
    from stage0.config import Home
    from stage0.ledger.db import Database

    signal.signal(signal.SIGTERM, _terminated)
    job = json.loads(sys.stdin.buffer.read())
    try:
        with Loader(Database(job["database"]), Home(Path(job["home"]))) as loader:
            answer = {"output": loader.boot(job["function_id"], job["input"],
                                            user_id=job["user_id"],
                                            tenant_id=job["tenant_id"],
                                            trace_id=job["trace_id"])}
    except LoglineError as exc:
        answer = {"error": {"code": exc.code, "message": exc.message, "where": exc.where}}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
