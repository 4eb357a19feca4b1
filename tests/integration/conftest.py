"""Fixtures of the integration tests (the real PostgreSQL; the library and the CLI in this
process): the real sandbox, and the stage-0 loader on this test's seeded ledger."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stage0.boot.loader import Loader
from stage0.sandbox.pool import SandboxPool


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    """Two sandbox worker processes, shared by the module's tests."""
    with SandboxPool(size=2) as p:
        yield p


@pytest.fixture
def loader(seeded, home, pool) -> Iterator[Loader]:
    with Loader(seeded, home, sandbox=pool) as ld:
        yield ld
