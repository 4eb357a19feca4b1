"""The console shows why things happened, not only what (a real browser, a real server).

A real `logline serve` over a seeded ledger, real keys, and the real kernels booted through
the stage-0 loader as a worker would (so each step happens when the test says, not on a
poll): a function run from the console is followed until its output, duration and queue time
show, or its denial's reason code; its trace is a tree (request -> execution -> the policy's
metric and run_code's status patch) with durations, reached by a URL fragment; the timeline's
filters narrow the list and stay in the URL; Health's numbers are the ledger's; an admin
verifies the whole ledger and sees an edit made behind the ledger's back; and the top bar
and table headers do not overlap at 1000 or 800 px. Screenshots go to `screens/`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from helpers.api import Api, Key, post, start_api
from helpers.browser import require_chromium, shot
from helpers.ledger import tamper

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]

require_chromium()
from playwright.sync_api import Browser, Page, expect  # noqa: E402

GREET = "def main(input):\n    return {'hello': (input or {}).get('name', 'world')}\n"
FAIL = "def main(input):\n    raise ValueError('no such thing')\n"
#: Busy for a few milliseconds: slow_exec labels a run slower than slow_ms, and a run of
#: GREET can take 0 ms on a quiet machine, which no threshold (>= 0) counts as slow.
BUSY = "def main(input):\n    for i in range(1000000):\n        pass\n    return {'done': True}\n"


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("console-why"))


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def console(browser: Browser, api: Api, key: Key, crashes: list[str], hash: str = "",
            width: int = 1440) -> Page:
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.on("console", lambda msg: crashes.append(msg.text)  # no inline style or script
            if "Content Security Policy" in msg.text else None)
    page.goto(f"{api.url}/{hash}")
    page.fill("#login-key", key.token)
    page.click("#login-submit")
    expect(page.locator("#who-user")).to_have_text(key.user)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    return page


def work(api: Api, policies: int = 0) -> None:
    """What a worker does: run every scheduled request, then the policies `policies` times
    over what was appended."""
    with Loader(api.database, api.home) as loader:
        while loader.boot(KERNELS["request_worker"], {"batch": 32})["claimed"]:
            pass
        for _ in range(policies):
            loader.boot(KERNELS["policy_agent"], {"batch": 500})


def amend(api: Api, **changes) -> None:
    with api.kernel() as conn:
        manifest.amend(conn, keys.operator_key(api.home), **changes)


def function(client, code: str = GREET, name: str = "greet") -> dict:
    return post(client, entity_type="function", name=name, this=name, code=code,
                language="python", visibility="tenant", status="active")


def ms_between(earlier: str, later: str) -> int:
    parse = lambda at: datetime.fromisoformat(at.replace("Z", "+00:00"))  # noqa: E731
    return round((parse(later) - parse(earlier)).total_seconds() * 1000)


#: a -> b -> a (a cycle) and c under b: the cycle is cut once, nothing is lost.
TREE_OF_A_CYCLE = """() => {
  const span = (id, seq, parent, related) => ({ id, seq, parent_id: parent, related_to: related,
    position: { a: 1, b: 2, c: 3 }[id], at: '2026-01-01T00:00:00.000Z', entity_type: 'note' });
  const { nodes, roots } = window.LogLineConsole.traceTree(
    [span('a', 0, 'b', null), span('b', 0, null, ['a']), span('c', 0, 'b', null)]);
  return { roots: roots.map((n) => n.head.id), b: nodes.get('b').parent.head.id,
           c: nodes.get('c').parent.head.id };
}"""


# --- the trace ----------------------------------------------------------------------------
def test_a_trace_is_a_tree_from_request_to_execution_to_policy_output_with_durations(
        api, browser, tmp_path):
    writer = api.key("alice", tenant(), "writer", "reader")
    alice = api.client(writer)
    busy = function(alice, BUSY, "busy")
    trace = str(uuid.uuid4())
    amend(api, policy={"slow_ms": 0, "timeout_ms": 30000})  # every run gets a `slow` patch
    try:
        scheduled = alice.post("/api/execute", headers={"X-Request-ID": trace},
                               json={"span_id": busy["id"], "input": {}})
        assert scheduled.status_code == 202, scheduled.text
        work(api, policies=3)
    finally:
        amend(api, policy={"slow_ms": 5000, "timeout_ms": 30000})
    spans = alice.get("/api/timeline", params={"trace_id": trace, "limit": 500}).json()["items"]
    request = next(s for s in spans if s["entity_type"] == "request" and s["seq"] == 0)
    execution = next(s for s in spans if s["entity_type"] == "execution")
    metric = next(s for s in spans if s["entity_type"] == "metric")
    patch = next(s for s in spans if s["entity_type"] == "status_patch")
    assert (metric["parent_id"], patch["parent_id"]) == (execution["id"], execution["id"])

    crashes: list[str] = []
    page = console(browser, api, writer, crashes, hash=f"#trace/{trace}")  # a link works
    expect(page.locator("#view-trace")).to_be_visible()
    req_row = page.locator(f"#trace-rows tr[data-span-id='{request['id']}']")
    expect(req_row).to_have_attribute("data-depth", "0")
    expect(req_row).to_have_attribute("data-status", "complete")
    expect(req_row).to_have_attribute("data-duration-ms",
                                      str(ms_between(request["at"], execution["at"])))
    expect(req_row.locator(".trace-duration")).to_contain_text("queued")
    run = page.locator(f"#trace-rows tr[data-span-id='{execution['id']}']")
    expect(run).to_have_attribute("data-parent-id", request["id"])
    expect(run).to_have_attribute("data-link", "related_to")
    expect(run).to_have_attribute("data-depth", "1")
    expect(run).to_have_attribute("data-duration-ms", str(execution["duration_ms"]))
    expect(run.locator(".trace-duration")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))
    expect(run.locator(".trace-who")).to_have_text("run_code")
    for child in (metric, patch):
        node = page.locator(f"#trace-rows tr[data-span-id='{child['id']}']")
        expect(node).to_have_attribute("data-parent-id", execution["id"])
        expect(node).to_have_attribute("data-depth", "2")
    expect(page.locator(f"#trace-rows tr[data-span-id='{metric['id']}'] .trace-who")
           ).to_have_text("metrics_exec_duration")
    # the tree's order: the request, then what it caused, depth first
    order = page.eval_on_selector_all("#trace-rows tr", "rs => rs.map(r => r.dataset.spanId)")
    assert order[:2] == [request["id"], execution["id"]], order
    expect(page.locator("#trace-count")).to_have_attribute(
        "data-count", str(len({s["id"] for s in spans})))
    shot(page, tmp_path, "trace")
    # Spans that name each other (anyone may write a parent_id) still make a tree.
    assert page.evaluate(TREE_OF_A_CYCLE) == {"roots": ["a"], "b": "a", "c": "b"}

    # From the timeline: a row's trace opens the same view; Show in the timeline filters.
    page.click(".tab[data-view='timeline']")
    page.locator(f"#timeline-rows tr[data-span-id='{execution['id']}'] .trace-link").click()
    expect(page).to_have_url(re.compile(f"#trace/{trace}$"))
    expect(page.locator(f"#trace-rows tr[data-span-id='{execution['id']}']")).to_be_visible()
    page.click("#trace-timeline")
    expect(page.locator("#filter-trace")).to_have_value(trace)
    expect(page.locator("#timeline-rows tr")).to_have_count(len(spans))
    assert not crashes, crashes


# --- the execute panel --------------------------------------------------------------------
def test_execute_shows_the_output_the_error_and_a_denial_reason(api, browser, tmp_path):
    name = tenant()
    writer = api.key("alice", name, "writer", "reader")
    alice = api.client(writer)
    greet, broken = function(alice), function(alice, FAIL, "broken")
    crashes: list[str] = []
    page = console(browser, api, writer, crashes)
    page.click(".tab[data-view='functions']")

    def run(fn: dict, text: str) -> None:
        page.locator(f"#function-rows tr[data-span-id='{fn['id']}'] "
                     "button[data-action='execute']").click()
        page.fill("#execute-input", text)
        page.click("#execute-run")
        expect(page.locator("#execute-status .pill")).to_have_attribute("data-status",
                                                                         "scheduled")
        work(api)

    run(greet, '{"name": "panel"}')
    expect(page.locator("#execute-status .pill")).to_have_attribute("data-status", "complete")
    expect(page.locator("#execute-output")).to_have_text('{\n  "hello": "panel"\n}')
    expect(page.locator("#execute-outcome")).to_have_attribute("data-outcome", "complete")
    ran = page.locator("#execute-duration")
    expect(ran).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))
    request_id = page.locator("#execute-request-id").get_attribute("data-request-id")
    request = alice.get(f"/api/spans/{request_id}").json()
    execution = alice.get(f"/api/spans/{request['metadata']['execution_id']}").json()
    expect(ran).to_have_attribute("data-duration-ms", str(execution["duration_ms"]))
    expect(page.locator("#execute-execution")).to_contain_text(execution["id"])
    expect(page.locator("#execute-waited")).to_contain_text("in the queue")
    shot(page, tmp_path, "execute-output")

    run(broken, "{}")
    expect(page.locator("#execute-status .pill")).to_have_attribute("data-status", "error")
    failed = page.locator("#execute-error")
    expect(failed).to_contain_text("no such thing")
    assert failed.get_attribute("data-code")

    # The tenant's quota is used up: POST /api/execute refuses at once (429), and the
    # console says why, with the reason code.
    amend(api, throttle={"per_tenant_daily_exec_limit": 2})
    try:
        page.locator(f"#function-rows tr[data-span-id='{greet['id']}'] "
                     "button[data-action='execute']").click()
        page.fill("#execute-input", '{"name": "again"}')
        page.click("#execute-run")
        refused = page.locator("[role='alert'][data-code='QUOTA_EXCEEDED']")
        expect(refused).to_be_visible()
        expect(refused).to_contain_text("executions")
        shot(page, tmp_path, "execute-denied")
    finally:
        amend(api, throttle={"per_tenant_daily_exec_limit": 100})

    # Metrics: today's row counts each status, with the day's own average and p95.
    page.click(".tab[data-view='metrics']")
    today = page.locator(f"#metrics-rows tr[data-day='{datetime.now(UTC).date()}']")
    expect(today.locator("[data-metric='total']")).to_have_text("2")
    expect(today.locator("td[data-status='complete']")).to_have_text("1")
    expect(today.locator("td[data-status='error']")).to_have_text("1")
    days = alice.get("/api/metrics", params={"days": 1}).json()["days"]
    p95 = page.evaluate("(ms) => window.LogLineConsole.duration(ms)", days[-1]["p95_ms"])
    expect(today.locator("[data-metric='p95']")).to_have_text(p95)
    expect(page.locator(".tile[data-metric='p95-latest'] .tile-value")).to_have_text(p95)
    shot(page, tmp_path, "metrics")
    assert not crashes, crashes


# --- the timeline's filters ---------------------------------------------------------------
def test_each_filter_narrows_the_timeline_and_the_url_keeps_them(api, browser, tmp_path):
    name = tenant()
    alice_key = api.key("alice", name, "writer", "reader")
    alice, bob = api.client(alice_key), api.client(api.key("bob", name))
    status = f"st{uuid.uuid4().hex[:6]}"
    shared = {"visibility": "tenant", "entity_type": "note"}
    mine = [post(alice, status=status, this="alice open", **shared),
            post(alice, status="other", this="alice other", **shared)]
    bobs = post(bob, who="bob", status=status, this="bob open", **shared)
    with api.kernel() as conn:
        [old] = store.append(conn, [{
            "entity_type": "note", "who": "alice", "this": "from 2020", "owner_id": "alice",
            "tenant_id": name, "visibility": "tenant", "status": status,
            "at": "2020-01-01T12:00:00.000Z"}], keys.operator_key(api.home))
    crashes: list[str] = []
    page = console(browser, api, alice_key, crashes)
    rows = page.locator("#timeline-rows tr")

    def shown() -> set[str]:
        return set(page.eval_on_selector_all("#timeline-rows tr",
                                             "rs => rs.map(r => r.dataset.spanId)"))

    page.fill("#filter-status", status)
    page.click("#timeline-filters button[type='submit']")
    expect(rows).to_have_count(3)
    assert shown() == {mine[0]["id"], bobs["id"], old["id"]}
    expect(page).to_have_url(re.compile(f"#timeline\\?status={status}$"))

    page.fill("#filter-owner", "bob")
    page.click("#timeline-filters button[type='submit']")
    expect(rows).to_have_count(1)
    assert shown() == {bobs["id"]}

    page.fill("#filter-owner", "alice")
    page.select_option("#filter-range", "custom")
    page.fill("#filter-from", "2019-12-31T00:00:00")
    page.fill("#filter-until", "2021-01-01T00:00:00")
    page.click("#timeline-filters button[type='submit']")
    expect(rows).to_have_count(1)
    assert shown() == {old["id"]}
    shot(page, tmp_path, "filters")

    # A filtered timeline is a link: a reload shows the same rows, the inputs filled in.
    page.reload()  # the key is still in this tab's sessionStorage
    expect(page.locator("#who-user")).to_have_text("alice")
    expect(rows).to_have_count(1)
    expect(page.locator("#filter-owner")).to_have_value("alice")
    expect(page.locator("#filter-until")).to_have_value(re.compile(r"^2021-01-01T00:00(:00)?$"))

    # Live spans that do not match are not added; ones that match are.
    page.select_option("#filter-range", "3600")
    page.click("#timeline-filters button[type='submit']")
    expect(rows).to_have_count(1)
    assert shown() == {mine[0]["id"]}
    post(alice, status="other", this="live, other status", **shared)
    fresh = post(alice, status=status, this="live, matching", **shared)
    expect(rows).to_have_count(2)
    assert shown() == {mine[0]["id"], fresh["id"]}

    page.fill("#filter-status", "no-such-status")
    page.click("#timeline-filters button[type='submit']")
    expect(page.locator("#timeline-none")).to_be_visible()
    page.click("#filter-clear")
    expect(page).to_have_url(re.compile("#timeline$"))
    expect(page.locator(f"#timeline-rows tr[data-span-id='{mine[1]['id']}']")).to_be_visible()
    assert not crashes, crashes


# --- health and the whole ledger ----------------------------------------------------------
@pytest.fixture
def own_api(server, template, tmp_path) -> Iterator[Api]:
    """A ledger of this test's own: it gets edited behind the ledger's back."""
    yield from start_api(server, template, tmp_path / "api")


def test_health_matches_the_ledger_and_verify_finds_an_edit(own_api, browser, tmp_path):
    api = own_api
    name = tenant()
    admin_key = api.key("ada", name, "admin", "reader", "writer")
    reader_key = api.key("rita", name, "reader")
    ada = api.client(admin_key)
    greet = function(ada)
    for n in range(3):
        assert ada.post("/api/execute", json={"span_id": greet["id"],
                                              "input": {"name": str(n)}}).status_code == 202
    crashes: list[str] = []

    # A reader sees the queue and may not verify.
    page = console(browser, api, reader_key, crashes, hash="#health")
    tiles = page.locator("#health-tiles")
    expect(tiles.locator("[data-health='queued'] .tile-value")).to_have_text("3")
    expect(tiles.locator("[data-health='running'] .tile-value")).to_have_text("0")
    expect(tiles.locator("[data-health='today'] .tile-value")).to_have_text("0 / 100")
    expect(page.locator("#verify-run")).to_be_disabled()
    page.close()

    page = console(browser, api, admin_key, crashes, hash="#health")
    tiles = page.locator("#health-tiles")
    work(api)
    with api.kernel() as conn:
        ran = conn.execute("SELECT count(*) AS n, max(at) AS last FROM "
                           "ledger.universal_registry WHERE entity_type = 'execution' AND "
                           "tenant_id = %s", (name,)).fetchone()
    assert ran["n"] == 3
    expect(tiles.locator("[data-health='queued'] .tile-value")).to_have_text("0")
    expect(tiles.locator("[data-health='today'] .tile-value")).to_have_text("3 / 100")
    expect(tiles.locator("[data-health='today']")).to_have_attribute("data-remaining", "97")
    last = ran["last"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                  "Z")
    expect(tiles.locator("[data-health='last'] time")).to_have_attribute("datetime", last)
    shot(page, tmp_path, "health")

    page.click("#verify-run")
    result = page.locator("#verify-result")
    expect(result).to_have_attribute("data-ok", "true", timeout=30_000)
    expect(result).to_contain_text("The ledger verifies")
    with api.kernel() as conn:
        tip = conn.execute("SELECT max(position) AS p FROM ledger.universal_registry"
                           ).fetchone()["p"]
    shown_tip = int(result.locator("[data-stat='tip']").get_attribute("data-position"))
    assert shown_tip <= tip  # the allowance of this very call may come after the snapshot

    # A superuser edits one of the tenant's spans: verify names it.
    note = post(ada, this="the original words", visibility="tenant")
    tamper(api.database, "UPDATE ledger.universal_registry SET this = 'other words' "
           "WHERE id = %(id)s", {"id": note["id"]})
    page.click("#verify-run")
    expect(result).to_have_attribute("data-ok", "false", timeout=30_000)
    failure = result.locator(f".verify-failure[data-failure-id='{note['id']}']")
    expect(failure).to_have_attribute("data-reason", "HASH_MISMATCH")
    shot(page, tmp_path, "verify-failed")
    assert not crashes, crashes


# --- layout -------------------------------------------------------------------------------
OVERLAPS = """(selectors) => {
  const boxes = [];
  for (const sel of selectors) {
    for (const el of document.querySelectorAll(sel)) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0 || getComputedStyle(el).display === 'none') continue;
      boxes.push({ sel, text: el.textContent.trim().slice(0, 30), l: r.left, r: r.right,
                   t: r.top, b: r.bottom });
    }
  }
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.l < b.r - 0.5 && b.l < a.r - 0.5 && a.t < b.b - 0.5 && b.t < a.b - 0.5)
      hits.push([a.sel + ' ' + a.text, b.sel + ' ' + b.text]);
  }
  const outside = boxes.filter((x) => x.l < -0.5 || x.r > window.innerWidth + 0.5)
    .map((x) => x.sel + ' ' + x.text);
  return { hits, outside, count: boxes.length };
}"""
TOPBAR = [".topbar .brand", ".tab", "#live", "#who-tenant", "#who-user", ".who-roles .role",
          "#logout"]


@pytest.mark.parametrize("width", [1000, 800])
def test_nothing_in_the_headers_overlaps_on_a_narrow_screen(api, browser, tmp_path, width):
    key = api.key("alexandra-longname", f"acme-corporation-{uuid.uuid4().hex[:6]}", "reader",
                  "writer", "admin")
    client = api.client(key)
    assert client.post("/api/execute", json={"span_id": function(client)["id"]}
                       ).status_code == 202
    work(api)  # an execution, so that its table has a row to align with
    crashes: list[str] = []
    page = console(browser, api, key, crashes, width=width)
    for view in ("timeline", "executions", "metrics", "health", "functions"):
        page.click(f".tab[data-view='{view}']")
        expect(page.locator(f"#view-{view}")).to_be_visible()
        found = page.evaluate(OVERLAPS, TOPBAR)
        assert found["count"] >= 8 and not found["hits"] and not found["outside"], found
        heads = page.evaluate(OVERLAPS, [f"#view-{view} .view-head > *",
                                         f"#view-{view} .filter-bar > *"])
        assert not heads["hits"] and not heads["outside"], heads
        # Every visible column header has room for its name and sits over its own column.
        misaligned = page.evaluate("""(view) => {
          const bad = [];
          for (const table of document.querySelectorAll(`#view-${view} table.grid`)) {
            for (const th of table.querySelectorAll('thead th')) {
              if (getComputedStyle(th).display !== 'none' && th.scrollWidth > th.clientWidth + 1)
                bad.push(`${th.textContent.trim()} does not fit`);
            }
            const row = table.querySelector('tbody tr');
            if (!row || row.children.length !== table.querySelectorAll('thead th').length)
              continue;
            [...table.querySelectorAll('thead th')].forEach((th, i) => {
              const a = th.getBoundingClientRect(), b = row.children[i].getBoundingClientRect();
              if ((a.width > 0) !== (b.width > 0) || Math.abs(a.left - b.left) > 1)
                bad.push(th.textContent.trim());
            });
          }
          return bad;
        }""", view)
        assert not misaligned, (view, misaligned)
        shot(page, tmp_path, f"{view}-{width}")
    assert not crashes, crashes
