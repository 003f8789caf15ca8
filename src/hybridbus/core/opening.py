"""`Opening`: what `hybridbus.open` and `hybridbus.client.connect` return.

Owns: the one shape both entry points share — await it for the started
object, or use it as `async with` to have it closed at the end. Needs no
event loop of its own (it only awaits what it is given), so it lives in core.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Closable", "Opening"]


class Closable(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class Opening(Generic[T]):
    """`await opening` starts and returns the object; `async with opening as x` also closes it."""

    def __init__(self, opened: T) -> None:
        self._opened = opened

    async def _start(self) -> T:
        await self._opened.start()
        return self._opened

    def __await__(self) -> Generator[Any, None, T]:
        return self._start().__await__()

    async def __aenter__(self) -> T:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._opened.close()
