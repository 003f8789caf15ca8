"""The Python side of the Redis engine's retention: what the scripts are told about each topic.

Owns: each append item's limits (from `engine._retention`), the sweep of one
shard (SWEEP called until it has nothing more to remove), and setting every
topic's age limit when a node opens with rules (the AGES script). The Lua is
`engine._redis_lua_retention`'s. Must not hold state beyond the `Retention`
it is given, nor wrap driver errors (its callers, in `engine.redis`, do).

Every node sharing a log must run with the same retention settings: each
applies its own to the appends it makes and the sweeps it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hybridbus.engine import _redis_io as rio
from hybridbus.engine import _redis_scripts as lua
from hybridbus.engine._retention import Retention

__all__ = ["item_limits", "set_ages", "sweep_shard"]

_PAGE: Final = 500  # topics per AGES call when a node opens
_BUDGET: Final = 5000  # events one SWEEP call may remove


def item_limits(retention: Retention, topic: str) -> tuple[int, int, float]:
    """(max events, max bytes, max age) of an APPEND item; -1 for none.

    The age goes with the item only under rules (with none, every topic has
    the engine-wide age, and the sweep removes the stream's oldest entries).
    """
    max_age, max_count, max_bytes = retention.of(topic)
    age = -1.0 if retention.uniform or max_age is None else float(max_age)
    return (
        -1 if max_count is None else max_count,
        -1 if max_bytes is None else max_bytes,
        age,
    )


async def sweep_shard(
    client: rio.Client,
    keys: rio.ShardKeys,
    epoch: str,
    retention: Retention,
    clock: Callable[[], float],
    window: float,
) -> int:
    """Expiry, age retention and the dedupe window of one shard; events removed."""
    max_age = retention.default.max_age
    uniform_age = -1.0 if max_age is None or not retention.uniform else float(max_age)
    rules = "0" if retention.uniform else "1"
    gone = 0
    for _ in range(1000):
        args = [epoch, repr(clock()), repr(uniform_age), window, _BUDGET, rules]
        count, more = await rio.call(client, lua.SWEEP, [keys.meta], args)
        gone += int(count)
        if not more:
            break
    return gone


async def set_ages(
    client: rio.Client, keys: rio.ShardKeys, epoch: str, retention: Retention
) -> None:
    """Give every topic of the shard its age limit under the rules (none: nothing to do)."""
    if retention.uniform:
        return
    lower = "-"
    while True:
        flat = await rio.call(client, lua.TOPICS, [keys.meta], [epoch, lower, "", _PAGE])
        names = [name.decode() for name in flat[::2]]
        if not names:
            return
        args: list[str | float] = [epoch]
        for name in names:
            args += [name, item_limits(retention, name)[2]]
        await rio.call(client, lua.AGES, [keys.meta], args)
        if len(names) < _PAGE:
            return
        lower = "(" + names[-1]
