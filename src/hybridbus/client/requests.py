"""A command the client awaits: what sends it, and the future its reply resolves.

Owns: `Request` (a command issued on a session, sent again on the next
connection after a drop unless it is for one connection only), `retrieve`,
and the small task and reason helpers of `client.connection` (`cancel`, `why`).
Must not do I/O or know the connection: `client.connection` keeps the
requests in flight and resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hybridbus.proto.client import ClientSession

__all__ = ["Request", "cancel", "retrieve", "why"]


class Request:
    """A command awaited; `issue` sends it on a session, again after a drop if `replay`."""

    __slots__ = ("future", "issue", "replay")

    def __init__(
        self,
        issue: Callable[[ClientSession], int],
        future: asyncio.Future[Any],
        *,
        replay: bool = True,
    ) -> None:
        self.issue = issue
        self.future = future
        self.replay = replay


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
