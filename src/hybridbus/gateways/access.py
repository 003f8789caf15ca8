"""Who an HTTP request is, and whether it may do what it asks: the `authorize` hook.

Owns: reading a request's credentials — `Authorization: Bearer <credential>`,
`X-Api-Key`, or `?token=` (for a browser's EventSource, which cannot set
headers) — where a credential starting with `hb_` is an API key and anything
else a JWT; none at all is an anonymous caller if the server allows them.
Then it maps the route's action on an ABSOLUTE topic or pattern (the HTTP
API's, docs/http.md) to the hub's `Guard`: an admin may act anywhere; anyone
else only inside its tenant (the first segment must be the tenant, literally)
and only as the rules allow; a topic listing shows only the topics the caller
may subscribe to or read (`visibility`). Must not decide permissions itself.
`holding` makes the SSE gateway's `hold` hook: a stream is held by its
request's principal through the node (counted with its connections, ended
at revocation and expiry).

Refusals are problems: 401 (no or bad credentials), 403 (revoked, forbidden,
another tenant), 429 with Retry-After (publish or revocation rate), 409 (the
tenant holds its most revocations).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec
from aiohttp import hdrs, web

from hybridbus.core.identity import Identity, Operation
from hybridbus.core.revocation import Revocation
from hybridbus.errors import Forbidden, InvalidInput, Unauthorized
from hybridbus.gateways.httputil import Action, BadParameter, guarded, json_response, read_body
from hybridbus.gateways.sse import End, Hold, Release
from hybridbus.hub.guard import Guard, Principal
from hybridbus.server.access import API_KEY_PREFIX, ApiKeys
from hybridbus.server.auth import Authenticator

__all__ = ["HttpAccess"]

# Callers (credentials) whose principals are kept; the oldest is dropped first.
_PRINCIPALS: Final = 10_000
_MAX_BODY: Final = 64 * 1024
_BODY_TIMEOUT: Final = 10.0


class _RevokeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["token", "session", "user"]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    tenant: str | None = None
    # Finite (JSON has no inf or nan; msgspec refuses 1e999) and in the future, checked below.
    until: Annotated[float, msgspec.Meta(gt=0)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""


_OPERATION: Final[dict[Action, Operation]] = {
    "publish": "publish",
    "read": "history",
    "subscribe": "subscribe",
    "presence": "presence",
    "list": "history",
}


class HttpAccess:
    """The HTTP API's `authorize` hook over one guard (see the module docstring)."""

    def __init__(self, guard: Guard, keys: ApiKeys, authenticator: Authenticator) -> None:
        self._guard = guard
        self._keys = keys
        self._authenticator = authenticator
        self._principals: dict[str | None, Principal] = {}

    async def principal(self, request: web.Request) -> Principal:
        """Who `request` is; raises `Unauthorized` (or `Revoked`).

        Principals are kept by credential (anonymous callers share one), so a
        caller's decisions and publish bucket last across its requests; each
        request still checks the revocations and the token's expiry.
        """
        return await self.identify(_credential(request))

    async def identify(self, credential: str | None) -> Principal:
        """The principal presenting `credential` (an API key, a JWT, None: anonymous).

        For every way in that reads credentials of its own (the gRPC gateway's
        metadata): the same principals, kept the same way, as HTTP requests'.
        """
        guard = self._guard
        principals = self._principals
        principal = principals.get(credential)
        if principal is not None:
            identity = principal.identity
            expires = identity.expires
            if (expires is None or time.time() < expires) and guard.revoked(identity) is None:
                if credential is not None and credential.startswith(API_KEY_PREFIX):
                    guard.key_used(principal, identity.user or "")
                return principal
            del principals[credential]  # verified afresh: expired or revoked, it raises
        if credential is not None and credential.startswith(API_KEY_PREFIX):
            found = self._keys.identify(credential)
            if found is None:
                raise Unauthorized("unknown API key")
            name, identity = found
            principal = guard.admit(identity)
            guard.key_used(principal, identity.user or name)
        else:
            identity = await self._authenticator.authenticate(credential, None)
            principal = guard.admit(identity)
        if len(principals) >= _PRINCIPALS:
            del principals[next(iter(principals))]
        principals[credential] = principal
        return principal

    def holding(self, hold: Callable[[Identity, End], Release]) -> Hold:
        """The SSE gateway's `hold` hook: the request's principal holds the stream by `hold`.

        `hold` is `Node.hold`: the stream counts as one of the principal's
        connections and is ended at its revocation and its token's expiry.
        """

        async def held(request: web.Request, end: End) -> Release:
            return hold((await self.principal(request)).identity, end)

        return held

    def routes(self) -> list[web.RouteDef]:
        """`POST /v1/revocations`: revoke a token, a session or a user (docs/security.md)."""
        return [web.post("/v1/revocations", guarded(self.revoke))]

    async def revoke(self, request: web.Request) -> web.Response:
        """Store a revocation; its live connections close at once. 201 with the revocation.

        Body: {"kind": "token"|"session"|"user", "value": …, "tenant": … (an
        admin names it; others revoke in their own), "until": Unix seconds in
        the future (default, and at most: the guard's horizon, the longest token
        lifetime plus the leeway; a user's is always that), "reason": …}.
        Admins anywhere; API keys of a tenant inside it, within the tenant's
        revocation rate (429) and count (409); nobody else.
        """
        principal = await self.principal(request)
        # An API key by what was presented, not by the identity's name: a token's
        # `sub` may look like anything, "key:..." included.
        credential = _credential(request) or ""
        if not principal.identity.admin and not credential.startswith(API_KEY_PREFIX):
            raise Forbidden("only admins and API keys may revoke")
        body = await read_body(request, _MAX_BODY, _BODY_TIMEOUT)
        try:
            asked = msgspec.json.decode(body, type=_RevokeBody)
        except msgspec.ValidationError as exc:
            raise BadParameter(f"bad revocation: {exc}", "body") from None
        except msgspec.DecodeError:
            raise BadParameter("the body must be a JSON object", "body") from None
        now, horizon = time.time(), self._guard.limits.revocation_horizon
        if asked.until is not None and asked.until <= now:
            raise BadParameter(
                f"bad revocation: until {asked.until:g} is not in the future", "body"
            )
        revocation = Revocation(
            kind=asked.kind,
            tenant=asked.tenant if asked.tenant is not None else principal.tenant,
            value=asked.value,
            # Default: the horizon. Past it, the guard lowers it to it.
            until=asked.until if asked.until is not None else now + horizon,
            at=now,
            reason=asked.reason,
        )
        stored = await self._guard.revoke(principal, revocation)
        return json_response(stored, 201)

    async def charge(self, request: web.Request, publishes: int) -> None:
        """The charge hook: a request's `publishes` come out of the caller's buckets."""
        self._guard.take(await self.principal(request), publishes)

    async def authorize(self, request: web.Request, action: Action, target: str) -> None:
        """The hook: raise unless the caller may do `action` on the absolute `target`."""
        await self.check(await self.principal(request), action, target)

    async def check(self, principal: Principal, action: Action, target: str) -> None:
        """Raise unless `principal` may do `action` on the absolute `target` (as `authorize`)."""
        guard = self._guard
        if principal.identity.admin:
            if action == "publish":
                await guard.admin_publishing(principal, target)
            return
        tenant = principal.tenant
        if action == "list":
            # Prefixes are plain text: "" or "acme" would list other tenants' topics
            # ("acmeco/...", "$audit/...") too, so a tenant's must start with "acme/".
            if not target.startswith(principal.prefix):
                raise Forbidden(f"prefix {target!r} is outside tenant {tenant!r}")
            return
        if not target.startswith(principal.prefix):
            raise Forbidden(f"{target!r} is outside tenant {tenant!r}")
        relative = target[len(principal.prefix) :]
        guard.check(principal, _OPERATION[action], relative)

    async def visibility(self, request: web.Request, prefix: str) -> Callable[[str], bool]:
        """The visibility hook: which absolute topics under `prefix` a listing shows the caller.

        Those it may subscribe to or read (`Guard.visible`); `authorize` has
        checked `prefix` is in its tenant. When one rule shows it everything
        under the prefix's last whole segment, no topic is checked one by one.
        """
        principal = await self.principal(request)
        guard = self._guard
        if principal.identity.admin:
            return _everything
        relative = prefix[len(principal.prefix) :]
        folder = relative.rpartition("/")[0]
        with contextlib.suppress(InvalidInput):  # a prefix need not make a pattern
            if guard.visible(principal, f"{folder}/#" if folder else "#"):
                return _everything
        start = len(principal.prefix)

        def shown(topic: str) -> bool:
            return topic.startswith(principal.prefix) and guard.visible(principal, topic[start:])

        return shown


def _everything(topic: str) -> bool:
    return True


def _credential(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token or API key>'")
        return value.strip()
    key = request.headers.get("X-Api-Key")
    if key is not None:
        return key.strip()
    return request.query.get("token") or None
