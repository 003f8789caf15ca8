"""Stopping a background task for sure, when a driver may swallow its cancellation.

Owns: `stop(task)`: cancel a task and wait for it to end, cancelling it again while it runs,
for at most `within` seconds. A driver can turn a cancellation into an error that a loop
catching its own errors survives (redis-py does so for a read it was blocked in), after which a
plain `task.cancel(); await task` waits for ever; stopping again ends the next await. A task
still running after `within` is left (and logged), so a shutdown is never held up by one.
Imports nothing of ours: every layer with asyncio edges uses it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["stop"]

log = logging.getLogger("hybridbus.tasks")

_AGAIN = 0.1  # seconds between two cancellations of a task that is still running


async def stop(task: asyncio.Task[Any] | None, within: float = 5.0) -> None:
    """Cancel `task` until it ends, for at most `within` seconds (None, or done: nothing)."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.warning("task %s did not stop within %g s; left running", task.get_name(), within)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(_AGAIN, left))
    if not task.cancelled():
        task.exception()  # retrieved: an error it ended with is its own to have logged
