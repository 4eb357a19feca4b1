"""What the test modules share, in one place: a test module imports from here (or takes a
fixture from a conftest.py), never from another test module.

    helpers.cli       run `logline`: in this process (fast) or as a real subprocess
    helpers.api       a real `logline serve` on a seeded ledger, its keys and HTTP clients
    helpers.governed  tenants with people and keys, governed requests and their look-alikes
    helpers.kernels   user functions, requests and policies booted through the loader
    helpers.ledger    edits behind the ledger's back
    helpers.browser   the system Chromium for the console's browser tests
    helpers.run       this run's temporary root and the PostgreSQL all its workers share
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` (what a user would watch) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return value
