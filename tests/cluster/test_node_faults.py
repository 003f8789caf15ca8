"""A node killed with kill -9 under publish load: real `hybridbus serve` processes, one real Redis.

Node A takes the publishers and a subscriber, node B another subscriber. A dies
mid-stream (SIGKILL: no shutdown, no flush). Every event A acked reaches B's
subscriber exactly once, in per-topic order, and A's subscriber reconnects to B
with its last resume token and recovers exactly: `recovered=true`, and what it saw
before the kill plus what B sends it is B's stream, with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.cluster.faults import Follower, Publisher, serving, until
from tests.servers import WsClient, event
from tests.services import RedisServer

pytestmark = pytest.mark.timeout(60)

PATTERN = "docs/#"
TOPICS = ("docs/1", "docs/2")


async def test_a_node_killed_under_publish_load_loses_no_acked_event(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    pytest.importorskip("hybridbus.engine.redis", reason="needs the Redis engine")
    redis = redis_server()
    async with (
        serving(tmp_path, redis.url + "?prefix=kill", "a", "b") as (a, b),
        Follower.open(b.url, PATTERN) as on_b,
        Follower.open(a.url, PATTERN) as on_a,
        WsClient.open(a.url) as c1,
        WsClient.open(a.url) as c2,
        WsClient.open(a.url) as c3,
        WsClient.open(a.url) as c4,
    ):
        publishers = [
            Publisher(client, f"p{n}", TOPICS[n % 2]) for n, client in enumerate((c1, c2, c3, c4))
        ]
        stop = asyncio.Event()  # a bound only: the kill ends them
        running = [asyncio.create_task(p.run(stop, limit=5_000)) for p in publishers]
        await until(lambda: sum(len(p.acked) for p in publishers) >= 300, what="300 acks on A")
        await a.kill()  # kill -9, mid-stream
        await asyncio.wait_for(asyncio.gather(*running), 30)
        assert all(p.broken for p in publishers)  # each saw its node die
        acked = [ack for p in publishers for ack in p.acked]
        assert len(acked) >= 300 and not any(p.refused for p in publishers)

        # A marker per topic through B: once a subscriber has it, it has everything before.
        markers = [event(id=f"marker-{topic}") for topic in TOPICS]
        async with WsClient.open(b.url) as publisher:
            for topic, marker in zip(TOPICS, markers, strict=True):
                answer = await publisher.request("publish", topic=topic, event=marker)
                assert answer["type"] == "reply", answer
        marker_ids = {m["id"] for m in markers}
        await until(lambda: marker_ids <= on_b.ids(), what="B's subscriber reads the markers")

        # Every acked event reached B's subscriber exactly once, in per-topic order.
        delivered = on_b.seen()
        counts = collections.Counter(id for _, _, id in delivered)
        assert all(counts[ack.id] == 1 for ack in acked), "an acked event not delivered once"
        assert {(ack.topic, ack.offset, ack.id) for ack in acked} <= set(delivered)
        for topic in TOPICS:
            offsets = [offset for t, offset, _ in delivered if t == topic]
            assert offsets == list(range(1, len(offsets) + 1)), topic  # no gap, in order

        # A's subscriber: its connection died with A; it resumes on B from its last token.
        assert on_a.closed is not None
        before = on_a.seen()
        assert before == delivered[: len(before)] and before  # what it had was B's stream
        async with Follower.open(b.url, PATTERN, since=on_a.token) as resumed:
            assert resumed.result["recovered"] is True
            await until(lambda: marker_ids <= resumed.ids(), what="the resumed one reads them")
            assert before + resumed.seen() == delivered  # exact: no gap, no duplicate
