"""A minimal SSE response: our framing, one write per batch, a send timeout per write.

A client that cannot take a write within the timeout is disconnected, and it never slows
anyone else (what waits for it is bounded by its queue: stage0/api/stream.py). A client that
goes away ends the generator; a generator that ends closes the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


class SseResponse:
    def __init__(self, chunks: AsyncIterator[bytes], send_timeout_s: float, state: Any,
                 request_id: str) -> None:
        self.chunks, self.send_timeout_s = chunks, send_timeout_s
        self.state, self.request_id = state, request_id
        self.status_code = 200
        self.headers: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = HEADERS + [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with anyio.create_task_group() as group:
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
            except TimeoutError:
                self.state.log("sse_client_dropped", request_id=self.request_id,
                               reason="send_timeout")
            finally:
                await self.chunks.aclose()  # type: ignore[attr-defined]
            group.cancel_scope.cancel()
