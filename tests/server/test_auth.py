"""The authentication hook's default: anonymous connections in a configured tenant only."""

from __future__ import annotations

import pytest

from hybridbus.errors import BusError
from hybridbus.proto.codes import CloseCode
from hybridbus.server.auth import (
    AnonymousAuthenticator,
    Authenticator,
    AuthError,
    Forbidden,
    Identity,
    Unauthorized,
)


async def test_anonymous_connections_get_the_configured_tenant_and_their_device() -> None:
    auth = AnonymousAuthenticator("public")
    assert isinstance(auth, Authenticator)
    identity = await auth.authenticate(None, "laptop")
    assert identity == Identity(tenant="public", device="laptop")
    assert identity.user is None and identity.expires is None


async def test_without_a_tenant_every_connection_is_unauthorized() -> None:
    with pytest.raises(Unauthorized) as info:
        await AnonymousAuthenticator(None).authenticate(None, None)
    assert info.value.close_code is CloseCode.UNAUTHORIZED
    assert "token" in str(info.value)


@pytest.mark.parametrize("tenant", ["public", None])
async def test_tokens_are_refused_until_a_verifier_exists(tenant: str | None) -> None:
    with pytest.raises(Unauthorized, match="verif"):
        await AnonymousAuthenticator(tenant).authenticate("eyJ.e30.sig", None)


@pytest.mark.parametrize("tenant", ["", "a/b", "+", "$sys"])
def test_an_anonymous_tenant_must_be_one_literal_segment(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        AnonymousAuthenticator(tenant)


def test_auth_errors_are_bus_errors_with_terminal_close_codes() -> None:
    assert issubclass(AuthError, BusError)
    assert Unauthorized.close_code == 4501
    assert Forbidden.close_code == 4502
    assert not Unauthorized("x").retriable
