"""Prometheus series for LLM providers, read from the ledger at scrape time (the calls happen
in worker processes; their records are the truth): calls by provider and outcome, latency
histograms, tokens, breaker state per worker, budget refusals. Only the platform's records
count (a look-alike provider_execution signed by another key does not)."""

from __future__ import annotations

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


class ProviderCollector:
    def __init__(self, state: Any) -> None:
        self.state = state

    def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bounds = [int(b * 1000) + 1 for b in BOUNDS_S]
        with self.state.pools["kernel"].connection() as conn:
            keys = records.platform(conn, self.state.root).keys
            return (provider_rows.execution_stats(conn, keys, bounds),
                    provider_rows.breaker_states(conn, keys))

    def collect(self) -> Iterator[Metric]:
        try:
            stats, breakers = self._read()
        except Exception:
            stats, breakers = [], []
        calls = CounterMetricFamily("logline_provider_calls", "LLM provider calls by outcome "
                                    "(ok or the reason code)", labels=["provider", "outcome"])
        tokens = CounterMetricFamily("logline_provider_tokens", "tokens sent and received",
                                     labels=["provider", "direction"])
        refusals = CounterMetricFamily("logline_provider_budget_refusals", "calls refused "
                                       "with TOKEN_BUDGET_EXCEEDED", labels=["provider"])
        per_call: dict[tuple[str, str], int] = defaultdict(int)
        per_token: dict[tuple[str, str], int] = defaultdict(int)
        buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BOUNDS_S) + 1))
        total_ms: dict[str, int] = defaultdict(int)
        for row in stats:
            per_call[(row["provider"], row["outcome"])] += row["calls"]
            per_token[(row["provider"], "in")] += row["tokens_in"]
            per_token[(row["provider"], "out")] += row["tokens_out"]
            buckets[row["provider"]][min(row["bucket"], len(BOUNDS_S))] += row["calls"]
            total_ms[row["provider"]] += row["ms"]
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
        for row in breakers:
            state.add_metric([row["provider"], row["worker"] or ""],
                             STATES.get(row["state"], 2))
        yield from (calls, tokens, latency, refusals, state)
