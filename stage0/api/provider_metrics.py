"""Prometheus series for LLM providers, read from the ledger (the calls happen in worker
processes; their records are the truth): calls by provider and outcome, latency histograms,
tokens, breaker state per worker, budget refusals. Only the platform's records count (a
look-alike provider_execution signed by another key does not).

A scrape does not read every record again: the collector keeps the totals in this process
and each scrape adds the records appended since the previous one (positions after the last
tip it read, up to the chain's tip now: a range of the ur_position index). The first scrape
after the API starts reads them all once; a change of the platform's keys starts over.
Counters stay exact, never reset by a restart (they are recomputed from the ledger)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from stage0.ledger import provider_rows, records

#: Latency bucket bounds in ms. width_bucket puts a duration d in bucket i when
#: BOUNDS[i-1] <= d < BOUNDS[i]; Prometheus's `le` is inclusive, so the bounds are shifted by
#: one ms (an integer duration <= b is < b + 1).
BOUNDS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STATES = {"closed": 0, "half_open": 1, "open": 2}


class _Totals:
    """What the records up to position `upto` add up to."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys, self.upto = keys, 0
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BOUNDS_S) + 1))
        self.ms: dict[str, int] = defaultdict(int)
        self.breakers: dict[tuple[str, str], str] = {}

    def copy(self) -> _Totals:
        """A snapshot (a concurrent scrape may add to these totals while this one reports)."""
        out = _Totals(self.keys)
        out.upto = self.upto
        out.calls.update(self.calls)
        out.tokens.update(self.tokens)
        out.buckets.update({k: list(v) for k, v in self.buckets.items()})
        out.ms.update(self.ms)
        out.breakers.update(self.breakers)
        return out

    def add(self, stats: list[dict[str, Any]], breakers: list[dict[str, Any]]) -> None:
        for row in stats:
            self.calls[(row["provider"], row["outcome"])] += row["calls"]
            self.tokens[(row["provider"], "in")] += row["tokens_in"]
            self.tokens[(row["provider"], "out")] += row["tokens_out"]
            self.buckets[row["provider"]][min(row["bucket"], len(BOUNDS_S))] += row["calls"]
            self.ms[row["provider"]] += row["ms"]
        for row in breakers:  # later rows than any seen before: they win
            self.breakers[(row["provider"], row["worker"] or "")] = row["state"]


class ProviderCollector:
    def __init__(self, state: Any) -> None:
        self.state = state
        self._totals: _Totals | None = None
        self._lock = threading.Lock()

    def _read(self) -> _Totals:
        bounds = [int(b * 1000) + 1 for b in BOUNDS_S]
        with self._lock, self.state.pools["kernel"].connection() as conn:
            keys = records.platform(conn, self.state.root).keys
            totals = self._totals
            if totals is None or totals.keys != keys:
                totals = _Totals(keys)
            upto = provider_rows.tip(conn)
            if upto > totals.upto:
                stats = provider_rows.execution_stats(conn, keys, bounds, totals.upto, upto)
                breakers = provider_rows.breaker_states(conn, keys, totals.upto, upto)
                totals.add(stats, breakers)
                totals.upto = upto
            self._totals = totals
            return totals.copy()

    def collect(self) -> Iterator[Metric]:
        try:
            totals: _Totals | None = self._read()
        except Exception:
            totals = None
        calls = CounterMetricFamily("logline_provider_calls", "LLM provider calls by outcome "
                                    "(ok or the reason code)", labels=["provider", "outcome"])
        tokens = CounterMetricFamily("logline_provider_tokens", "tokens sent and received",
                                     labels=["provider", "direction"])
        refusals = CounterMetricFamily("logline_provider_budget_refusals", "calls refused "
                                       "with TOKEN_BUDGET_EXCEEDED", labels=["provider"])
        totals = totals or _Totals(frozenset())
        per_call, per_token = totals.calls, totals.tokens
        buckets, total_ms = totals.buckets, totals.ms
        for (provider, outcome), n in sorted(per_call.items()):
            calls.add_metric([provider, outcome], n)
            if outcome == "TOKEN_BUDGET_EXCEEDED":
                refusals.add_metric([provider], n)
        for (provider, direction), n in sorted(per_token.items()):
            tokens.add_metric([provider, direction], n)
        latency = HistogramMetricFamily("logline_provider_latency_seconds", "LLM provider "
                                        "call latency (retries included)", labels=["provider"])
        for provider, counts in sorted(buckets.items()):
            cumulative, running = [], 0
            for bound, n in zip([*map(str, BOUNDS_S), "+Inf"], counts, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric([provider], cumulative, total_ms[provider] / 1000)
        state = GaugeMetricFamily("logline_provider_breaker_state", "each worker's breaker "
                                  "for a provider: 0 closed, 1 half-open, 2 open (the last "
                                  "change it recorded)", labels=["provider", "worker"])
        for (provider, worker), now in sorted(totals.breakers.items()):
            state.add_metric([provider, worker], STATES.get(now, 2))
        yield from (calls, tokens, latency, refusals, state)
