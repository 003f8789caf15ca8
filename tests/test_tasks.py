"""`hybridbus.tasks.stop`: a task whose driver swallows a cancellation still ends; one that
never ends does not hold its caller for longer than asked."""

from __future__ import annotations

import asyncio
import time

import pytest

from hybridbus.tasks import stop


async def _swallowing(times: int, ran: list[int]) -> None:
    """A loop that survives its first `times` cancellations, as one around redis-py may."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ran.append(1)
            if len(ran) > times:
                raise


async def test_a_task_that_survives_a_cancellation_is_stopped_anyway() -> None:
    ran: list[int] = []
    task = asyncio.create_task(_swallowing(2, ran))
    await asyncio.sleep(0)
    # The plain way waits for ever:
    task.cancel()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await asyncio.shield(task)
    await stop(task, within=2.0)
    assert task.cancelled() and len(ran) == 3


async def _stubborn(until: float) -> None:
    """Survives every cancellation before the monotonic time `until`."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if time.monotonic() >= until:
                raise


async def test_a_task_that_does_not_end_is_left_after_the_time_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = time.monotonic()
    task = asyncio.create_task(_stubborn(started + 1.5))
    await asyncio.sleep(0)
    await stop(task, within=0.5)
    assert 0.4 < time.monotonic() - started < 1.4
    assert not task.done() and "did not stop" in caplog.text
    await stop(task, within=5.0)  # past its time it ends like any task
    assert task.cancelled()


async def test_none_and_a_finished_task_are_nothing_to_stop() -> None:
    await stop(None)
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await stop(task)
