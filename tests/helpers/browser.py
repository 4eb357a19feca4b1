"""The system Chromium (Debian's /usr/bin/chromium) for the console's browser tests, driven by
Playwright; a browser is never downloaded. CI (CI=true) always runs these tests; elsewhere
they skip, saying why, when Chromium or Playwright is missing. The module-scoped `browser`
fixture is in tests/acceptance/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Call at the top of a browser test module: skips the module without Chromium."""
    if not IN_CI and not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium); CI installs it and runs "
                    "this", allow_module_level=True)
    if not IN_CI:
        pytest.importorskip("playwright.sync_api",
                            reason="pip install -e '.[test]' brings playwright")


def shot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot in the test's tmp dir (`screens/NAME.png`)."""
    folder = tmp_path / "screens"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
