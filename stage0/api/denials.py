"""Denials of callers without a valid key are counted, not recorded one by one.

Every anonymous 401 used to become a signed `audit_denial` span holding the client's path:
a client sending 60 KB paths could add about 100 GB a day to the ledger, forever. Now each
is counted (the Prometheus counter `logline_anonymous_denials_total{code}` and the `Tally`
below), and once per audit interval, when anything was counted, the tally becomes one
`audit_summary` span: counts by reason and by route, how many distinct clients, and the
busiest few. Denials of callers with a valid key are still one span each (a key is
accountable, and the per-second cap in state.py bounds them), with their client text cut
(stage0/spans/clip.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from stage0.spans.canonical import now_at
from stage0.spans.clip import clip

MAX_CLIENTS = 10_000  # distinct clients tracked per interval (the rest are counted apart)
TOP_CLIENTS = 10


class Tally:
    """Anonymous denials since the last summary, in memory (bounded: routes and reasons are
    the server's own; client addresses are cut and at most MAX_CLIENTS are kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()  # (code, action)
        self.clients: Counter[str] = Counter()
        self.cuts: dict[str, dict[str, Any]] = {}  # a cut client address -> its digest
        self.untracked = 0  # denials of clients beyond MAX_CLIENTS
        self.since = now_at()

    def add(self, code: str, action: str, client: str | None) -> None:
        address, cut = clip(client or "")
        with self._lock:
            self.counts[(code, action)] += 1
            if address in self.clients or len(self.clients) < MAX_CLIENTS:
                self.clients[address] += 1
                if cut:
                    self.cuts.setdefault(address, cut)
            else:
                self.untracked += 1

    def take(self) -> dict[str, Any] | None:
        """The summary of what was counted since the last one (None if nothing was), and
        start counting afresh."""
        with self._lock:
            counts, clients, cuts = self.counts, self.clients, self.cuts
            untracked, since = self.untracked, self.since
            self._reset()
        if not counts:
            return None
        by_reason: dict[str, int] = {}
        by_route: dict[str, dict[str, int]] = {}
        for (code, action), n in sorted(counts.items()):
            by_reason[code] = by_reason.get(code, 0) + n
            by_route.setdefault(code, {})[action] = n
        top = [{"client": address, "denials": n, **({"clipped": cuts[address]}
                                                    if address in cuts else {})}
               for address, n in clients.most_common(TOP_CLIENTS)]
        return {"from": since, "to": now_at(), "total": sum(counts.values()),
                "by_reason": by_reason, "by_reason_and_route": by_route,
                "clients": len(clients), "untracked_client_denials": untracked,
                "top_clients": top}


def summary_span(summary: dict[str, Any], interval_s: float) -> dict[str, Any]:
    return {"entity_type": "audit_summary", "who": "api", "did": "summarised",
            "this": "anonymous denials", "owner_id": "anonymous", "tenant_id": "system",
            "visibility": "private", "status": "denied", "content": summary,
            "metadata": {"interval_s": interval_s}}
