"""Authentication: the hook that decides who a connection is, and how a refusal closes it.

Owns: the `Authenticator` protocol the node calls on `connect` and `refresh`,
`close_code` (the WebSocket close code a refused connect or refresh gets, by
the `AccessError` it raised), and the plain `AnonymousAuthenticator` (every
token refused; anonymous clients in one tenant). JWT verification is
`server.tokens.JwtAuthenticator`; what an identity may do is the hub's
`Guard`. The identity itself is `core.identity.Identity`.

A refused connect or refresh is never an error reply: the connection is
closed (docs/protocol.md §4, §11, docs/security.md):

    Unauthorized, TokenInvalid, UnknownKey   close 4501 UNAUTHORIZED (terminal)
    TokenExpired                             close 4004 TOKEN_EXPIRED (new token, reconnect)
    Revoked, Forbidden                       close 4502 FORBIDDEN (terminal)
    TooManyConnections                       close 4005 TOO_MANY_CONNECTIONS (reconnect later)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hybridbus.core.identity import Identity
from hybridbus.core.topics import scope_topic
from hybridbus.errors import (
    AccessError,
    Forbidden,
    InvalidTopic,
    Revoked,
    TokenExpired,
    TooManyConnections,
    Unauthorized,
)
from hybridbus.proto.codes import CloseCode

__all__ = [
    "AnonymousAuthenticator",
    "Authenticator",
    "Forbidden",
    "Identity",
    "Unauthorized",
    "close_code",
]


def close_code(error: AccessError) -> CloseCode:
    """The close code of a connection whose connect or refresh failed with `error`."""
    if isinstance(error, TokenExpired):
        return CloseCode.TOKEN_EXPIRED
    if isinstance(error, (Revoked, Forbidden)):
        return CloseCode.FORBIDDEN
    if isinstance(error, TooManyConnections):
        return CloseCode.TOO_MANY_CONNECTIONS
    return CloseCode.UNAUTHORIZED


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
    refused with `Unauthorized`. Tokens are refused too: this one verifies none.
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
        return Identity(tenant=self.tenant, device=device, anonymous=True)
