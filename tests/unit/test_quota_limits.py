"""Daily execution quotas: the limits a manifest sets (defaults, per-tenant overrides), read
alike by stage0.ledger.quota and by the sandboxed kernels, failing closed on anything
malformed. (On a ledger: tests/integration/test_quota.py; over HTTP:
tests/acceptance/test_quota_api.py.)"""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import REPO

from stage0.ledger import quota

KERNELS_DIR = REPO / "kernels"


def kernel_module(name: str):
    spec = importlib.util.spec_from_file_location(f"kernel_{name}", KERNELS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCtx:
    def __init__(self, metadata: dict) -> None:
        self.manifest = metadata


MANIFESTS = [
    {}, {"throttle": {}}, {"throttle": {"per_tenant_daily_exec_limit": 7}},
    {"throttle": {"per_tenant_daily_exec_limit": 7, "tenant_limits": {"acme": 1000}}},
    {"throttle": {"tenant_limits": {"acme": 0}}},
    {"throttle": {"per_tenant_daily_exec_limit": "lots"}},
    {"throttle": {"per_tenant_daily_exec_limit": -1}},
    {"throttle": {"per_tenant_daily_exec_limit": True}},
    {"throttle": {"per_tenant_daily_exec_limit": 2.5}},
    {"throttle": {"per_tenant_daily_exec_limit": 2**40}},
    {"throttle": {"tenant_limits": {"acme": None}}},
    {"throttle": {"tenant_limits": ["acme", 5]}},
    {"throttle": {"tenant_limits": "unlimited"}},
]


@pytest.mark.parametrize("metadata", MANIFESTS, ids=lambda m: json.dumps(m))
@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_the_kernels_read_a_limit_exactly_like_stage0_quota(metadata, tenant):
    """run_code and observer_bot (sandboxed kernels, no imports) repeat quota.limit_for."""
    expected, _ = quota.limit_for(metadata, tenant)
    for name in ("run_code", "observer_bot"):
        assert kernel_module(name).daily_limit(FakeCtx(metadata), tenant) == expected, name


def test_limits_fail_closed():
    assert quota.limit_for({}, "acme") == (100, "throttle.per_tenant_daily_exec_limit")
    assert quota.limit_for({"throttle": {"tenant_limits": {"acme": 5}}}, "acme") == (
        5, "throttle.tenant_limits.acme")
    for metadata in MANIFESTS[5:]:
        limit, source = quota.limit_for(metadata, "acme")
        assert limit == 0 and "fail closed" in source, metadata


@pytest.mark.parametrize("text", ["-1", "1.5", "lots", "", str(2**31), "1e3"])
def test_a_limit_that_is_not_a_whole_number_is_refused(text):
    with pytest.raises(Exception) as refused:
        quota.parse_limit(text)
    assert getattr(refused.value, "code", None) == "QUOTA_INVALID"
