"""Prometheus metrics: requests and latency per route, SSE clients, denials, executions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stage0.api.provider_metrics import ProviderCollector
from stage0.ledger import records
from stage0.ledger.queries import q


class _Executions:
    """Executions by status (the platform's records only: a look-alike execution span signed
    by another key is not counted), read from the latest versions at scrape time."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("logline_executions", "execution spans by status",
                                   labels=["status"])
        try:
            with self.state.pools["kernel"].connection() as conn:
                keys = sorted(records.platform(conn, self.state.root).keys)
                rows = conn.execute(q("executions_by_status"), {"keys": keys}).fetchall()
        except Exception:
            rows = []
        for row in rows:
            family.add_metric([row["status"]], row["n"])
        yield family


class _Connections:
    """The edge's connections (stage0/api/edge.py): open now, the cap, and how many were
    closed for taking too long over their request head or to make room under the cap."""

    def __init__(self, guard: Any) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("logline_connections", "open client connections",
                                value=self.guard.open)
        yield GaugeMetricFamily("logline_connection_cap", "most client connections held open",
                                value=self.guard.cap)
        closed = CounterMetricFamily("logline_connections_closed", "client connections the "
                                     "server closed", labels=["reason"])
        for reason, n in self.guard.closed.items():
            closed.add_metric([reason], n)
        yield closed


class Metrics:
    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("logline_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("logline_http_request_seconds", "HTTP request latency",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10))
        self.sse_clients = Gauge("logline_sse_clients", "connected SSE clients",
                                 registry=self.registry)
        self.denials = Counter("logline_denials", "requests denied (auth, role, rate limit, "
                               "RLS, gate)", ["code"], registry=self.registry)
        self.anonymous_denials = Counter("logline_anonymous_denials", "requests without a "
                                         "valid key denied (summed into audit_summary spans, "
                                         "not recorded one by one)", ["code"],
                                         registry=self.registry)
        self.registry.register(_Executions(state))
        self.registry.register(ProviderCollector(state))  # issue 11: LLM providers

    def watch(self, guard: Any) -> None:
        """Expose the edge's connection counts (served by stage0/api/edge.py)."""
        self.registry.register(_Connections(guard))

    def observe(self, endpoint: Any, status: int, seconds: float) -> None:
        self.requests.labels(endpoint.path, endpoint.method, str(status)).inc()
        if not endpoint.stream:
            self.latency.labels(endpoint.path).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
