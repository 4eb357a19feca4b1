"""Prompts (issue 14): the seeded ids, a provider row on the loopback model server, and
answers in the output contract for the server to give."""

from __future__ import annotations

import json
from typing import Any

from stage0 import keys
from stage0.llm import admin, providers

BUILD = "00000000-0000-4000-8000-000000000011"
RUN = "00000000-0000-4000-8000-000000000012"
EVAL = "00000000-0000-4000-8000-000000000013"
BANDIT = "00000000-0000-4000-8000-000000000014"
CIRCUIT_BREAKER = "00000000-0000-4000-8000-000000000141"
CONFIDENCE_ESCALATION = "00000000-0000-4000-8000-000000000142"
CONCISE = "00000000-0000-4000-8000-000000000421"
EXPLAIN = "00000000-0000-4000-8000-000000000422"
DOCTRINE = "00000000-0000-4000-8000-000000000401"


def provider_row(url: str, tenant: str = "acme", name: str = "local",
                 **limits: Any) -> dict[str, Any]:
    """A provider row `name` for `tenant` on the loopback server at `url` (no credential), with
    limits no test reaches (the defaults throttle evals), as `POST /api/admin/providers`
    takes it."""
    return {"name": name, "kind": "openai", "base_url": url + "/v1", "model": "tiny",
            "tenant_id": tenant, "egress": {"addresses": ["127.0.0.1"]},
            "limits": {"rps": 1000, "burst": 1000, "tenant_rps": 1000, "tenant_burst": 1000,
                       **limits}}


def add_provider(conn: Any, key: Any, root: str, home: Any, url: str, name: str = "local",
                 tenant: str = "acme", **limits: Any) -> dict[str, Any]:
    """provider_row() added through the library, retrying fast."""
    p = providers.parse(provider_row(url, tenant, name, backoff_base_s=0.01,
                                     backoff_max_s=0.02, **limits))
    return admin.add(conn, key, root, keys.id_secret(home, key), p)


def contract(text: str = "The sky is blue.", confidence: float = 0.9, **extra: Any) -> str:
    """An answer that keeps the output contract, as the model's JSON text."""
    return json.dumps({"text": text, "confidence": confidence, "follow_up_question": None,
                       "actions": [], "citations": [], "telemetry": {"tool_use_count": 0},
                       **extra})
