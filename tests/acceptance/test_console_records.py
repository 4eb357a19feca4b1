"""The console in a real browser against the hostile-tenant audit: what it counts, what it lets
an approver read, and what it offers for copying.

A real `logline serve` and real keys. Tenant acme has one execution the platform recorded,
one look-alike signed by another key, and another tenant's public execution beside it; a
writer's function that calls itself a kernel and another tenant's public "kernel"; a request
whose plan names `invoice\\u202efdp.exe` (an approver must not read `invoiceexe.pdf`), one
whose plan an agent key reported malformed, and an approval the platform never signed; spans
whose trace id carries `$(...)`. Screenshots go to the test's tmp dir (`screens/`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from helpers.api import Api, start_api
from helpers.browser import require_chromium, shot
from helpers.governed import (
    RLO,
    TRICKY_NAME,
    append,
    forge_approval,
    op,
    operator,
    planned,
    post_signed,
)
from nacl.signing import SigningKey

from stage0 import keys
from stage0.spans.display import visible
from stage0.spans.proofs import public_key_hex

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(180)]

require_chromium()
from playwright.sync_api import Browser, Page, expect  # noqa: E402

RUN_CODE = "00000000-0000-4000-8000-000000000001"
SHELL = "$(touch /tmp/logline-pwned)"
#: Every BMP code point the console escapes (window.LogLineConsole.visible).
ESCAPED_BY_THE_CONSOLE = """() => {
  const out = [];
  for (let c = 0; c < 0x10000; c++) {
    if (c >= 0xd800 && c <= 0xdfff) continue;
    const s = String.fromCharCode(c);
    if (window.LogLineConsole.visible(s) !== s) out.push(c);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("console-records"))


def console(browser: Browser, api: Api, token: str, user: str, crashes: list[str]) -> Page:
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(f"{api.url}/")
    page.fill("#login-key", token)
    page.click("#login-submit")
    expect(page.locator("#who-user")).to_have_text(user)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    return page


def test_executions_metrics_and_functions_count_only_the_platforms_records(
        api, acme, globex, browser, tmp_path):
    real = append(api, operator(api), entity_type="execution", status="complete",
                  duration_ms=5, this="greet")
    forged = append(api, SigningKey.generate(), entity_type="execution", status="complete",
                    duration_ms=7, this="forged run", owner_id="wendy")
    other = append(api, operator(api), entity_type="execution", status="complete",
                   duration_ms=9, tenant_id="globex", visibility="public", this="their run")
    kernel_of_globex = globex.http(globex.writer).post("/api/spans", json={
        "entity_type": "function", "who": "wendy", "this": "evil_kernel", "name": "evil_kernel",
        "visibility": "public", "metadata": {"kernel": True}, "language": "python",
        "code": "def main(input):\n    return 1\n"}).json()
    own_kernel = acme.http(acme.writer).post("/api/spans", json={
        "entity_type": "function", "who": "wendy", "this": "fake_kernel", "name": "fake_kernel",
        "visibility": "tenant", "metadata": {"kernel": True}, "language": "python",
        "code": "def main(input):\n    return 1\n"}).json()
    crashes: list[str] = []
    page = console(browser, api, acme.approver.token, "paula", crashes)

    page.click(".tab[data-view='executions']")
    rows = page.locator("#execution-rows tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-span-id", real["id"])
    for span in (forged, other):
        expect(page.locator(f"#execution-rows tr[data-span-id='{span['id']}']")).to_have_count(0)
    flags = page.locator("#executions-flags")
    expect(flags).to_be_visible()
    expect(flags.locator(f".flag[data-flag-id='{forged['id']}']")).to_have_attribute(
        "data-reason", "KIND_NOT_PLATFORM_SIGNED")
    shot(page, tmp_path, "executions")

    # a look-alike appended while the view is open does not arrive with the live stream
    late = append(api, SigningKey.generate(), entity_type="execution", status="complete",
                  duration_ms=3, this="late forgery", owner_id="wendy")
    expect(flags.locator(f".flag[data-flag-id='{late['id']}']")).to_have_count(1)
    expect(rows).to_have_count(1)

    page.click(".tab[data-view='metrics']")
    expect(page.locator(".tile[data-metric='total'] .tile-value")).to_have_text("1")
    expect(page.locator("#chart-status rect.bar[data-status='complete']")).to_have_attribute(
        "data-count", "1")
    shot(page, tmp_path, "metrics")

    page.click(".tab[data-view='functions']")
    expect(page.locator(f"#function-rows tr[data-span-id='{RUN_CODE}']")).to_have_attribute(
        "data-kernel", "true")
    own = page.locator(f"#function-rows tr[data-span-id='{own_kernel['id']}']")
    expect(own).to_have_attribute("data-kernel", "false")
    expect(own.locator(".kernel")).to_have_count(0)
    expect(page.locator(f"#function-rows tr[data-span-id='{kernel_of_globex['id']}']")
           ).to_have_count(0)
    shot(page, tmp_path, "functions")
    assert not crashes, crashes


def test_the_inbox_shows_names_escaped_and_flags_what_it_left_out(api, acme, browser,
                                                                  tmp_path):
    tricky = planned(acme, ["invoices/x.pdf"], {"ops": [
        op(f"invoices/{TRICKY_NAME}"), op("invoices/report\u2067.pdf\u2069.exe",
                                          to=f"archive/\u200bsafe{RLO}.txt", op="move")]})
    forged = forge_approval(api, tricky, "approved", SigningKey.generate())
    malformed = planned(acme, ["photos/bad.jpg"], {"ops": "rm -rf ~"})
    unreadable = planned(acme, ["photos/worse.jpg"], {"ops": [{"op": "trash"}]})
    crashes: list[str] = []
    page = console(browser, api, acme.approver.token, "paula", crashes)
    page.click(".tab[data-view='approvals']")
    page.select_option("#approvals-state", "")

    card = page.locator(f"#approvals-list [data-proposal-id='{tricky['proposal_id']}']")
    expect(card).to_have_attribute("data-state", "pending")
    paths = card.locator(".plan-op")
    expect(paths).to_have_count(2)
    expect(paths.nth(0)).to_contain_text("invoices/invoice\\u202efdp.exe")
    expect(paths.nth(1)).to_contain_text("invoices/report\\u2067.pdf\\u2069.exe")
    expect(paths.nth(1)).to_contain_text("archive/\\u200bsafe\\u202e.txt")
    expect(card.locator(".esc")).to_have_count(5)
    shown = card.inner_text()
    assert not any(c in shown for c in (RLO, "\u2067", "\u2069", "\u200b")), shown
    assert card.locator(".plan-op .mono").first.get_attribute("title") == \
        "invoices/invoice\\u202efdp.exe"
    expect(card).to_contain_text("approvals 0/1")  # the forged approval does not count
    expect(card.locator(f".flag[data-flag-id='{forged['id']}']")).to_have_attribute(
        "data-reason", "KIND_NOT_PLATFORM_SIGNED")

    for asked in (malformed, unreadable):
        bad = page.locator(f"#approvals-list [data-proposal-id='{asked['proposal_id']}']")
        expect(bad).to_have_attribute("data-state", "plan_failed")
        expect(bad.locator(".flag[data-reason='PLAN_MALFORMED']")).to_have_count(1)
        expect(bad.locator(".decide")).to_be_hidden()
    shot(page, tmp_path, "inbox")

    card.locator(".approval-action").click()
    drawer = page.locator("#proposal")
    expect(drawer.locator("#proposal-state")).to_have_attribute("data-state", "pending")
    expect(drawer.locator(".plan-op").first).to_contain_text("invoice\\u202efdp.exe")
    expect(drawer.locator("#proposal-flags .flag")).to_have_attribute(
        "data-flag-id", forged["id"])
    expect(drawer).to_contain_text("None yet.")  # no approval counted
    assert RLO not in drawer.inner_text()
    shot(page, tmp_path, "proposal")
    assert not crashes, crashes


def test_ids_are_copied_only_when_well_formed_and_authors_are_marked(api, acme, globex,
                                                                    browser, tmp_path):
    client_key = SigningKey.generate()
    api.cli("keys", "trust", public_key_hex(client_key), "--name", "wendy tablet")
    writer = acme.http(acme.writer)
    good_trace = str(uuid.uuid4())
    # The API refuses trace ids that are not UUIDs now; a ledger written before that (or by
    # a key of its own) may still hold them, so they go straight into the ledger here.
    edge = keys.edge_key(operator(api))
    shell = append(api, edge, entity_type="note", who="wendy", this="shell trace",
                   owner_id="wendy", trace_id=SHELL)
    hidden = append(api, edge, entity_type="note", who="wendy", this="hidden shell trace",
                    owner_id="wendy", trace_id=f"{str(uuid.uuid4())[:8]}{RLO}$(id)")
    good = writer.post("/api/spans", json={"entity_type": "note", "who": "wendy",
                                           "this": "good trace", "trace_id": good_trace,
                                           "visibility": "tenant"}).json()
    lookalike = post_signed(writer, client_key, entity_type="note", who="paula",
                            did="approved", this="personal_ops.delete", owner_id="wendy",
                            status="approved", content={"reason": "lgtm"})
    forged = append(api, client_key, entity_type="approval", who="mallory", did="approved",
                    this="personal_ops.delete", owner_id="mallory", status="approved")
    theirs = globex.http(globex.writer).post("/api/spans", json={
        "entity_type": "note", "who": "paula", "this": "from another tenant",
        "visibility": "public"}).json()
    crashes: list[str] = []
    page = console(browser, api, acme.approver.token, "paula", crashes)

    # The console escapes exactly the characters the CLI and the CSV export escape.
    escaped = page.evaluate(ESCAPED_BY_THE_CONSOLE)
    assert escaped == [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF
                       and visible(chr(c)) != chr(c)]

    row = page.locator(f"#timeline-rows tr[data-span-id='{shell['id']}']")
    expect(row).to_be_visible()
    trace = row.locator("td").nth(4)
    expect(trace.locator(".id-unsafe")).to_have_text(SHELL)  # whole, never shortened
    expect(trace.locator("button.copy")).to_have_count(0)
    row2 = page.locator(f"#timeline-rows tr[data-span-id='{hidden['id']}']")
    expect(row2.locator("td").nth(4)).to_contain_text("\\u202e$(id)")
    expect(row2.locator("td").nth(4).locator("button.copy")).to_have_count(0)
    ok = page.locator(f"#timeline-rows tr[data-span-id='{good['id']}'] td").nth(4)
    expect(ok.locator("button.copy")).to_have_count(1)
    copyable = page.eval_on_selector_all("[data-copy]", "els => els.map(e => e.dataset.copy)")
    assert good_trace in copyable
    assert not [v for v in copyable if "$(" in v or RLO in v], copyable
    assert page.evaluate("(v) => window.LogLineConsole.wellFormed(v)", SHELL) is False

    # Authors: a tenant's span is marked as theirs, a platform kind nobody platform-signed
    # as forged, another tenant's public span with its tenant.
    look = page.locator(f"#timeline-rows tr[data-span-id='{lookalike['id']}']")
    expect(look).to_have_attribute("data-record", "tenant")
    expect(look.locator(".author")).to_have_text("by wendy")
    fake = page.locator(f"#timeline-rows tr[data-span-id='{forged['id']}']")
    expect(fake).to_have_attribute("data-record", "forged")
    expect(fake.locator(".author")).to_contain_text("not signed by the platform")
    other = page.locator(f"#timeline-rows tr[data-span-id='{theirs['id']}']")
    expect(other.locator(".author")).to_contain_text("tenant globex")
    shot(page, tmp_path, "timeline")

    # The drawer: the trace id is not offered for copying, and whose record it is.
    row.click()
    fields = page.locator("#detail-fields")
    expect(fields.locator(".id-unsafe")).to_have_text(SHELL)
    assert "$(" not in json.dumps(page.eval_on_selector_all(
        "#drawer [data-copy]", "els => els.map(e => e.dataset.copy)"))
    page.click("#drawer-close")
    look.click()
    expect(page.locator("#detail-verify")).to_have_attribute("data-ok", "true")
    record = page.locator("#detail-record")
    expect(record).to_have_attribute("data-record", "tenant")
    expect(record).to_contain_text("Written by wendy of your tenant: not a platform record")
    page.click("#drawer-close")
    fake.click()
    expect(page.locator("#detail-record")).to_have_attribute("data-record", "forged")
    shot(page, tmp_path, "forged")
    assert not crashes, crashes
