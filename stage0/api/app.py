"""The Starlette application: every route goes through one guarded dispatcher.

Order for each request: request id -> authentication (bearer API key) -> the gate (the
route's action in the api contract) -> rate limit
-> content type and body size -> body validation (pydantic) -> the handler, with a timeout,
in its own transaction under the caller's identity (RLS). Every denial is answered with the
one error shape; a known caller's is recorded as a span, an anonymous one counted
(stage0/api/denials.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stage0.api.endpoint import UUID, Call, Endpoint
from stage0.api.errors import ApiError, error_response
from stage0.api.gateway import ENDPOINTS as GATEWAY  # issue 14: OpenAI-compatible
from stage0.api.governed import ENDPOINTS as GOVERNED
from stage0.api.memory import ENDPOINTS as MEMORY  # issue 12: memory
from stage0.api.operations import ENDPOINTS as OPERATIONS
from stage0.api.prompts import ENDPOINTS as PROMPTS  # issue 14: prompts
from stage0.api.providers import ENDPOINTS as PROVIDERS  # issue 11: LLM providers
from stage0.api.routes import ENDPOINTS as ROUTES
from stage0.api.state import ServerState
from stage0.errors import LoglineError
from stage0.gov import apikeys
from stage0.gov.routes_gate import route_decision

MAX_BODY = 1024 * 1024
CONSOLE = Path(__file__).parent / "console"


def _request_id(request: Request) -> str:
    """The client's X-Request-ID if it is a UUID, else a new one. It is the trace id of
    whatever the request appends, and trace ids are UUIDs wherever the API takes them."""
    given = request.headers.get("x-request-id", "")
    return given.lower() if UUID.fullmatch(given) else str(uuid.uuid4())


async def _read_body(request: Request, timeout_s: float) -> bytes:
    """The body, at most MAX_BODY bytes, sent within timeout_s (a client trickling it is
    answered 408 and the connection closed, not waited for)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError.of("BODY_TOO_LARGE", f"the body limit is {MAX_BODY} bytes")
    chunks, size = [], 0
    with anyio.move_on_after(timeout_s) as late:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError.of("BODY_TOO_LARGE", f"the body limit is {MAX_BODY} bytes")
            chunks.append(chunk)
    if late.cancelled_caught:
        raise ApiError.of("BODY_TIMEOUT", f"the body took longer than {timeout_s:g}s to "
                          "arrive", {"Connection": "close"})
    return b"".join(chunks)


def _parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    from stage0.ledger.rows import parse_line

    try:
        data = parse_line(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError.of("BAD_JSON", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError.of("BAD_JSON", "the body nests too deeply") from None
    if data is None:
        raise ApiError.of("BAD_JSON", "a JSON body is required")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError.of("BAD_FIELD", f"{where}: {first['msg']}") from None


def _guard(endpoint: Endpoint, state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        request_id = _request_id(request)
        request.state.request_id = request_id
        started = time.perf_counter()
        principal = None
        response: Response
        try:
            principal = await _authenticate(endpoint, state, request)
            body = None
            if endpoint.body is not None:
                kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind != "application/json":
                    raise ApiError.of("UNSUPPORTED_MEDIA_TYPE",
                                      "send the body as application/json")
                body = _parse_body(endpoint.body, await _read_body(request,
                                                                   state.edge.body_timeout_s))
            call = Call(request, state, principal, body, request_id)
            if endpoint.stream:
                response = await endpoint.handler(call)
            else:
                result = await asyncio.wait_for(endpoint.handler(call),
                                                state.edge.request_timeout_s)
                response = _respond(endpoint, result)
            if principal is not None and hasattr(request.state, "rate"):
                response.headers.update(request.state.rate.headers())
        except (ApiError, LoglineError) as exc:
            err = exc if isinstance(exc, ApiError) else ApiError.from_ledger(exc)
            response = error_response(request, err.status, err.code, err.message, err.headers)
            if err.status in (401, 403, 429) and not err.audited:
                # A role or rate-limit denial knows who asked: audit it as them. One without
                # a valid key is only counted (no span per anonymous request).
                who = principal or getattr(request.state, "principal", None)
                if who is None:
                    state.count_denial(err.code, endpoint, request)
                else:
                    await anyio.to_thread.run_sync(state.audit_denial, err.code, endpoint,
                                                   who, request, request_id)
        except TimeoutError:
            response = error_response(request, 504, "REQUEST_TIMEOUT", "the request took "
                                      f"longer than {state.edge.request_timeout_s:g}s")
        response.headers["X-Request-ID"] = request_id
        state.metrics.observe(endpoint, response.status_code, time.perf_counter() - started)
        return response

    return dispatch


def _gate(endpoint: Endpoint, state: ServerState, principal: apikeys.Principal | None) -> bool:
    """Every route is an action of the api contract: the gate decides who may call it.
    Denials are recorded by the dispatcher; True when the profile wants allowances recorded
    too (`record: all`)."""
    decision = route_decision(state.platform, endpoint.action, principal)
    if decision.outcome != "ALLOW":  # whatever the reason, a route the gate refuses is a 403
        raise ApiError(403, decision.reason, decision.message)
    assert state.platform is not None
    return state.platform.actions[decision.action].record == "all"


async def _authenticate(endpoint: Endpoint, state: ServerState,
                        request: Request) -> apikeys.Principal | None:
    if endpoint.public:
        _gate(endpoint, state, None)
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError.of("AUTH_REQUIRED", "send Authorization: Bearer <api key>",
                          {"WWW-Authenticate": "Bearer"})
    principal = await anyio.to_thread.run_sync(state.authenticate, token.strip())
    if principal is None:
        raise ApiError.of("AUTH_INVALID", "unknown, revoked or malformed API key",
                          {"WWW-Authenticate": "Bearer"})
    request.state.principal, request.state.token = principal, token.strip()
    record = _gate(endpoint, state, principal)
    decision = state.limiter.take(principal.key_id, endpoint.limit)
    request.state.rate = decision
    if not decision.allowed:
        raise ApiError.of("RATE_LIMITED", f"too many {endpoint.limit} requests; retry in "
                          f"{decision.retry_after_s}s", decision.headers())
    if record:
        await anyio.to_thread.run_sync(state.record_allowance, endpoint, principal,
                                       request.state.request_id)
    return principal


def _respond(endpoint: Endpoint, result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    return JSONResponse(result, status_code=endpoint.status)


def build(state: ServerState, endpoints: list[Endpoint]) -> Starlette:
    from stage0.api.openapi import document

    spec = document(endpoints)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def console(request: Request) -> Response:
        return FileResponse(CONSOLE / "index.html")

    routes: list[BaseRoute] = [Route(e.path, _guard(e, state), methods=[e.method])
                               for e in endpoints]
    routes += [Route("/openapi.json", openapi), Route("/", console)]
    if (CONSOLE / "static").is_dir():
        from starlette.routing import Mount
        from starlette.staticfiles import StaticFiles

        routes.append(Mount("/static", StaticFiles(directory=CONSOLE / "static")))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        request.state.request_id = _request_id(request)
        return error_response(request, 404, "NOT_FOUND", "no such route")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        request.state.request_id = _request_id(request)
        return error_response(request, 405, "METHOD_NOT_ALLOWED", "method not allowed here")

    async def crashed(request: Request, exc: Exception) -> Response:
        request.state.request_id = getattr(request.state, "request_id", _request_id(request))
        if type(exc).__name__ == "SendTimeoutError":  # a stalled SSE client, dropped on purpose
            state.log("sse_client_dropped", request_id=request.state.request_id)
            return Response(status_code=204)
        state.log("request_crashed", error=f"{type(exc).__name__}: {exc}"[:500],
                  request_id=request.state.request_id)
        return error_response(request, 500, "INTERNAL", "internal error (logged with the "
                              "request id)")

    return _App(routes=routes, lifespan=lifespan,
                exception_handlers={404: not_found, 405: not_allowed, 500: crashed})


class _App(Starlette):
    """Starlette with the security headers outside everything else, errors included."""

    def build_middleware_stack(self) -> Any:
        from stage0.api.headers import SecurityHeaders

        return SecurityHeaders(super().build_middleware_stack())


def endpoints() -> list[Endpoint]:
    """Every route the server has (the api contract holds one profile per route)."""
    return [*ROUTES, *GOVERNED, *OPERATIONS, *PROVIDERS, *PROMPTS, *GATEWAY, *MEMORY]


def create_app(state: ServerState | None = None) -> Starlette:
    return build(state or ServerState.from_env(), endpoints())


def app_factory() -> Starlette:
    """For `uvicorn --factory stage0.api.app:app_factory`."""
    return create_app()

