"""A command the client awaits: what sends it, and the future its reply resolves.

Owns: `Request` (a command issued on a session, sent again on the next
connection after a drop unless it is for one connection only) and `retrieve`.
Must not do I/O or know the connection: `client.connection` keeps the
requests in flight and resolves them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hybridbus.proto.client import ClientSession

__all__ = ["Request", "retrieve"]


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
