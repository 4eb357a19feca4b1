"""The console's governed side in a real browser: Ask, the approvals inbox, a request's detail.

A real `logline serve`, real keys (a requester, an approver, an agent of one tenant), the
personal_ops contract active and the real `logline agent` working in a temporary folder with
two identical photos. The requester asks in a sentence and sees PENDING_APPROVAL; the approver
watches the request arrive, sees the agent's plan (which file goes to the trash, its size)
appear live, with the copy each duplicate keeps ("duplicates photos/a.jpg, which is kept"),
cannot approve before the plan exists; the requester's own approval is refused
with G_SOD_VIOLATION; the approver approves; the agent runs and the request's detail turns
done with each file's result and hashes; the audit trail downloads as CSV and opens in the
timeline. Screenshots are left in the test's tmp dir (`screens/`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3
import pytest
from helpers.api import Api, Key, start_api
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, shot
from helpers.governed import Tenant

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(120)]

require_chromium()
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

PHOTO = b"\xff\xd8 the same picture " * 250  # 5,000 bytes: "4.9 KiB"
BYTES_SHOWN = """() => [0, 1023, 1024, 5000, 3.5 * 1048576, 1e13, -1, null]
  .map(window.LogLineConsole.humanBytes)"""


@pytest.fixture
def api(server, template, tmp_path) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path)


def console(browser: Browser, api: Api, key: Key, crashes: list[str]) -> Page:
    """A tab of its own (its own sessionStorage), logged in with `key`, on Approvals."""
    page = browser.new_context(viewport={"width": 1440, "height": 1000},
                               accept_downloads=True).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(f"{key.user}: {exc}"))
    page.goto(f"{api.url}/")
    page.fill("#login-key", key.token)
    page.click("#login-submit")
    expect(page.locator("#who-user")).to_have_text(key.user)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.click(".tab[data-view='approvals']")
    expect(page.locator("#view-approvals")).to_be_visible()
    return page


def decide(page: Page, proposal: str, decision: str, reason: str) -> None:
    card = page.locator(f"#approvals-list [data-proposal-id='{proposal}']")
    card.locator("input.reason").fill(reason)
    card.locator(f"button[data-decision='{decision}']").click()


def test_ask_approve_and_follow_a_governed_request(api, tmp_path):
    a = Tenant(api, "acme", tmp_path / "tenants")
    photos = a.root / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(PHOTO)
    (photos / "b.jpg").write_bytes(PHOTO)
    os.utime(photos / "a.jpg", (10**9, 10**9))  # the older copy: it is the one kept
    digest = blake3.blake3(PHOTO).hexdigest()
    crashes: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice = console(browser, api, a.requester, crashes)
            paula = console(browser, api, a.approver, crashes)
            assert alice.evaluate(BYTES_SHOWN) == ["0 B", "1023 B", "1.0 KiB", "4.9 KiB",
                                                   "3.5 MiB", "9.1 TiB", "—", "—"]

            # Ask: a sentence nothing reads like is refused with the server's examples.
            alice.fill("#ask-text", "make me a coffee")
            alice.click("#ask-send")
            refused = alice.locator("#ask-log .ask-turn").last.locator(".error-box")
            expect(refused).to_have_attribute("data-code", "INTENT_NOT_UNDERSTOOD")
            expect(refused).to_contain_text("delete duplicates in {path}")

            # Ask in a sentence (Enter sends): understood, and it needs an approval.
            alice.fill("#ask-text", "delete duplicates in photos/")
            alice.press("#ask-text", "Enter")
            answer = alice.locator("#ask-log .ask-turn").last.locator(".ask-a")
            decision = answer.locator(".ask-decision")
            expect(decision).to_have_attribute("data-outcome", "PENDING_APPROVAL")
            expect(decision).to_have_attribute("data-reason", "G_APPROVAL_REQUIRED")
            expect(answer.locator(".ask-parsed")).to_have_attribute(
                "data-action", "personal_ops.delete_duplicates")
            expect(answer.locator(".ask-parsed")).to_contain_text('{"path":"photos"}')
            proposal = answer.get_attribute("data-proposal-id")
            assert proposal
            expect(alice.locator("#ask-text")).to_have_value("")
            shot(alice, tmp_path, "ask")

            # The approver's inbox (waiting requests): it arrives live, still being planned;
            # approving before the agent's plan exists is refused with its code.
            paula.select_option("#approvals-state", "planning,pending")
            card = paula.locator(f"#approvals-list [data-proposal-id='{proposal}']")
            expect(card).to_have_attribute("data-state", "planning")
            expect(card.locator(".approval-action")).to_have_text(
                "personal_ops.delete_duplicates")
            expect(card.locator(".approval-requester")).to_have_text("alice")
            expect(card).to_contain_text("approvals 0/1")
            card.locator("button[data-decision='approve']").click()  # no reason yet
            expect(card.locator(".field-error")).to_contain_text("A reason is required")
            expect(paula.locator("#approvals-answer")).to_be_hidden()
            decide(paula, proposal, "approve", "too early")
            expect(paula.locator("#approvals-answer")).to_have_attribute("data-code",
                                                                         "G_PLAN_PENDING")
            expect(paula.locator("#approvals-answer [role='alert']")).to_contain_text(
                "G_PLAN_PENDING")

            # The agent plans; the plan appears in both open inboxes without a reload.
            a.run_agent()
            expect(card).to_have_attribute("data-state", "pending")
            op = card.locator(".plan-op")
            expect(op).to_have_count(1)  # the older of the two identical photos stays
            expect(op).to_have_attribute("data-path", "photos/b.jpg")
            expect(op).to_have_attribute("data-op", "trash")
            expect(op).to_have_attribute("data-duplicate-of", "photos/a.jpg")
            expect(op.locator(".plan-dup")).to_have_text(
                "duplicates photos/a.jpg, which is kept (the older file)")
            expect(op).to_have_attribute("data-size", str(len(PHOTO)))
            expect(op).to_contain_text("4.9 KiB")
            expect(op).to_contain_text("trash (restorable)")
            expect(card.locator(".plan-total")).to_contain_text("1 file · 4.9 KiB")
            expect(card.locator(".plan-total")).to_have_attribute("data-bytes", str(len(PHOTO)))
            shot(paula, tmp_path, "inbox")

            # The requester sees it too, and their own approval is refused (SoD).
            own = alice.locator(f"#approvals-list [data-proposal-id='{proposal}']")
            expect(own).to_have_attribute("data-state", "pending")
            expect(own).to_contain_text("another approver must decide")
            decide(alice, proposal, "approve", "I approve my own request")
            refusal = alice.locator("#approvals-answer")
            expect(refusal).to_have_attribute("data-code", "G_SOD_VIOLATION")
            expect(refusal.locator("[role='alert']")).to_contain_text("G_SOD_VIOLATION")
            shot(alice, tmp_path, "sod")

            # The approver approves, with a reason (shown as text, never as markup).
            reason = "<b>duplicates</b>, fine"
            decide(paula, proposal, "approve", reason)
            answered = paula.locator("#approvals-answer")
            expect(answered).to_have_attribute("data-outcome", "ALLOW")
            expect(answered).to_have_attribute("data-code", "G_APPROVED")
            expect(answered.locator(".reason-code")).to_have_text("G_APPROVED")
            expect(card).to_have_count(0)  # approved: no longer waiting

            # Its detail follows the agent's run live: done, each file's result and hashes.
            answered.get_by_role("button", name="Open the request").click()
            state = paula.locator("#proposal-state")
            expect(state).to_have_attribute("data-state", "approved")
            approval = paula.locator("#proposal-approvals li[data-approver='paula']")
            expect(approval.locator(".decision-reason")).to_have_text(reason)
            assert paula.locator("#proposal-body b").count() == 0
            a.run_agent()
            expect(state).to_have_attribute("data-state", "done")
            result = paula.locator(".job[data-kind='execute'] .result-op")
            expect(result).to_have_count(1)
            expect(result).to_have_attribute("data-path", "photos/b.jpg")
            expect(result).to_have_attribute("data-status", "done")
            expect(result.locator(".hash")).to_have_text([digest[:12] + "…"] * 2)
            expect(result).to_contain_text(".logline-trash/")
            assert not (photos / "b.jpg").exists() and (photos / "a.jpg").read_bytes() == PHOTO
            shot(paula, tmp_path, "detail")

            # The audit trail: a CSV download (fetched with the key), and the timeline.
            with paula.expect_download() as download:
                paula.click("#proposal-csv")
            csv_lines = download.value.path().read_text().splitlines()
            assert csv_lines[0].startswith("position,id,seq,at,entity_type"), csv_lines[:1]
            kinds = [line.split(",")[4] for line in csv_lines[1:]]
            for kind in ("gate_decision", "approval_request", "job_result", "approval"):
                assert kind in kinds, kinds
            paula.click("#proposal-trail")
            expect(paula.locator("#proposal")).to_be_hidden()
            expect(paula.locator("#view-timeline")).to_be_visible()
            trace = api.client(a.approver).get(f"/api/proposals/{proposal}").json()["trace_id"]
            expect(paula.locator("#filter-trace")).to_have_value(trace)
            expect(paula.locator("#timeline-rows tr")).to_have_count(len(kinds))
            shot(paula, tmp_path, "trail")
            assert not crashes, crashes
        finally:
            browser.close()
