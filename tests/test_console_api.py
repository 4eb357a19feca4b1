"""The API the console uses to show why things happened: the timeline's filters (status,
owner, time). A real `logline serve` over a seeded ledger of this module's own, real
keys, real kernels (booted through the stage-0 loader, as a worker would).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey
from test_api import Api, assert_error, post, start_api

from stage0 import keys, ledger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("console-api"))


def manifest_key(api: Api) -> SigningKey:
    return keys.operator_key(api.home)


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# --- timeline filters ---------------------------------------------------------------------
def test_the_timeline_narrows_by_status_owner_and_time(api):
    name = tenant()
    alice, bob = api.client(api.key("alice", name)), api.client(api.key("bob", name))
    trace = str(uuid.uuid4())  # keeps this test's spans apart from the rest of the ledger
    shared = {"trace_id": trace, "visibility": "tenant"}
    spans = [post(alice, status="open", **shared), post(alice, status="done", **shared),
             post(bob, who="bob", status="open", **shared)]
    with api.kernel() as conn:
        [old] = ledger.append(conn, [{
            "entity_type": "note", "who": "alice", "this": "from 2020", "owner_id": "alice",
            "tenant_id": name, "visibility": "tenant", "status": "open", "trace_id": trace,
            "at": "2020-01-01T00:00:00.000Z"}], manifest_key(api))

    def ids(**params: str) -> list[str]:
        answer = alice.get("/api/timeline", params={"trace_id": trace, **params})
        assert answer.status_code == 200, answer.text
        return [s["id"] for s in answer.json()["items"]]

    everything = [s["id"] for s in (old, *spans)]
    assert sorted(ids()) == sorted(everything)
    assert sorted(ids(status="open")) == sorted([old["id"], spans[0]["id"], spans[2]["id"]])
    assert ids(owner_id="bob") == [spans[2]["id"]]
    assert ids(status="open", owner_id="alice", until="2021-01-01T00:00:00Z") == [old["id"]]
    assert sorted(ids(**{"from": "2021-01-01T00:00:00Z"})) == sorted(s["id"] for s in spans)
    assert ids(**{"from": "2019-12-31T23:00:00-01:00",  # 2020-01-01 00:00 UTC, inclusive
                  "until": "2020-01-01T00:00:00.001Z"}) == [old["id"]]
    assert ids(status="nope") == []

    for params in ({"from": "yesterday"}, {"until": "2020-01-01T00:00:00"},  # no zone
                   {"from": "2021-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}):
        assert_error(alice.get("/api/timeline", params=params), 400, "BAD_QUERY")
