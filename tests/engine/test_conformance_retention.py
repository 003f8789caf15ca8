"""Conformance: retention rules per topic pattern, by age, count and size, on every engine.

Each test runs once per engine kind (memory, sqlite, redis, redis+cluster; see
tests/conftest.py). A topic's limits are those of the first `retention` rule
whose pattern matches it, else the engine-wide ones (engine/base.py).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import msgspec
import pytest
from tests.support import FakeClock, MakeEngine, append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.base import EngineConfig, RetentionRule

_ids = itertools.count()


def sized(data: str = "", **fields: object) -> Event:
    """An event whose encoding has the same length as any other with the same `data`."""
    return make_event(id=f"r{next(_ids):09d}", data=data, **fields)


def size_of(event: Event) -> int:
    return len(encode_msgpack(event))


async def offsets(engine: object, topic: str) -> list[int]:
    return [d.offset for d in await read_all(engine, topic)]  # type: ignore[arg-type]


async def test_the_first_matching_rule_applies_else_the_engine_wide_limits(
    make_engine: MakeEngine,
) -> None:
    rules = (
        RetentionRule(pattern="acme/logs/keep"),  # no limits: keeps everything
        RetentionRule(pattern="+/logs/#", max_per_topic=3),
        RetentionRule(pattern="+/docs/#"),
    )
    opened = await make_engine(EngineConfig(max_per_topic=2, retention=rules))
    engine = opened.engine
    topics = ["acme/logs/api", "acme/logs/keep", "acme/docs/a", "acme/other", "$audit/acme"]
    for _ in range(5):
        for topic in topics:
            await append(engine, topic)
    assert await offsets(engine, "acme/logs/api") == [3, 4, 5]
    assert await offsets(engine, "acme/logs/keep") == [1, 2, 3, 4, 5]  # the first rule won
    assert await offsets(engine, "acme/docs/a") == [1, 2, 3, 4, 5]
    assert await offsets(engine, "acme/other") == [4, 5]  # no rule: engine-wide
    assert await offsets(engine, "$audit/acme") == [4, 5]  # `+` does not match `$` topics
    assert not (await engine.read("acme/logs/api", None, 100)).exact
    assert (await engine.read("acme/logs/keep", None, 100)).exact
    assert (await engine.read("+/docs/#", None, 100)).exact
    assert not (await engine.read("+/logs/#", None, 100)).exact
    # Every event was delivered live, retained or not.
    assert len(opened.seen) == 25


async def test_retention_by_size_removes_the_oldest_until_under_the_limit(
    make_engine: MakeEngine,
) -> None:
    unit = size_of(sized("x" * 50))
    rule = RetentionRule(pattern="acme/logs/#", max_bytes=3 * unit + unit // 2)
    opened = await make_engine(EngineConfig(retention=(rule,)))
    engine = opened.engine
    acks = [await append(engine, "acme/logs/api", sized("x" * 50)) for _ in range(5)]
    page = await engine.read("acme/logs/api", None, 100)
    assert [d.offset for d in page.deliveries] == [3, 4, 5]
    assert not page.exact  # offsets 1 and 2 are gone
    assert (await engine.read("acme/logs/api", (acks[1].position,), 100)).exact
    assert not (await engine.read("acme/#", (acks[0].position,), 100)).exact
    assert (await engine.read("acme/#", (acks[1].position,), 100)).exact
    # A large event pushes out as many old ones as it takes: 3 + 2 units, then 2 + 2.
    big = sized("x" * 50 + "y" * unit)
    assert size_of(big) >= 2 * unit
    await append(engine, "acme/logs/api", big)
    assert await offsets(engine, "acme/logs/api") == [5, 6]
    await append(engine, "acme/logs/api", sized("x" * 50))
    assert await offsets(engine, "acme/logs/api") == [6, 7]
    # An event larger than the limit on its own: the newest is never removed,
    # so it stays alone until the next one.
    huge = sized("z" * (4 * unit))
    ack = await append(engine, "acme/logs/api", huge)
    assert ack.offset == 8
    assert opened.seen[-1].event == huge
    assert await offsets(engine, "acme/logs/api") == [8]
    assert (await append(engine, "acme/logs/api", sized("x" * 50))).offset == 9
    assert await offsets(engine, "acme/logs/api") == [9]
    # Other topics keep everything (no engine-wide limit).
    for _ in range(10):
        await append(engine, "acme/docs/a", sized("x" * 50))
    assert len(await offsets(engine, "acme/docs/a")) == 10


async def test_size_retention_counts_what_expiry_removed(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    """After expiry removed one event, its bytes are free again."""
    unit = size_of(sized())
    soon = datetime.fromtimestamp(clock.now + 5, UTC)
    assert size_of(sized(expirytime=soon)) >= unit
    opened = await make_engine(EngineConfig(max_bytes=3 * unit, sweep_interval=3600))
    engine = opened.engine
    await append(engine, "acme/a", sized(expirytime=soon))
    await append(engine, "acme/a", sized())
    clock.advance(5)
    assert await engine.sweep() == 1
    await append(engine, "acme/a", sized())
    await append(engine, "acme/a", sized())
    page = await engine.read("acme/a", None, 100)
    assert [d.offset for d in page.deliveries] == [2, 3, 4]
    assert page.exact  # expiry is no loss, and nothing else was removed
    await append(engine, "acme/a", sized())
    page = await engine.read("acme/a", None, 100)
    assert [d.offset for d in page.deliveries] == [3, 4, 5]
    assert not page.exact


async def test_count_and_size_limits_of_one_rule_both_hold(make_engine: MakeEngine) -> None:
    unit = size_of(sized())
    rule = RetentionRule(pattern="+/logs/+", max_per_topic=4, max_bytes=10 * unit)
    opened = await make_engine(EngineConfig(retention=(rule,)))
    engine = opened.engine
    for _ in range(6):
        await append(engine, "acme/logs/a", sized())
    assert await offsets(engine, "acme/logs/a") == [3, 4, 5, 6]  # the count bites first
    await append(engine, "acme/logs/a", sized("x" * (8 * unit)))
    assert await offsets(engine, "acme/logs/a") == [7]  # now the size does
    # `+/logs/+` matches one level only: a deeper topic has the engine-wide (no) limits.
    for _ in range(6):
        await append(engine, "acme/logs/a/deep", sized())
    assert len(await offsets(engine, "acme/logs/a/deep")) == 6


async def test_retention_by_age_per_rule(make_engine: MakeEngine, clock: FakeClock) -> None:
    rules = (
        RetentionRule(pattern="+/logs/#", max_age=10),
        RetentionRule(pattern="+/docs/#"),  # kept for ever
    )
    opened = await make_engine(EngineConfig(max_age=100, retention=rules, sweep_interval=3600))
    engine = opened.engine
    # The oldest events of the log are documents, kept for ever: age retention
    # of the other topics must look past them.
    for _ in range(3):
        await append(engine, "acme/docs/a")
    first_log = await append(engine, "acme/logs/api")
    await append(engine, "acme/other")
    clock.advance(11)
    for topic in ("acme/docs/a", "acme/logs/api", "acme/other"):
        await append(engine, topic)
    assert await engine.sweep() == 1  # the first log line, 11 s old
    assert await offsets(engine, "acme/logs/api") == [2]
    page = await engine.read("acme/logs/api", None, 100)
    assert not page.exact
    assert (await engine.read("acme/logs/api", (first_log.position,), 100)).exact
    assert (await engine.read("acme/docs/a", None, 100)).exact
    clock.advance(90)  # 101 s after the first events, 90 after the second
    assert await engine.sweep() == 2  # the other topic's first (engine-wide 100 s), the log's 2nd
    assert await offsets(engine, "acme/other") == [2]
    assert await offsets(engine, "acme/logs/api") == []
    assert await offsets(engine, "acme/docs/a") == [1, 2, 3, 4]
    assert (await engine.read("acme/docs/#", None, 100)).exact
    assert not (await engine.read("acme/#", None, 100)).exact
    # A topic emptied by age gets new events aged from their own append.
    await append(engine, "acme/logs/api")
    clock.advance(9)
    assert await engine.sweep() == 0
    assert await offsets(engine, "acme/logs/api") == [3]
    clock.advance(2)
    assert await engine.sweep() == 2  # and the other topic's second, now 101 s old
    assert await offsets(engine, "acme/logs/api") == []


async def test_the_sweeper_applies_rule_ages_on_its_own(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    rule = RetentionRule(pattern="+/logs/#", max_age=5)
    opened = await make_engine(EngineConfig(retention=(rule,), sweep_interval=0.01))
    engine = opened.engine
    await append(engine, "acme/docs/a")
    await append(engine, "acme/logs/api")
    clock.advance(6)
    for _ in range(500):
        await asyncio.sleep(0.01)
        if not await offsets(engine, "acme/logs/api"):
            break
    assert await offsets(engine, "acme/logs/api") == []
    assert await offsets(engine, "acme/docs/a") == [1]


async def test_rules_hold_across_a_restart(
    make_engine: MakeEngine, clock: FakeClock, durable: bool
) -> None:
    if not durable:
        pytest.skip("the memory engine keeps nothing across a restart")
    unit = size_of(sized())
    config = EngineConfig(
        retention=(RetentionRule(pattern="+/logs/#", max_bytes=5 * unit, max_age=50),),
        sweep_interval=3600,
    )
    first = await make_engine(config, name="restart")
    for _ in range(4):
        await append(first.engine, "acme/logs/api", sized())
    await first.engine.close()
    # The stored sizes count after a restart: one more fits, the next pushes one out.
    second = await make_engine(config, name="restart")
    await append(second.engine, "acme/logs/api", sized())
    assert await offsets(second.engine, "acme/logs/api") == [1, 2, 3, 4, 5]
    await append(second.engine, "acme/logs/api", sized())
    assert await offsets(second.engine, "acme/logs/api") == [2, 3, 4, 5, 6]
    await second.engine.close()
    # A smaller limit applies from the next append to the topic at the latest.
    smaller = EngineConfig(
        retention=(RetentionRule(pattern="+/logs/#", max_bytes=2 * unit, max_age=50),),
        sweep_interval=3600,
    )
    third = await make_engine(smaller, name="restart")
    await append(third.engine, "acme/logs/api", sized())
    assert await offsets(third.engine, "acme/logs/api") == [6, 7]
    # Ages count from the events' appends, not from the restart.
    clock.advance(51)
    assert await third.engine.sweep() == 2
    assert await offsets(third.engine, "acme/logs/api") == []


async def test_reset_forgets_sizes(make_engine: MakeEngine) -> None:
    unit = size_of(sized())
    opened = await make_engine(EngineConfig(max_bytes=2 * unit))
    engine = opened.engine
    await append(engine, "acme/a", sized())
    await append(engine, "acme/a", sized())
    await engine.reset()
    await append(engine, "acme/a", sized())
    await append(engine, "acme/a", sized())
    page = await engine.read("acme/a", None, 100)
    assert [d.offset for d in page.deliveries] == [1, 2]
    assert page.exact


# the setting itself (no engine) ------------------------------------------------


def test_rules_come_from_plain_data_as_a_config_file_gives_them() -> None:
    config = msgspec.convert(
        {
            "max_age": 86400,
            "retention": [
                {"pattern": "+/logs/#", "max_age": 3600, "max_bytes": 64 << 20},
                {"pattern": "+/docs/#"},
            ],
        },
        EngineConfig,
    )
    assert config.retention == (
        RetentionRule(pattern="+/logs/#", max_age=3600, max_bytes=64 << 20),
        RetentionRule(pattern="+/docs/#"),
    )


@pytest.mark.parametrize(
    "rule",
    [
        {"pattern": "a/#/b"},
        {"pattern": "a+"},
        {"pattern": ""},
        {"pattern": "a", "max_bytes": -1},
        {"pattern": "a", "max_age": -5},
        {"pattern": "a", "max_age": 0},
        {"pattern": "a", "max_per_topic": 0},  # a topic keeps at least its newest event
        {"pattern": "a", "max_size": 10},
    ],
)
def test_bad_rules_are_refused(rule: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"retention": [rule]}, EngineConfig)


def test_an_engine_wide_limit_below_1_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        EngineConfig(max_bytes=-1)
    with pytest.raises(ValueError, match="max_per_topic"):
        EngineConfig(max_per_topic=0)
