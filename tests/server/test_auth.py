"""The authentication hook's default: anonymous connections in a configured tenant only."""

from __future__ import annotations

import pytest

from hybridbus.errors import (
    AccessError,
    BusError,
    Forbidden,
    Revoked,
    TokenExpired,
    TokenInvalid,
    TooManyConnections,
    UnknownKey,
)
from hybridbus.proto.codes import CloseCode
from hybridbus.server.auth import (
    AnonymousAuthenticator,
    Authenticator,
    Identity,
    Unauthorized,
    close_code,
)


async def test_anonymous_connections_get_the_configured_tenant_and_their_device() -> None:
    auth = AnonymousAuthenticator("public")
    assert isinstance(auth, Authenticator)
    identity = await auth.authenticate(None, "laptop")
    assert identity == Identity(tenant="public", device="laptop", anonymous=True)
    assert identity.user is None and identity.expires is None


async def test_without_a_tenant_every_connection_is_unauthorized() -> None:
    with pytest.raises(Unauthorized) as info:
        await AnonymousAuthenticator(None).authenticate(None, None)
    assert close_code(info.value) is CloseCode.UNAUTHORIZED
    assert "token" in str(info.value)


@pytest.mark.parametrize("tenant", ["public", None])
async def test_the_anonymous_authenticator_refuses_every_token(tenant: str | None) -> None:
    with pytest.raises(Unauthorized, match="verif"):
        await AnonymousAuthenticator(tenant).authenticate("eyJ.e30.sig", None)


@pytest.mark.parametrize("tenant", ["", "a/b", "+", "$sys"])
def test_an_anonymous_tenant_must_be_one_literal_segment(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        AnonymousAuthenticator(tenant)


@pytest.mark.parametrize(
    ("error", "code", "reconnect"),
    [
        (Unauthorized("x"), CloseCode.UNAUTHORIZED, False),
        (TokenInvalid("x"), CloseCode.UNAUTHORIZED, False),
        (UnknownKey("x"), CloseCode.UNAUTHORIZED, False),
        (TokenExpired("x"), CloseCode.TOKEN_EXPIRED, True),
        (Revoked("x"), CloseCode.FORBIDDEN, False),
        (Forbidden("x"), CloseCode.FORBIDDEN, False),
        (TooManyConnections("x"), CloseCode.TOO_MANY_CONNECTIONS, True),
    ],
)
def test_each_refusal_closes_with_its_documented_code(
    error: AccessError, code: CloseCode, reconnect: bool
) -> None:
    from hybridbus.proto.codes import reconnect_allowed

    assert isinstance(error, BusError)
    assert close_code(error) is code
    assert reconnect_allowed(code) is reconnect
