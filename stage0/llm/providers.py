"""The `provider` span: which model server to call, how, and within which limits.

A provider row is a platform kind (only a platform key's signature makes it count). Its
configuration sits in `metadata`: kind, base_url, model, params, limits, prices, credential,
egress. Anything unknown or malformed is refused (PROVIDER_KIND_UNKNOWN, PROVIDER_INVALID):
a row we do not fully understand is never called.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stage0.errors import LoglineError

KINDS = ("openai", "ollama", "anthropic")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
CREDENTIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Per provider (rps, burst), per tenant (tenant_rps, tenant_burst, daily_token_budget),
    per call (timeouts, attempts, response size) and the breaker's thresholds."""
    rps: float = Field(5.0, gt=0, le=10_000)
    burst: int = Field(10, ge=1, le=100_000)
    tenant_rps: float = Field(2.0, gt=0, le=10_000)
    tenant_burst: int = Field(5, ge=1, le=100_000)
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(60.0, gt=0, le=900)
    total_timeout_s: float = Field(120.0, gt=0, le=3600)
    stream_idle_timeout_s: float = Field(30.0, gt=0, le=900)
    max_response_bytes: int = Field(4_000_000, ge=1024, le=256_000_000)
    daily_token_budget: int = Field(200_000, ge=0)
    max_output_tokens: int = Field(4096, ge=1, le=1_000_000)
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_s: float = Field(0.5, ge=0, le=60)
    backoff_max_s: float = Field(8.0, ge=0, le=600)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_error_rate: float = Field(0.5, gt=0, le=1)
    breaker_window: int = Field(20, ge=2, le=10_000)
    breaker_open_s: float = Field(30.0, gt=0, le=3600)


class Prices(_Strict):
    """Prices per 1,000 tokens, in `currency`: a call's cost estimate."""
    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")


class Egress(_Strict):
    """Hosts the provider may be called at (exact names, case-insensitive) and the private,
    loopback or link-local addresses it may resolve to (each named exactly)."""
    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", host):
                raise ValueError(f"not a host name: {host!r}")
        return tuple(h.lower().strip("[]") for h in hosts)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_address(a)) for a in addresses)


class Provider(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["openai", "ollama", "anthropic"]
    base_url: str = Field(max_length=2000)
    model: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    prices: Prices | None = None
    credential: str | None = Field(None, pattern=CREDENTIAL_PATTERN)
    egress: Egress = Field(default_factory=Egress)
    enabled: bool = True
    tenant_id: str = "system"

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL with a host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("base_url carries no credentials, query or fragment")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _egress_names_host(self) -> Provider:
        host = self.host
        if self.egress.hosts and host not in self.egress.hosts:
            raise ValueError(f"egress.hosts does not list base_url's host {host!r}")
        return self

    @property
    def host(self) -> str:
        return (urlsplit(self.base_url).hostname or "").lower()

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """egress.hosts, or base_url's host alone when the row names none."""
        return self.egress.hosts or (self.host,)


def parse(data: Any, where: str = "provider") -> Provider:
    """A Provider from its configuration, or LoglineError (unknown kind first: fail closed)."""
    if not isinstance(data, dict):
        raise LoglineError("PROVIDER_INVALID", "a provider is an object", where)
    kind = data.get("kind")
    if kind not in KINDS:
        shown = repr(kind)[:60]
        raise LoglineError("PROVIDER_KIND_UNKNOWN", f"kind {shown} is not one of "
                           f"{', '.join(KINDS)}", where)
    try:
        return Provider.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "provider"
        raise LoglineError("PROVIDER_INVALID", first["msg"], f"{where}.{path}") from None


CONFIG_FIELDS = ("kind", "base_url", "model", "params", "limits", "prices", "credential",
                 "egress")


def from_span(span: dict[str, Any]) -> Provider:
    """The Provider a `provider` span describes (its status says whether it is enabled)."""
    if span.get("entity_type") != "provider":
        raise LoglineError("PROVIDER_INVALID", "not a provider span", span.get("id"))
    meta = span.get("metadata") or {}
    data = {k: meta[k] for k in CONFIG_FIELDS if k in meta}
    data.update(name=span.get("name"), enabled=span.get("status") == "active",
                tenant_id=span.get("tenant_id") or "system")
    if "kind" not in meta:
        data["kind"] = None
    return parse(data, f"provider {span.get('name') or span.get('id')}")


def to_span_fields(provider: Provider) -> dict[str, Any]:
    """The span fields that describe `provider` (id, seq and proofs are the caller's)."""
    config = provider.model_dump(mode="json", exclude={"name", "enabled", "tenant_id"})
    return {"entity_type": "provider", "who": "logline", "did": "configured",
            "this": provider.name, "name": provider.name, "owner_id": "system",
            "tenant_id": provider.tenant_id,
            "visibility": "public" if provider.tenant_id == "system" else "tenant",
            "status": "active" if provider.enabled else "disabled", "metadata": config}
