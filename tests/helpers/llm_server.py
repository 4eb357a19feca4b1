"""A model server on loopback for the LLM tests: speaks OpenAI (chat completions, embeddings,
SSE streaming), Ollama (/api/chat, /api/embed, NDJSON streaming) and Anthropic (Messages API,
SSE events), and misbehaves on demand.

    with LlmServer() as server:
        server.plan("429:retry-after=1", "ok")   # what the next requests get, in order
        server.url                               # http://127.0.0.1:PORT

Behaviours (one per request; then `ok`): ok (answers `server.answer`), say=TEXT (answers TEXT),
latency=S, STATUS[:retry-after=N], malformed,
truncated (a stream that stops before its end marker), cut (a body shorter than its
Content-Length), drip=S (one byte every S seconds), stall (headers and a first chunk, then
nothing), hold=N (a stream's first N chunks, then the rest once the test sets
`server.release`; `server.holding` is set while it waits, `server.held_too_long` if it
waited 30 s), big=N (an N-byte body), redirect=URL, wrong-shape (valid JSON, wrong protocol),
echo-error (an error object quoting the prompt back).
Every request is kept (path, headers, JSON body) for the tests to look at.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ANSWER = "Hello from the loopback model."
EMBEDDING = [0.25, -0.5, 0.125]
PROMPT_TOKENS, ANSWER_TOKENS = 11, 7


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


class LlmServer:
    def __init__(self, keep: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.keep = keep  # False: do not keep requests (a benchmark's millions)
        self.requests: list[Seen] = []
        self._plan: list[str] = []
        self.default = "ok"  # what a request gets when the plan is empty
        self.answer = ANSWER  # what `ok` answers (say=TEXT answers TEXT once)
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.holding, self.release = threading.Event(), threading.Event()
        self.held_too_long = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def plan(self, *behaviours: str) -> None:
        with self._lock:
            self._plan = list(behaviours)

    def next(self) -> str:
        with self._lock:
            return self._plan.pop(0) if self._plan else self.default

    def __enter__(self) -> LlmServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certificates(folder: Path, name: str) -> tuple[Path, ssl.SSLContext] | None:
    """A CA of its own and a certificate it signs for `name` (openssl); the CA's file and a
    server context holding the certificate. None when there is no openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
        "server.key", "-out", "server.csr")
    (folder / "san.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", context


# --- the three protocols ------------------------------------------------------------------
def whole(path: str, body: dict[str, Any], answer: str = ANSWER) -> dict[str, Any]:
    model = body.get("model")
    if path.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": EMBEDDING}
                         for i, _ in enumerate(inputs)],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}}
    if path.endswith("/chat/completions"):
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": ANSWER_TOKENS,
                          "total_tokens": PROMPT_TOKENS + ANSWER_TOKENS}}
    if path == "/api/chat":
        return {"model": model, "created_at": "2026-12-07T00:00:00Z", "done": True,
                "done_reason": "stop", "message": {"role": "assistant", "content": answer},
                "prompt_eval_count": PROMPT_TOKENS, "eval_count": ANSWER_TOKENS}
    if path == "/api/embed":
        return {"model": model, "embeddings": [EMBEDDING for _ in body["input"]],
                "prompt_eval_count": PROMPT_TOKENS}
    if path == "/v1/messages":
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn",
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": ANSWER_TOKENS}}
    raise KeyError(path)


def _words(answer: str = ANSWER) -> list[str]:
    words = answer.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def stream(path: str, body: dict[str, Any],
           answer: str = ANSWER) -> tuple[str, list[bytes], bytes]:
    """Content type, the chunks, and the end marker (left out by `truncated`)."""
    model = body.get("model")
    if path.endswith("/chat/completions"):
        chunks = [b"data: " + json.dumps({"model": model, "choices": [
            {"index": 0, "delta": {"content": w}, "finish_reason": None}]}).encode() + b"\n\n"
                  for w in _words(answer)]
        chunks.append(b"data: " + json.dumps({"model": model, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode() + b"\n\n")
        chunks.append(b"data: " + json.dumps({"model": model, "choices": [], "usage": {
            "prompt_tokens": PROMPT_TOKENS, "completion_tokens": ANSWER_TOKENS}}).encode()
            + b"\n\n")
        return "text/event-stream", chunks, b"data: [DONE]\n\n"
    if path == "/api/chat":
        chunks = [json.dumps({"model": model, "message": {"role": "assistant", "content": w},
                              "done": False}).encode() + b"\n" for w in _words(answer)]
        end = json.dumps({"model": model, "message": {"role": "assistant", "content": ""},
                          "done": True, "done_reason": "stop",
                          "prompt_eval_count": PROMPT_TOKENS,
                          "eval_count": ANSWER_TOKENS}).encode() + b"\n"
        return "application/x-ndjson", chunks, end

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    chunks = [event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": model, "usage": {"input_tokens": PROMPT_TOKENS,
                                                 "output_tokens": 1}}}),
              event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
              event("ping", {"type": "ping"})]
    chunks += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": w}})
               for w in _words(answer)]
    chunks += [event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": ANSWER_TOKENS}})]
    return "text/event-stream", chunks, event("message_stop", {"type": "message_stop"})


def _handler(server: LlmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            if server.keep:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append(Seen(self.path, headers, body))
            behaviour = server.next()
            name, _, arg = behaviour.partition("=")
            self.answer = server.answer
            if name == "say":
                name, self.answer = "ok", arg
            try:
                self.behave(name, arg, body if isinstance(body, dict) else {})
            except (BrokenPipeError, ConnectionResetError):
                pass

        def send(self, status: int, data: bytes, ctype: str = "application/json",
                 headers: dict[str, str] | None = None, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def behave(self, name: str, arg: str, body: dict[str, Any]) -> None:
            if name.split(":")[0].isdigit():
                status, _, extra = name.partition(":")
                headers = {}
                if extra.startswith("retry-after"):
                    headers["retry-after"] = arg
                self.send(int(status), b'{"error": {"message": "planned failure"}}',
                          headers=headers)
                return
            if name == "latency":
                if server.stopping.wait(float(arg)):
                    return
            if name == "redirect":
                self.send(307, b"", headers={"location": arg})
                return
            if name == "malformed":
                self.send(200, b'{"choices": [ {"message": oops')
                return
            if name == "echo-error":  # an error object quoting the prompt back
                said = json.dumps(body.get("messages") or body.get("input"))
                self.send(200, json.dumps({"error": {"message": f"bad: {said}",
                                                     "type": "invalid_request_error"}}
                                          ).encode())
                return
            if name == "wrong-shape":
                self.send(200, b'{"hello": "world"}')
                return
            if name == "big" and body.get("stream"):
                self.send_response(200)  # no Content-Length: only counting can stop it
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for _ in range(int(arg) // 65536 + 1):
                    self.wfile.write(b": " + b"x" * 65534 + b"\n")
                return
            if name == "big":
                self.send(200, b'{"pad": "' + b"x" * int(arg) + b'"}')
                return
            if name == "cut":
                data = json.dumps(whole(self.path, body, self.answer)).encode()
                self.send(200, data[: len(data) // 2], length=len(data))
                return
            if body.get("stream"):
                self.stream(name, arg, body)
                return
            data = json.dumps(whole(self.path, body, self.answer)).encode()
            if name == "drip":
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                for byte in data:
                    if server.stopping.wait(float(arg)):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                return
            self.send(200, data)

        def stream(self, name: str, arg: str, body: dict[str, Any]) -> None:
            ctype, chunks, end = stream(self.path, body, self.answer)
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.end_headers()
            for i, chunk in enumerate(chunks):
                if name == "stall" and i == 1:
                    server.stopping.wait(60)
                    return
                if name == "drip" and server.stopping.wait(float(arg)):
                    return
                if name == "hold" and i == int(arg):
                    server.holding.set()
                    server.held_too_long = not server.release.wait(30)
                    server.holding.clear()
                self.wfile.write(chunk)
                self.wfile.flush()
            if name != "truncated":
                self.wfile.write(end)

    return Handler
