"""Authentication: who a connection is, and the hook that decides it.

Owns: the `Identity` a connection runs as (its tenant scopes every topic and
pattern it sends), the `Authenticator` protocol the node calls on `connect`
and `refresh`, the typed errors an authenticator raises, and the default
`AnonymousAuthenticator`. Must not verify tokens itself: real token
verification (JWT) arrives with issue 4 as another `Authenticator`.

Errors carry the close code the connection is closed with (docs/protocol.md
§4, §11); both are terminal (4500-4999: reconnecting as-is fails again):

    AuthError       (BusError)
    ├── Unauthorized    close 4501 UNAUTHORIZED: missing or invalid credentials
    └── Forbidden       close 4502 FORBIDDEN: valid, but not allowed to connect
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from hybridbus.core.topics import scope_topic
from hybridbus.errors import BusError, ErrorCode, InvalidTopic
from hybridbus.proto.codes import CloseCode

__all__ = [
    "AnonymousAuthenticator",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Identity",
    "Unauthorized",
]


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who a connection is, as an authenticator vouches.

    `tenant` is the first segment of every topic the connection reaches (its
    topics are relative to it). `user` is None for anonymous connections;
    `device` groups a user's connections for `exclude_self="device"`;
    `session` is the token's session id, if it has one; `expires` the Unix
    time the credentials expire (None: never).
    """

    tenant: str
    user: str | None = None
    device: str | None = None
    session: str | None = None
    expires: float | None = None


class AuthError(BusError):
    """Credentials were refused. `close_code` is the code the connection closes with.

    On the wire this is never an error reply: the connection is closed with
    `close_code` (a refused `connect` or `refresh`).
    """

    # No ErrorCode of its own yet (see the issue-3 report: 1100-1199 is free
    # for auth); the close code is the public one.
    code = ErrorCode.INVALID_INPUT
    close_code: ClassVar[CloseCode] = CloseCode.UNAUTHORIZED


class Unauthorized(AuthError):
    """Missing or invalid credentials (close 4501)."""

    close_code = CloseCode.UNAUTHORIZED


class Forbidden(AuthError):
    """Valid credentials that may not connect, e.g. revoked (close 4502)."""

    close_code = CloseCode.FORBIDDEN


@runtime_checkable
class Authenticator(Protocol):
    """Decides who a connection is, from its token and the device it names.

    Called on every `connect` (token None: the client sent none) and every
    `refresh`. Returns the `Identity`, or raises `Unauthorized` / `Forbidden`.
    Awaitable so that a verifier may fetch keys; it must not block the loop.
    """

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        """The identity `token` proves; raise `Unauthorized` or `Forbidden` otherwise."""
        ...


class AnonymousAuthenticator:
    """The default: anonymous connections only, in `tenant`; every token is refused.

    Without a tenant (`ServerConfig.anonymous_tenant` unset) every connect is
    refused with `Unauthorized`. Tokens are refused too: no verifier is
    configured until issue 4 brings one.
    """

    def __init__(self, tenant: str | None) -> None:
        if tenant is not None:
            try:
                scope_topic(tenant, "x")  # the same check every scoped topic gets
            except InvalidTopic as exc:
                raise ValueError(f"anonymous tenant {tenant!r} is not a valid tenant") from exc
        self.tenant = tenant

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        if token is not None:
            raise Unauthorized("this server cannot verify tokens (no verifier is configured)")
        if self.tenant is None:
            raise Unauthorized("a token is required: anonymous connections are not allowed")
        return Identity(tenant=self.tenant, device=device)
