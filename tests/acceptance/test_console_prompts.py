"""The console's prompt page in a real browser (issue 14): one page per family (#prompts/NAME)
with its variants' eval scores and bandit share, and its recent runs with latency and
tokens, read from a real `logline serve` after runs, an eval and a bandit choice through
the API against the loopback model server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.api import Api, start_api
from helpers.browser import require_chromium, shot
from helpers.llm_server import LlmServer
from helpers.prompts import CONCISE, EXPLAIN, contract, provider_row

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(180)]

require_chromium()
from playwright.sync_api import Browser, expect  # noqa: E402


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        s.answer = contract("Signed, hashed, kept.", 0.75)
        yield s


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory, model_server) -> Iterator[Api]:
    for api in start_api(server, template, tmp_path_factory.mktemp("console-prompts")):
        r = api.client(api.operator()).post("/api/admin/providers",
                                            json=provider_row(model_server.url))
        assert r.status_code == 201, r.text
        yield api


def test_a_family_page_shows_variants_scores_and_runs(browser: Browser, api, tmp_path):
    key = api.key("alice", "acme", "reader", "writer")
    alice = api.client(key)
    for variant in (CONCISE, CONCISE, EXPLAIN):
        r = alice.post("/api/prompts/evals", json={
            "variant_id": variant, "provider": "local",
            "fixtures": [{"name": "kept", "type": "happy", "user": "how?",
                          "must_contain": ["kept"]}]})
        assert r.status_code == 200, r.text
    assert alice.post("/api/prompts/selections", json={"family": "assistant"}).status_code \
        == 200
    crashes: list[str] = []
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(f"{api.url}/#prompts/assistant")
    page.fill("#login-key", key.token)
    page.click("#login-submit")
    expect(page.locator("#prompts-family-name")).to_have_text("assistant")
    concise = page.locator(f'#prompt-variant-rows tr[data-variant-id="{CONCISE}"]')
    expect(concise).to_contain_text("assistant.concise")
    expect(concise.locator("td").nth(1)).to_have_text("2")  # evals
    expect(concise.locator("td").nth(2)).to_have_text("100 %")  # eval pass rate
    shares = page.locator("#prompt-variant-rows td[data-bandit-share]")
    expect(shares.filter(has_text="100 %")).to_have_count(1)  # one choice so far
    runs = page.locator("#prompt-run-rows tr")
    expect(runs).to_have_count(3)
    first = runs.first
    expect(first).to_contain_text("tiny")
    expect(first.locator("td").nth(4)).to_have_text("11")  # tokens in
    expect(first.locator("td").nth(5)).to_have_text("7")  # tokens out
    expect(first.locator("td").nth(6)).to_have_text("0.75")
    expect(first.locator("td[data-latency-ms]")).not_to_have_attribute("data-latency-ms", "")
    shot(page, tmp_path, "prompts-family")
    assert not crashes, crashes
