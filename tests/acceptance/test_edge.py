"""The HTTP edge under hostile clients: each test is an attack on a real `logline serve`
(subprocess, real PostgreSQL, real sockets) and what the server must still do.

- operator-only surfaces: booting kernels and Prometheus /metrics, and a boot that times out;
- bounded records of hostile input: anonymous denials are counted, not signed one by one,
  and client text in platform spans is cut (with its length and hash);
- security headers on every response (no framing, a strict CSP the console runs under);
- a live stream ends soon after its key is revoked;
- ids are UUIDs wherever the API takes them (paths, ?trace_id=, X-Request-ID, bodies);
- slow and half-open connections (header and body deadlines, the connection cap under a low
  descriptor limit).
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_for
from helpers.api import Api, Stream, assert_error, start_api
from helpers.browser import CHROMIUM, CHROMIUM_ARGS

from stage0 import keys
from stage0.gov import apikeys
from stage0.gov.contracts import contract_id
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS
from stage0.spans.proofs import public_key_hex

#: Short deadlines, so the attacks below end in seconds.
EDGE_ARGS = ("--header-timeout", "2", "--body-timeout", "2", "--request-timeout", "3",
             "--audit-interval", "1")
#: A kernel that takes 6 s (more than the request timeout), then appends a span.
SLOW_KERNEL = """def main(ctx):
    ctx.sql("SELECT pg_sleep(6)")
    ctx.append([{"entity_type": "note", "who": "slow kernel", "this": "finished",
                 "owner_id": "system", "tenant_id": "system", "visibility": "private",
                 "trace_id": ctx.trace_id}])
    return {"finished": True}
"""


@pytest.fixture(scope="module")
def api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("edge"), EDGE_ARGS)


@contextlib.contextmanager
def serving(server, template, base: Path, args: tuple[str, ...] = (),
            preexec=None) -> Iterator[Api]:
    yield from start_api(server, template, base, args, preexec)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """How long until the server closed `sock` (None if it did not within `seconds`)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


# --- operator-only surfaces ----------------------------------------------------------------
def boot_events(api: Api, trace_id: str) -> list[dict]:
    with api.kernel() as conn:
        return conn.execute("SELECT entity_type, this FROM ledger.universal_registry WHERE "
                            "trace_id = %s AND entity_type IN ('boot_event', 'boot_refused')",
                            (trace_id,)).fetchall()


def test_a_tenant_admin_cannot_boot_the_platform_kernels(api):
    """request_worker runs every tenant's queued requests: a tenant admin who could boot it
    would run (and learn the ids of) other tenants' work."""
    admin = api.client(api.key("boss", "acme", "admin"))
    trace = str(uuid.uuid4())
    response = admin.post(f"/api/boot/{KERNELS['request_worker']}", json={},
                          headers={"X-Request-ID": trace})
    error = assert_error(response, 403, "G_ROLE_DENIED")
    assert "operator" in error["message"]
    assert boot_events(api, trace) == []  # refused before anything was booted


def test_a_tenant_admin_cannot_read_platform_metrics(api):
    admin = api.client(api.key("boss2", "globex", "admin"))
    assert_error(admin.get("/metrics"), 403, "G_ROLE_DENIED")


def test_the_operator_boots_kernels_and_reads_metrics(api):
    operator = api.client(api.operator())
    scrape = operator.get("/metrics")
    assert scrape.status_code == 200 and "logline_http_requests_total" in scrape.text
    response = operator.post(f"/api/boot/{KERNELS['observer_bot']}", json={})
    assert response.status_code == 200, response.text
    assert operator.get("/api/me").json()["roles"] == ["admin", "operator"]


def test_no_tenant_key_can_hold_the_operator_role(api):
    for user, tenant in (("mallory", "acme"), ("operator", "default")):
        refused = api.cli("apikey", "create", "--user", user, "--tenant", tenant,
                          "--role", "operator", check=False)
        assert refused.returncode != 0
        assert "--role: APIKEY_RESERVED" in refused.stdout + refused.stderr
    # No route issues keys, and none may append one.
    admin = api.client(api.key("boss3", "acme", "admin"))
    assert_error(admin.post("/api/spans", json={"entity_type": "api_key", "who": "boss3",
                                                "this": "a key"}), 422, "BAD_FIELD")
    # A key span that names the role for anyone else (written by hand into the ledger)
    # does not carry it: fail closed.
    key_id = "6d6d6d6d6d6d6d6d"
    token = f"llk_{key_id}_{'M' * 43}"
    with api.kernel() as conn:
        store.append(conn, [{
            "id": apikeys.span_id_for(keys.derivation_secret(keys.operator_key(api.home)),
                                      key_id), "seq": 0, "entity_type": "api_key",
            "who": "logline", "did": "issued", "this": f"api key {key_id}",
            "owner_id": "mallory", "tenant_id": "acme", "visibility": "private",
            "status": "active", "metadata": {"key_id": key_id, "roles": ["admin", "operator"],
                                             "token_hash": apikeys.token_hash(token)}}],
            keys.operator_key(api.home))
    forged = api.client(token)
    assert forged.get("/api/me").json()["roles"] == ["admin"]
    assert_error(forged.get("/metrics"), 403, "G_ROLE_DENIED")


@pytest.mark.slow
def test_a_ledger_still_holding_the_older_api_contract_lets_no_tenant_admin_boot(
        server, template, tmp_path):
    """Upgraded code on a ledger not yet re-seeded: its api contract still gives boot and
    /metrics to `admin`. The handlers check the operator role themselves."""
    with serving(server, template, tmp_path) as api:
        with api.kernel() as conn:
            secret = keys.derivation_secret(keys.operator_key(api.home))
            head = store.head(conn, contract_id(secret, "api", "1.0.0"))
            content = head["content"]
            for action in ("kernel_boot", "metrics_scrape"):
                content["actions"][action]["requesters"] = ["admin"]
            draft = {k: v for k, v in head.items()
                     if k not in ("at", "curr_hash", "signature", "public_key")}
            draft.update(seq=head["seq"] + 1, prev_hash=head["curr_hash"], content=content)
            store.append(conn, [draft], keys.operator_key(api.home))
        api.stop()
        api.start()
        admin = api.client(api.key("oldboss", "acme", "admin"))
        assert_error(admin.post(f"/api/boot/{KERNELS['request_worker']}", json={}), 403,
                     "OPERATOR_ONLY")
        assert_error(admin.get("/metrics"), 403, "OPERATOR_ONLY")


def processes_of(pid: int, marker: str) -> list[int]:
    """Live children of `pid` whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return found


def sleeping_kernels(api: Api) -> list[dict]:
    with api.database.connect("admin") as conn:
        return conn.execute("SELECT pid, application_name FROM pg_stat_activity WHERE "
                            "query LIKE 'SELECT pg_sleep(6)%%' AND state = 'active'").fetchall()


@pytest.mark.slow
def test_a_boot_that_times_out_stops_and_leaves_nothing_behind(api):
    """The request times out after 3 s; the kernel would sleep 6 s and then append a span.
    Its process is gone with the 504, its database session too, and its span never comes."""
    operator_key = keys.operator_key(api.home)
    with api.kernel() as conn:
        [kernel] = store.append(conn, [{
            "entity_type": "function", "who": "test", "this": "slow kernel", "name": "slow",
            "code": SLOW_KERNEL, "owner_id": "system", "tenant_id": "system",
            "visibility": "public", "status": "active"}], operator_key)
        current = manifest.latest(conn, public_key_hex(operator_key))
        manifest.amend(conn, operator_key, allowed_boot_ids=[
            *current["metadata"]["allowed_boot_ids"], kernel["id"]])
    operator = api.client(api.operator())
    trace = str(uuid.uuid4())
    started = time.monotonic()
    response = operator.post(f"/api/boot/{kernel['id']}", json={},
                             headers={"X-Request-ID": trace})
    assert_error(response, 504, "REQUEST_TIMEOUT")
    assert [e["entity_type"] for e in boot_events(api, trace)] == ["boot_event"]  # it began
    assert processes_of(api.proc.pid, "stage0.api.boot") == []
    wait_for(lambda: sleeping_kernels(api) == [], 2, "the kernel's session to end")
    time.sleep(max(0.0, started + 6 + 2 - time.monotonic()))  # past the kernel's 6 s
    with api.kernel() as conn:
        assert conn.execute("SELECT count(*) AS n FROM ledger.universal_registry WHERE "
                            "trace_id = %s AND entity_type = 'note'", (trace,)
                            ).fetchone()["n"] == 0


# --- bounded records of hostile input -----------------------------------------------------------
def rows(api: Api, where: str = "TRUE", params: tuple = ()) -> list[dict]:
    with api.kernel() as conn:
        return conn.execute("SELECT entity_type, owner_id, tenant_id, trace_id, content, "
                            "metadata, input, this FROM ledger.universal_registry WHERE "
                            f"{where} ORDER BY position", params).fetchall()


def last_position(api: Api) -> int:
    with api.kernel() as conn:
        return conn.execute("SELECT coalesce(max(position), 0) AS p FROM "
                            "ledger.universal_registry").fetchone()["p"]


@pytest.mark.slow
def test_a_thousand_anonymous_401s_with_60_kb_paths_add_no_span_each(api):
    """They are counted: /metrics has them, and one audit_summary span per second (this
    server's --audit-interval) sums them up; no audit_denial span is written."""
    operator = api.client(api.operator())
    summaries_before = len(rows(api, "entity_type = 'audit_summary'"))
    before = last_position(api)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for i in range(1000):
            token = f"Authorization: Bearer llk_{i:016x}_{'Z' * 43}\r\n" if i % 2 else ""
            sock.sendall(f"GET /api/spans/{'A' * 60_000} HTTP/1.1\r\nHost: x\r\n{token}"
                         f"User-Agent: {'U' * 10_000}\r\n\r\n".encode())
            status, length = reader.readline().split()[1], 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            assert status == b"401", status
    flood_s = time.monotonic() - started

    def summed() -> int:
        found = rows(api, "entity_type = 'audit_summary'")[summaries_before:]
        return sum(r["content"]["total"] for r in found)

    wait_for(lambda: summed() >= 1000, 10, "the audit summary of 1,000 denials")
    new = rows(api, "position > %s", (before,))
    assert {r["entity_type"] for r in new} == {"audit_summary"}, new[:3]
    assert len(new) <= flood_s + 3  # one per second with anything to say
    for summary in (r["content"] for r in new):
        assert set(summary["by_reason"]) <= {"AUTH_REQUIRED", "AUTH_INVALID"}
        assert all(set(routes) == {"api.span_read"}
                   for routes in summary["by_reason_and_route"].values())
        assert summary["top_clients"][0]["client"] == "127.0.0.1"
        assert len(json.dumps(summary)) < 4096
    metrics = operator.get("/metrics").text
    counted = sum(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("logline_anonymous_denials_total{"))
    assert counted >= 1000


def test_a_known_callers_denial_records_its_long_path_cut_with_length_and_hash(api):
    """An agent key may not read spans: the gate's refusal is a span, whose path, user agent
    and client (here from X-Forwarded-For, which uvicorn trusts from 127.0.0.1) are cut."""
    import blake3

    agent = api.client(api.key("bot", "acme", "agent"))
    path, agent_string, forwarded = "/api/spans/" + "B" * 60_000, "U" * 5000, "f" * 3000
    trace = str(uuid.uuid4())
    response = agent.get(path, headers={"X-Request-ID": trace, "User-Agent": agent_string,
                                        "X-Forwarded-For": forwarded})
    assert_error(response, 403, "G_ROLE_DENIED")
    [span] = rows(api, "trace_id = %s", (trace,))
    meta = span["metadata"]
    assert (meta["path"], meta["user_agent"], meta["client"]) == (
        path[:512], agent_string[:512], forwarded[:512])
    for name, original in (("path", path), ("user_agent", agent_string),
                           ("client", forwarded)):
        assert meta["clipped"][name] == {"length": len(original),
                                         "blake3": blake3.blake3(original.encode()).hexdigest()}


def test_a_denied_proposal_records_its_huge_arguments_cut(api):
    """A member with no active contract asks for an action with a 60 KB argument: the
    gate_decision span keeps 512 characters of it, and its length and hash."""
    member = api.client(api.key("asker", "nocontract"))
    trace = str(uuid.uuid4())
    response = member.post("/api/proposals", headers={"X-Request-ID": trace},
                           json={"action": "x" * 200, "args": {"note": "N" * 60_000,
                                                               "K" * 1000: 1}})
    assert response.status_code == 403, response.text
    [decision] = rows(api, "trace_id = %s AND entity_type = 'gate_decision'", (trace,))
    args = decision["input"]["args"]
    assert args["note"] == "N" * 512 and "K" * 512 in args
    assert decision["content"]["clipped"]["args.note"]["length"] == 60_000
    assert decision["content"]["clipped"]["args." + "K" * 512]["length"] == 1000


# --- security headers -------------------------------------------------------------------------


def assert_secured(where: str, headers: Any, cache: str = "no-store") -> None:
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (where, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (where, csp)
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == "no-referrer", where
    assert headers.get("cache-control") == cache, where


def test_every_response_carries_the_security_headers(api):
    key = api.key("hdr", "acme")
    anonymous, member = api.client(), api.client(key)
    operator = api.client(api.operator())
    answers = {
        "healthz": anonymous.get("/healthz"),
        "console": anonymous.get("/"),
        "openapi": anonymous.get("/openapi.json"),
        "401": anonymous.get("/api/spans"),
        "200": member.get("/api/spans"),
        "201": member.post("/api/spans", json={"entity_type": "note", "who": "h", "this": "x"}),
        "400": member.get("/api/spans/not-a-uuid"),
        "403": member.get("/metrics"),
        "404": member.get("/api/nothing-here"),
        "405": member.delete("/api/spans"),
        "413": member.post("/api/spans", content=b"x" * (1024 * 1024 + 1),
                           headers={"Content-Type": "application/json"}),
        "415": member.post("/api/spans", content=b"{}"),
        "metrics": operator.get("/metrics"),
        "export": member.get("/api/audit/export"),
    }
    for where, response in answers.items():
        assert_secured(where, response.headers)
    for name in ("app.js", "style.css", "favicon.svg"):
        response = anonymous.get(f"/static/{name}")
        assert response.status_code == 200
        assert_secured(name, response.headers, cache="no-cache")
    assert_secured("static 404", anonymous.get("/static/nothing.js").headers, "no-cache")
    with Stream(api, key.token, "?since=0") as stream:
        assert stream.status == 200
        assert_secured("stream", stream.headers)


def test_the_console_runs_under_its_policy_and_cannot_be_framed(api):
    """In Chromium: the console logs in and shows every view without one CSP violation,
    and a page that frames it gets nothing (clickjacking)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    key = api.key("cspuser", "acme")
    messages: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("console", lambda message: messages.append(message.text))
            page.goto(f"{api.url}/")
            page.fill("#login-key", key.token)
            page.click("#login-submit")
            playwright.expect(page.locator("#app")).to_be_visible()
            for view in ("timeline", "approvals", "functions", "executions", "metrics"):
                page.click(f'.tab[data-view="{view}"]')
                playwright.expect(page.locator(f"#view-{view}")).to_be_visible()
            page.wait_for_timeout(500)
            assert [m for m in messages if "Content Security Policy" in m] == []

            framer = browser.new_page()
            framed: list[str] = []
            framer.on("console", lambda message: framed.append(message.text))
            framer.set_content(f'<iframe id="f" src="{api.url}/"></iframe>')
            framer.wait_for_timeout(1500)
            frame = framer.frame_locator("#f")
            assert frame.locator("#login-key").count() == 0
            assert any("frame-ancestors" in m for m in framed), framed
        finally:
            browser.close()


# --- streams re-check their key -------------------------------------------------------------------
def test_a_stream_ends_within_seconds_of_its_key_being_revoked(api):
    """Two keys of one user stream the same timeline; one is revoked after connecting. Its
    stream ends within seconds; the other goes on receiving."""
    revoked, kept = api.key("watcher", "acme"), api.key("watcher", "acme")
    with Stream(api, revoked.token) as doomed, Stream(api, kept.token) as live:
        member = api.client(kept)
        member.post("/api/spans", json={"entity_type": "note", "who": "w", "this": "before",
                                        "visibility": "tenant"})
        doomed.next(), live.next()
        api.cli("apikey", "revoke", revoked.key_id)
        at = time.monotonic()
        assert doomed.ended.wait(8), "the revoked key's stream went on"
        assert time.monotonic() - at < 6
        member.post("/api/spans", json={"entity_type": "note", "who": "w", "this": "after",
                                        "visibility": "tenant"})
        while live.next()["data"]["this"] != "after":
            pass  # (the revocation itself: the user's own api_key span)
    assert_error(api.client(revoked).get("/api/me"), 401, "AUTH_INVALID")


# --- ids are UUIDs ------------------------------------------------------------------------------
HOSTILE = "$(rm -rf ~)"


@pytest.mark.parametrize("path", ["/api/timeline", "/api/timeline/stream", "/api/audit/export"])
def test_a_trace_id_that_is_not_a_uuid_gets_400_bad_id(api, path):
    member = api.client(api.key("tracer", "acme"))
    for value in (HOSTILE, "trace-1", "0" * 36, str(uuid.uuid4()) + "x"):
        error = assert_error(member.get(path, params={"trace_id": value}), 400, "BAD_ID")
        assert "trace_id" in error["message"] and value not in error["message"]
    with member.stream("GET", path, params={"trace_id": str(uuid.uuid4()).upper()}) as fine:
        assert fine.status_code == 200  # (the stream's body never ends: not read)


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/spans/{}"), ("GET", "/api/verify/{}"), ("GET", "/api/proposals/{}"),
    ("POST", "/api/approvals/{}"), ("POST", "/api/jobs/{}/result"), ("POST", "/api/boot/{}")])
def test_an_id_in_the_path_that_is_not_a_uuid_gets_400_bad_id(api, method, path):
    bodies = {"/api/approvals/{}": {"decision": "approve", "reason": "x"},
              "/api/jobs/{}/result": {"status": "done"}}
    roles = {"/api/jobs/{}/result": ("agent",)}
    key = api.operator() if "boot" in path else api.key("ider", "acme", *roles.get(path, ()))
    response = api.client(key).request(method, path.format(urllib.parse.quote(HOSTILE)),
                                       json=bodies.get(path, {}) if method == "POST" else None)
    assert_error(response, 400, "BAD_ID")


def test_request_ids_are_uuids_and_so_are_the_trace_ids_written_with_them(api):
    member = api.client(api.key("rid", "acme"))
    for given in (HOSTILE, "req-1", "x" * 100):
        response = member.post("/api/spans", headers={"X-Request-ID": given},
                               json={"entity_type": "note", "who": "r", "this": "x"})
        generated = response.headers["x-request-id"]
        assert str(uuid.UUID(generated)) == generated != given
        assert response.json()["trace_id"] == generated
    mine = str(uuid.uuid4())
    response = member.get("/api/me", headers={"X-Request-ID": mine.upper()})
    assert response.headers["x-request-id"] == mine
    refused = member.post("/api/spans", json={"entity_type": "note", "who": "r", "this": "x",
                                              "trace_id": HOSTILE})
    error = assert_error(refused, 422, "BAD_FIELD")
    assert "trace_id" in error["message"]


# --- slow clients -----------------------------------------------------------------------------
def test_a_request_head_that_never_ends_is_closed_after_the_header_timeout(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        took = closed_within(sock, 8)
    assert took is not None and took < 4, took


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        took = closed_within(sock, 8)
    assert took is not None and took < 4, took


def test_on_a_kept_alive_connection_the_next_head_has_the_same_deadline(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        for _ in range(3):  # pipelined and one after another: all answered
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            reader = sock.makefile("rb")
            for _ in range(2):
                assert reader.readline().startswith(b"HTTP/1.1 200")
                length = 0
                while (line := reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # this one never ends
        took = closed_within(sock, 8)
    assert took is not None and took < 4, took


def test_a_trickled_body_gets_408_and_the_connection_is_closed(api):
    key = api.key("slowbody", "acme")
    head = (f"POST /api/spans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"entity_type": "note",')
        started, raw = time.monotonic(), b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                raw += chunk
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert b'"BODY_TIMEOUT"' in raw and b"connection: close" in raw.lower()
    assert time.monotonic() - started < 5


def low_fd_limit() -> None:
    """In the server's process before it starts: 256 descriptors in all."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def half_open(port: int, n: int, within_s: float) -> list[socket.socket]:
    """n connections from this process that each send part of a request head and stop."""
    socks, selector = [], selectors.DefaultSelector()
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    deadline = time.monotonic() + within_s
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            with contextlib.suppress(OSError):
                key.fileobj.send(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            selector.unregister(key.fileobj)
    selector.close()
    return socks


@pytest.mark.slow
def test_a_thousand_half_open_connections_do_not_lock_healthz_out(server, template,
                                                                  tmp_path):
    """The server may open 256 descriptors; an attacker opens 1,000 connections that never
    finish their request head. /healthz, asked next, still answers within seconds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1500:  # this process holds the attacker's 1,000 sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with serving(server, template, tmp_path, ("--header-timeout", "30"),
                 low_fd_limit) as api:
        limits = Path(f"/proc/{api.proc.pid}/limits").read_text()
        assert any(line.startswith("Max open files") and line.split()[3] == "256"
                   for line in limits.splitlines()), limits
        socks = half_open(api.port, 1000, within_s=5)
        try:
            started = time.monotonic()
            response = httpx.get(f"{api.url}/healthz", timeout=15)
            took = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert took < 5, f"/healthz took {took:.1f}s"
            assert api.proc.poll() is None
        finally:
            for sock in socks:
                sock.close()
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
