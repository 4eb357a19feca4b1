"""The memory API on a real `logline serve` (stage0/api/memory.py, issue 12): consent
headers, writes, reads, search, forgetting and export as each caller; other users and
tenants find nothing; a pg_dump of the database holds no plaintext of non-public memory."""

from __future__ import annotations

import subprocess

import pytest
from helpers.api import assert_error, start_api
from helpers.vault import assert_nowhere

from stage0.ledger import schema_dump
from stage0.vault import crypto
from stage0.vault import master as masters

SECRET = "Ana's passport number is X12345678 and she flies to Lisbon"
ON = {"X-LogLine-Memory": "on"}


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory):
    yield from start_api(server, template, tmp_path_factory.mktemp("memory-api"))


@pytest.fixture(scope="module", autouse=True)
def master_key(api):
    if not masters.path(api.home).exists():
        masters.write_file(masters.path(api.home), crypto.new_key())


@pytest.fixture(scope="module")
def ana(api):
    return api.client(api.key("ana", "acme", "writer", "reader"))


@pytest.fixture(scope="module")
def bo(api):
    return api.client(api.key("bo", "acme", "writer", "reader"))


@pytest.fixture(scope="module")
def gus(api):
    return api.client(api.key("ana", "globex", "writer", "reader"))


@pytest.fixture(scope="module")
def reader(api):
    return api.client(api.key("rita", "acme", "reader"))


def remember(client, text, headers=ON, **fields):
    r = client.post("/api/memory", json={"text": text, **fields}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["written"][0]


def consents(api, user):
    with api.kernel() as conn:
        return [(r["seq"], r["content"]["mode"], r["content"]["session_id"]) for r in
                conn.execute("SELECT seq, content FROM ledger.universal_registry WHERE "
                             "entity_type = 'memory_consent' AND owner_id = %s ORDER BY "
                             "position", (user,))]


def test_memory_is_off_until_the_caller_consents_and_the_choice_is_recorded(api, api_user):
    client, user = api_user
    assert_error(client.post("/api/memory", json={"text": "hello"}), 403,
                 "MEMORY_CONSENT_REQUIRED")
    assert consents(api, user) == []  # no header: nothing was chosen
    assert_error(client.post("/api/memory", json={"text": "hello"},
                             headers={"X-LogLine-Memory": "off"}), 403,
                 "MEMORY_CONSENT_REQUIRED")
    remember(client, "hello")
    remember(client, "hello again")
    assert consents(api, user) == [(0, "off", None), (1, "on", None)]


@pytest.fixture
def api_user(api, request):
    user = f"u{abs(hash(request.node.name)) % 10**8}"
    return api.client(api.key(user, "acme", "writer", "reader")), user


def test_write_read_and_search_as_yourself_only(ana, bo, gus, reader):
    written = remember(ana, SECRET, tags=["travel"])
    assert written["sensitivity"] == "internal"
    got = ana.get(f"/api/memory/{written['span_id']}")
    assert got.status_code == 200 and got.json()["text"] == SECRET
    found = ana.get("/api/memory/search", params={"q": "passport Lisbon"}).json()
    assert [h["span_id"] for h in found["hits"]] == [written["span_id"]]
    assert found["mode"] in ("text", "text+vector")
    for other in (bo, gus, reader):
        assert other.get("/api/memory/search", params={"q": "passport Lisbon"}).json()[
            "hits"] == []
        assert_error(other.get(f"/api/memory/{written['span_id']}"), 404, "MEMORY_NOT_FOUND")
    # nor through the generic span routes: the content there is ciphertext anyway
    span = ana.get(f"/api/spans/{written['span_id']}").json()
    assert span["content"]["redacted"] is True and "passport" not in str(span)


def test_a_reader_key_cannot_write_or_forget(reader):
    assert_error(reader.post("/api/memory", json={"text": "x"}, headers=ON), 403,
                 "G_ROLE_DENIED")
    assert_error(reader.post("/api/memory/forget", json={"what": "me"}), 403, "G_ROLE_DENIED")


def test_headers_set_the_session_and_the_default_sensitivity(api, api_user):
    client, _ = api_user
    headers = {"X-LogLine-Memory": "session-only", "X-LogLine-Session": "chat-7",
               "X-LogLine-Sensitivity": "pii"}
    written = remember(client, "my number is 555-0100", headers=headers)
    assert (written["layer"], written["sensitivity"], written["vector"]) == \
        ("session", "pii", None)
    remember(client, "outside the session: 555-0100 too")
    only = client.get("/api/memory/search", params={"q": "555 number"}, headers=headers).json()
    assert [(h["scope"], h["layer"]) for h in only["hits"]] == [("session", "session")]
    both = client.get("/api/memory/search", params={"q": "555 number"},
                      headers={"X-LogLine-Session": "chat-7"}).json()
    assert [h["scope"] for h in both["hits"]] == ["session", "private"]
    assert_error(client.post("/api/memory", json={"text": "x", "layer": "permanent"},
                             headers=headers), 422, "MEMORY_INVALID")
    bad = client.post("/api/memory", json={"text": "x", "sensitivity": "loud"}, headers=ON)
    assert_error(bad, 422, "MEMORY_INVALID")
    assert "memories[0].sensitivity" in bad.json()["error"]["message"]


def test_forget_and_export(api, api_user):
    client, user = api_user
    s = {"X-LogLine-Session": "chat-9"}
    keep = remember(client, "keep this pelican fact")
    gone = remember(client, "drop this pelican fact", headers={**ON, **s})
    r = client.post("/api/memory/forget", json={"what": "session"}, headers=s)
    assert r.status_code == 200 and r.json()["span_ids"] == [gone["span_id"]]
    assert_error(client.get(f"/api/memory/{gone['span_id']}"), 410, "MEMORY_FORGOTTEN")
    found = client.get("/api/memory/search", params={"q": "pelican"}).json()["hits"]
    assert [h["span_id"] for h in found] == [keep["span_id"]]
    bundle = client.get("/api/memory/export").json()
    assert bundle["user_id"] == user and bundle["tenant_id"] == "acme"
    assert [(m["span_id"], m.get("text"), m.get("forgotten")) for m in bundle["memories"]] \
        == [(keep["span_id"], "keep this pelican fact", None), (gone["span_id"], None, True)]
    assert all(len(m["curr_hash"]) == 64 for m in bundle["memories"])
    assert client.post("/api/memory/forget", json={"what": "me"}).json()["forgotten"] == 1
    assert client.get("/api/memory/search", params={"q": "pelican"}).json()["hits"] == []


def test_a_database_dump_holds_no_plaintext_of_non_public_memory(api, ana):
    remember(ana, SECRET)
    remember(ana, "The cafeteria opens at noon", sensitivity="public")
    dump = subprocess.run([schema_dump.pg_dump(), "--data-only",
                           f"--dbname={api.database.admin_url}"],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    assert "The cafeteria opens at noon" in dump  # the dump does hold the data
    for word in (SECRET, "X12345678", "passport", "Lisbon"):
        assert_nowhere(dump, word)


def test_promotion_to_permanent_goes_through_review(api, ana, bo):
    written = remember(ana, "the wifi password rotates monthly", ttl_s=3600)
    asked = ana.post(f"/api/memory/{written['span_id']}/promote", json={})
    assert asked.status_code == 200, asked.text
    assert (asked.json()["status"], asked.json()["reason"]) == ("pending",
                                                                "G_APPROVAL_REQUIRED")
    assert ana.get(f"/api/memory/{written['span_id']}").json()["layer"] == "temporary"
    # the owner never approves their own; a writer without the approver role cannot either
    assert_error(ana.post(f"/api/memory/{written['span_id']}/promote",
                          json={"approve": True}), 403, "G_SOD_VIOLATION")
    assert_error(bo.post(f"/api/memory/{written['span_id']}/promote",
                         json={"approve": True}), 403, "G_ROLE_DENIED")
    pat = api.client(api.key("pat", "acme", "approver"))
    other = api.client(api.key("pat", "globex", "approver"))
    assert_error(other.post(f"/api/memory/{written['span_id']}/promote",
                            json={"approve": True}), 404, "MEMORY_NOT_FOUND")
    done = pat.post(f"/api/memory/{written['span_id']}/promote", json={"approve": True})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["reason"]) == ("approved", "G_APPROVED")
    now = ana.get(f"/api/memory/{written['span_id']}").json()
    assert (now["layer"], now["ttl_at"], now["seq"], now["text"]) == \
        ("permanent", None, 1, "the wifi password rotates monthly")
    with api.kernel() as conn:
        trail = conn.execute("SELECT status FROM ledger.universal_registry WHERE "
                             "entity_type = 'memory_promotion' ORDER BY seq").fetchall()
    assert [t["status"] for t in trail] == ["pending", "approved"]
    assert_error(ana.post(f"/api/memory/{written['span_id']}/promote", json={}), 422,
                 "MEMORY_INVALID")


def test_a_rejected_promotion_leaves_the_memory_as_it_was(api, ana):
    written = remember(ana, "temporary parking spot B12")
    ana.post(f"/api/memory/{written['span_id']}/promote", json={})
    boss = api.client(api.key("boss", "acme", "admin"))
    done = boss.post(f"/api/memory/{written['span_id']}/promote", json={"approve": False})
    assert (done.json()["status"], done.json()["reason"]) == ("rejected", "G_REJECTED")
    assert ana.get(f"/api/memory/{written['span_id']}").json()["layer"] == "temporary"


# --- the console's Memory page ---------------------------------------------------------------
def test_the_console_searches_and_forgets_memory(api, browser, tmp_path):
    from helpers.browser import require_chromium, shot
    require_chromium()
    from playwright.sync_api import expect

    key = api.key("cora", "acme", "writer", "reader")
    client = api.client(key)
    kept = remember(client, "the heron nests by the north pond")
    gone = remember(client, "the heron visits on <b>tuesdays</b>")
    crashes: list[str] = []
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{api.url}/")
    page.fill("#login-key", key.token)
    page.click("#login-submit")
    expect(page.locator("#who-user")).to_have_text("cora")
    page.click(".tab[data-view='memory']")
    page.fill("#memory-q", "heron")
    page.click("#memory-search")
    rows = page.locator("#memory-rows tr[data-span]")
    expect(rows).to_have_count(2)
    expect(page.locator(f"#memory-rows tr[data-span='{gone['span_id']}']")).to_contain_text(
        "<b>tuesdays</b>")  # shown as text, never as markup
    shot(page, tmp_path, "memory")
    page.locator(f"#memory-rows tr[data-span='{gone['span_id']}'] .memory-forget").click()
    expect(page.locator("#memory-note")).to_contain_text("Forgot 1 memory")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-span", kept["span_id"])
    assert_error(client.get(f"/api/memory/{gone['span_id']}"), 410, "MEMORY_FORGOTTEN")
    assert not crashes, crashes


# --- browsing ---------------------------------------------------------------------------------
def test_browsing_lists_what_the_caller_may_see_newest_first_in_pages(api):
    dan = api.client(api.key("dan", "initech", "writer", "reader"))
    eve = api.client(api.key("eve", "initech", "writer", "reader"))
    session = {**ON, "X-LogLine-Session": "s-1"}
    first = remember(dan, "dan's first note about the kiln")
    shared = remember(dan, "the kiln is booked on fridays", visibility="tenant")
    in_session = remember(dan, "kiln temperature today 1200C", headers=session,
                          layer="session")
    private = remember(eve, "eve's own glaze recipe")
    page = dan.get("/api/memory", params={"limit": 2})
    assert page.status_code == 200, page.text
    body = page.json()
    assert [m["span_id"] for m in body["memories"]] == [in_session["span_id"],
                                                       shared["span_id"]]
    assert body["memories"][0]["preview"] == "kiln temperature today 1200C"
    assert body["next_before"] == shared["span_id"]
    rest = dan.get("/api/memory", params={"limit": 2, "before": body["next_before"]}).json()
    assert [m["span_id"] for m in rest["memories"]] == [first["span_id"]]
    assert rest["next_before"] is None
    # eve sees her own and what dan shared with the tenant, never dan's private memories
    seen = {m["span_id"]: m for m in eve.get("/api/memory").json()["memories"]}
    assert set(seen) == {private["span_id"], shared["span_id"]}
    assert (seen[shared["span_id"]]["scope"], seen[shared["span_id"]]["owner_id"]) == \
        ("tenant", "dan")
    assert dan.get("/api/memory", params={"layer": "session"}).json()["memories"][0][
        "span_id"] == in_session["span_id"]
    only = dan.get("/api/memory", params={"session": "s-1"}).json()["memories"]
    assert [m["span_id"] for m in only] == [in_session["span_id"]]
    assert_error(dan.get("/api/memory", params={"layer": "forever"}), 422, "MEMORY_INVALID")
    assert_error(dan.get("/api/memory", params={"before": "nope"}), 400, "BAD_ID")
    assert_error(eve.get("/api/memory", params={"before": first["span_id"]}), 422,
                 "MEMORY_INVALID")  # not in eve's list: no hint of what it is
    # forgotten: gone from the list at once
    dan.post("/api/memory/forget", json={"what": "span", "span_id": in_session["span_id"]})
    assert in_session["span_id"] not in {m["span_id"] for m in
                                         dan.get("/api/memory").json()["memories"]}


def test_the_console_browses_memory_newest_first(api, browser, tmp_path):
    from helpers.browser import require_chromium, shot
    require_chromium()
    from playwright.sync_api import expect

    key = api.key("finn", "umbrella", "writer", "reader")
    client = api.client(key)
    older = remember(client, "the boat is moored at <i>pier 4</i>")
    newer = remember(client, "the boat needs new sails", layer="shared")
    crashes: list[str] = []
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{api.url}/")
    page.fill("#login-key", key.token)
    page.click("#login-submit")
    expect(page.locator("#who-user")).to_have_text("finn")
    page.click(".tab[data-view='memory']")  # opens on the browse view: no query needed
    rows = page.locator("#memory-rows tr[data-span]")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-span", newer["span_id"])
    expect(rows.nth(1)).to_contain_text("<i>pier 4</i>")  # as text, never as markup
    expect(page.locator("#memory-first-col")).to_have_text("When")
    shot(page, tmp_path, "memory-browse")
    page.select_option("#memory-layer", "shared")
    page.click("#memory-browse")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-span", newer["span_id"])
    page.locator(f"#memory-rows tr[data-span='{newer['span_id']}'] .memory-forget").click()
    expect(page.locator("#memory-note")).to_contain_text("Forgot 1 memory")
    expect(page.locator("#memory-rows")).to_contain_text("No memories yet")
    page.select_option("#memory-layer", "")
    page.click("#memory-browse")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-span", older["span_id"])
    assert not crashes, crashes
