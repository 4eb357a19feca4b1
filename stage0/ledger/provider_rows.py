"""Reading `provider` rows and what the token budget counts (SQL in sql/queries.sql).

Only rows signed by a platform key count: a tenant's look-alike `provider` span (posted
through the API, signed by the edge key) is never a provider anyone calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stage0.ledger import store
from stage0.ledger.db import Connection, one
from stage0.ledger.queries import q


def find(conn: Connection, name: str, tenant: str, keys: Iterable[str]) -> dict[str, Any] | None:
    """The provider span `tenant` means by `name` (its own, else the system one), or None."""
    row = conn.execute(q("provider_by_name"), {"name": name, "tenant": tenant,
                                               "keys": sorted(keys)}).fetchone()
    return store.span_from_row(row) if row else None


def listed(conn: Connection, keys: Iterable[str], tenant: str | None = None
           ) -> list[dict[str, Any]]:
    rows = conn.execute(q("providers_list"), {"tenant": tenant, "keys": sorted(keys)})
    return [store.span_from_row(r) for r in rows.fetchall()]


def for_call(conn: Connection, name: str, tenant: str, keys: Iterable[str]
             ) -> tuple[dict[str, Any], int, str, bool] | None:
    """What one call needs, in one round trip: the provider span (as find()), the tokens
    `tenant` used with it since 00:00 UTC, that UTC day ("YYYY-MM-DD"), and whether the
    tenant keeps transcripts; None when there is no such provider."""
    row = conn.execute(q("provider_for_call"), {"name": name, "tenant": tenant,
                                                "keys": sorted(keys)}).fetchone()
    if row is None:
        return None
    return (store.span_from_row(row), int(row["tokens_today"]), row["utc_day"],
            bool(row["keep_transcripts"]))


def transcripts_on(conn: Connection, tenant: str, keys: Iterable[str]) -> bool:
    row = one(conn.execute(q("transcripts_on"), {"tenant": tenant, "keys": sorted(keys)}))
    return bool(row["keep"])


def transcript_of(conn: Connection, execution_id: str, tenant: str, keys: Iterable[str]
                  ) -> dict[str, Any] | None:
    row = conn.execute(q("transcript_of"), {"execution_id": execution_id, "tenant": tenant,
                                            "keys": sorted(keys)}).fetchone()
    return store.span_from_row(row) if row else None


def tokens_today(conn: Connection, tenant: str, provider: str) -> tuple[int, str]:
    """Tokens `tenant` used with `provider` since 00:00 UTC (schema/0010's counter), and
    that UTC day ("YYYY-MM-DD")."""
    row = one(conn.execute(q("provider_tokens_today"), {"tenant": tenant,
                                                        "provider": provider}))
    return int(row["n"]), row["utc_day"]


def tip(conn: Connection) -> int:
    """The position of the ledger's last row (0 when empty): every row at or below it is
    committed (appends are serialised by the append lock and the tip moves at commit)."""
    row = conn.execute(q("chain_tip")).fetchone()
    return int(row["position"]) if row and row["position"] is not None else 0


def execution_stats(conn: Connection, keys: Iterable[str], bounds_ms: list[int],
                    after: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
    """Rows of (provider, outcome, bucket, calls, tokens_in, tokens_out, ms) of the records
    at positions in (after, upto]: bucket i counts durations in [bounds_ms[i-1],
    bounds_ms[i]) (0: below the first, len: at or above the last)."""
    return list(conn.execute(q("provider_execution_stats"), {
        "keys": sorted(keys), "bounds": bounds_ms, "after": after,
        "upto": tip(conn) if upto is None else upto}).fetchall())


def breaker_states(conn: Connection, keys: Iterable[str], after: int = 0,
                   upto: int | None = None) -> list[dict[str, Any]]:
    """The last breaker state each (provider, worker) recorded at positions in (after,
    upto]."""
    return list(conn.execute(q("provider_breaker_states"), {
        "keys": sorted(keys), "after": after,
        "upto": tip(conn) if upto is None else upto}).fetchall())
