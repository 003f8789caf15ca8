"""Who an HTTP request is, and whether it may do what it asks: the `authorize` hook.

Owns: reading a request's credentials — `Authorization: Bearer <credential>`,
`X-Api-Key`, or `?token=` (for a browser's EventSource, which cannot set
headers) — where a credential starting with `hb_` is an API key and anything
else a JWT; none at all is an anonymous caller if the server allows them.
Then it maps the route's action on an ABSOLUTE topic or pattern (the HTTP
API's, docs/http.md) to the hub's `Guard`: an admin may act anywhere; anyone
else only inside its tenant (the first segment must be the tenant, literally)
and only as the rules allow. Must not decide permissions itself.

Refusals are problems: 401 (no or bad credentials), 403 (revoked, forbidden,
another tenant), 429 with Retry-After (publish rate).
"""

from __future__ import annotations

import time
from typing import Annotated, Final, Literal

import msgspec
from aiohttp import hdrs, web

from hybridbus.core.identity import Operation
from hybridbus.core.revocation import Revocation
from hybridbus.errors import Forbidden, Unauthorized
from hybridbus.gateways.httputil import Action, BadParameter, guarded, json_response, read_body
from hybridbus.hub.guard import Guard, Principal
from hybridbus.server.access import API_KEY_PREFIX, ApiKeys
from hybridbus.server.auth import Authenticator

__all__ = ["HttpAccess"]

# Callers (credentials) whose principals are kept; the oldest is dropped first.
_PRINCIPALS: Final = 10_000
_MAX_BODY: Final = 64 * 1024
_BODY_TIMEOUT: Final = 10.0
_DEFAULT_TTL: Final = 24 * 3600.0


class _RevokeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["token", "session", "user"]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    tenant: str | None = None
    until: float | None = None
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
        credential = _credential(request)
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

    def routes(self) -> list[web.RouteDef]:
        """`POST /v1/revocations`: revoke a token, a session or a user (docs/security.md)."""
        return [web.post("/v1/revocations", guarded(self.revoke))]

    async def revoke(self, request: web.Request) -> web.Response:
        """Store a revocation; its live connections close at once. 201 with the revocation.

        Body: {"kind": "token"|"session"|"user", "value": …, "tenant": … (an
        admin names it; others revoke in their own), "until": Unix seconds
        (default: now + 24 h, the longest a token should live), "reason": …}.
        Admins anywhere; API keys of a tenant inside it; nobody else.
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
        now = time.time()
        revocation = Revocation(
            kind=asked.kind,
            tenant=asked.tenant if asked.tenant is not None else principal.tenant,
            value=asked.value,
            until=asked.until if asked.until is not None else now + _DEFAULT_TTL,
            at=now,
            reason=asked.reason,
        )
        await self._guard.revoke(principal, revocation)
        return json_response(revocation, 201)

    async def charge(self, request: web.Request, publishes: int) -> None:
        """The charge hook: a request's `publishes` come out of the caller's buckets."""
        self._guard.take(await self.principal(request), publishes)

    async def authorize(self, request: web.Request, action: Action, target: str) -> None:
        """The hook: raise unless the caller may do `action` on the absolute `target`."""
        principal = await self.principal(request)
        guard = self._guard
        if principal.identity.admin:
            if action == "publish":
                guard.admin_publishing(principal, target)
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
