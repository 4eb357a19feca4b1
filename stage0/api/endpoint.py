"""What a route is (Endpoint) and what its handler gets (Call): the vocabulary shared by the
route modules (routes, governed, operations) and the dispatcher in app.py, which imports them
all (so no route module imports app)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio
from pydantic import BaseModel
from starlette.requests import Request

from stage0.api.errors import ApiError
from stage0.api.state import ServerState
from stage0.gov import apikeys

T = TypeVar("T")

#: Ids the API accepts (paths, ?trace_id=, X-Request-ID): the 8-4-4-4-12 form, any case.
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass
class Endpoint:
    """One route: what it does, who may call it, and what it takes and returns (the OpenAPI
    document is generated from these)."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    action: str  # api.NAME: its profile in ROW/contracts/api@1.0.0.yaml says who may call it
    limit: str = "read"
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: dict[str, tuple[str, str]] = field(default_factory=dict)
    stream: bool = False
    #: What a stream carries (the OpenAPI description of its text/event-stream answer).
    stream_about: str = "text/event-stream of `span` events (id = position)"
    public: bool = False
    text: bool = False  # the response is text, not JSON
    media: tuple[str, ...] = ("text/plain",)  # its content types when text


@dataclass
class Call:
    """What a handler gets."""

    request: Request
    state: ServerState
    principal: apikeys.Principal | None
    body: Any
    request_id: str

    @property
    def token(self) -> str:
        """The bearer token the caller authenticated with (a stream re-checks it)."""
        return getattr(self.request.state, "token", "")

    def query(self, name: str, default: str | None = None) -> str | None:
        value = self.request.query_params.get(name, default)
        if value is not None and ("\x00" in value or len(value) > 1000):
            raise ApiError.of("BAD_QUERY", f"{name} holds a NUL or is over 1000 characters")
        return value

    def uuid_query(self, name: str) -> str | None:
        """An optional id filter (?trace_id=): a UUID or 400 BAD_ID."""
        value = self.request.query_params.get(name)
        return None if value is None else parse_uuid(value, name)

    @overload
    def int_query(self, name: str, default: int, low: int, high: int) -> int: ...
    @overload
    def int_query(self, name: str, default: None, low: int, high: int) -> int | None: ...

    def int_query(self, name: str, default: int | None, low: int, high: int) -> int | None:
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError.of("BAD_QUERY", f"{name} must be an integer") from None
        if not low <= value <= high:
            raise ApiError.of("BAD_QUERY", f"{name} must be between {low} and {high}")
        return value

    async def db(self, fn: Callable[..., T], *args: Any, role: str = "app") -> T:
        """Run `fn(conn, *args)` in a thread, in one transaction as the caller."""
        return await anyio.to_thread.run_sync(
            lambda: self.state.in_transaction(role, self.principal, fn, *args))


def parse_uuid(value: str | None, name: str) -> str:
    """`value` as a lowercase UUID, else 400 BAD_ID naming `name` (never echoing value)."""
    if value is None or not UUID.fullmatch(value):
        raise ApiError.of("BAD_ID", f"{name} must be a UUID (8-4-4-4-12 hex digits)")
    return value.lower()
