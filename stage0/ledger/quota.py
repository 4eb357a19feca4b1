"""Daily execution quotas: how many runs a tenant may have per UTC day, and how many it had.

The limits live in the manifest (root-signed, so only the operator changes them):
`throttle.per_tenant_daily_exec_limit` for every tenant (100 when absent; ROW/manifest sets
it) and `throttle.tenant_limits` ({tenant: limit}) for the exceptions (`logline quota set
LIMIT --tenant T`; kept when ROW/ is seeded again). They fail closed: a limit that
is not a whole number >= 0, or a `tenant_limits` that is not an object, counts as 0 (nothing
runs) rather than as no limit. run_code and observer_bot read the same keys the same way
(kernels/, tested against `limit_for`). Counts come from ledger.tenant_exec_counts, which the
append trigger keeps per tenant and UTC day.

Where a refusal shows: the request ends `denied` with `error.code` QUOTA_EXCEEDED (and a
policy_violation span), `POST /api/execute` answers 429 QUOTA_EXCEEDED before scheduling when
the day's quota is already spent, observer_bot records a scheduled function it does not
schedule as such a denied request (once per function and UTC day), `GET /api/metrics` and
`logline quota show` tell what is left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nacl.signing import SigningKey

from stage0.errors import LoglineError
from stage0.ledger import manifest
from stage0.ledger.db import Connection, one
from stage0.ledger.queries import q
from stage0.spans.proofs import public_key_hex

DEFAULT_LIMIT = 100
DEFAULT_KEY = "per_tenant_daily_exec_limit"
OVERRIDES_KEY = "tenant_limits"
MAX_LIMIT = 2**31 - 1
DEFAULT_WORD = "default"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LIMIT


def limit_for(metadata: dict[str, Any] | None, tenant: str | None) -> tuple[int, str]:
    """(executions per UTC day, where that number comes from) for `tenant`."""
    throttle = (metadata or {}).get("throttle") or {}
    overrides = throttle.get(OVERRIDES_KEY) or {}
    if not isinstance(overrides, dict):
        return 0, f"throttle.{OVERRIDES_KEY} is not an object: 0 (fail closed)"
    if tenant in overrides:
        value, source = overrides[tenant], f"throttle.{OVERRIDES_KEY}.{tenant}"
    else:
        value, source = throttle.get(DEFAULT_KEY, DEFAULT_LIMIT), f"throttle.{DEFAULT_KEY}"
    if not _whole(value):
        return 0, f"{source} is {value!r}, not a whole number >= 0: 0 (fail closed)"
    return value, source


@dataclass(frozen=True)
class Quota:
    tenant_id: str
    day: str  # the UTC day the count is for
    limit: int
    used: int
    source: str
    resets_in_s: int  # seconds until 00:00 UTC

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def spent(self) -> bool:
        return self.used >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "remaining": self.remaining}

    def refusal(self) -> LoglineError:
        return LoglineError("QUOTA_EXCEEDED", f"tenant {self.tenant_id} has used {self.used} of "
                            f"its {self.limit} executions for {self.day} (UTC); the quota "
                            f"resets at 00:00 UTC, in {self.resets_in_s} s "
                            "(`logline quota show`; the operator changes it with "
                            "`logline quota set`)")


def _quota(conn: Connection, metadata: dict[str, Any] | None, tenant: str,
           used: int) -> Quota:
    limit, source = limit_for(metadata, tenant)
    clock = one(conn.execute(q("utc_day")))
    return Quota(tenant, clock["day"], limit, int(used), source, clock["resets_in_s"])


def of_tenant(conn: Connection, metadata: dict[str, Any] | None, tenant: str) -> Quota:
    """Any tenant's quota today (the kernel role: it reads every tenant's count)."""
    used = one(conn.execute(q("exec_count_today"), {"tenant": tenant}))["n"]
    return _quota(conn, metadata, tenant, used)


def of_caller(conn: Connection, metadata: dict[str, Any] | None, tenant: str) -> Quota:
    """The caller's own tenant's quota, in a transaction whose app.tenant_id is `tenant`
    (the API's app role: schema 0008's function counts for that tenant only)."""
    used = one(conn.execute(q("my_exec_count_today")))["n"]
    return _quota(conn, metadata, tenant, used)


def used_today(conn: Connection) -> dict[str, int]:
    """Executions so far today per tenant (the kernel role)."""
    return {r["tenant_id"]: int(r["n"]) for r in conn.execute(q("exec_counts_today"))}


def parse_limit(text: str) -> int | None:
    """A limit as the CLI takes it: a whole number >= 0, or `default` (None: no override)."""
    if text.strip().lower() == DEFAULT_WORD:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not _whole(value):
        raise LoglineError("QUOTA_INVALID", f"a daily limit is a whole number from 0 to "
                           f"{MAX_LIMIT} (or `default` to drop a tenant's override)", text)
    return value


def set_limit(conn: Connection, root: SigningKey, tenant: str,
              limit: int | None) -> dict[str, Any]:
    """Append a manifest version with `tenant`'s override set to `limit` (None: removed, so
    the default applies again). Returns that manifest version."""
    if not isinstance(tenant, str) or not tenant.strip():
        raise LoglineError("QUOTA_INVALID", "name the tenant whose limit this is", "--tenant")
    current = manifest.latest(conn, public_key_hex(root))
    throttle = dict((current.get("metadata") or {}).get("throttle") or {})
    overrides = throttle.get(OVERRIDES_KEY)
    overrides = dict(overrides) if isinstance(overrides, dict) else {}
    if limit is None:
        overrides.pop(tenant, None)
    else:
        overrides[tenant] = limit
    throttle[OVERRIDES_KEY] = dict(sorted(overrides.items()))
    return manifest.amend(conn, root, throttle=throttle)


def carry_overrides(metadata: dict[str, Any], current: dict[str, Any]) -> None:
    """Re-seeding a manifest row keeps the tenants' overrides the ledger's manifest holds
    (`logline quota set` grants them, `logline init` re-seeds ROW/ on every start); the
    row's own overrides win for the tenants it names. Edits `metadata` in place."""
    kept = (current.get("throttle") or {}).get(OVERRIDES_KEY)
    if not isinstance(kept, dict) or not kept:
        return
    throttle = dict(metadata.get("throttle") or {})
    given = throttle.get(OVERRIDES_KEY)
    given = given if isinstance(given, dict) else {}
    throttle[OVERRIDES_KEY] = dict(sorted({**kept, **given}.items()))
    metadata["throttle"] = throttle
