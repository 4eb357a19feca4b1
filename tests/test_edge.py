"""The HTTP edge under hostile clients: each test is an attack on a real `logline serve`
(subprocess, real PostgreSQL, real sockets) and what the server must still do.

Slow and half-open connections (header and body deadlines, the connection cap under a low
descriptor limit).
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api import Api, start_api

#: Short deadlines, so the attacks below end in seconds.
EDGE_ARGS = ("--header-timeout", "2", "--body-timeout", "2")


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
