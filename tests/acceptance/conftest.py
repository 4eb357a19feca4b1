"""Fixtures of the acceptance tests (end to end: real `logline` processes and servers, over
HTTP, in a real browser)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from helpers.governed import People

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system Chromium, headless, shared by the module's tests (skips without it)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# Two tenants' people on the requesting module's own `api` server (each module that uses them
# defines `api`; a module-scoped fixture here is still one per module).
@pytest.fixture(scope="module")
def acme(api) -> People:
    return People(api, "acme")


@pytest.fixture(scope="module")
def globex(api) -> People:
    return People(api, "globex")
