"""The client's token: where it comes from, and refreshing it before it expires.

Owns: the fixed token or the `TokenProvider` a client was given, asking the
provider (bounded by the request timeout, its answer checked), choosing what
a connect and `Client.refresh` send, and the one refresh task of the current
connection. Must not touch the WebSocket, the protocol session or the
client's requests: the client sends the `refresh` command (the `send`
callback given to `TokenSource.schedule`) and reports each reply's expiry
time. Imports `hybridbus.errors` (and `ClientConfig`, for typing) only,
never the server.

A fixed token (or none) is sent at every connect and never refreshed; a
close with 4004 (TOKEN_EXPIRED) then ends the client, as reconnecting with
the same token cannot help. A *token provider* (a callable returning a token,
or an awaitable of one) is asked for a fresh token at every connect, and
before the token expires: at `expires - refresh_lead(lifetime)` the client
sends `refresh` over the open connection and reschedules from the reply. A
provider that fails is retried with backoff until the token lapses; then the
server closes 4004 and the client reconnects, asking the provider again.
Expiry times are the server's Unix times read against the local clock, so a
clock skewed by more than the margin costs a reconnect per token, not events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hybridbus.errors import InvalidInput

if TYPE_CHECKING:
    from hybridbus.client.config import ClientConfig

__all__ = ["SendRefresh", "TokenProvider", "TokenSource"]

log = logging.getLogger(__name__)

# Called for a fresh token at every connect and before the current one expires.
# A plain function must not block (it runs on the event loop): fetch over the
# network with an async one.
TokenProvider = Callable[[], Awaitable[str]] | Callable[[], str]

# Sends `refresh` with a token on the connection whose token is being
# refreshed and awaits the reply (returning at once if that connection ended).
SendRefresh = Callable[[str], Awaitable[None]]


class TokenSource:
    """A client's token (fixed, or from a provider) and its refresh schedule.

    `schedule` keeps at most one refresh task: that of the connection whose
    token expiry it was told last.
    """

    def __init__(
        self,
        token: str | TokenProvider | None,
        config: ClientConfig,
        rng: random.Random,
        name: str,
    ) -> None:
        self._config = config
        self._rng = rng
        self._name = name  # of the refresh tasks
        self._token: str | None = None  # a fixed token (None with a provider)
        self._provider: TokenProvider | None = None
        if callable(token):
            self._provider = token
        else:
            self._token = token
        self._refresher: asyncio.Task[None] | None = None  # the current connection's

    @property
    def renewable(self) -> bool:
        """Whether a reconnect can bring a new token (only a provider gives one)."""
        return self._provider is not None

    async def for_connect(self) -> str | None:
        """The token to connect with: a fresh one from the provider, else the fixed one.

        The provider's exceptions propagate.
        """
        if self._provider is not None:
            return await self.fresh()
        return self._token

    async def for_refresh(self, token: str | None) -> str:
        """What `Client.refresh(token)` sends: `token`, or one from the provider.

        Without a provider, `token` also becomes the token reconnects use, and
        without `token` the current fixed token is sent again.
        """
        if token is None:
            if self._provider is not None:
                return await self.fresh()
            if self._token is not None:
                return self._token
            raise InvalidInput("refresh() needs a token: the client has no token to send")
        if self._provider is None:
            self._token = token
        return token

    async def fresh(self) -> str:
        """A token from the provider (its exceptions propagate; bounded by the timeout)."""
        provider = self._provider
        assert provider is not None
        async with asyncio.timeout(self._config.request_timeout):
            got = provider()
            token = got if isinstance(got, str) else await got
        if not isinstance(token, str) or not token:
            raise InvalidInput(f"the token provider returned {token!r}, not a token")
        return token

    def schedule(self, expires: float | None, send: SendRefresh) -> None:
        """The current token expires at `expires`: (re)schedule its refresh through `send`.

        Ends the pending refresh task (a refresh reply ends the task that sent
        it); starts a new one only with a provider and an `expires`.
        """
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self._provider is not None and expires is not None:
            self._refresher = asyncio.create_task(
                self._keep_fresh(expires, send), name=f"hybridbus-refresh {self._name}"
            )

    def stop(self) -> None:
        """The connection ended: cancel its refresh (the next one schedules its own)."""
        if self._refresher is not None:
            self._refresher.cancel()

    async def close(self) -> None:
        """Cancel the refresh task and wait until it has ended."""
        task = self._refresher
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_fresh(self, expires: float, send: SendRefresh) -> None:
        """Refresh the token ahead of `expires`; retry until it lapses.

        Ends when the reply comes (`schedule` starts the next one), when the
        token lapsed (the server closes 4004 and the reconnect gets a new one),
        or cancelled with its connection.
        """
        lifetime = expires - time.time()
        if lifetime <= 0:
            return
        await asyncio.sleep(lifetime - self._config.refresh_lead(lifetime))
        attempt = 0
        while True:
            try:
                await send(await self.fresh())
            except Exception:  # the provider's or the server's refusal: try again
                log.warning("refreshing the token failed; retrying", exc_info=True)
            else:
                return
            left = expires - time.time()
            if left <= 0:
                log.warning("the token expired before it could be refreshed")
                return
            await asyncio.sleep(min(left, self._config.backoff.delay(attempt, self._rng)))
            attempt += 1
