"""The server's edge against slow and greedy clients: how long a client may take to send its
request head and body, how many connections it may hold open, and the uvicorn server that
enforces it.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but waits forever for a
request head that never completes, and accepts connections until the process runs out of
file descriptors: a few hundred half-open connections used to hold every descriptor and
`/healthz` stopped answering. Here:

- every connection (the `Guarded` protocol, a thin subclass of uvicorn's HTTP protocol) must
  deliver a complete request head within `header_timeout_s` of connecting or of its previous
  response, or it is closed;
- the server holds at most `connection_cap()` connections, kept under the process's
  descriptor limit. The listening socket (`Listener`) decides before each accept: over the
  cap, the connection that has waited longest for its request head (still sending it, or an
  idle keep-alive one) is closed to make room, so a flood of half-open connections churns
  through instead of locking out a client that sends its request at once; when every
  connection is busy with a request, the newcomer is closed instead. Closed connections'
  descriptors are released before more are accepted, so accept() never fails for want of
  one;
- bodies have their own deadline (`body_timeout_s`, in stage0/api/app.py).

In production, run behind a reverse proxy (docs/api.md): it buffers slow clients and
holds the many idle connections far more cheaply than Python can.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stage0.errors import LoglineError

#: Descriptors the server needs besides client connections: database pools and listener,
#: boot children's pipes, logs, the event loop, the listening socket.
FD_RESERVE = 64
#: Connections accepted, or closed, whose descriptors are not settled yet (the protocol is
#: not made yet, or the close has not landed): beyond this many, accepting waits a tick.
IN_FLIGHT = 64


@dataclass(frozen=True)
class EdgeConfig:
    request_timeout_s: float = 15.0  # a handler's time (504 REQUEST_TIMEOUT); not streams
    header_timeout_s: float = 10.0  # time to send a complete request head
    body_timeout_s: float = 30.0  # time to send the whole body (408 BODY_TIMEOUT)
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open connections (fewer if the descriptor limit says so)
    backlog: int = 2048  # the kernel's queue of connections not accepted yet
    max_head_bytes: int = 128 * 1024  # a request head (line and headers) larger is refused
    audit_interval_s: float = 60.0  # anonymous denials are summed into one span this often

    def connection_cap(self) -> int:
        """max_connections, lowered to fit the soft descriptor limit with room for the
        reserve and the connections in flight."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(8, min(self.max_connections, soft - FD_RESERVE - IN_FLIGHT))


class Guard:
    """The connections of one server: how many are open, accepted but not made yet, and
    closing; which wait for a request head (in the order they started waiting: the first is
    the one to close); and how many were closed, and why."""

    def __init__(self, config: EdgeConfig) -> None:
        self.cap = config.connection_cap()
        self.header_timeout_s = config.header_timeout_s
        self.open = 0  # made, not closing
        self.pending = 0  # accepted, protocol not made yet
        self.closing = 0  # closed by us, connection_lost not yet run
        self.waiting: dict[Any, None] = {}  # an ordered set of protocols
        self.closed = {"header_timeout": 0, "evicted": 0, "over_cap": 0}
        self._settling_since: float | None = None

    def settling(self) -> bool:
        """Too many descriptors in flight: accept nothing until they settle (a tick or
        two). Never for long: were a count ever to drift, accepting would not stop."""
        if self.pending + self.closing < IN_FLIGHT:
            self._settling_since = None
            return False
        now = time.monotonic()
        self._settling_since = self._settling_since or now
        if now - self._settling_since > 1.0:
            self.pending, self._settling_since = 0, None
            return False
        return True

    def admit(self) -> bool:
        """Room for one more connection, made by closing the longest waiter if need be;
        False when every connection is busy with a request."""
        if self.open + self.pending < self.cap:
            return True
        victim = next(iter(self.waiting), None)
        if victim is None:
            return False
        self.closed["evicted"] += 1
        victim.drop()
        return True


class Listener(socket.socket):
    """The listening socket: asks the guard before handing a connection to the event loop
    (asyncio calls accept() until it raises BlockingIOError)."""

    guard: Guard

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            if self.guard.settling():
                raise BlockingIOError  # asyncio tries again on its next tick
            conn, address = super().accept()  # BlockingIOError: none waiting
            if self.guard.admit():
                self.guard.pending += 1
                return conn, address
            self.guard.closed["over_cap"] += 1
            conn.close()


def listen(host: str, port: int, guard: Guard, backlog: int) -> Listener:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = Listener(family, kind, proto)
    sock.guard = guard
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(backlog)
    return sock


def guarded(base: type[asyncio.Protocol], guard: Guard) -> type[asyncio.Protocol]:
    """`base` (uvicorn's HTTP protocol) with the header deadline and the connection cap."""

    class Guarded(base):  # type: ignore[valid-type, misc]  # mypy: a base known at run time
        _timer: asyncio.TimerHandle | None = None
        _head_of: Any = None  # the request cycle whose head arrived last

        _closing = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            guard.pending = max(0, guard.pending - 1)
            guard.open += 1
            self._wait_for_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._closing:
                guard.closing -= 1
            else:
                guard.open -= 1
            self._stop_waiting()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            self._check_head()  # a pipelined request uvicorn went on to
            if self.cycle.response_complete:  # none in flight: wait for the next head
                self._wait_for_head()

        def _check_head(self) -> None:
            if self.cycle is not None and self.cycle is not self._head_of:
                self._head_of = self.cycle  # uvicorn made a request cycle: the head is in
                self._stop_waiting()

        def _wait_for_head(self) -> None:
            self._stop_waiting()
            guard.waiting[self] = None
            self._timer = self.loop.call_later(guard.header_timeout_s, self._too_slow)

        def _stop_waiting(self) -> None:
            guard.waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            if self in guard.waiting:
                guard.closed["header_timeout"] += 1
                self.drop()

        def drop(self) -> None:
            """Close now, unsent bytes and all (nothing is owed to a client that has not
            sent its request); its descriptor is released on the loop's next tick."""
            self._stop_waiting()
            if not self._closing:
                self._closing = True
                guard.open -= 1
                guard.closing += 1
                self.transport.abort()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def serve(app: Any, state: Any, host: str, port: int,
          on_listening: Callable[[], None] | None = None) -> None:
    """Run `app` under uvicorn with the edge's limits (state.edge) until stopped. The port is
    bound first: a taken one is PORT_IN_USE, and `on_listening` (what `logline up` announces)
    runs only once the socket is ours."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    config: EdgeConfig = state.edge
    guard = Guard(config)
    state.metrics.watch(guard)
    state.log("edge_limits", connection_cap=guard.cap, header_timeout_s=config.header_timeout_s,
              body_timeout_s=config.body_timeout_s)
    try:
        sock = listen(host, port, guard, config.backlog)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise LoglineError("PORT_IN_USE", f"{host}:{port} is already taken by another "
                           "process; choose another with --port", "--port") from None
    if on_listening is not None:
        on_listening()
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=5, backlog=config.backlog,
        http=guarded(AutoHTTPProtocol, guard), ws="none", timeout_keep_alive=config.keep_alive_s,
        server_header=False, h11_max_incomplete_event_size=config.max_head_bytes))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled (as uvicorn.run)
        pass
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the lifespan failed (logged)
