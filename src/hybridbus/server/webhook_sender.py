"""The sender of one outbound webhook subscription: a group member that POSTs each delivery.

Owns: `Sender` (one member of the subscription's group: fetching its
deliveries, pacing them by the subscription's rate, POSTing each with the
aiohttp client, settling it by the answer and recording the attempt) and
`GuardedResolver` (the client's resolver: it connects only to addresses the
SSRF rules allow, checked on what the name resolves to at send time, so a
name that re-resolves to a private address is refused — DNS rebinding).
Must not keep retry state: waits, attempts, dead letters and order are the
group's (`hub.group`); the registry (`server.webhooks_out`) owns the
senders, the HTTP session and what is stored.

Settling: a 2xx answer within the timeout acks the delivery; `410 Gone`
nacks it (it stays pending, not lost) and asks the registry to disable the
subscription; any other answer, a timeout, a connection failure or a refused
address nacks it with the reason (`HTTP 503`, `timeout (15 s)`, ...): the
group brings it back after its redelivery wait, and buries it after
`max_deliveries`. Redirects are not followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from hybridbus.core.ratelimit import TokenBucket
from hybridbus.core.tracecontext import trace_headers
from hybridbus.core.webhooks import SigningKey
from hybridbus.core.webhooks_out import (
    BODY_KEPT,
    Attempt,
    AttemptLog,
    Outcome,
    Subscription,
    address_refusal,
    build_request,
    check_url,
    outcome,
)
from hybridbus.errors import BusClosed, DeliveryGone, EngineError, InvalidSettings, NotCoordinator
from hybridbus.hub.group import Group
from hybridbus.hub.member import GroupDelivery, Member
from hybridbus.hub.tracing import Tracer

__all__ = ["GuardedResolver", "Lookup", "OnAttempt", "RefusedAddress", "Sender"]

log = logging.getLogger("hybridbus.webhooks")

# host, port -> the addresses it resolves to (tests inject a stub; no traffic).
Lookup = Callable[[str, int], Awaitable[list[str]]]
# Told of every attempt: the subscription (`tenant/name`), its outcome, seconds to the answer.
OnAttempt = Callable[[str, str, float], None]
MEMBER: Final = "sender"  # the member's name in the subscription's group


class RefusedAddress(OSError):
    """A host resolved only to addresses the SSRF rules refuse."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses a sender may connect to."""

    def __init__(self, allow_private: bool, lookup: Lookup | None = None) -> None:
        self.allow_private = allow_private
        self._lookup = lookup
        self._inner: ThreadedResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host` that are allowed; `RefusedAddress` if none is."""
        if self._lookup is not None:
            found = [
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
                for address in await self._lookup(host, port)
            ]
        else:
            if self._inner is None:
                self._inner = ThreadedResolver()
            found = await self._inner.resolve(host, port, family)
        if self.allow_private:
            return found
        allowed, refused = [], []
        for result in found:
            why = address_refusal(result["host"])
            if why is None:
                allowed.append(result)
            else:
                refused.append(f"{result['host']} ({why})")
        if not allowed:
            raise RefusedAddress(
                f"{host} resolves only to refused addresses: {', '.join(refused) or 'none'} "
                "(set webhook_allow_private to allow private targets)"
            )
        return allowed

    async def close(self) -> None:
        """Release the inner resolver."""
        if self._inner is not None:
            await self._inner.close()


class Sender:
    """POSTs the deliveries of one subscription's group (see the module docstring)."""

    def __init__(
        self,
        sub: Subscription,
        keys: list[SigningKey],
        group: Group,
        session: aiohttp.ClientSession,
        attempts: AttemptLog,
        *,
        allow_private: bool,
        on_gone: Callable[[Subscription], None],
        on_attempt: OnAttempt | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.sub = sub
        self._tracer = tracer  # a `webhook out` span per sampled delivery (docs/tracing.md)
        self._on_attempt = on_attempt
        self._keys = keys
        self._group = group
        self._session = session
        self._attempts = attempts
        self._allow_private = allow_private
        self._on_gone = on_gone
        burst = sub.burst or max(1.0, sub.rate)
        self._bucket = TokenBucket(sub.rate, burst) if sub.rate else None
        self._member: Member | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(total=sub.timeout)

    def start(self) -> None:
        """Join the group and start fetching."""
        self._member = self._group.join(MEMBER)
        self._loop_task = asyncio.get_running_loop().create_task(
            self._run(), name=f"webhook {self.sub.full_name} sender"
        )

    def stop(self) -> None:
        """Stop fetching and leave the group; deliveries in flight finish (`drained`)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._member is not None:
            self._member.close()  # deliveries fetched and not started go back at once

    async def drained(self, cancel: bool = False) -> None:
        """Wait for the deliveries in flight (or cancel them: their leases run out)."""
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        if cancel:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def busy(self) -> bool:
        """Deliveries still in flight."""
        return bool(self._tasks)

    async def _run(self) -> None:
        member = self._member
        assert member is not None
        loop = asyncio.get_running_loop()
        while not member.closed:
            try:
                batch = await member.fetch(self.sub.concurrency)
            except (BusClosed, NotCoordinator):  # another node runs it now (webhooks_out)
                return
            for delivery in batch:
                await self._pace()
                task = loop.create_task(self._deliver(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _pace(self) -> None:
        bucket = self._bucket
        if bucket is None:
            return
        wait = bucket.take(time.monotonic())
        while wait > 0:  # a bucket refills with time: nothing to wait for but the clock
            await asyncio.sleep(wait)
            wait = bucket.take(time.monotonic())

    async def _deliver(self, d: GroupDelivery) -> None:
        sub = self.sub
        event = d.event
        relative = d.topic.partition("/")[2]
        started = time.monotonic()
        status, body, error = 0, b"", ""
        kind: Outcome
        tracer = self._tracer
        traced = None
        if tracer is not None:
            attributes = {"hybridbus.webhook": sub.full_name, "http.request.method": "POST"}
            traced = tracer.sending(event, "webhook out", attributes)
        try:
            check_url(sub.url, allow_private=self._allow_private)  # literal addresses skip DNS
            headers, payload = build_request(
                sub.mode, self._keys, event, relative, d.dedupe_key, time.time()
            )
            # W3C Trace Context: the span's, else the event's own `traceparent` extension.
            if traced is not None:
                headers["traceparent"] = traced.traceparent
                if traced.tracestate:
                    headers["tracestate"] = traced.tracestate
            elif event.extensions:
                headers.update(trace_headers(event.extensions))
            async with self._session.post(
                sub.url,
                data=payload,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.content.read(BODY_KEPT)
            kind = outcome(status)
            if kind != "delivered":
                error = f"HTTP {status}"
        except InvalidSettings as exc:
            kind, error = "refused", str(exc)
        except TimeoutError:
            kind, error = "timeout", f"timeout ({sub.timeout:g} s)"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                kind, error = "refused", str(exc.os_error)
            else:
                kind, error = "error", f"connection: {exc.os_error or exc}"
        except (aiohttp.ClientError, OSError) as exc:
            kind, error = "error", f"connection: {type(exc).__name__}: {exc}"
        latency = time.monotonic() - started
        if traced is not None:
            traced.end(error, {"http.response.status_code": status, "hybridbus.outcome": kind})
        self._attempts.add(
            Attempt(
                time=time.time(),
                event_id=event.id,
                topic=relative,
                attempt=d.attempt,
                outcome=kind,
                status=status,
                latency=round(latency, 6),
                body=body.decode(errors="replace"),
                error=error[:1000],
            )
        )
        if self._on_attempt is not None:
            self._on_attempt(sub.full_name, kind, latency)
        try:
            if kind == "delivered":
                await d.ack()
            elif kind == "gone":
                await d.nack(error="HTTP 410 Gone: the subscription is disabled")
                self._on_gone(sub)
            else:
                await d.nack(error=error)
        except (DeliveryGone, BusClosed):
            pass  # handed on since (a seek, a lease that ran out) or shutting down
        except EngineError as exc:
            log.warning("webhook %s: could not settle a delivery (%s)", sub.full_name, exc)
