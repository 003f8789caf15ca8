"""Outbound webhooks over HTTP: create, show, change, delete, enable, disable, replay, attempts.

Owns: the routes under `/v1/webhooks/outbound` (docs/webhooks.md "Outbound"),
their JSON bodies and answers, secrets on the way in (generated, kept by key
id, shown once). Must not run subscriptions (`server.webhooks_out.Outbound`
does) nor decide permissions (`hub.guard.Guard.check` does).

    GET    /v1/webhooks/outbound                    the subscriptions the caller may manage
    GET    /v1/webhooks/outbound/{name}             one, with its group's pending and lag
    PUT    /v1/webhooks/outbound/{name}             create (201) or replace (200)
    DELETE /v1/webhooks/outbound/{name}             delete it and its group → 204
    POST   /v1/webhooks/outbound/{name}/enable      start delivering (again)
    POST   /v1/webhooks/outbound/{name}/disable     stop; events wait in the group
    POST   /v1/webhooks/outbound/{name}/replay      {"position": token} or {"time": unix}
    GET    /v1/webhooks/outbound/{name}/attempts    the last attempts, newest first (?limit=N)

Names and permission. `{name}` is the subscription's name in the caller's
tenant; an admin names it `<tenant>/<name>` (`acme%2Fbilling`). Every route
needs `manage` on the subscription's pattern (a replacement: on the old one
and the new one); one the caller may not manage answers 404 as a missing one
(1401, the code of an unknown group: a subscription is a group).

Secrets. In a PUT, `secrets` lists 1 or 2 entries, each a key (`whsec_...`,
`whsk_...`), `"new"` (a fresh `whsec_` secret is made) or the id of a current
key (`whsec:1a2b3c4d`, as answers show them) to keep it. Without `secrets`,
a new subscription gets one fresh secret and a replacement keeps its keys.
Secrets made by the server are in that answer's `secrets` and never again;
no other answer holds a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

import msgspec
from aiohttp import web

from hybridbus.core.webhooks import new_secret
from hybridbus.core.webhooks_out import Subscription, group_name, signing_keys, subscription_from
from hybridbus.errors import InvalidSettings, UnknownGroup
from hybridbus.gateways.httputil import (
    BadParameter,
    guarded,
    json_response,
    query_int,
    read_body,
    tenant_and_name,
)
from hybridbus.hub.guard import Guard, Principal
from hybridbus.server.webhooks_out import Outbound, Registered

__all__ = ["WebhooksOutGateway", "view"]

PrincipalOf = Callable[[web.Request], Awaitable[Principal]]
_MAX_BODY: Final = 64 * 1024
_BODY_TIMEOUT: Final = 30.0
_NEW: Final = "new"


class _ReplayBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    position: str | None = None
    time: Annotated[float, msgspec.Meta(ge=0)] | None = None


def key_ids(sub: Subscription) -> list[str]:
    """The ids of a subscription's keys (what answers show instead of the secrets)."""
    return [key.public().id for key in signing_keys(sub.secrets)]


def view(registered: Registered, name: str) -> dict[str, Any]:
    """What the API shows of a subscription: everything but its secrets; their key ids."""
    sub = registered.sub
    shown: dict[str, Any] = msgspec.to_builtins(sub)
    del shown["secrets"]
    shown["name"] = name
    return {
        **shown,
        "keys": key_ids(sub),
        "origin": registered.origin,
        "group": group_name(sub.name),
        "disabled_reason": registered.disabled_reason,
        "attempts": registered.attempts.total,
    }


class WebhooksOutGateway:
    """The outbound webhook routes over one registry (see the module docstring)."""

    def __init__(
        self,
        outbound: Outbound,
        guard: Guard,
        principal: PrincipalOf,
        *,
        body_timeout: float = _BODY_TIMEOUT,
    ) -> None:
        self._outbound = outbound
        self._guard = guard
        self._principal = principal
        self._body_timeout = body_timeout

    def routes(self) -> list[web.RouteDef]:
        """The routes; each answers errors as problem+json."""
        one = "/v1/webhooks/outbound/{name}"
        return [
            web.get("/v1/webhooks/outbound", guarded(self.list), allow_head=False),
            web.get(one, guarded(self.get), allow_head=False),
            web.put(one, guarded(self.put)),
            web.delete(one, guarded(self.delete)),
            web.post(one + "/enable", guarded(self.enable)),
            web.post(one + "/disable", guarded(self.disable)),
            web.post(one + "/replay", guarded(self.replay)),
            web.get(one + "/attempts", guarded(self.attempts), allow_head=False),
        ]

    # -- who and which -----------------------------------------------------------------

    def _managed(self, principal: Principal, name: str) -> Registered:
        """The principal's subscription `name` if it may manage it; else 404 (not disclosed)."""
        tenant, short = tenant_and_name(principal, name, "an outbound webhook")
        found = self._outbound.get(tenant, short)
        if not self._guard.may(principal, "manage", found.sub.pattern):
            raise UnknownGroup(f"no outbound webhook {short!r:.140} in tenant {tenant!r:.140}")
        return found

    def _check(self, principal: Principal, tenant: str, pattern: str) -> None:
        relative = f"{tenant}/{pattern}" if principal.identity.admin else pattern
        self._guard.check(principal, "manage", relative)

    async def _json(self, request: web.Request) -> Any:
        raw = await read_body(request, _MAX_BODY, self._body_timeout)
        if not raw.strip():
            return {}
        try:
            return msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            raise BadParameter("the body must be a JSON object", "body") from None

    # -- routes -------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        """The subscriptions the caller may manage."""
        principal = await self._principal(request)
        tenant = None if principal.identity.admin else principal.tenant
        shown = [
            view(found, principal.relative(found.sub.full_name))
            for found in self._outbound.all(tenant)
            if self._guard.may(principal, "manage", found.sub.pattern)
        ]
        return json_response({"webhooks": shown})

    async def get(self, request: web.Request) -> web.Response:
        """One subscription, with its group's pending events, lag and dead letters."""
        principal = await self._principal(request)
        name = request.match_info["name"]
        found = self._managed(principal, name)
        info = await self._outbound.bus.groups.info(
            f"{found.sub.tenant}/{group_name(found.sub.name)}"
        )
        shown = view(found, name)
        shown.update(
            position=info.position,
            pending=info.pending,
            leased=info.leased,
            lag=info.lag,
            dead_letters=info.dead_letters,
        )
        return json_response(shown)

    async def put(self, request: web.Request) -> web.Response:
        """Create (201) or replace (200) a subscription from the JSON body (module docstring)."""
        principal = await self._principal(request)
        name = request.match_info["name"]
        tenant, short = tenant_and_name(principal, name, "an outbound webhook")
        fields = await self._json(request)
        if not isinstance(fields, dict):
            raise BadParameter("the body must be a JSON object", "body")
        for given in ("name", "tenant"):
            if given in fields:
                raise BadParameter(f"{given} comes from the URL, not the body", "body")
        try:
            old: Registered | None = self._outbound.get(tenant, short)
        except UnknownGroup:
            old = None
        if old is not None:
            self._check(principal, tenant, old.sub.pattern)
        secrets, made = _secrets(fields.get("secrets"), old)
        sub = subscription_from({**fields, "name": short, "tenant": tenant, "secrets": secrets})
        self._check(principal, tenant, sub.pattern)
        registered, created = await self._outbound.put(sub)
        shown = view(registered, name)
        if made:
            shown["secrets"] = made  # shown once, here
        response = json_response(shown, 201 if created else 200)
        if created:
            response.headers["Location"] = request.rel_url.raw_path
        return response

    async def delete(self, request: web.Request) -> web.Response:
        """Delete a subscription made over the API and its group (settings file: 403). 204."""
        principal = await self._principal(request)
        found = self._managed(principal, request.match_info["name"])
        await self._outbound.delete(found.sub.tenant, found.sub.name)
        return web.Response(status=204)

    async def _enabled(self, request: web.Request, enabled: bool) -> web.Response:
        principal = await self._principal(request)
        name = request.match_info["name"]
        found = self._managed(principal, name)
        changed = await self._outbound.set_enabled(
            found.sub.tenant, found.sub.name, enabled, reason="disabled over the API"
        )
        return json_response(view(changed, name))

    async def enable(self, request: web.Request) -> web.Response:
        """Start delivering: the events that waited go out first, in order."""
        return await self._enabled(request, True)

    async def disable(self, request: web.Request) -> web.Response:
        """Stop delivering; events wait in the group (requests in flight finish)."""
        return await self._enabled(request, False)

    async def replay(self, request: web.Request) -> web.Response:
        """Deliver again from a position token or a Unix time (the group's seek)."""
        principal = await self._principal(request)
        found = self._managed(principal, request.match_info["name"])
        try:
            body = msgspec.convert(await self._json(request), _ReplayBody)
        except msgspec.ValidationError as exc:
            raise BadParameter(f"bad replay: {exc}", "body") from None
        position = await self._outbound.replay(
            found.sub.tenant, found.sub.name, position=body.position, time=body.time
        )
        return json_response({"position": position})

    async def attempts(self, request: web.Request) -> web.Response:
        """The last delivery attempts, newest first (memory only: empty after a restart)."""
        principal = await self._principal(request)
        found = self._managed(principal, request.match_info["name"])
        limit = query_int(request, "limit", 100, 1, 100)
        return json_response(
            {"attempts": found.attempts.last(limit), "total": found.attempts.total}
        )


def _secrets(given: object, old: Registered | None) -> tuple[list[str], list[str]]:
    """(the secrets to store, those made now) from a PUT's `secrets` (module docstring)."""
    if given is None:
        if old is not None:
            return list(old.sub.secrets), []
        given = [_NEW]
    if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise InvalidSettings('secrets: a list of keys, key ids or "new"')
    current: dict[str, str] = {}
    if old is not None:
        for text, key_id in zip(old.sub.secrets, key_ids(old.sub), strict=True):
            current[key_id] = text
    out: list[str] = []
    made: list[str] = []
    for index, entry in enumerate(given):
        if entry == _NEW:
            made.append(new_secret())
            out.append(made[-1])
        elif entry in current:
            out.append(current[entry])
        elif entry.startswith(("whsec_", "whsk_")):
            out.append(entry)
        else:
            raise InvalidSettings(
                f'secrets[{index}]: a whsec_/whsk_ key, "new", or the id of a current key'
            )
    return out, made
