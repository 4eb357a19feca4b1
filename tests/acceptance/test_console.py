"""The web console in a real browser (headless Debian Chromium driven by Playwright).

A real `logline serve` on this test's ledger, a real API key, a real worker: log in, watch a
span appended through the API appear in the live timeline without a reload, open it and see
it verified, execute a function from the Functions view, and see the worker's execution
arrive, complete, in the Executions view. Screenshots of each view are left in the test's
tmp dir (`screens/`).

Runs in CI (CI=true) always; elsewhere it is skipped when /usr/bin/chromium is absent.
Browsers are never downloaded: Playwright drives the system Chromium via executable_path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from helpers import REPO, free_port
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, shot

from stage0.ledger import store

require_chromium()

from playwright.sync_api import expect, sync_playwright  # noqa: E402

USER, TENANT = "alice", "acme"
GREET = '''def main(input):
    return {"hello": (input or {}).get("name", "world")}
'''

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(120)]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def env(home, seeded) -> dict[str, str]:
    return {**os.environ, "LOGLINE_HOME": str(home.path),
            "LOGLINE_DATABASE_URL": seeded.admin_url}


class Serve:
    """A real `logline serve` on a fixed port, stoppable and restartable."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.port = env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stage0.cli", "serve", "--port", str(self.port)],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"logline serve exited {self.proc.returncode}:\n"
                                     + self.log.read_text())
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "logline serve did not answer in 30 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)
            self.proc = None


@pytest.fixture
def serve(env, tmp_path) -> Iterator[Serve]:
    server = Serve(env, tmp_path / "serve.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker(env, tmp_path) -> Iterator[Callable[[], subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    logs = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "stage0.cli", "worker", "--id",
                                 "console-test", "--sandbox", "1"], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc)
    for log in logs:
        log.close()


@pytest.fixture
def token(cli) -> str:
    out = cli("apikey", "create", "--user", USER, "--tenant", TENANT, "--role", "writer",
              "--role", "reader").stdout
    return out.strip().splitlines()[-1]


@pytest.fixture
def spans(seeded, operator) -> dict[str, dict]:
    """A function of the caller's tenant, and another tenant's private span."""
    with seeded.connect("kernel") as conn:
        [greet, secret] = store.append(conn, [
            {"entity_type": "function", "who": USER, "did": "defined", "this": "greet",
             "name": "greet", "description": "Greets whoever is named in the input.",
             "code": GREET, "language": "python", "owner_id": USER, "tenant_id": TENANT,
             "visibility": "tenant", "status": "active"},
            {"entity_type": "note", "who": "mallory", "did": "wrote", "this": "globex secret",
             "owner_id": "mallory", "tenant_id": "globex", "visibility": "private"},
        ], operator)
    return {"greet": greet, "secret": secret}


#: Feeds the console's SseParser awkward chunks; returns what it parsed.
SSE_PARSER_CHECK = """() => {
  const events = []; let comments = 0;
  const p = new window.LogLineConsole.SseParser(
    (e) => events.push([e.event, e.id, e.data]), () => { comments += 1; });
  for (const chunk of [': ping\\r', '\\n\\r\\nid: 7\\r\\nevent: span\\r\\ndata: a\\r',
                       '\\ndata: b\\r\\n\\r\\n', 'data: {}\\n', '\\n', 'data: unterminated'])
    p.push(chunk);
  return {events, comments};
}"""


def test_console_login_live_timeline_verify_execute_and_execution(
        serve, seeded, operator, token, spans, worker, tmp_path):
    base_url = serve.url
    api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
    greet = spans["greet"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(20_000)
            crashes: list[str] = []
            requests: list[tuple[str, str | None]] = []
            page.on("pageerror", lambda exc: crashes.append(str(exc)))
            page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))

            # Log in: a wrong key is refused with the API's code; the right one shows who.
            page.goto(f"{base_url}/")
            expect(page.locator("#login")).to_be_visible()
            shot(page, tmp_path, "login")
            page.fill("#login-key", "llk_0000000000000000_" + "x" * 43)
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_have_attribute("data-code", "AUTH_INVALID")
            page.fill("#login-key", token)
            page.click("#login-submit")
            expect(page.locator("#who-user")).to_have_text(USER)
            expect(page.locator("#who-tenant")).to_have_text(TENANT)
            expect(page.locator("#live")).to_have_attribute("data-state", "live")
            assert page.evaluate("sessionStorage.getItem('logline.apikey')") == token
            assert page.locator(f"[data-span-id='{spans['secret']['id']}']").count() == 0

            # A span appended through the API appears in the open timeline, no reload.
            page.evaluate("window.__sameDocument = true")
            posted = api.post("/api/spans", json={"entity_type": "note", "who": USER,
                                                  "did": "wrote", "this": "hello, console"})
            assert posted.status_code == 201, posted.text
            note = posted.json()
            row = page.locator(f"#timeline-rows tr[data-span-id='{note['id']}']")
            expect(row).to_be_visible()
            expect(row).to_contain_text("hello, console")
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            shot(page, tmp_path, "timeline")

            # Its detail: verified (hash, signature, trusted key, chain), one version.
            row.click()
            verify = page.locator("#detail-verify")
            expect(verify).to_have_attribute("data-ok", "true")
            for check in ("hash", "signature", "trusted_key", "chain"):
                expect(verify.locator(f"[data-check='{check}']")).to_have_attribute(
                    "data-ok", "true")
            expect(page.locator("#detail-versions li")).to_have_count(1)
            expect(page.locator("#detail-fields")).to_contain_text(note["curr_hash"])
            shot(page, tmp_path, "detail")
            page.click("#drawer-close")
            expect(page.locator("#drawer")).to_be_hidden()

            # The console's SSE parser: CRLF split across chunks, pings, multi-line data.
            parsed = page.evaluate(SSE_PARSER_CHECK)
            assert parsed == {"events": [["span", "7", "a\nb"], ["message", None, "{}"]],
                              "comments": 1}

            # The server goes away; a span appended meanwhile arrives once after the console
            # reconnects with Last-Event-ID: no gap, no duplicate, no reload.
            serve.stop()
            expect(page.locator("#live")).to_have_attribute("data-state", "retrying")
            with seeded.connect("kernel") as conn:
                [missed] = store.append(conn, [{
                    "entity_type": "note", "who": USER, "did": "wrote",
                    "this": "appended while the server was down", "owner_id": USER,
                    "tenant_id": TENANT, "visibility": "tenant"}], operator)
            serve.start()
            expect(page.locator(f"#timeline-rows tr[data-span-id='{missed['id']}']")).to_have_count(
                1, timeout=30_000)
            expect(page.locator("#live")).to_have_attribute("data-state", "live")
            expect(row).to_have_count(1)
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

            # Functions: execute greet with JSON typed in; the request id is shown.
            page.click(".tab[data-view='functions']")
            fn_row = page.locator(f"#function-rows tr[data-span-id='{greet['id']}']")
            fn_row.locator("button[data-action='execute']").click()
            page.fill("#execute-input", "{not json")
            page.click("#execute-run")
            expect(page.locator("#execute-input-error")).to_contain_text("not valid JSON")
            page.fill("#execute-input", '{"name": "browser"}')
            page.click("#execute-run")
            shown = page.locator("#execute-request-id")
            expect(shown).to_be_visible()
            request_id = shown.get_attribute("data-request-id")
            request = api.get(f"/api/spans/{request_id}").json()
            assert (request["entity_type"], request["parent_id"], request["input"]) == \
                ("request", greet["id"], {"name": "browser"})
            expect(page.locator("#execute-status .pill")).to_have_attribute(
                "data-status", "scheduled")
            shot(page, tmp_path, "functions")

            # Executions: nothing yet; start a worker and the execution arrives, complete.
            page.click(".tab[data-view='executions']")
            expect(page.locator("#executions-empty")).to_be_visible()
            worker()
            done = page.locator("#execution-rows tr[data-status='complete']")
            expect(done).to_have_count(1, timeout=40_000)
            expect(done.locator("td.num")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))
            execution = api.get(f"/api/spans/{done.get_attribute('data-span-id')}").json()
            assert execution["related_to"] == [request_id]
            assert execution["output"] == {"hello": "browser"}
            shot(page, tmp_path, "executions")

            # The request's status followed live in the Functions view.
            page.click(".tab[data-view='functions']")
            expect(page.locator("#execute-status .pill")).to_have_attribute(
                "data-status", "complete")
            expect(page.locator("#execute-execution")).to_contain_text(execution["id"])

            # Metrics: today's bar has the one complete execution, and a latency point.
            page.click(".tab[data-view='metrics']")
            bar = page.locator("#chart-status rect.bar[data-status='complete']")
            expect(bar).to_have_attribute("data-count", "1")
            expect(page.locator("#chart-latency circle[data-series='avg']")).to_have_count(1)
            expect(page.locator(".tile[data-metric='total'] .tile-value")).to_have_text("1")
            shot(page, tmp_path, "metrics")

            # Log out: back to the login form, the key is gone from the tab.
            page.click("#logout")
            expect(page.locator("#login")).to_be_visible()
            assert page.evaluate("sessionStorage.length") == 0

            assert not crashes, crashes
            api_calls = [(u, auth) for u, auth in requests if "/api/" in u]
            assert api_calls, "the console made no API calls"
            assert all(token not in u for u, _ in requests), "the key appeared in a URL"
            # Every API call carried the key in the header, except the deliberate bad login.
            assert {auth for _, auth in api_calls} <= {f"Bearer {token}",
                                                      "Bearer llk_0000000000000000_" + "x" * 43}
        finally:
            browser.close()
            api.close()
