"""A command the client awaits: what sends it, and the future its reply resolves.

Owns: `CommandPath` (the two ways the client's mixins send commands, which
`Client` implements), `Request` (a command issued on a session, sent again on the next
connection after a drop unless it is for one connection only, and resolved
with its result: `answered` first, in the turn it is read), `retrieve`,
and the small task and reason helpers of `client.connection` (`cancel`, `why`).
Must not do I/O or know the connection: `client.connection` keeps the
requests in flight and resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from hybridbus.proto.client import ClientSession

__all__ = ["CommandPath", "Request", "cancel", "retrieve", "why"]

log = logging.getLogger("hybridbus.client")


class Request:
    """A command awaited; `issue` sends it on a session, again after a drop if `replay`.

    `answered` (optional) sees the result in the turn it is read, before the
    pushes read after it and before whoever awaits `future` resumes (the
    collaboration views apply a reply before the pushes that follow it).
    """

    __slots__ = ("answered", "future", "issue", "replay")

    def __init__(
        self,
        issue: Callable[[ClientSession], int],
        future: asyncio.Future[Any],
        *,
        replay: bool = True,
        answered: Callable[[Any], None] | None = None,
    ) -> None:
        self.issue = issue
        self.future = future
        self.replay = replay
        self.answered = answered

    def resolve(self, result: object) -> None:
        """The command's result came: `answered` first, then the awaiting side."""
        if self.future.done():
            return
        if self.answered is not None:
            try:
                self.answered(result)
            except Exception:  # a view's bug must not end the connection's loop
                log.exception("handling the answer to a command failed")
        self.future.set_result(result)


Issue = Callable[[ClientSession], int]


class CommandPath:
    """How the client's mixins (presence, collaboration views) send commands: `Client`'s."""

    async def _request(self, issue: Issue, answered: Callable[[Any], None] | None = None) -> Any:
        """One command's result (sent again after a drop); `answered` sees it in its turn."""
        raise NotImplementedError

    def _command(
        self,
        issue: Issue,
        answered: Callable[[Any], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """A command on this connection only, nobody awaiting it."""
        raise NotImplementedError


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (nobody awaits it)."""
    if not future.cancelled():
        future.exception()


def why(error: Exception | None) -> str:
    """An exception as a reason for humans (some have no message of their own)."""
    return (str(error) or type(error).__name__) if error else "the connection failed"


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait for it to end."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
