"""Inbound webhooks: `POST /v1/webhooks/{tenant}/{endpoint}` turns a signed request into an event.

Owns: the inbound route, the order of its checks, its answers, its metric
and the audit of repeated failures. Must not hold the signing rules
(`core.webhooks`), the routing rule (`core.webhook_routes`) nor the
endpoints (`gateways.webhook_endpoints`); it publishes through the bus, its
tenant's publish rate taken by the guard.

A request, in order (the first refusal answers, as problem+json; nothing
of a refused request is published):

    1. the endpoint exists                        404  1132 UNKNOWN_ENDPOINT
    2. within the endpoint's request rate         429  1121 with Retry-After
    3. the body within its size, in time          413  1004; 408 (body_timeout)
    4. a signature matches a key of the endpoint  401  1130 SIGNATURE_INVALID
       ... and its timestamp is in the window     401  1131 TIMESTAMP_OUT_OF_WINDOW
    5. the rule makes an event and a topic        400  1001 / 1002 (a field has no value)
    6. within the tenant's publish rate           429  1121
    7. appended, durable                          200  the ack: {topic, offset, …, duplicate}

The rate is taken before the body is read or verified, so a flood costs
little (forged requests count against it too: set it well above the
platform's own rate). The platform retrying a webhook sends the same id:
the bus appends it once, and the answer is 200 with `duplicate: true`.
Refusals are counted in `hybridbus_webhook_refused_total{endpoint, code}`
(`endpoint` is empty for unknown ones, so that guessed names add no
series); more than `audit_failures` failed checks (401) of one endpoint
within ten seconds append one `webhook.refused` audit event on
`$audit/<tenant>/webhook.refused` (the count, the last reason and peer
address; never the body).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
from aiohttp import web

from hybridbus.core.identity import Identity
from hybridbus.core.log import Ack
from hybridbus.core.topics import scope_topic
from hybridbus.errors import BusError, RateLimited, WebhookRefused
from hybridbus.gateways.httputil import guarded, json_response, read_body
from hybridbus.gateways.webhook_endpoints import Registered, WebhookEndpoints
from hybridbus.hub.guard import Guard, Principal
from hybridbus.server.metrics import Metrics

__all__ = ["WebhooksConfig", "WebhooksGateway"]

log = logging.getLogger("hybridbus.webhooks")

_WINDOW: Final = 10.0  # seconds over which failed checks are counted for the audit
_AUDIT_KIND: Final = "webhook.refused"


class WebhooksConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the inbound route (the endpoints carry their own limits)."""

    body_timeout: float = 30.0  # seconds to receive a request body, as every HTTP route
    audit_failures: int = 20  # failed checks of one endpoint within 10 s before an audit event


class _AckJson(msgspec.Struct, frozen=True):
    """The answer to an accepted webhook: the event's id and its ack (docs/webhooks.md)."""

    id: str
    topic: str
    offset: int
    shard: int
    position: int
    epoch: str
    duplicate: bool
    token: str


class _Failures:
    """Failed checks of one endpoint since `start`, and whether they were audited."""

    __slots__ = ("count", "reported", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.reported = False


class WebhooksGateway:
    """The inbound route over a registry of endpoints (see the module docstring)."""

    def __init__(
        self,
        endpoints: WebhookEndpoints,
        guard: Guard,
        metrics: Metrics,
        config: WebhooksConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._guard = guard
        self._bus = guard.bus
        self._config = config or WebhooksConfig()
        self._clock = clock
        self._monotonic = monotonic
        self._refused = metrics.webhook_refused
        self._published = metrics.publishes.labels(gateway="webhook")
        self._duplicates = metrics.duplicates.labels(gateway="webhook")
        self._principals: dict[str, Principal] = {}
        self._failures: dict[str, _Failures] = {}
        self._audits: set[asyncio.Task[None]] = set()
        self._handle = guarded(self._receive)

    def routes(self) -> list[web.RouteDef]:
        """The inbound route."""
        return [web.post("/v1/webhooks/{tenant}/{endpoint}", self.receive)]

    async def close(self) -> None:
        """Wait (a little) for the audit events being appended."""
        if self._audits:
            await asyncio.wait(tuple(self._audits), timeout=5.0)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        """Verify, route, append: see the module docstring."""
        tracer = self._bus.tracer
        if tracer is None:
            response = await self._handle(request)
        else:  # a `webhook in` span, continuing the sender's `traceparent` (docs/tracing.md)
            headers = request.headers
            with tracer.receiving(
                headers.get("traceparent"),
                headers.get("tracestate"),
                "webhook in",
                {"http.route": "/v1/webhooks/{tenant}/{endpoint}", "url.path": request.path},
            ) as span:
                response = await self._handle(request)
                span.end(
                    "" if response.status < 500 else f"HTTP {response.status}",
                    {"http.response.status_code": response.status},
                )
        if response.status == 401:
            # The credential is the request's signature, not a bearer token.
            response.headers.pop("WWW-Authenticate", None)
        return response

    async def _receive(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        name = request.match_info["endpoint"]
        try:
            found = self._endpoints.get(tenant, name)
        except BusError as exc:
            self._refused.labels(endpoint="", code=str(int(exc.code))).inc()
            raise
        try:
            return await self._accept(request, found)
        except BusError as exc:
            self._refused.labels(endpoint=found.endpoint.full_name, code=str(int(exc.code))).inc()
            if isinstance(exc, WebhookRefused):
                self._failed(found, exc, request.remote)
            raise

    async def _accept(self, request: web.Request, found: Registered) -> web.Response:
        endpoint = found.endpoint
        if found.bucket is not None:
            wait = found.bucket.take(self._monotonic())
            if wait:
                raise RateLimited(
                    f"over the endpoint's rate of {endpoint.rate:g} requests/s; "
                    f"retry in {wait:.3f} s",
                    wait,
                )
        body = await read_body(request, endpoint.max_body_size, self._config.body_timeout)
        route = found.route
        verified = route.verify(request.headers, body, self._clock())
        relative, event = route.event(request.headers, body, verified)
        topic = scope_topic(endpoint.tenant, relative)  # never outside the endpoint's tenant
        self._guard.take(self._principal(found))  # the tenant's publish rate
        ack: Ack = await self._bus.publish(topic, event)
        self._published.inc()
        if ack.duplicate:
            self._duplicates.inc()
        answer = _AckJson(
            event.id,
            ack.topic,
            ack.offset,
            ack.shard,
            ack.position,
            ack.epoch,
            ack.duplicate,
            str(ack.token),
        )
        return json_response(answer)

    def _principal(self, found: Registered) -> Principal:
        """Who publishes for the endpoint: its tenant, no rules of its own, no bucket."""
        key = found.endpoint.full_name
        principal = self._principals.get(key)
        if principal is None or principal.tenant != found.endpoint.tenant:
            identity = Identity(tenant=found.endpoint.tenant, user=f"webhook:{found.endpoint.name}")
            principal = self._principals[key] = Principal(identity, None, False)
        return principal

    def _failed(self, found: Registered, error: WebhookRefused, remote: str | None) -> None:
        """Count a failed check; past the threshold in a window, audit it once."""
        key = found.endpoint.full_name
        now = self._monotonic()
        window = self._failures.get(key)
        if window is None or now - window.start >= _WINDOW:
            if len(self._failures) > 10_000:
                self._failures.clear()
            window = self._failures[key] = _Failures(now)
        window.count += 1
        if window.count > self._config.audit_failures and not window.reported:
            window.reported = True
            data: dict[str, Any] = {
                "endpoint": found.endpoint.name,
                "count": window.count,
                "seconds": _WINDOW,
                "last": {"code": int(error.code), "reason": str(error), "remote": remote},
            }
            task = asyncio.get_running_loop().create_task(self._audit(found.endpoint.tenant, data))
            self._audits.add(task)
            task.add_done_callback(self._audits.discard)

    async def _audit(self, tenant: str, data: dict[str, Any]) -> None:
        try:
            await self._guard.audit(tenant, _AUDIT_KIND, data)
        except BusError as exc:  # best effort: a failed audit event must not fail anything
            log.warning("dropped the %s audit event of tenant %r: %s", _AUDIT_KIND, tenant, exc)
