"""The engine conformance suite, continued: consumer-group storage and replays (engine/base.py).

`groups` / `write_groups` keep each group's opaque state and entries apart
from the log; `append_many(dedupe=False)` appends a replay even inside the
dedupe window. Each test runs once per engine kind (the `engine_kind`
fixture in conftest).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from tests.support import MakeEngine, append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.base import Engine, GroupWrite, StoredGroup
from hybridbus.errors import BusClosed

Stored = dict[str, tuple[bytes, dict[str, bytes]]]


async def stored(engine: Engine) -> Stored:
    """What `groups()` returns, by group name (checking no name comes twice)."""
    found = await engine.groups()
    assert all(isinstance(g, StoredGroup) for g in found)
    by_name = {g.group: (g.state, g.entries) for g in found}
    assert len(by_name) == len(found)
    return by_name


def items(events: Sequence[Event], topic: str = "acme/a") -> list[tuple[str, Event, bytes]]:
    return [(topic, e, encode_msgpack(e)) for e in events]


async def test_a_memory_or_new_engine_starts_with_no_groups(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    assert await opened.engine.groups() == []
    await opened.engine.write_groups([])  # nothing to write is not an error
    assert await opened.engine.groups() == []


async def test_state_and_entries_round_trip(make_engine: MakeEngine) -> None:
    engine = (await make_engine()).engine
    blob = bytes(range(256)) * 4  # any bytes, NUL and high bytes included
    await engine.write_groups(
        [
            GroupWrite(group="acme/billing", state=b"s1", put=[("k1", b"v1"), ("k/2", blob)]),
            GroupWrite(group="acme/audit", state=b""),
        ]
    )
    assert await stored(engine) == {
        "acme/billing": (b"s1", {"k1": b"v1", "k/2": blob}),
        "acme/audit": (b"", {}),
    }
    await engine.write_groups([GroupWrite(group="acme/billing", state=b"s2")])  # entries kept
    assert (await stored(engine))["acme/billing"] == (b"s2", {"k1": b"v1", "k/2": blob})


async def test_one_write_drops_then_sets_state_then_puts_then_deletes(
    make_engine: MakeEngine,
) -> None:
    engine = (await make_engine()).engine
    await engine.write_groups([GroupWrite(group="g", state=b"old", put=[("a", b"1"), ("b", b"2")])])
    # drop first (old entries go), then state, then put, then delete (a key
    # both put and deleted in one write is gone).
    await engine.write_groups(
        [
            GroupWrite(
                group="g",
                drop=True,
                state=b"new",
                put=[("c", b"3"), ("d", b"4")],
                delete=["d", "a"],
            )
        ]
    )
    assert await stored(engine) == {"g": (b"new", {"c": b"3"})}
    # A drop alone deletes the group and its entries.
    await engine.write_groups([GroupWrite(group="g", drop=True)])
    assert await stored(engine) == {}


async def test_writes_apply_in_order_within_a_call(make_engine: MakeEngine) -> None:
    engine = (await make_engine()).engine
    await engine.write_groups(
        [
            GroupWrite(group="g", state=b"1", put=[("a", b"1"), ("b", b"1")]),
            GroupWrite(group="g", delete=["a"]),
            GroupWrite(group="g", put=[("a", b"2")], state=b"2"),  # put after the delete
            GroupWrite(group="h", state=b"h"),
            GroupWrite(group="h", drop=True),  # dropped after being created
            GroupWrite(group="i", state=b"i", put=[("x", b"1")]),
            GroupWrite(group="i", drop=True),
            GroupWrite(group="i", state=b"i2"),  # recreated empty: x does not come back
            GroupWrite(group="g", put=[("b", b"2")]),
            GroupWrite(group="g", put=[("b", b"3")], delete=["b"]),
        ]
    )
    assert await stored(engine) == {"g": (b"2", {"a": b"2"}), "i": (b"i2", {})}


async def test_put_replaces_and_deleting_an_absent_key_is_ignored(
    make_engine: MakeEngine,
) -> None:
    engine = (await make_engine()).engine
    await engine.write_groups([GroupWrite(group="g", state=b"s", put=[("k", b"old")])])
    await engine.write_groups([GroupWrite(group="g", put=[("k", b"new")], delete=["nope"])])
    await engine.write_groups([GroupWrite(group="g", delete=["nope", "never"])])
    assert await stored(engine) == {"g": (b"s", {"k": b"new"})}


async def test_a_write_without_state_to_an_unknown_group_stores_nothing(
    make_engine: MakeEngine,
) -> None:
    engine = (await make_engine()).engine
    await engine.write_groups([GroupWrite(group="ghost", put=[("k", b"v")], delete=["x"])])
    assert await stored(engine) == {}
    # Nor after a drop in the same call: the group has no state any more.
    await engine.write_groups(
        [
            GroupWrite(group="g", state=b"s"),
            GroupWrite(group="g", drop=True),
            GroupWrite(group="g", put=[("k", b"v")]),
        ]
    )
    assert await stored(engine) == {}
    # A later state does not bring back the entries put while it had none.
    await engine.write_groups([GroupWrite(group="g", state=b"s")])
    assert await stored(engine) == {"g": (b"s", {})}


async def test_what_groups_returns_is_a_snapshot(make_engine: MakeEngine) -> None:
    engine = (await make_engine()).engine
    await engine.write_groups([GroupWrite(group="g", state=b"s", put=[("k", b"v")])])
    before = await engine.groups()
    before[0].entries["mine"] = b"x"  # the caller's copy, not the engine's
    await engine.write_groups([GroupWrite(group="g", put=[("k2", b"v2")])])
    assert before[0].entries == {"k": b"v", "mine": b"x"}
    assert await stored(engine) == {"g": (b"s", {"k": b"v", "k2": b"v2"})}


async def test_reset_keeps_groups(make_engine: MakeEngine) -> None:
    engine = (await make_engine()).engine
    await append(engine, "acme/a")
    await engine.write_groups([GroupWrite(group="g", state=b"s", put=[("k", b"v")])])
    epoch = engine.epoch
    assert await engine.reset() != epoch
    assert await stored(engine) == {"g": (b"s", {"k": b"v"})}
    assert await read_all(engine, "#") == []


async def test_concurrent_group_writes_and_appends_all_apply(make_engine: MakeEngine) -> None:
    """200 `write_groups` calls and 200 appends at once: every one acked, stored, consistent."""
    opened = await make_engine()
    engine = opened.engine
    groups = [f"g{n}" for n in range(5)]
    await engine.write_groups([GroupWrite(group=g, state=b"0") for g in groups])
    expected: dict[str, dict[str, bytes]] = {g: {} for g in groups}
    states = dict.fromkeys(groups, b"0")
    rng = random.Random(7)
    calls: list[list[GroupWrite]] = []
    for n in range(200):
        group = groups[n % len(groups)]
        put = [(f"k{n}", f"v{n}".encode())]
        # Delete a key an earlier call put: the calls are queued in order, so it is there.
        earlier = sorted(expected[group])
        delete = [rng.choice(earlier)] if earlier and n % 3 == 0 else []
        state = f"{n}".encode()
        calls.append([GroupWrite(group=group, state=state, put=put, delete=delete)])
        expected[group].update(put)
        for key in delete:
            del expected[group][key]
        states[group] = state

    async def write(n: int) -> None:
        await engine.write_groups(calls[n])

    async def publish(n: int) -> None:
        await append(engine, f"acme/t{n % 3}")

    # gather starts them in this order, so each call is queued after the ones before it.
    results = await asyncio.gather(
        *(coro for n in range(200) for coro in (write(n), publish(n))), return_exceptions=True
    )
    assert [r for r in results if r is not None] == []
    assert await stored(engine) == {g: (states[g], expected[g]) for g in groups}
    appended = await read_all(engine, "acme/+", limit=100)
    assert len(appended) == 200
    assert len(opened.seen) == 200


async def test_write_groups_and_groups_after_close_raise(
    make_engine: MakeEngine, engine_kind: str
) -> None:
    engine = (await make_engine()).engine
    await engine.close()
    with pytest.raises(BusClosed):
        await engine.write_groups([GroupWrite(group="g", state=b"s")])
    with pytest.raises(BusClosed):
        await engine.write_groups([])


async def test_a_replay_appends_a_duplicate_key_again(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    engine = opened.engine
    original = await append(engine, "acme/a", make_event(source="/s", id="1"))
    replay = make_event(source="/s", id="1")
    acks = await engine.append_many(items([replay]), dedupe=False)
    assert len(acks) == 1
    assert not acks[0].duplicate
    assert (acks[0].topic, acks[0].offset) == ("acme/a", 2)
    assert acks[0].position > original.position
    assert [d.position for d in opened.seen] == [original.position, acks[0].position]
    # A normal append of the key now dedupes against the newest event: the replay.
    again = await append(engine, "acme/a", make_event(source="/s", id="1"))
    assert again.duplicate
    assert (again.topic, again.offset, again.position) == ("acme/a", 2, acks[0].position)
    # ... and so does a normal append_many.
    [batched] = await engine.append_many(items([make_event(source="/s", id="1")]))
    assert batched.duplicate and batched.position == acks[0].position
    assert [d.offset for d in await read_all(engine, "acme/a")] == [1, 2]


async def test_a_replay_batch_appends_every_item_and_later_items_dedupe_against_it(
    make_engine: MakeEngine,
) -> None:
    engine = (await make_engine()).engine
    first = await append(engine, "acme/a", make_event(source="/s", id="x"))
    # The same key twice in one replay: both appended.
    acks = await engine.append_many(
        items([make_event(source="/s", id="x"), make_event(source="/s", id="x")]), dedupe=False
    )
    assert [a.duplicate for a in acks] == [False, False]
    assert [a.offset for a in acks] == [2, 3]
    assert acks[0].position > first.position
    # Concurrent with a normal append of the key queued after it: that one is a duplicate.
    replayed, normal = await asyncio.gather(
        engine.append_many(items([make_event(source="/s", id="x")]), dedupe=False),
        append(engine, "acme/a", make_event(source="/s", id="x")),
    )
    assert not replayed[0].duplicate and replayed[0].offset == 4
    assert normal.duplicate and normal.position == replayed[0].position
    assert len(await read_all(engine, "acme/a")) == 4
