"""Token providers and refresh in the Python client, against a real server.

The server's authenticator is `Expiring`: a token "<user>:<seconds to live>"
expires that long after it is presented; the node closes a connection whose
token lapsed with 4004 on its next heartbeat tick (every second here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from tests.servers import Expiring, event, running_server

import hybridbus.client
from hybridbus.client import Client, ClientConfig, ClientSubscription
from hybridbus.core.backoff import Backoff
from hybridbus.errors import Disconnected, InvalidInput, RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=5.0)


class Provider:
    """A token provider that counts its calls; `tokens(call)` says what call n returns."""

    def __init__(self, tokens: Callable[[int], str]) -> None:
        self.tokens = tokens
        self.calls = 0
        self.failures = 0

    def __call__(self) -> str:
        self.calls += 1
        try:
            return self.tokens(self.calls)
        except Exception:
            self.failures += 1
            raise


async def wait_for(condition: Callable[[], bool], timeout: float = 4.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def publish_during(publisher: Client, seconds: float, ids: list[str]) -> None:
    """Publish to docs/1 every 50 ms for `seconds`; append the ids published to `ids`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        id = f"e{len(ids)}"  # unique: the server dedupes a repeated id
        assert not (await publisher.publish("docs/1", event(id))).duplicate
        ids.append(id)
        await asyncio.sleep(0.05)


async def receive(sub: ClientSubscription, count: int) -> list[str]:
    """The ids of the next `count` deliveries, then checks that nothing more comes."""
    async with asyncio.timeout(4):
        got = [(await anext(sub)).event.id for _ in range(count)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(sub), 0.2)
    return got


async def test_a_provider_keeps_the_connection_alive_across_refreshes() -> None:
    provider = Provider(lambda _: "ann:1")
    async with (
        running_server(authenticator=Expiring()) as server,
        hybridbus.client.connect(server.url, token=provider, config=FAST) as c,
        hybridbus.client.connect(server.url, token="pub:60", config=FAST) as publisher,
    ):
        first = c.expires
        assert first is not None
        async with c.subscribe("docs/+") as sub:
            published: list[str] = []
            await publish_during(publisher, 3.0, published)
            assert await receive(sub, len(published)) == published
        assert c.connects == 1, "a refresh came too late: the connection was closed"
        assert provider.calls >= 4  # the connect, then a refresh every ~0.75 s
        assert c.expires is not None and c.expires > first + 2
        await c.ping()


async def test_a_fixed_token_that_expires_ends_the_client_with_4004() -> None:
    async with (
        running_server(authenticator=Expiring()) as server,
        hybridbus.client.connect(server.url, token="ann:0.5", config=FAST) as c,
    ):
        assert c.expires is not None
        async with c.subscribe("docs/+") as sub:
            with pytest.raises(Disconnected) as info:
                async with asyncio.timeout(4):
                    await anext(sub)
        assert info.value.close_code == 4004
        with pytest.raises(Disconnected) as again:
            await c.publish("docs/1", event())
        assert again.value.close_code == 4004
        assert c.connects == 1  # no reconnect with the same token


async def test_a_token_refused_at_refresh_ends_the_client_with_4501() -> None:
    provider = Provider(lambda call: "ann:1" if call == 1 else "bad")
    async with (
        running_server(authenticator=Expiring()) as server,
        hybridbus.client.connect(server.url, token=provider, config=FAST) as c,
    ):
        async with c.subscribe("docs/+") as sub:
            with pytest.raises(Disconnected) as info:
                async with asyncio.timeout(4):
                    await anext(sub)
        assert info.value.close_code == 4501
        assert provider.calls == 2
        with pytest.raises(Disconnected):
            await c.ping()


async def test_a_provider_reconnects_after_4004_and_resumes_the_subscription() -> None:
    # The first token has lapsed already, so no refresh can save it: the server
    # closes 4004 and the client reconnects with the provider's next token.
    provider = Provider(lambda call: "ann:-1" if call == 1 else "ann:60")
    async with (
        running_server(authenticator=Expiring()) as server,
        hybridbus.client.connect(server.url, token=provider, config=FAST) as c,
        hybridbus.client.connect(server.url, token="pub:60", config=FAST) as publisher,
    ):
        async with c.subscribe("docs/+") as sub:
            published: list[str] = []
            await publish_during(publisher, 1.5, published)
            await wait_for(lambda: c.connects == 2)
            await publish_during(publisher, 0.2, published)
            assert await receive(sub, len(published)) == published
        assert provider.calls == 2
        assert c.expires is not None and c.expires > time.time() + 50


async def test_a_failing_provider_is_retried_then_4004_reconnects() -> None:
    lapse: list[float] = []

    def tokens(call: int) -> str:
        if call == 1:
            lapse.append(time.time() + 0.8)  # well after the token's own expiry
            return "ann:0.6"
        if time.time() < lapse[0]:
            raise RuntimeError("the token service is down")
        return "ann:60"

    provider = Provider(tokens)
    async with (
        running_server(authenticator=Expiring()) as server,
        hybridbus.client.connect(server.url, token=provider, config=FAST) as c,
        hybridbus.client.connect(server.url, token="pub:60", config=FAST) as publisher,
    ):
        async with c.subscribe("docs/+") as sub:
            published: list[str] = []
            await publish_during(publisher, 0.3, published)
            await wait_for(lambda: c.connects == 2)
            await publish_during(publisher, 0.2, published)
            assert await receive(sub, len(published)) == published
        assert provider.failures >= 2  # refresh retries with backoff
        assert c.expires is not None and c.expires > time.time() + 50


async def test_refresh_explicitly() -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return "ann:60"

    async with running_server(authenticator=Expiring()) as server:
        async with hybridbus.client.connect(server.url, token=provider, config=FAST) as c:
            first = c.expires
            assert first is not None
            expires = await c.refresh()
            assert calls == 2
            assert expires is not None and expires >= first and c.expires == expires
            expires = await c.refresh("ann:120")
            assert expires is not None and expires > time.time() + 100
            with pytest.raises(RemoteError) as error:
                await c.refresh("boom")
            assert error.value.code == 1399
            await c.ping()  # an error reply leaves the connection open
            with pytest.raises(Disconnected) as info:
                await c.refresh("bad")
            assert info.value.close_code == 4501

        # A fixed token the application refreshes itself outlives its first expiry.
        async with hybridbus.client.connect(server.url, token="bob:0.5", config=FAST) as c:
            assert (await c.refresh("bob:60") or 0) > time.time() + 50
            assert (await c.refresh() or 0) > time.time() + 50  # the same token again
            await asyncio.sleep(1.2)  # past the first token's expiry and a server tick
            await c.ping()
            assert c.connects == 1


async def test_refresh_without_any_token_is_refused_locally() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        assert c.expires is None
        with pytest.raises(InvalidInput):
            await c.refresh()
