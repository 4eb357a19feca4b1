"""Every reason code the code can answer with is documented (docs/errors.md and the pages it
points to), so a user who meets one can look it up."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAISED = re.compile(r'(?:LoglineError|BootRefused|ApiError)\(\s*(?:\d+,\s*)?"([A-Z][A-Z0-9_]+)"')
IN_KERNELS = re.compile(r'"code": "([A-Z][A-Z0-9_]+)"')


def codes() -> set[str]:
    found = set()
    for path in (REPO / "stage0").rglob("*.py"):
        found |= set(RAISED.findall(path.read_text()))
    for path in (REPO / "kernels").rglob("*.py"):
        found |= set(IN_KERNELS.findall(path.read_text()))
    return found


def test_every_reason_code_is_documented():
    docs = "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    found = codes()
    assert {"NOT_INITIALISED", "QUOTA_EXCEEDED", "QUOTA_INVALID", "NEW_CODE_INVALID",
            "REQUESTER_REQUIRED", "BAD_ID"} <= found
    assert sorted(c for c in found if not re.search(rf"\b{c}\b", docs)) == []
