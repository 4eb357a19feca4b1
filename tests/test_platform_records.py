"""What the CLI shows an approver (`logline approvals list`, `logline proposal show`), over
real HTTP with a real `logline serve` and real keys: names and paths that carry invisible or
direction-changing characters are printed escaped, and results of the wrong shape are shown
as they are instead of stopping the command.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey
from test_api import REPO, Api, Key, client_signed, start_api

from stage0 import keys, ledger
from stage0.proofs import public_key_hex

pytestmark = pytest.mark.slow
RUN_CODE = "00000000-0000-4000-8000-000000000001"
RLO = "\u202e"
TRICKY_NAME = f"invoice{RLO}fdp.exe"  # reads "invoiceexe.pdf" when the override is obeyed


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("records"))


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


@pytest.fixture(scope="module")
def acme(api) -> People:
    return People(api, "acme")


@pytest.fixture(scope="module")
def globex(api) -> People:
    return People(api, "globex")


@pytest.fixture(scope="module")
def client_key(api) -> SigningKey:
    """A key the operator trusts (`logline keys trust`), without the platform role."""
    key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(key), "--name", "wendy laptop")
    return key


def operator(api: Api) -> SigningKey:
    return keys.operator_key(api.home)


def append(api: Api, key: SigningKey, **fields: Any) -> dict[str, Any]:
    """A span appended straight into the ledger, signed by `key`."""
    draft = {"who": "run_code", "this": "fn", "owner_id": "alice", "tenant_id": "acme",
             "visibility": "tenant", **fields}
    with api.kernel() as conn:
        return ledger.append(conn, [draft], key)[0]


def post_signed(client: httpx.Client, key: SigningKey, **fields: Any) -> dict[str, Any] | None:
    """A span the client signed with `key`, posted through the API; None when refused (a
    server that refuses platform kinds not signed by the platform at append)."""
    span = client_signed(key, **fields)
    response = client.post("/api/spans", json=span)
    if response.status_code != 201:
        assert response.status_code in (403, 422), response.text
        return None
    return response.json()


def error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text




# --- governed requests: the inbox, a request's state ----------------------------------------
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



# --- the CLI inbox ----------------------------------------------------------------------------
def cli_as(api: Api, key: Key, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "stage0.cli", *args, "--url", api.url,
                           "--token", key.token], env=api.env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", [TRICKY_NAME, "report\u2067.pdf\u2069.exe",
                                  "a\u200bb.txt", "line\nbreak.txt", "bell\x07.txt",
                                  "c1\x85.txt"])
def test_the_cli_shows_invisible_characters_in_names_escaped(api, acme, name):
    asked = planned(acme, ["photos/x.jpg"], {"ops": [op(name), op("photos/y.jpg")]})
    listed = cli_as(api, acme.approver, "approvals", "list")
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\u{ord(c):04x}"
                      for c in name)
    assert f"trash   {escaped}" in listed, listed
    # the request's own page, with the agent's results of the same names
    approved = acme.http(acme.approver).post(f"/api/approvals/{asked['proposal_id']}", json={
        "decision": "approve", "reason": "fine"}).json()
    report_plan(acme, approved["job_id"], {"results": [
        {"op": "trash", "path": name, "to": f".logline-trash/{name}", "status": "done"},
        "not a result", 7]})
    shown = cli_as(api, acme.approver, "proposal", "show", asked["proposal_id"])
    assert f"done     trash   {escaped} -> .logline-trash/{escaped}" in shown, shown
    assert '"not a result"' in shown
    for text in (listed, shown):
        assert not any(c in text for c in (RLO, "\u2067", "\u200b", "\x07", "\x85"))
        assert "\nbreak.txt" not in text
