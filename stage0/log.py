"""The platform's log line: one JSON object per event on stderr (no ledger, no driver), so
every process (workers, the API, the governed agent) logs the same way without importing
the layers it does not use."""

from __future__ import annotations

import json
import sys
from typing import Any

from stage0.spans.canonical import now_at


def log(event: str, **fields: Any) -> None:
    """One structured line on stderr: UTC timestamp, an `action`, and the fields."""
    line = {"ts": now_at(), "action": event, **fields}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)
