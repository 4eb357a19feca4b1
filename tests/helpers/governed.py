"""Governed requests over a real server: a tenant's people (one key per role, the
personal_ops contract active) and its agent, and the look-alike records a hostile tenant or a
forger leaves (spans appended straight into the ledger, signed by whatever key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from helpers import REPO
from helpers.api import Api, Key, client_signed
from helpers.cli import Ran
from stage0 import keys
from stage0.gov.contracts import load
from stage0.ledger import store


class Tenant:
    """A tenant's people (one key each), its agent's folder and state."""

    def __init__(self, api: Api, name: str, base: Path) -> None:
        self.api, self.name = api, name
        self.admin = api.key("ann", name, "admin")
        self.requester = api.key("alice", name, "requester", "reader")
        self.approver = api.key("paula", name, "approver", "reader")
        self.viewer = api.key("vic", name, "viewer")
        self.agent = api.key("bot", name, "agent")
        self.root = base / name / "root"
        self.state = base / name / "agent-state"
        self.root.mkdir(parents=True)
        http(api, self.admin).post("/api/contracts/activate",
                                   json={"ref": "personal_ops@1.0.0"}).raise_for_status()
        self.agent_cli("configure", "--url", api.url, "--token", self.agent.token,
                       "--root", str(self.root))

    def agent_cli(self, *args: str) -> Ran:
        """`logline agent ARGS --state STATE` (in-process: `run --once` ends by itself)."""
        proc = self.api.cli("agent", *args, "--state", str(self.state), check=False)
        assert proc.returncode == 0, f"agent {args}: {proc.stdout}\n{proc.stderr}"
        return proc

    def run_agent(self) -> list[dict]:
        """`logline agent run --once`: claims until the queue is empty; its JSON log."""
        proc = self.agent_cli("run", "--once")
        return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def http(api: Api, key: Key) -> httpx.Client:
    return api.client(key)


def personal_ops_as(name: str) -> dict:
    """The shipped personal_ops contract under another name, to change and publish."""
    contract = load(REPO / "ROW" / "contracts" / "personal_ops@1.0.0.yaml")
    return {**contract.model_dump(mode="json"), "name": name, "version": "1.0.0"}


#: A right-to-left override: what follows it reads backwards where it is obeyed.
RLO = "\u202e"
TRICKY_NAME = f"invoice{RLO}fdp.exe"  # reads "invoiceexe.pdf" when the override is obeyed


class People:
    """A tenant's keys (personal_ops active) and an HTTP client for each."""

    def __init__(self, api: Api, tenant: str) -> None:
        self.api, self.tenant = api, tenant
        self.admin = api.key("ann", tenant, "admin")
        self.requester = api.key("alice", tenant, "requester", "reader")
        self.approver = api.key("paula", tenant, "approver", "reader")
        self.approver2 = api.key("percy", tenant, "approver", "reader")
        self.writer = api.key("wendy", tenant, "writer", "reader")
        self.viewer = api.key("vic", tenant, "viewer")
        self.agent = api.key("bot", tenant, "agent")
        self.http(self.admin).post("/api/contracts/activate", json={
            "ref": "personal_ops@1.0.0"}).raise_for_status()

    def http(self, key: Key) -> httpx.Client:
        return self.api.client(key)


def operator(api: Api) -> SigningKey:
    return keys.operator_key(api.home)


def append(api: Api, key: SigningKey, **fields: Any) -> dict[str, Any]:
    """A span appended straight into the ledger, signed by `key`."""
    draft = {"who": "run_code", "this": "fn", "owner_id": "alice", "tenant_id": "acme",
             "visibility": "tenant", **fields}
    with api.kernel() as conn:
        return store.append(conn, [draft], key)[0]


def post_signed(client: httpx.Client, key: SigningKey, **fields: Any) -> dict[str, Any] | None:
    """A span the client signed with `key`, posted through the API; None when refused (a
    server that refuses platform kinds not signed by the platform at append)."""
    span = client_signed(key, **fields)
    response = client.post("/api/spans", json=span)
    if response.status_code != 201:
        assert response.status_code in (403, 422), response.text
        return None
    return response.json()


def op(path: str, **extra: Any) -> dict[str, Any]:
    return {"op": "trash", "path": path, "to": None, "size": 12, "blake3": "0" * 64,
            "inode": [1, 2], **extra}


def propose(people: People, paths: list[str], action: str = "personal_ops.delete") -> dict:
    answer = people.http(people.requester).post("/api/proposals", json={
        "action": action, "args": {"paths": paths}})
    assert answer.status_code == 201, answer.text
    return answer.json()


def report_plan(people: People, job_id: str, output: dict[str, Any]) -> None:
    """The agent claims (its earlier unreported claims come back too) and reports `output`
    as the result of `job_id`."""
    agent = people.http(people.agent)
    jobs = agent.post("/api/jobs/claim", json={"limit": 50}).json()["jobs"]
    assert job_id in [j["id"] for j in jobs], jobs
    reported = agent.post(f"/api/jobs/{job_id}/result", json={"status": "done",
                                                              "output": output})
    assert reported.status_code == 200, reported.text


def planned(people: People, paths: list[str], output: dict[str, Any] | None = None,
            action: str = "personal_ops.delete") -> dict:
    asked = propose(people, paths, action)
    report_plan(people, asked["job_id"], output or {"ops": [op(p) for p in paths]})
    return asked


def forge_approval(api: Api, asked: dict, status: str, key: SigningKey,
                   owner: str = "mallory") -> dict[str, Any]:
    """An `approval` span for the request, shaped like the platform's, not signed by it."""
    return append(api, key, entity_type="approval", who=owner, did=status,
                  this="personal_ops.delete", owner_id=owner, parent_id=asked["proposal_id"],
                  trace_id=asked["trace_id"], status=status,
                  content={"reason": "forged", "plan_hash": "0" * 64, "roles": ["approver"]})
