"""Inbound webhook endpoints: the registry, where they are stored, and their admin API.

Owns: every endpoint of the server by `<tenant>/<name>` — those of the
settings file (`[[webhooks]]`, fixed: the API shows them but does not change
them) and those made over the API, stored in the engine's group store under
the reserved name `$webhooks/<tenant>` (one entry per endpoint, written
through `Engine.write_groups`, durable when the API answers, read at start
from `Engine.groups` and again when another node announces a change:
`hub.changes`) — each compiled once (`core.webhook_routes.Route`) with
its request-rate bucket; and the routes

    GET    /v1/webhooks/endpoints            the endpoints the caller may manage
    GET    /v1/webhooks/endpoints/{name}     one (manage)
    PUT    /v1/webhooks/endpoints/{name}     create (201) or replace (200) (manage)
    DELETE /v1/webhooks/endpoints/{name}     delete (manage) → 204

Must not verify or route requests (`gateways.webhooks` does) nor decide
permissions (`hub.guard.Guard.check` does).

Names and permission. `{name}` is the endpoint's name in the caller's
tenant; an admin names it `<tenant>/<name>` (`acme%2Fgithub`). Every route
needs `manage` on the pattern the endpoint publishes to: its topic template
up to the segment of its first field, then `#` (`github/{type}` →
`github/#`; `{app}/{type}` → `#`, the whole tenant); a replacement needs it
on the old pattern and the new one. An endpoint the caller may not manage
answers 404 as a missing one does (1132).

Secrets. A PUT gives every secret (rotation: give the old and the new one,
later only the new one); no answer ever holds one: listings show each key
as its kind and a fingerprint (`whsec:1a2b3c4d`). Stored endpoints are in
the data directory as given: protect it as you protect the settings file.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from hybridbus.core.ratelimit import TokenBucket
from hybridbus.core.webhook_routes import Endpoint, Route
from hybridbus.engine.base import Engine, GroupWrite, StoredGroup
from hybridbus.errors import Forbidden, InvalidInput, UnknownEndpoint
from hybridbus.gateways.httputil import (
    BadParameter,
    guarded,
    json_response,
    read_body,
    tenant_and_name,
)
from hybridbus.hub.changes import Changes, named
from hybridbus.hub.guard import Guard, Principal

__all__ = ["REGISTRY_PREFIX", "Registered", "WebhookAdmin", "WebhookEndpoints"]

log = logging.getLogger("hybridbus.webhooks")

REGISTRY_PREFIX: Final = "$webhooks/"  # engine/base.py: `$` names are registries, not groups
_STATE: Final = b"webhooks 1"  # the registry's state in the group store (its format)
_MAX_BODY: Final = 256 * 1024
_MAX_ENDPOINTS: Final = 1000  # per tenant, made over the API

Origin = Literal["config", "api"]
PrincipalOf = Callable[[web.Request], Awaitable[Principal]]


class Registered:
    """An endpoint as the server runs it: compiled, where it came from, its rate bucket."""

    __slots__ = ("bucket", "endpoint", "origin", "route")

    def __init__(self, endpoint: Endpoint, origin: Origin) -> None:
        self.endpoint = endpoint
        self.origin: Origin = origin
        self.route = Route(endpoint)
        self.bucket = (
            TokenBucket(endpoint.rate, endpoint.burst or endpoint.rate) if endpoint.rate else None
        )

    @property
    def pattern(self) -> str:
        """The tenant-relative pattern its topics fall under (what `manage` is checked on)."""
        return self.route.pattern


class WebhookEndpoints:
    """Every endpoint, from the settings and the engine (see the module docstring)."""

    def __init__(
        self, engine: Engine, configured: Sequence[Endpoint] = (), changes: Changes | None = None
    ) -> None:
        self.engine = engine
        self._changes = changes
        if changes is not None:
            changes.on(REGISTRY_PREFIX, self.reload)
        self._endpoints: dict[str, Registered] = {}
        for endpoint in configured:
            if endpoint.full_name in self._endpoints:
                raise InvalidInput(f"webhook endpoint {endpoint.full_name!r} is set twice")
            self._endpoints[endpoint.full_name] = Registered(endpoint, "config")

    async def start(self) -> None:
        """Load the endpoints stored by the API (a configured one of the same name wins)."""
        for stored in await self.engine.groups():
            if stored.group.startswith(REGISTRY_PREFIX):
                self._load(stored)

    async def reload(self, name: str) -> None:
        """Load the store `name` (or every one under it) again: another node changed it."""
        stored = [found for found in await self.engine.groups() if named(found.group, name)]
        tenant = name[len(REGISTRY_PREFIX) :]
        kept = {
            key: found
            for key, found in self._endpoints.items()
            if found.origin == "api" and (not tenant or found.endpoint.tenant == tenant)
        }
        for key in kept:
            del self._endpoints[key]
        for found in stored:
            self._load(found, kept)

    def _load(self, stored: StoredGroup, kept: dict[str, Registered] | None = None) -> None:
        """Register the endpoints of `stored`; one equal to its entry in `kept` stays as it was
        (its request-rate bucket with it)."""
        for name, raw in stored.entries.items():
            try:
                endpoint = msgspec.msgpack.decode(raw, type=Endpoint)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("webhook endpoint %s/%s cannot be read, skipped: %s",  # noqa: TRY400
                          stored.group, name, exc)  # fmt: skip
                continue
            key = endpoint.full_name
            found = self._endpoints.get(key)
            if found is not None and found.origin == "config":
                log.warning(
                    "webhook endpoint %s is set in the settings file and stored: the file wins", key
                )
                continue
            old = (kept or {}).get(key)
            same = old is not None and old.endpoint == endpoint
            self._endpoints[key] = old if old is not None and same else Registered(endpoint, "api")

    def get(self, tenant: str, name: str) -> Registered:
        """The endpoint `name` of `tenant`, or `UnknownEndpoint`."""
        found = self._endpoints.get(f"{tenant}/{name}")
        if found is None:
            raise UnknownEndpoint(f"no webhook endpoint {name!r:.140} in tenant {tenant!r:.140}")
        return found

    def all(self, tenant: str | None = None) -> list[Registered]:
        """Every endpoint (of `tenant`), by `<tenant>/<name>`."""
        return [
            found
            for key, found in sorted(self._endpoints.items())
            if tenant is None or found.endpoint.tenant == tenant
        ]

    async def put(self, endpoint: Endpoint) -> Registered:
        """Store `endpoint` (new or replacing one made over the API); durable when it returns."""
        key = endpoint.full_name
        found = self._endpoints.get(key)
        if found is not None and found.origin == "config":
            raise Forbidden(f"webhook endpoint {key!r} is set in the settings file: edit it there")
        if found is None and len(self.all(endpoint.tenant)) >= _MAX_ENDPOINTS:
            raise InvalidInput(f"tenant {endpoint.tenant!r} has {_MAX_ENDPOINTS} endpoints already")
        registered = Registered(endpoint, "api")
        write = GroupWrite(
            group=REGISTRY_PREFIX + endpoint.tenant,
            state=_STATE,
            put=[(endpoint.name, msgspec.msgpack.encode(endpoint))],
        )
        await self.engine.write_groups([write])
        self._endpoints[key] = registered
        await self._announce(endpoint.tenant)
        return registered

    async def delete(self, tenant: str, name: str) -> None:
        """Delete the API-made endpoint `name` of `tenant`; durable when it returns."""
        found = self.get(tenant, name)
        if found.origin == "config":
            raise Forbidden(f"webhook endpoint {tenant}/{name} is set in the settings file")
        write = GroupWrite(group=REGISTRY_PREFIX + tenant, delete=[name])
        await self.engine.write_groups([write])
        self._endpoints.pop(f"{tenant}/{name}", None)
        await self._announce(tenant)

    async def _announce(self, tenant: str) -> None:
        if self._changes is not None:
            await self._changes.announce(REGISTRY_PREFIX + tenant)


def view(registered: Registered, name: str) -> dict[str, Any]:
    """What the API shows of an endpoint: everything but its secrets, and its key ids."""
    endpoint = registered.endpoint
    shown: dict[str, Any] = msgspec.to_builtins(endpoint)
    del shown["secrets"]
    shown["name"] = name
    return {
        **shown,
        "keys": registered.route.key_ids,
        "origin": registered.origin,
        "url": f"/v1/webhooks/{endpoint.tenant}/{endpoint.name}",
        "pattern": f"{endpoint.tenant}/{registered.pattern}",
    }


class WebhookAdmin:
    """The admin routes over one registry (see the module docstring)."""

    def __init__(self, endpoints: WebhookEndpoints, guard: Guard, principal: PrincipalOf) -> None:
        self._endpoints = endpoints
        self._guard = guard
        self._principal = principal

    def routes(self) -> list[web.RouteDef]:
        """The admin routes; each answers errors as problem+json."""
        one = "/v1/webhooks/endpoints/{name}"
        return [
            web.get("/v1/webhooks/endpoints", guarded(self.list), allow_head=False),
            web.get(one, guarded(self.get), allow_head=False),
            web.put(one, guarded(self.put)),
            web.delete(one, guarded(self.delete)),
        ]

    def _managed(self, principal: Principal, name: str) -> Registered:
        """The principal's endpoint `name` if it may manage it; else 404 (not disclosed)."""
        tenant, short = tenant_and_name(principal, name, "an endpoint")
        found = self._endpoints.get(tenant, short)
        if not self._guard.may(principal, "manage", found.pattern):
            raise UnknownEndpoint(f"no webhook endpoint {short!r:.140} in tenant {tenant!r:.140}")
        return found

    async def list(self, request: web.Request) -> web.Response:
        """The endpoints the caller may manage."""
        principal = await self._principal(request)
        tenant = None if principal.identity.admin else principal.tenant
        shown = [
            view(found, principal.relative(found.endpoint.full_name))
            for found in self._endpoints.all(tenant)
            if self._guard.may(principal, "manage", found.pattern)
        ]
        return json_response({"endpoints": shown})

    async def get(self, request: web.Request) -> web.Response:
        """One endpoint, without its secrets."""
        principal = await self._principal(request)
        name = request.match_info["name"]
        return json_response(view(self._managed(principal, name), name))

    async def put(self, request: web.Request) -> web.Response:
        """Create (201) or replace (200) an endpoint from the JSON body (every field but name)."""
        principal = await self._principal(request)
        name = request.match_info["name"]
        tenant, short = tenant_and_name(principal, name, "an endpoint")
        raw = await read_body(request, _MAX_BODY, 10.0)
        try:
            fields = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            raise BadParameter("the body must be a JSON object", "body") from None
        if not isinstance(fields, dict):
            raise BadParameter("the body must be a JSON object", "body")
        for given in ("name", "tenant"):
            if given in fields:
                raise BadParameter(f"{given} comes from the URL, not the body", "body")
        try:
            endpoint = msgspec.convert({**fields, "name": short, "tenant": tenant}, Endpoint)
        except msgspec.ValidationError as exc:
            raise BadParameter(f"bad endpoint: {exc}", "body") from None
        candidate = Registered(endpoint, "api")
        self._guard.check(principal, "manage", _relative(principal, tenant, candidate.pattern))
        try:
            old = self._endpoints.get(tenant, short)
        except UnknownEndpoint:
            old = None
        if old is not None:
            self._guard.check(principal, "manage", _relative(principal, tenant, old.pattern))
        stored = await self._endpoints.put(endpoint)
        response = json_response(view(stored, name), 200 if old is not None else 201)
        if old is None:
            response.headers["Location"] = request.rel_url.raw_path
        return response

    async def delete(self, request: web.Request) -> web.Response:
        """Delete an endpoint made over the API (a configured one: 403). 204."""
        principal = await self._principal(request)
        found = self._managed(principal, request.match_info["name"])
        await self._endpoints.delete(found.endpoint.tenant, found.endpoint.name)
        return web.Response(status=204)


def _relative(principal: Principal, tenant: str, pattern: str) -> str:
    """The pattern as `Guard.check` takes it from `principal` (an admin's is absolute)."""
    return f"{tenant}/{pattern}" if principal.identity.admin else pattern
