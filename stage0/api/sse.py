"""A minimal SSE response: our framing, one write per chunk, a send timeout per write.

A client that cannot take a write within the timeout is disconnected, and so is one that its
stream gives up on (`drop`: stage0/api/stream.py drops a client whose queue overflows); it
never slows anyone else. A client that goes away ends the generator; when the generator ends
the response ends (a chat's answer), and when it is dropped the connection is closed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anyio

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


class SseResponse:
    def __init__(self, chunks: AsyncGenerator[bytes, None], send_timeout_s: float, state: Any,
                 request_id: str) -> None:
        self.chunks, self.send_timeout_s = chunks, send_timeout_s
        self.state, self.request_id = state, request_id
        self.status_code = 200
        self.headers: dict[str, str] = {}
        self._scope: anyio.CancelScope | None = None
        self.dropped: str | None = None

    def drop(self, reason: str, **fields: Any) -> None:
        """Disconnect the client now (from any task), even in the middle of a write."""
        if self.dropped is None:
            self.dropped = reason
            self.state.log("sse_client_dropped", request_id=self.request_id, reason=reason,
                           **fields)
        if self._scope is not None:
            self._scope.cancel()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = HEADERS + [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with anyio.create_task_group() as group:
            self._scope = group.cancel_scope
            if self.dropped:
                group.cancel_scope.cancel()

            async def gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(gone)
            try:
                async for chunk in self.chunks:
                    with anyio.fail_after(self.send_timeout_s):
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                with anyio.fail_after(self.send_timeout_s):  # a stream that ends (chat)
                    await send({"type": "http.response.body", "body": b"",
                                "more_body": False})
            except TimeoutError:
                self.drop("send_timeout")
            finally:
                with anyio.CancelScope(shield=True):
                    await self.chunks.aclose()
            group.cancel_scope.cancel()
