"""A real `logline serve` (a subprocess on a free port) over a seeded clone of the template
database, with the CLI that administers the same home and database; and what the HTTP tests
say to it."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from nacl.signing import SigningKey

from helpers import REPO, free_port
from helpers.cli import Ran, logline
from stage0 import keys
from stage0.config import Home, row_dir
from stage0.ledger import db, seed
from stage0.spans.canonical import normalise, now_at
from stage0.spans.proofs import seal

RUN_CODE = "00000000-0000-4000-8000-000000000001"
ECHO = "def main(input):\n    return {'echo': input}\n"


def rid(name: str) -> str:
    """A request (and trace) id named for the test that sends it: a UUID, as the API takes
    them (X-Request-ID is kept only when it is one)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"logline-test:{name}"))


@dataclass(frozen=True)
class Key:
    token: str
    key_id: str
    user: str
    tenant: str


class Api:
    """A running `logline serve` and the CLI that administers the same home and database."""

    def __init__(self, database: db.Database, home: Home, log: Path,
                 args: tuple[str, ...] = (), preexec: Any = None) -> None:
        self.database, self.home, self.log = database, home, log
        self.args, self.preexec = args, preexec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOGLINE_HOME": str(home.path),
                    "LOGLINE_DATABASE_URL": database.admin_url}
        self.proc: subprocess.Popen | None = None
        self._clients: list[httpx.Client] = []

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stage0.cli", "serve", "--port", str(self.port),
                 *self.args], env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=self.preexec)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"/healthz never answered 200:\n{self.log.read_text()}")

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, check: bool = True, **env: str) -> Ran:
        """`logline ARGS` on this server's home and database (in-process; see helpers.cli),
        with `env` added to its environment."""
        return logline(*args, env={**self.env, **env}, cwd=REPO, check=check)

    def key(self, user: str, tenant: str, *roles: str) -> Key:
        args = ["apikey", "create", "--user", user, "--tenant", tenant]
        for role in roles:
            args += ["--role", role]
        token = self.cli(*args).stdout.strip().splitlines()[-1]
        assert token.startswith("llk_"), token
        return Key(token, token.split("_")[1], user, tenant)

    def client(self, key: Key | str | None = None) -> httpx.Client:
        token = key.token if isinstance(key, Key) else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self._clients.append(client)
        return client

    def kernel(self) -> psycopg.Connection:
        return self.database.connect("kernel")

    def operator(self) -> Key:
        """The local operator's key (as `logline up` makes it): the only one with the
        operator role."""
        from stage0.gov.operator import operator_token

        token = operator_token(self.home, self.database)
        return Key(token, token.split("_")[1], "operator", "default")

    def scrape(self) -> httpx.Response:
        """/metrics, read with the operator's key (its counts span every tenant)."""
        if not hasattr(self, "_scraper"):
            self._scraper = self.operator()
        return httpx.get(f"{self.url}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {self._scraper.token}"})

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample on /metrics."""
        for line in self.scrape().text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not on /metrics")


def start_api(server: db.Database, template: str, base: Path, args: tuple[str, ...] = (),
              preexec: Any = None) -> Iterator[Api]:
    """A seeded clone of the template, a home, and a server over them (shared by modules),
    started with `logline serve ARGS` (and `preexec` run in the child before it starts)."""
    home = Home(base / "home")
    keys.ensure_operator_key(home)
    name = f"logline_api_{uuid.uuid4().hex[:12]}"
    with server.connect("admin", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    database = server.with_dbname(name)
    try:
        with database.connect("kernel") as conn:
            seed.seed(conn, [row_dir()], keys.operator_key(home))
        api = Api(database, home, base / "server.log", args, preexec)
        try:
            api.start()
            yield api
        finally:
            api.stop()
    finally:
        with server.connect("admin", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def post(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """Append a span through the API; return it as stored."""
    body = {"who": "alice", "this": "a span", **fields}
    body.setdefault("entity_type", "note")
    response = client.post("/api/spans", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with the given status and code and the request's id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


class Stream:
    """GET /api/timeline/stream on a plain socket. With read=False nobody ever reads the
    socket after the response headers (a stalled client); rcvbuf shrinks its receive window."""

    def __init__(self, api: Api, token: str | None, query: str = "",
                 last_event_id: str | None = None, read: bool = True,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(15)
        self.sock.connect(("127.0.0.1", api.port))
        lines = [f"GET /api/timeline/stream{query} HTTP/1.1", f"Host: 127.0.0.1:{api.port}",
                 "Accept: text/event-stream"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed before the headers: {raw!r}")
            raw += data
        head, self._buf = raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, v in (h.split(":", 1) for h in header_lines)}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.body = b""
        if self.status != 200:
            length = int(self.headers.get("content-length", "0"))
            while len(self._buf) < length:
                self._buf += self.sock.recv(65536)
            self.body = self._buf[:length]
            self.close()
            return
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        if read:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def _read(self) -> None:
        buf, body = self._buf, b""
        self.sock.settimeout(0.2)
        try:
            while not self._stop.is_set():
                while (nl := buf.find(b"\r\n")) >= 0:  # de-chunk what is complete
                    size = int(buf[:nl].split(b";")[0], 16)
                    if size == 0:
                        return
                    if len(buf) < nl + 2 + size + 2:
                        break
                    body += buf[nl + 2:nl + 2 + size]
                    buf = buf[nl + 2 + size + 2:]
                body = body.replace(b"\r\n", b"\n")
                *blocks, body = body.split(b"\n\n")
                for block in blocks:
                    self._event(block.decode())
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    return
                buf += data
        except OSError:
            return
        finally:
            self.ended.set()

    def _event(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.put(line)
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            self.events.put({"id": int(fields["id"]), "event": fields.get("event"),
                             "data": json.loads(fields["data"]),
                             "received": time.monotonic()})

    def next(self, timeout: float = 10) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None

    def take(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        return [self.next(timeout) for _ in range(n)]

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread:
            self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_signed(key: SigningKey, **fields: Any) -> dict[str, Any]:
    draft = {"id": str(uuid.uuid4()), "seq": 0, "entity_type": "note", "who": "alice",
             "this": "signed by the client", "at": now_at(), "owner_id": "alice",
             "tenant_id": "acme", "visibility": "tenant", "metadata": {"k": [1, 2.5, "é"]},
             **fields}
    span = seal(normalise(draft), key)
    return {f: v for f, v in span.items() if v is not None}
