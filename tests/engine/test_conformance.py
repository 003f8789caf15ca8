"""The engine conformance suite: one contract (engine/base.py), every engine.

Each test runs once per engine kind (the `engine_kind` fixture in conftest).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from tests.support import FakeClock, MakeEngine, append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.revocation import Revocation, RevocationKind
from hybridbus.engine.base import EngineConfig
from hybridbus.errors import BusClosed, InvalidPosition


async def test_offsets_are_gap_free_per_topic_and_positions_increase(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()
    acks = [
        await append(opened.engine, topic) for topic in ["a/x", "a/y", "a/x", "b", "a/x", "a/y"]
    ]
    assert [(a.topic, a.offset) for a in acks] == [
        ("a/x", 1),
        ("a/y", 1),
        ("a/x", 2),
        ("b", 1),
        ("a/x", 3),
        ("a/y", 2),
    ]
    positions = [a.position for a in acks]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert all(a.epoch == opened.engine.epoch and not a.duplicate for a in acks)
    assert await opened.engine.head() == (positions[-1],)


async def test_listener_sees_each_append_in_log_order_before_its_ack(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()

    async def one(i: int) -> None:
        event = make_event()
        ack = await opened.engine.append(f"t/{i % 3}", event, encode_msgpack(event))
        seen = [d for d in opened.seen if d.position == ack.position]
        assert len(seen) == 1
        assert seen[0].event == event
        assert (seen[0].topic, seen[0].offset) == (ack.topic, ack.offset)

    await asyncio.gather(*(one(i) for i in range(60)))
    positions = [d.position for d in opened.seen]
    assert positions == sorted(positions)
    assert len(opened.seen) == 60


async def test_many_concurrent_publishers_keep_order_and_lose_nothing(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()
    acked: dict[str, list[tuple[int, str]]] = defaultdict(list)

    async def publisher(p: int) -> None:
        rng = random.Random(p)
        for n in range(40):
            topic = f"acme/t{rng.randrange(5)}"
            event = make_event(source=f"/p{p}", id=str(n))
            ack = await opened.engine.append(topic, event, encode_msgpack(event))
            acked[topic].append((ack.offset, event.id))
            if n % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(publisher(p) for p in range(50)))
    total = sum(len(v) for v in acked.values())
    assert total == 2000
    for topic, entries in acked.items():
        offsets = sorted(o for o, _ in entries)
        assert offsets == list(range(1, len(entries) + 1)), topic
        stored = await read_all(opened.engine, topic, limit=300)
        assert [d.offset for d in stored] == offsets
    # The listener saw each topic in offset order.
    last: dict[str, int] = defaultdict(int)
    for d in opened.seen:
        assert d.offset == last[d.topic] + 1
        last[d.topic] = d.offset


async def test_read_pages_by_topic_and_pattern(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    engine = opened.engine
    for i in range(30):
        await append(engine, ["acme/docs/1", "acme/docs/2", "acme/chat/1"][i % 3])
    docs1 = await read_all(engine, "acme/docs/1")
    assert [d.offset for d in docs1] == list(range(1, 11))
    docs = await read_all(engine, "acme/docs/+")
    assert len(docs) == 20
    assert [d.position for d in docs] == sorted(d.position for d in docs)
    assert {d.topic for d in docs} == {"acme/docs/1", "acme/docs/2"}
    # Continue from the middle.
    after = (docs[9].position,)
    assert await read_all(engine, "acme/docs/+", after) == docs[10:]
    # At the head, an empty read says so and points at the head.
    page = await engine.read("acme/docs/+", await engine.head(), 100)
    assert page.deliveries == [] and not page.more and page.exact
    assert page.positions == await engine.head()
    # A full last page of exactly `limit` deliveries is not "more".
    page = await engine.read("acme/docs/1", None, 10)
    assert len(page.deliveries) == 10 and not page.more
    # A limit of 0 reads nothing, says there is more, and does not move.
    for pattern in ("acme/docs/1", "acme/docs/+"):
        page = await engine.read(pattern, after, 0)
        assert (page.deliveries, page.more, page.positions) == ([], True, after)
        page = await engine.read(pattern, None, 0)
        assert (page.deliveries, page.more, page.positions) == ([], True, (0,))


async def test_wildcard_semantics(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    engine = opened.engine
    for topic in ["acme", "acme/a", "acme/a/b", "globex/a", "$audit/acme", "acme/b/b"]:
        await append(engine, topic)

    async def topics(pattern: str) -> list[str]:
        return [d.topic for d in await read_all(engine, pattern)]

    assert await topics("acme/#") == ["acme", "acme/a", "acme/a/b", "acme/b/b"]
    assert await topics("acme/+") == ["acme/a"]
    assert await topics("+/a") == ["acme/a", "globex/a"]
    assert await topics("acme/+/b") == ["acme/a/b", "acme/b/b"]
    assert "$audit/acme" not in await topics("#")
    assert await topics("$audit/#") == ["$audit/acme"]
    assert await topics("nobody/#") == []


async def test_topics_lists_names_and_last_offsets_by_prefix(make_engine: MakeEngine) -> None:
    opened = await make_engine(EngineConfig(max_per_topic=1))
    engine = opened.engine
    for topic in ["acme/b", "acme/a", "acme/a", "acmeco/x", "globex/a", "acme/a/deep", "$dlq/g/a"]:
        await append(engine, topic)

    async def listed(prefix: str, after: str = "", limit: int = 100) -> list[tuple[str, int]]:
        return [(t.topic, t.offset) for t in await engine.topics(prefix, after, limit)]

    # By code point ('$' < 'a', '/' < 'c'); the offset is the last one, even
    # though count retention kept only one event of acme/a.
    assert await listed("") == [
        ("$dlq/g/a", 1),
        ("acme/a", 2),
        ("acme/a/deep", 1),
        ("acme/b", 1),
        ("acmeco/x", 1),
        ("globex/a", 1),
    ]
    assert await listed("acme/") == [("acme/a", 2), ("acme/a/deep", 1), ("acme/b", 1)]
    assert await listed("acme/a/deep/") == []
    assert await listed("zz") == []
    # Paging: `after` is the last name of the previous page.
    assert await listed("acme", limit=2) == [("acme/a", 2), ("acme/a/deep", 1)]
    assert await listed("acme", after="acme/a/deep", limit=2) == [("acme/b", 1), ("acmeco/x", 1)]
    assert await listed("acme", after="acmeco/x") == []
    assert await listed("", limit=0) == []
    await engine.reset()
    assert await listed("") == []


async def test_dedupe_answers_with_the_original(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine(EngineConfig(dedupe_window=60))
    engine = opened.engine
    event = make_event(source="/s", id="same")
    first = await append(engine, "t/a", event)
    await append(engine, "t/a")
    again = await append(engine, "t/b", make_event(source="/s", id="same"))
    assert again.duplicate
    assert (again.topic, again.offset, again.position) == (
        first.topic,
        first.offset,
        first.position,
    )
    other_source = await append(engine, "t/a", make_event(source="/other", id="same"))
    assert not other_source.duplicate and other_source.offset == 3
    # Another tenant's event with the same source and id is another event.
    other_tenant = await append(engine, "u/a", make_event(source="/s", id="same"))
    assert not other_tenant.duplicate and other_tenant.topic == "u/a"
    assert len(await read_all(engine, "#")) == 4
    assert len(opened.seen) == 4
    clock.advance(61)
    later = await append(engine, "t/a", make_event(source="/s", id="same"))
    assert not later.duplicate and later.offset == 4


async def test_dedupe_within_one_burst(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    event = make_event(source="/s", id="burst")
    acks = await asyncio.gather(*(append(opened.engine, "a", event) for _ in range(20)))
    assert sum(not a.duplicate for a in acks) == 1
    assert {(a.offset, a.position) for a in acks} == {(1, acks[0].position)}
    assert len(await read_all(opened.engine, "a")) == 1


async def test_retention_by_count_per_topic(make_engine: MakeEngine) -> None:
    opened = await make_engine(EngineConfig(max_per_topic=3))
    engine = opened.engine
    acks = [await append(engine, "a") for _ in range(5)]
    b = await append(engine, "b")
    await engine.sweep()
    page = await engine.read("a", None, 100)
    assert [d.offset for d in page.deliveries] == [3, 4, 5]
    assert not page.exact  # offsets 1 and 2 are gone
    assert (await engine.read("a", (acks[1].position,), 100)).exact
    assert (await engine.read("b", None, 100)).exact
    assert not (await engine.read("#", None, 100)).exact
    assert (await engine.read("#", (acks[1].position,), 100)).exact
    assert (await engine.read("+", (b.position,), 100)).exact
    assert (await append(engine, "a")).offset == 6  # offsets never restart


async def test_retention_by_age(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine(EngineConfig(max_age=10, sweep_interval=3600))
    engine = opened.engine
    old = [await append(engine, "a") for _ in range(3)]
    clock.advance(11)
    new = await append(engine, "a")
    assert await engine.sweep() == 3
    page = await engine.read("a", None, 100)
    assert [d.offset for d in page.deliveries] == [new.offset]
    assert not page.exact
    assert (await engine.read("a", (old[-1].position,), 100)).exact


async def test_expired_events_are_never_read(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine(EngineConfig(sweep_interval=3600))
    engine = opened.engine
    soon = datetime.fromtimestamp(clock.now + 5, UTC)
    await append(engine, "a", make_event(expirytime=soon))
    keep = await append(engine, "a")
    assert len(await read_all(engine, "a")) == 2
    clock.advance(5)
    page = await engine.read("a", None, 100)
    assert [d.position for d in page.deliveries] == [keep.position]
    assert page.exact  # expiry is not a loss: the event was never to be delivered
    assert await engine.sweep() == 1
    assert (await engine.read("#", None, 100)).exact


async def test_reset_begins_a_new_epoch(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    engine = opened.engine
    await append(engine, "a")
    before = engine.epoch
    assert await engine.reset() == engine.epoch != before
    assert (await engine.read("#", None, 100)).deliveries == []
    ack = await append(engine, "a")
    assert (ack.offset, ack.epoch) == (1, engine.epoch)


async def test_restart_keeps_history_iff_durable(make_engine: MakeEngine, durable: bool) -> None:
    first = await make_engine(name="restart")
    acks = [await append(first.engine, "a") for _ in range(3)]
    epoch = first.engine.epoch
    await first.engine.close()
    second = await make_engine(name="restart")
    stored = await read_all(second.engine, "a")
    if durable:
        assert second.engine.epoch == epoch
        assert [d.offset for d in stored] == [1, 2, 3]
        assert [d.position for d in stored] == [a.position for a in acks]
        assert (await append(second.engine, "a")).offset == 4
    else:
        assert second.engine.epoch != epoch
        assert stored == []


async def test_close_resolves_in_flight_appends_then_refuses(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    engine = opened.engine
    pending = [asyncio.ensure_future(append(engine, "a")) for _ in range(50)]
    await asyncio.sleep(0)
    await engine.close()
    acks = await asyncio.gather(*pending)
    assert sorted(a.offset for a in acks) == list(range(1, 51))
    with pytest.raises(BusClosed):
        await append(engine, "a")


async def test_deliveries_carry_the_event_and_times(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    opened = await make_engine()
    expiry = datetime.fromtimestamp(clock.now + 100, UTC)
    event = make_event(
        data={"k": [1, 2]}, expirytime=expiry, tenantid="acme", extensions={"traceparent": "00-ab"}
    )
    await append(opened.engine, "acme/x", event)
    (stored,) = (await opened.engine.read("acme/x", None, 10)).deliveries
    assert stored.event == event
    assert stored.time == clock.now
    assert stored.expires == pytest.approx(clock.now + 100)
    assert stored == opened.seen[0]


async def test_count_retention_counts_events_not_offsets(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    """After expiry removed one event, the topic holds the limit again before trimming."""
    opened = await make_engine(EngineConfig(max_per_topic=3, sweep_interval=3600))
    engine = opened.engine
    soon = datetime.fromtimestamp(clock.now + 5, UTC)
    await append(engine, "a", make_event(expirytime=soon))
    await append(engine, "a")
    await append(engine, "a")
    clock.advance(5)
    assert await engine.sweep() == 1
    await append(engine, "a")
    page = await engine.read("a", None, 100)
    assert [d.offset for d in page.deliveries] == [2, 3, 4]
    assert page.exact
    await append(engine, "a")
    page = await engine.read("a", None, 100)
    assert [d.offset for d in page.deliveries] == [3, 4, 5]
    assert not page.exact


async def test_a_position_of_another_shard_count_is_refused(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    await append(opened.engine, "a")
    with pytest.raises(InvalidPosition):
        await opened.engine.read("a", (0, 0), 10)
    with pytest.raises(InvalidPosition):
        await opened.engine.read("a", (), 10)


# revocations -----------------------------------------------------------------


def revocation(
    clock: FakeClock,
    kind: RevocationKind = "token",
    value: str = "t1",
    *,
    tenant: str = "acme",
    lasts: float = 3600,
    at: float | None = None,
    reason: str = "",
) -> Revocation:
    """A revocation made now (or `at`), live for `lasts` seconds from now."""
    made = clock.now if at is None else at
    return Revocation(
        kind=kind, tenant=tenant, value=value, until=clock.now + lasts, at=made, reason=reason
    )


def by_key(revocations: list[Revocation]) -> dict[tuple[str, str, str], Revocation]:
    found = {r.key: r for r in revocations}
    assert len(found) == len(revocations), "a key is listed twice"
    return found


async def test_revoke_then_revocations_lists_it(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine()
    engine = opened.engine
    assert await engine.revocations() == []
    stored = [
        revocation(clock, "token", "jti-1", reason="leaked"),
        revocation(clock, "session", "sid-1"),
        revocation(clock, "user", "alice", lasts=7200),
        revocation(clock, "user", "alice", tenant="globex"),
    ]
    for r in stored:
        await engine.revoke(r)
    assert by_key(await engine.revocations()) == {r.key: r for r in stored}
    # Revocations are not events: no delivery, no position.
    assert opened.seen == []
    assert await engine.head() == (0,)
    assert (await engine.read("#", None, 10)).deliveries == []


async def test_revoking_a_key_again_keeps_the_later_until_and_at(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    opened = await make_engine()
    engine = opened.engine
    start = clock.now
    await engine.revoke(revocation(clock, "user", "alice", lasts=100, reason="first"))
    clock.advance(10)
    await engine.revoke(revocation(clock, "user", "alice", lasts=50, reason="second"))
    # An older revocation arriving late only widens `until`.
    await engine.revoke(revocation(clock, "user", "alice", lasts=500, at=start + 1, reason="late"))
    (kept,) = await engine.revocations()
    assert kept == Revocation(
        kind="user", tenant="acme", value="alice", until=start + 510, at=start + 10, reason="second"
    )
    # The newest revocation, for less long: the later `at` and its reason, the longer `until`.
    clock.advance(10)
    await engine.revoke(revocation(clock, "user", "alice", lasts=5, reason="third"))
    assert await engine.revocations() == [
        Revocation(
            kind="user",
            tenant="acme",
            value="alice",
            until=start + 510,
            at=start + 20,
            reason="third",
        )
    ]
    # Other kinds and tenants of the same value are other keys.
    await engine.revoke(revocation(clock, "session", "alice"))
    await engine.revoke(revocation(clock, "user", "alice", tenant="globex"))
    assert len(await engine.revocations()) == 3


async def test_expired_revocations_are_not_listed_and_are_swept(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    opened = await make_engine(EngineConfig(sweep_interval=3600))
    engine = opened.engine
    start = clock.now
    await engine.revoke(revocation(clock, "token", "short", lasts=10))
    await engine.revoke(revocation(clock, "token", "long", lasts=100))
    await engine.revoke(revocation(clock, "token", "past", lasts=-1))  # stored, never listed
    assert sorted(r.value for r in await engine.revocations()) == ["long", "short"]
    clock.advance(10)  # `short` ends now: until is not after the clock
    assert [r.value for r in await engine.revocations()] == ["long"]
    # Not yet swept: with the clock back, it is listed again.
    clock.now = start
    assert sorted(r.value for r in await engine.revocations()) == ["long", "short"]
    clock.now = start + 10
    assert await engine.sweep() == 0  # revocations are not counted as events
    clock.now = start
    assert [r.value for r in await engine.revocations()] == ["long"]  # deleted for good
    clock.now = start + 100
    await engine.sweep()
    clock.now = start
    assert await engine.revocations() == []


async def test_the_sweeper_forgets_expired_revocations_on_its_own(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    opened = await make_engine(EngineConfig(sweep_interval=0.01))
    engine = opened.engine
    start = clock.now
    await engine.revoke(revocation(clock, "token", "t1", lasts=5))
    await engine.revoke(revocation(clock, "token", "t2", lasts=500))
    clock.advance(6)
    for _ in range(300):
        await asyncio.sleep(0.01)
        clock.now = start  # peek at what is still stored, then let time run on
        left = [r.value for r in await engine.revocations()]
        clock.now = start + 6
        if left == ["t2"]:
            break
    assert left == ["t2"]


async def test_many_revocations(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine()
    engine = opened.engine
    many = [
        revocation(clock, ("token", "session", "user")[i % 3], f"v{i}", lasts=1 + i)
        for i in range(600)
    ]
    await asyncio.gather(*(engine.revoke(r) for r in many))
    assert by_key(await engine.revocations()) == {r.key: r for r in many}
    # Appends and revocations interleaved all land.
    results = await asyncio.gather(
        *(
            append(engine, "a") if i % 2 else engine.revoke(revocation(clock, "token", f"x{i}"))
            for i in range(100)
        )
    )
    assert sorted(a.offset for a in results if a is not None) == list(range(1, 51))
    assert len(await engine.revocations()) == 650
    clock.advance(300)  # half of `many` ended
    assert len(await engine.revocations()) == 650 - 300


async def test_reset_keeps_revocations(make_engine: MakeEngine, clock: FakeClock) -> None:
    opened = await make_engine()
    engine = opened.engine
    kept = revocation(clock, "session", "s1")
    await engine.revoke(kept)
    await append(engine, "a")
    await engine.reset()
    assert await engine.revocations() == [kept]


async def test_restart_keeps_revocations_iff_durable(
    make_engine: MakeEngine, clock: FakeClock, durable: bool
) -> None:
    first = await make_engine(name="revoked")
    stored = [revocation(clock, "token", "t1"), revocation(clock, "user", "u1", reason="fired")]
    for r in stored:
        await first.engine.revoke(r)
    await first.engine.close()
    with pytest.raises(BusClosed):
        await first.engine.revoke(revocation(clock, "token", "t2"))
    second = await make_engine(name="revoked")
    found = by_key(await second.engine.revocations())
    assert found == ({r.key: r for r in stored} if durable else {})


async def test_deliveries_carry_the_events_stored_bytes(make_engine: MakeEngine) -> None:
    """`Delivery.payload` is the event's MessagePack as appended, read or live.

    An engine with `read_stored` (a consumer group's read) gives the same
    deliveries, each event decoded from its bytes only when asked for.
    """
    opened = await make_engine()
    engine = opened.engine
    events = [make_event(partitionkey=f"k{n}" if n % 2 else None) for n in range(5)]
    for event in events:
        await engine.append("t/a", event, encode_msgpack(event))
    assert [d.payload for d in opened.seen] == [encode_msgpack(e) for e in events]
    page = await engine.read("t/#", None, 10)
    assert [d.payload for d in page.deliveries] == [encode_msgpack(e) for e in events]
    assert [d.event for d in page.deliveries] == events
    read_stored = getattr(engine, "read_stored", None)
    if read_stored is not None:
        stored = await read_stored("t/#", None, 10)
        assert [d.position for d in stored.deliveries] == [d.position for d in page.deliveries]
        assert stored.positions == page.positions and stored.more == page.more
        assert [d.identity() for d in stored.deliveries] == [
            (e.source, e.id, e.partitionkey) for e in events
        ]
        assert [d.payload for d in stored.deliveries] == [encode_msgpack(e) for e in events]
        assert [d.event for d in stored.deliveries] == events
