"""The vault seen from the outside: a tenant cannot post vault kinds, and a secret set on a
running server's ledger shows up in no API answer, SSE event, metric, audit export or log."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from helpers import REPO
from helpers.api import Api, Key, Stream, start_api
from helpers.vault import VALUE, assert_nowhere, database_text
from nacl.signing import SigningKey

from stage0.spans.canonical import normalise, now_at
from stage0.spans.proofs import public_key_hex, seal
from stage0.vault import credentials


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Any:
    yield from start_api(server, template, tmp_path_factory.mktemp("vault"))


@pytest.fixture(scope="module")
def admin(api: Api) -> Key:
    return api.key("ada", "acme", "admin", "reader", "writer")


def logline(api: Api, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stage0.cli", *args], input=stdin, text=True,
                          env=api.env, cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc


@pytest.mark.parametrize("kind", ["secret", "tenant_key", "Secret", "secret\u200b",
                                  "tenant_key ", "s\u0435cret"])
def test_a_tenant_cannot_post_a_vault_kind_or_a_look_alike(api, admin, kind):
    response = api.client(admin).post("/api/spans", json={
        "entity_type": kind, "who": "ada", "this": "forged", "name": "openai_api_key",
        "visibility": "private", "content": {"name": "openai_api_key", "version": 9}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "BAD_FIELD"


def test_a_client_signed_secret_from_an_author_key_is_refused(api, admin):
    author = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(author), "--name", "ada laptop")
    span = seal(normalise({
        "id": str(uuid.uuid4()), "at": now_at(), "entity_type": "secret", "who": "ada",
        "this": "client signed", "owner_id": "ada", "tenant_id": "acme",
        "visibility": "private"}), author)
    response = api.client(admin).post("/api/spans", json=span)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "BAD_FIELD")


def test_a_secret_appears_in_no_answer_stream_metric_export_or_log(api, admin):
    client = api.client(admin)
    with Stream(api, admin.token, "?since=0") as stream:
        printed = [logline(api, "secrets", "set", "openai_api_key", "--tenant", "acme",
                           stdin=VALUE)]
        printed.append(logline(api, "secrets", "rotate", "openai_api_key", "--tenant", "acme",
                               stdin=VALUE + "-2"))
        printed.append(logline(api, "worker", "--once", "--id", "vault-test"))
        marker = client.post("/api/spans", json={"entity_type": "note", "who": "ada",
                                                 "this": "after the secret"}).json()
        events = []
        while (event := stream.next())["data"]["id"] != marker["id"]:
            events.append(event)
    seen = [json.dumps(e["data"]) for e in events]
    kinds = {e["data"]["entity_type"] for e in events}
    assert kinds and not kinds & {"secret", "tenant_key"}  # not even the ciphertext
    answers = [client.get(path, params=params).text for path, params in (
        ("/api/spans", {"entity_type": "secret"}), ("/api/spans", {"entity_type": "tenant_key"}),
        ("/api/spans", {"limit": 500}), ("/api/timeline", {"limit": 500}),
        ("/api/metrics", {}), ("/api/audit/export", {}), ("/api/me", {}))]
    assert json.loads(answers[0])["items"] == json.loads(answers[1])["items"] == []
    with api.kernel() as conn:
        ids = [r["id"] for r in conn.execute(
            "SELECT id::text AS id FROM ledger.span_heads WHERE tenant_id = 'acme' "
            "AND entity_type IN ('secret', 'tenant_key')")]
    assert len(ids) == 2
    for span_id in ids:  # by id, as the tenant's own admin: not there
        for path in (f"/api/spans/{span_id}", f"/api/spans/{span_id}?all=1"):
            assert client.get(path).status_code == 404
    answers.append(api.scrape().text)  # Prometheus, the operator's view of every tenant
    exports = [logline(api, "audit", "export", "--tenant", "acme").stdout,
               logline(api, "audit", "export", "--tenant", "acme", "--type",
                       "secret,tenant_key").stdout,
               logline(api, "spans", "--entity-type", "secret", "--json").stdout]
    trail = api.home.path.parent / "vault-trail.jsonl"
    logline(api, "audit", "export", "--tenant", "acme", "--type", "secret,tenant_key",
            "--out", str(trail))
    exports.append(trail.read_text())
    assert {json.loads(line)["entity_type"] for line in exports[-1].splitlines()} == \
        {"secret", "tenant_key"}  # ciphertext and wrapped keys: what an audit may show
    assert "ok" in logline(api, "verify", "--export", str(trail)).stdout.lower()
    log = api.log.read_text()
    text = "\n".join([*seen, *answers, *exports, log,
                      *(p.stdout + p.stderr for p in printed)])
    for value in (VALUE, VALUE + "-2"):
        assert_nowhere(text, value)
        with api.kernel() as conn:
            assert_nowhere(database_text(conn), value)
            assert credentials.reveal(conn, api.home, "acme", "openai_api_key") == VALUE + "-2"
