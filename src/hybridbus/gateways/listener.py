"""The TCP listener in front of aiohttp: clients that never finish a request cannot hold it.

Owns: accepting the server's TCP connections for an aiohttp runner
(`ListenerSite`, a `web.BaseSite`), the two limits aiohttp lacks against
slowloris — a deadline for each request's line and headers, and a cap on the
connections waiting for theirs — and raising the process's open-file limit
(`raise_nofile_limit`). Must not parse HTTP (aiohttp's `RequestHandler` does,
untouched) nor know routes; a request body has its own deadline where it is
read (`httputil.read_body`, `body_timeout`).

Theory of operation. Each accepted connection gets aiohttp's own protocol
(`runner.server()`) wrapped in a `_Guard` that forwards every callback to it.
A connection is *waiting* from when it is accepted, and again from when the
response to its request is written (keep-alive: the end of aiohttp's task for
the request), until the headers of a request are complete — which is when
aiohttp calls the runner's request handler, wrapped here by a plain function
(no coroutine frame around the handler for its whole life) to tell the guard.
While a connection waits:

- it is closed `header_timeout` seconds after it began to wait; bytes
  trickling in do not move the deadline. Only a response still leaving when
  the deadline comes (the write buffer moved since the last look) earns it
  another `header_timeout`;
- at most `max_pending_connections` connections wait: one more closes the
  oldest waiting one, so a new client is always read. The cap is held to half
  the open-file limit, so waiting connections alone cannot exhaust it.

A connection being served — a request in its handler, a WebSocket, an SSE
stream — is neither timed nor counted here. Closing is aiohttp's own
`RequestHandler.force_close`, as its keep-alive timeout does.

TLS (`tls`, the server's `ServerTls`: `server/tls.py`). The site accepts
plain TCP and the guard upgrades each connection itself (`loop.start_tls`)
with the context `tls.context` is when it is accepted — so a reloaded
certificate serves the next connection, and the handshake is inside the same
wait: a client that never finishes it is closed by the same
`header_timeout` from accept, and counts against the same cap. aiohttp's
protocol sees the connection only once it is encrypted; what the TLS layer
decrypted before the guard heard the handshake ended is held and handed over
after. A failed handshake (an untrusted client certificate under mutual TLS,
a client refusing ours) is logged at DEBUG and the connection dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, cast

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hybridbus.server.config import ServerConfig
from hybridbus.server.tls import ServerTls

__all__ = ["ListenerConfig", "ListenerSite", "raise_nofile_limit"]

log = logging.getLogger("hybridbus.listener")

_REPORT_EVERY: Final = 10.0  # seconds between two warnings about closed waiting connections
# The context of the guards' done callbacks, shared: they read no context variable.
_NO_CONTEXT: Final = contextvars.Context()


class ListenerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where to listen and how long a client may take. Durations are seconds."""

    host: str = "127.0.0.1"
    port: int = 8080
    reuse_port: bool = False
    header_timeout: float = 10.0
    max_pending_connections: int = 1024
    backlog: int = 1024  # the kernel's queue of connections not yet accepted

    @classmethod
    def of(cls, config: ServerConfig) -> ListenerConfig:
        """The listener settings of a server configuration."""
        return cls(
            host=config.host,
            port=config.port,
            reuse_port=config.reuse_port,
            header_timeout=config.header_timeout,
            max_pending_connections=config.max_pending_connections,
        )


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise this process's soft open-file limit to its hard limit: (soft before, soft, hard).

    `resource.RLIM_INFINITY` stands for no limit; where the limit cannot be
    raised it is left as it was (-1 for all three on Windows, which has none).
    """
    if sys.platform == "win32":  # pragma: no cover - no open-file limit to raise
        return (-1, -1, -1)
    import resource

    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before != hard:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return before, soft, hard


def _nofile_soft() -> int | None:
    if sys.platform == "win32":  # pragma: no cover
        return None
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class _Guard(asyncio.Protocol):
    """One connection: aiohttp's protocol for it, and whether and since when it waits."""

    __slots__ = ("_early", "_handshake", "_site", "_timer", "_transport", "_unsent", "handler")

    def __init__(self, handler: RequestHandler, site: ListenerSite) -> None:
        self.handler = handler
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unsent = 0
        # TLS: the handshake (`start_tls`), and what was decrypted before it ended (None: after).
        self._handshake: Coroutine[Any, Any, Any] | None = None
        self._early: list[bytes | None] | None = None

    # -- the protocol, forwarded --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        tls = self._site.tls
        if tls is None:
            self.handler.connection_made(transport)
            self._site._accepted(self)
            return
        self._transport.pause_reading()  # (asyncio honours it; uvloop reads all the same)
        self._early = []
        self._site._accepted(self)  # the deadline runs from accept: the handshake is in it
        self._secure(self._transport, tls.context)  # the newest certificate (reloads)

    def _secure(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Put the TLS layer on the accepted connection now; hand it to aiohttp once secure.

        Why by hand. The TLS layer must be the raw transport's protocol before
        the first byte is read: a byte read earlier reaches this guard as
        plain data, and a ClientHello taken for the start of an HTTP request
        is a handshake lost. uvloop starts reading as soon as `connection_made`
        returns, whether `pause_reading` was called in it or not, so a task
        running `loop.start_tls` — its first step one loop turn later — could
        come too late. Here the coroutine is driven as a task would drive it,
        but its first step runs now, inside `connection_made`.

        What it depends on, in `start_tls` of both asyncio
        (`BaseEventLoop.start_tls`) and uvloop (`Loop.start_tls`):

        - everything that must come before reading happens synchronously,
          before its one `await`: it makes the `SSLProtocol`, sets it as the
          raw transport's protocol (every byte read from then on goes to the
          TLS layer), and schedules the layer's `connection_made` and the
          transport's `resume_reading` with `call_soon`;
        - that `await` is on the handshake's waiter, a future of this loop, so
          `send(None)` yields that future; resuming with `send(None)` once it
          is done (`_step`) is what a task does. The coroutine's return value,
          the TLS transport, comes as `StopIteration.value`; a failed
          handshake (an alert, a bad certificate, `ssl_handshake_timeout`)
          raises out of `send`;
        - nothing in it needs a current task (no `asyncio.current_task`, no
          `asyncio.timeout`): it runs with none;
        - a connection lost during the handshake (the guard's `close` aborts
          it) ends it with an error or with no transport: dropped either way.

        tests/gateways/test_tls.py checks it under both loops: every test
        with `running_server` under asyncio, and `test_serve_dev_tls` under
        uvloop (`hybridbus serve`: 20 handshakes sending the ClientHello at
        once).
        """
        opening = asyncio.get_running_loop().start_tls(
            raw,
            self,
            context,
            server_side=True,
            # A backstop: the guard's deadline (header_timeout) comes first.
            ssl_handshake_timeout=2 * self._site._config.header_timeout + 1,
        )
        self._handshake = opening
        self._step(raw, opening)

    def _step(self, raw: asyncio.Transport, opening: Coroutine[Any, Any, Any]) -> None:
        try:
            waiting = opening.send(None)
        except StopIteration as done:
            self._handshake = None
            self._secured(raw, done.value)
            return
        except (OSError, TimeoutError, asyncio.CancelledError) as exc:
            self._handshake = None
            log.debug("tls handshake failed: %r", exc)
            self._dropped(raw)
            return
        if not isinstance(waiting, asyncio.Future):  # pragma: no cover - not start_tls's way
            opening.close()
            self._handshake = None
            self._dropped(raw)
            return
        waiting.add_done_callback(lambda _: self._step(raw, opening))

    def _secured(self, raw: asyncio.Transport, secure: asyncio.Transport | None) -> None:
        if secure is None or secure.is_closing():  # pragma: no cover - closed meanwhile
            self._dropped(raw)
            return
        self._transport = secure
        self.handler.connection_made(secure)
        early, self._early = self._early, None
        for data in early or ():
            if data is None:
                self.handler.eof_received()
            else:
                self.handler.data_received(data)

    def _dropped(self, raw: asyncio.Transport) -> None:
        """The handshake failed: close the connection aiohttp never saw."""
        raw.abort()
        self._early = None
        self._transport = None
        self._site._lost(self)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # decrypted before the handshake's end reached us
            self._early.append(data)
            return
        self.handler.data_received(data)

    def eof_received(self) -> None:
        if self._early is not None:
            self._early.append(None)
            return
        self.handler.eof_received()  # None: the transport closes its side, as aiohttp's does

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._site._lost(self)
        self._transport = None
        self.handler.connection_lost(exc)

    # -- waiting for a request --

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def wait(self, timeout: float) -> None:
        """Start waiting for the headers of a request: the deadline is `timeout` from now."""
        self.stop_waiting()
        self._unsent = 0
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)

    def served(self, _task: object) -> None:
        """The request's task ended: its response is written (or the connection lost)."""
        self._site._done(self)

    def stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, timeout: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        unsent = transport.get_write_buffer_size()
        if unsent and unsent != self._unsent:  # the last response is still leaving
            self._unsent = unsent
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)
            return
        self._site._timed_out(self)

    def close(self) -> None:
        """Close the connection now, whatever it still had to send."""
        self.stop_waiting()
        transport = self._transport
        if self._handshake is None:  # (aiohttp has not seen a connection still in its handshake)
            self.handler.force_close()
        if transport is not None:
            transport.abort()

    @property
    def handshaking(self) -> bool:
        return self._handshake is not None


class ListenerSite(web.BaseSite):
    """A TCP site for an `AppRunner` that times and caps connections waiting for a request.

    Use it where `web.TCPSite` would be: `await ListenerSite(runner, config).start()`;
    with `tls` it serves HTTPS and WSS, each connection with the context
    `tls.context` is when it is accepted (module docstring, "TLS").
    """

    __slots__ = ("_config", "_guards", "_last_report", "_max_pending", "_waiting", "closed", "tls")

    def __init__(
        self, runner: web.BaseRunner, config: ListenerConfig, *, tls: ServerTls | None = None
    ) -> None:
        super().__init__(runner, backlog=config.backlog)  # (its ssl_context: none, TLS is ours)
        self.tls = tls
        self._config = config
        self._max_pending = config.max_pending_connections
        # The connections waiting for a request's headers, the one waiting longest first.
        self._waiting: OrderedDict[_Guard, None] = OrderedDict()
        self._guards: dict[RequestHandler, _Guard] = {}
        self._last_report = float("-inf")
        # Connections this site closed, by why: "timeout" and "evicted" (for tests, reports).
        self.closed: dict[str, int] = {"timeout": 0, "evicted": 0}

    @property
    def name(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self._config.host or '0.0.0.0'}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the chosen one after `start` with port 0)."""
        if self._server is not None:
            sockets = getattr(self._server, "sockets", None) or ()
            for sock in sockets:
                return int(sock.getsockname()[1])
        return self._config.port

    @property
    def pending(self) -> int:
        """Connections waiting for their request headers now."""
        return len(self._waiting)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        soft = _nofile_soft()
        if soft is not None and self._max_pending > soft // 2:
            self._max_pending = max(1, soft // 2)
            log.warning(
                "max_pending_connections lowered to half the open-file limit",
                extra={"max_pending_connections": self._max_pending, "nofile_soft": soft},
            )
        inner = server.request_handler

        def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            # Not a coroutine: a frame awaiting `inner` would live as long as
            # the handler (a WebSocket's whole life). The request runs in a
            # task of its own (aiohttp's `_handle_request`, until the
            # response is written); its end re-arms the guard.
            guard = self._guards.get(request.protocol)
            task = asyncio.current_task()
            if guard is not None and task is not None:  # else a connection of another site
                self._serving(guard)
                task.add_done_callback(guard.served, context=_NO_CONTEXT)
            return inner(request)

        server.request_handler = handle

        def protocol() -> asyncio.Protocol:
            handler = server()
            guard = _Guard(handler, self)
            self._guards[handler] = guard
            return guard

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol,
            self._config.host,
            self._config.port,
            backlog=self._backlog,
            reuse_port=self._config.reuse_port or None,
        )

    async def stop(self) -> None:
        await super().stop()
        for guard in list(self._guards.values()):  # aiohttp's shutdown does not know them
            if guard.handshaking:
                guard.close()

    # -- the guards tell the site --

    def _accepted(self, guard: _Guard) -> None:
        self._wait(guard)

    def _serving(self, guard: _Guard) -> None:
        guard.stop_waiting()
        self._waiting.pop(guard, None)

    def _done(self, guard: _Guard) -> None:
        if guard.connected:
            self._wait(guard)

    def _lost(self, guard: _Guard) -> None:
        guard.stop_waiting()
        self._waiting.pop(guard, None)
        self._guards.pop(guard.handler, None)

    def _timed_out(self, guard: _Guard) -> None:
        self._waiting.pop(guard, None)
        self.closed["timeout"] += 1
        log.debug("closed a connection: no request headers in time")
        guard.close()

    def _wait(self, guard: _Guard) -> None:
        guard.wait(self._config.header_timeout)
        self._waiting[guard] = None
        self._waiting.move_to_end(guard)
        evicted = 0
        while len(self._waiting) > self._max_pending:
            oldest, _ = self._waiting.popitem(last=False)
            oldest.close()
            evicted += 1
        if evicted:
            self.closed["evicted"] += evicted
            self._report()

    def _report(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            log.warning(
                "closing the oldest connections waiting for request headers",
                extra={
                    "max_pending_connections": self._max_pending,
                    "evicted": self.closed["evicted"],
                },
            )
