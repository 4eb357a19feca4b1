"""Reading prompt rows (docs/prompts.md; SQL in sql/prompts.sql): the blocks and variants a
tenant may build with, and what the prompt kernels recorded (only platform-signed records)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stage0.ledger import store
from stage0.ledger.db import Connection
from stage0.ledger.queries import q


def blocks(conn: Connection, tenant: str) -> list[dict[str, Any]]:
    rows = conn.execute(q("prompt_blocks"), {"tenant": tenant}).fetchall()
    return [store.span_from_row(r) for r in rows]


def variants(conn: Connection, tenant: str, family: str | None = None
             ) -> list[dict[str, Any]]:
    rows = conn.execute(q("prompt_variants"), {"tenant": tenant, "family": family}).fetchall()
    return [store.span_from_row(r) for r in rows]


def recent_runs(conn: Connection, tenant: str, keys: Iterable[str], family: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(q("prompt_runs_recent"), {"tenant": tenant, "keys": sorted(keys),
                                                  "family": family, "limit": limit})
    return [store.span_from_row(r) for r in rows.fetchall()]


def run_stats(conn: Connection, tenant: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """variant id -> {runs, errors, mean_confidence, mean_latency_ms}."""
    rows = conn.execute(q("prompt_run_stats"), {"tenant": tenant, "keys": sorted(keys)})
    return {r["variant_id"]: {k: r[k] for k in ("runs", "errors", "mean_confidence",
                                                "mean_latency_ms")}
            for r in rows.fetchall() if r["variant_id"]}


def eval_stats(conn: Connection, tenant: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """variant id -> {evals, passed}."""
    rows = conn.execute(q("prompt_eval_stats"), {"tenant": tenant, "keys": sorted(keys)})
    return {r["variant_id"]: {"evals": r["evals"], "passed": r["passed"]}
            for r in rows.fetchall() if r["variant_id"]}


def selection_share(conn: Connection, tenant: str, keys: Iterable[str]) -> dict[str, int]:
    """variant id -> how many of the tenant's latest 1000 bandit choices chose it."""
    rows = conn.execute(q("prompt_selection_share"), {"tenant": tenant, "keys": sorted(keys)})
    return {r["variant_id"]: int(r["chosen"]) for r in rows.fetchall() if r["variant_id"]}


def recent_selections(conn: Connection, tenant: str, keys: Iterable[str],
                      family: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(q("prompt_selections_recent"), {"tenant": tenant, "keys": sorted(keys),
                                                        "family": family, "limit": limit})
    return [store.span_from_row(r) for r in rows.fetchall()]
