"""LlmClient: one hardened call to a provider, whatever happens, as a CallResult.

Order of checks, cheapest and most local first, so a refused call costs nothing upstream:
enabled -> breaker -> the tenant's daily token budget -> the provider's and the tenant's token
buckets -> the credential -> attempts (egress check and pinned connection, timeouts, size cap,
streaming with an idle timeout, retries with backoff). The caller records the CallResult (a
`provider_execution` span); nothing here logs or keeps a prompt, an answer or a credential.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from stage0.errors import LoglineError
from stage0.llm import wire
from stage0.llm.egress import EgressTransport, Resolver, resolve
from stage0.llm.hardening import (
    BREAKER_FAILURES,
    RETRYABLE,
    Breaker,
    BreakerChange,
    TokenBucket,
    backoff,
    parse_retry_after,
)
from stage0.llm.providers import Provider
from stage0.llm.streaming import Listener

#: (tenant_id, credential name) -> the secret, or None when there is none.
CredentialSource = Callable[[str, str], "str | None"]
#: (tenant_id, provider name) -> tokens the tenant used today with that provider.
UsageSource = Callable[[str, str], int]
#: Outcomes that never reached the provider (they say nothing about its health).
LOCAL = frozenset({"EGRESS_DENIED", "LLM_REQUEST_INVALID", "LLM_OPERATION_UNSUPPORTED",
                   "PROVIDER_CANCELLED", "PROVIDER_TLS_FAILED"})
ERROR_BODY_BYTES = 4096


@dataclass
class CallResult:
    provider: str
    model: str
    operation: str
    tenant_id: str
    outcome: str = "ok"
    message: str | None = None
    answer: wire.Answer | None = None
    latency_ms: int = 0
    attempts: int = 0
    status: int | None = None
    streamed: bool = False
    cost: float | None = None
    currency: str | None = None
    retry_in_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def tokens_in(self) -> int:
        return self.answer.tokens_in if self.answer else 0

    @property
    def tokens_out(self) -> int:
        return self.answer.tokens_out if self.answer else 0

    def error(self) -> dict[str, Any] | None:
        return None if self.ok else {"code": self.outcome, "message": self.message}


class _Watch:
    """Cancels a call that is blocked in a read: when `cancel` is set, the call's socket is
    shut down (a blocked recv returns at once). The socket comes from httpcore's trace hook
    when the call connects; a cancellable call therefore gets a connection of its own."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.finished = threading.Event()
        self.socket: Any = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True, name="llm-cancel").start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self.socket = info["return_value"].get_extra_info("socket")
            if self.cancel.is_set():
                self._shut()

    def _run(self) -> None:
        while not self.cancel.wait(0.1):
            if self.finished.is_set():
                return
        self._shut()

    def _shut(self) -> None:
        import socket

        with self._lock:
            if self.socket is not None and not self.finished.is_set():
                try:
                    self.socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def done(self) -> None:
        self.finished.set()


class _Failure(Exception):
    def __init__(self, code: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.retry_after = code, message, status, \
            retry_after


@dataclass
class LlmClient:
    credentials: CredentialSource
    usage: UsageSource = lambda tenant, provider: 0
    resolver: Resolver = resolve
    clock: Callable[[], float] = time.monotonic
    rng: Callable[[float, float], float] = random.uniform
    on_breaker: Callable[[BreakerChange], None] | None = None
    verify: bool | ssl.SSLContext = True
    sleep: Callable[[float], None] = time.sleep
    _breakers: dict[str, Breaker] = field(default_factory=dict)
    _buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)
    _http: dict[str, tuple[Provider, httpx.Client]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- state per provider ----------------------------------------------------------------
    def breaker(self, provider: Provider) -> Breaker:
        with self._lock:
            b = self._breakers.get(provider.name)
            if b is None or b.limits != provider.limits:
                b = Breaker(provider.name, provider.limits, self.clock, self._changed,
                            state=b.state if b else "closed",
                            opened_at=b.opened_at if b else 0.0)
                self._breakers[provider.name] = b
            return b

    def _changed(self, change: BreakerChange) -> None:
        if self.on_breaker is not None:
            self.on_breaker(change)

    def _bucket(self, provider: Provider, tenant: str | None) -> TokenBucket:
        key = (provider.name, tenant or "")
        rate, burst = (provider.limits.tenant_rps, provider.limits.tenant_burst) if tenant \
            else (provider.limits.rps, provider.limits.burst)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
                bucket = self._buckets[key] = TokenBucket(rate, burst, self.clock)
            return bucket

    def _client(self, provider: Provider) -> httpx.Client:
        with self._lock:
            held = self._http.get(provider.name)
            if held is not None and held[0] == provider:
                return held[1]
            if held is not None:
                held[1].close()
            client = httpx.Client(transport=EgressTransport(provider, self.resolver,
                                                            self.verify),
                                  follow_redirects=False, trust_env=False)
            self._http[provider.name] = (provider, client)
            return client

    def _own_client(self, provider: Provider) -> httpx.Client:
        """A client for one cancellable call: its connection is its own to shut down."""
        return httpx.Client(transport=EgressTransport(provider, self.resolver, self.verify),
                            follow_redirects=False, trust_env=False)

    def close(self) -> None:
        with self._lock:
            for _, client in self._http.values():
                client.close()
            self._http.clear()

    # --- one call --------------------------------------------------------------------------
    def call(self, provider: Provider, tenant_id: str, operation: str, payload: Any,
             params: Any = None, cancel: threading.Event | None = None,
             listener: Listener | None = None) -> CallResult:
        """One call. `listener` (chat only; stage0.llm.streaming): the answer is streamed
        from the provider and the listener hears each attempt start and each piece of text
        as it arrives; its `cancel` event stops the call when `cancel` is not given."""
        result = CallResult(provider.name, provider.model, operation, tenant_id)
        if operation != "chat":
            listener = None
        if listener is not None and cancel is None:
            cancel = listener.cancel
        started = self.clock()
        try:
            left = self._admit(provider, tenant_id, result)
            params = wire.merged_params(provider, params)
            if operation == "chat":
                wire.cap_output(params, min(provider.limits.max_output_tokens, left))
            stream = bool(params.pop("stream", False)) if operation == "chat" else False
            stream = stream or listener is not None
            result.streamed = stream
            credential = self._credential(provider, tenant_id)
            request = wire.build(provider, operation, payload, params, credential, stream)
            self._attempts(provider, operation, request, stream, result, cancel, started,
                           listener)
        except LoglineError as exc:
            result.outcome, result.message = exc.code, exc.message
        result.latency_ms = int((self.clock() - started) * 1000)
        if result.ok and result.answer is not None:
            self._finish(provider, operation, payload, result)
        return result

    def _admit(self, provider: Provider, tenant_id: str, result: CallResult) -> int:
        """Refuse what may not go out now; the tokens left in the tenant's budget today."""
        if not provider.enabled:
            raise LoglineError("PROVIDER_DISABLED", f"provider {provider.name} is disabled")
        breaker = self.breaker(provider)
        if breaker.state == "open" and breaker.retry_in() > 0:
            result.retry_in_s = round(breaker.retry_in(), 3)
            raise LoglineError("BREAKER_OPEN", f"provider {provider.name} is failing; calls "
                               f"resume in {result.retry_in_s}s (half-open probe)")
        budget = provider.limits.daily_token_budget
        used = self.usage(tenant_id, provider.name)
        if used >= budget:
            raise LoglineError("TOKEN_BUDGET_EXCEEDED", f"tenant {tenant_id} has used "
                               f"{used} of its {budget} tokens for today with "
                               f"{provider.name}; the budget resets at 00:00 UTC")
        for tenant, code in ((None, "PROVIDER_THROTTLED"), (tenant_id, "TENANT_THROTTLED")):
            wait = self._bucket(provider, tenant).take()
            if wait > 0:
                result.retry_in_s = round(wait, 3)
                who = f"tenant {tenant_id}" if tenant else f"provider {provider.name}"
                raise LoglineError(code, f"{who} is over its request rate; retry in "
                                   f"{result.retry_in_s}s")
        return budget - used

    def _credential(self, provider: Provider, tenant_id: str) -> str | None:
        """The calling tenant's secret of the row's credential name; for a system row, the
        system tenant's when the caller has none of its own (a key the operator provides
        for everyone). A revoked or unreadable one refuses: it is never skipped."""
        if provider.credential is None:
            return None
        secret = self.credentials(tenant_id, provider.credential)
        if not secret and provider.tenant_id == "system" and tenant_id != "system":
            secret = self.credentials("system", provider.credential)
        if not secret:
            raise LoglineError("CREDENTIAL_MISSING", f"no credential {provider.credential!r} "
                               f"for tenant {tenant_id}", provider.name)
        return secret

    def _attempts(self, provider: Provider, operation: str, request: wire.WireRequest,
                  stream: bool, result: CallResult, cancel: threading.Event | None,
                  started: float, listener: Listener | None = None) -> None:
        limits = provider.limits
        breaker = self.breaker(provider)
        for attempt in range(1, limits.max_attempts + 1):
            if cancel is not None and cancel.is_set():
                raise LoglineError("PROVIDER_CANCELLED", "the caller went away")
            if not breaker.allow():
                if attempt == 1:
                    result.retry_in_s = round(breaker.retry_in(), 3)
                    raise LoglineError("BREAKER_OPEN", f"provider {provider.name} is "
                                       "failing; a half-open probe is under way")
                break
            result.attempts = attempt
            deadline = started + limits.total_timeout_s
            try:
                result.answer = self._send(provider, operation, request, stream, deadline,
                                           cancel, result, listener)
            except _Failure as failure:
                self._judge(breaker, failure.code)
                result.outcome, result.message = failure.code, failure.message
                result.status = failure.status
                if failure.code not in RETRYABLE or attempt == limits.max_attempts:
                    return
                delay = backoff(limits, attempt, failure.retry_after, self.rng)
                if self.clock() + delay >= deadline:
                    return
                if cancel is not None and cancel.wait(delay):
                    raise LoglineError("PROVIDER_CANCELLED", "the caller went away") from None
                if cancel is None:
                    self.sleep(delay)
                continue
            except LoglineError:
                breaker.release()
                raise
            breaker.record(True)
            result.outcome, result.message = "ok", None
            return

    @staticmethod
    def _judge(breaker: Breaker, code: str) -> None:
        if code in BREAKER_FAILURES:
            breaker.record(False)
        elif code in LOCAL:
            breaker.release()
        else:
            breaker.record(True)  # it answered (429, 4xx): alive, if unhappy

    # --- HTTP ------------------------------------------------------------------------------
    def _send(self, provider: Provider, operation: str, request: wire.WireRequest,
              stream: bool, deadline: float, cancel: threading.Event | None,
              result: CallResult, listener: Listener | None = None) -> wire.Answer:
        limits = provider.limits
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise _Failure("PROVIDER_TIMEOUT", "the call's total_timeout_s has passed")
        read = min(limits.stream_idle_timeout_s if stream else limits.read_timeout_s,
                   remaining)
        timeout = httpx.Timeout(connect=min(limits.connect_timeout_s, remaining), read=read,
                                write=read, pool=min(limits.connect_timeout_s, remaining))
        url = provider.base_url + request.path
        watch = _Watch(cancel) if cancel is not None else None
        http = self._client(provider) if watch is None else self._own_client(provider)
        try:
            with http.stream(
                    "POST", url, json=request.body, timeout=timeout,
                    extensions={"trace": watch.trace} if watch else None,
                    headers={"accept": "text/event-stream" if stream else "application/json",
                             **request.headers}) as response:
                result.status = response.status_code
                self._check_status(provider, response)
                chunks = self._capped(provider, response, deadline, cancel)
                if stream:
                    if listener is not None:
                        listener.attempt()
                    return self._decode_stream(provider, chunks, listener)
                return self._decode_whole(provider, operation, chunks)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            if cancel is not None and cancel.is_set():
                raise LoglineError("PROVIDER_CANCELLED", "the caller went away") from None
            raise self._failure(exc, provider, stream, read) from None
        finally:
            if watch is not None:
                watch.done()
                http.close()

    @staticmethod
    def _failure(exc: Exception, provider: Provider, stream: bool, read: float) -> _Failure:
        if isinstance(exc, httpx.ReadTimeout):
            code = "PROVIDER_STREAM_IDLE" if stream else "PROVIDER_TIMEOUT"
            return _Failure(code, f"no data for {read:.3g}s")
        if isinstance(exc, httpx.TimeoutException):
            return _Failure("PROVIDER_TIMEOUT", type(exc).__name__)
        if isinstance(exc, httpx.ConnectError) and (
                isinstance(exc.__context__, ssl.SSLError) or "CERTIFICATE" in str(exc)):
            return _Failure("PROVIDER_TLS_FAILED", "the server's certificate did not verify "
                            f"for {provider.host}")
        return _Failure("PROVIDER_UNAVAILABLE", f"{type(exc).__name__}: {str(exc)[:200]}")

    @staticmethod
    def _check_status(provider: Provider, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > provider.limits.max_response_bytes:
                raise _Failure("PROVIDER_RESPONSE_TOO_LARGE", f"Content-Length {length} is "
                               f"over max_response_bytes {provider.limits.max_response_bytes}",
                               status)
            return
        if 300 <= status < 400:
            raise _Failure("PROVIDER_REDIRECT", f"HTTP {status}: providers are never followed "
                           "to another location (set base_url to the final URL)", status)
        if status == 429:
            raise _Failure("PROVIDER_RATE_LIMITED", "HTTP 429 from the provider", status,
                           parse_retry_after(response.headers.get("retry-after")))
        if status >= 500:
            raise _Failure("PROVIDER_UNAVAILABLE", f"HTTP {status} from the provider", status,
                           parse_retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise _Failure("PROVIDER_AUTH_FAILED", f"HTTP {status}: the provider refused the "
                           "credential", status)
        raise _Failure("PROVIDER_REJECTED", f"HTTP {status}: the provider refused the request",
                       status)

    def _capped(self, provider: Provider, response: httpx.Response, deadline: float,
                cancel: threading.Event | None) -> Iterator[bytes]:
        cap, seen = provider.limits.max_response_bytes, 0
        for chunk in response.iter_bytes():
            seen += len(chunk)
            if seen > cap:
                raise _Failure("PROVIDER_RESPONSE_TOO_LARGE", f"more than max_response_bytes "
                               f"{cap}", response.status_code)
            if cancel is not None and cancel.is_set():
                raise LoglineError("PROVIDER_CANCELLED", "the caller went away")
            if self.clock() > deadline:
                raise _Failure("PROVIDER_TIMEOUT", f"total_timeout_s "
                               f"{provider.limits.total_timeout_s} passed while reading")
            yield chunk

    @staticmethod
    def _decode_whole(provider: Provider, operation: str,
                      chunks: Iterator[bytes]) -> wire.Answer:
        body = b"".join(chunks)
        try:
            value = json.loads(body)
        except ValueError:
            raise _Failure("PROVIDER_BAD_RESPONSE", "the body is not JSON") from None
        try:
            return wire.parse(provider, operation, value)
        except LoglineError as exc:
            raise _Failure(exc.code, exc.message) from None

    @staticmethod
    def _decode_stream(provider: Provider, chunks: Iterator[bytes],
                       listener: Listener | None = None) -> wire.Answer:
        decoder = wire.decoder(provider)
        pending = b""
        parts = decoder.answer.parts
        heard = 0
        try:
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    decoder.feed(line.rstrip(b"\r").decode("utf-8", "replace"))
                if listener is not None and len(parts) > heard:
                    listener.raw("".join(parts[heard:]))
                    heard = len(parts)
            if pending:
                decoder.feed(pending.rstrip(b"\r").decode("utf-8", "replace"))
            decoder.feed("")
            if listener is not None and len(parts) > heard:
                listener.raw("".join(parts[heard:]))
            if not decoder.done:
                raise _Failure("PROVIDER_STREAM_TRUNCATED", "the stream ended before the "
                               "answer was complete")
            return decoder.result()
        except LoglineError as exc:
            raise _Failure(exc.code, exc.message) from None

    # --- after a successful call ----------------------------------------------------------
    @staticmethod
    def _finish(provider: Provider, operation: str, payload: Any, result: CallResult) -> None:
        answer = result.answer
        assert answer is not None
        if answer.usage_estimated:
            texts = [m["content"] for m in payload] if operation == "chat" else \
                wire.check_inputs(payload)
            answer.tokens_in = answer.tokens_in or wire.estimate_tokens(texts)
            answer.tokens_out = answer.tokens_out or wire.estimate_tokens([answer.text or ""])
        if provider.prices is not None:
            p = provider.prices
            result.cost = round(answer.tokens_in / 1000 * p.input_per_1k
                                + answer.tokens_out / 1000 * p.output_per_1k, 6)
            result.currency = p.currency
