"""Security headers on every response the application sends: the API's JSON, its errors
(404, 405, 500 included), the SSE stream, the console and its static files.

The Content-Security-Policy is as strict as the console allows: it has no inline script or
style and loads nothing from elsewhere (stage0/api/console/), so only same-origin scripts,
styles, images and fetches are allowed, and no page may frame it (`frame-ancestors 'none'`,
and X-Frame-Options for older browsers: no clickjacking). Responses are never cached
(`no-store`: they carry one tenant's data for one key), except the console's static files,
which may be kept but are revalidated (`no-cache`). Answers uvicorn gives on its own (400 for
a malformed request) do not pass through the application.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import MutableHeaders

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC = "/static/"


class SecurityHeaders:
    """ASGI middleware, outermost (around Starlette's error handling), so that no response
    leaves without the headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = "no-cache" if scope["path"].startswith(STATIC) else "no-store"

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                headers["Cache-Control"] = cache
            await send(message)

        await self.app(scope, receive, send_with_headers)
