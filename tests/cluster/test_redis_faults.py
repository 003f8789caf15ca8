"""Redis faults under a running `hybridbus serve`: what clients see, through the server.

A real `hybridbus serve` subprocess on a real redis-server (tests/services) that
the test restarts without persistence, kills with kill -9 under AOF
`appendfsync always`, or pauses with SIGSTOP for 5 s, while clients publish and
subscribe over WebSocket (and HTTP). What docs/scale-out.md's failure table
promises is checked from the clients' side: no silent gap (a lost log is a new
epoch and `recovered=false`), no acked event lost, refusals retriable (1301,
HTTP 503), and the server serving again afterwards. tests/engine/test_redis.py
checks the same faults on the engine alone.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cluster.faults import Acked, Follower, Publisher, history, serving, until
from tests.servers import WsClient, event
from tests.services import RedisServer

import hybridbus.client
from hybridbus.errors import ContinuityLost

pytestmark = pytest.mark.timeout(60)

PATTERN = "docs/#"


@pytest.fixture(autouse=True)
def _redis_engine() -> None:
    pytest.importorskip("hybridbus.engine.redis", reason="needs the Redis engine")


async def published(url: str, topic: str, id: str, seconds: float = 15.0) -> dict[str, Any]:
    """Publish one event, again on each retriable refusal, for up to `seconds`: its ack."""
    async with WsClient.open(url) as client, asyncio.timeout(seconds):
        while True:
            answer = await client.request("publish", topic=topic, event=event(id=id))
            if answer["type"] == "reply":
                return dict(answer["result"])
            assert (answer["code"], answer["retriable"]) == (1301, True), answer
            await asyncio.sleep(0.05)


async def test_redis_restarted_without_persistence_is_a_new_epoch_never_a_silent_gap(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    redis = redis_server()  # no AOF, no snapshots: a restart loses everything
    async with (
        serving(tmp_path, redis.url + "?timeout=1", "n", "m") as (node, other),
        Follower.open(node.url, PATTERN) as live,
        Follower.open(other.url, PATTERN) as elsewhere,  # on another node
    ):
        before = [await published(node.url, "docs/1", f"old-{n}") for n in range(5)]
        await until(lambda: len(live.events) == 5, what="the live subscriber has them")
        saved = live.token  # a client's saved token, from the old epoch
        old_epoch = before[0]["epoch"]

        await asyncio.to_thread(redis.restart)
        after = await published(node.url, "docs/1", "new-1")  # publishing works again
        assert after["epoch"] != old_epoch  # the lost log is a new epoch ...
        assert (after["offset"], after["duplicate"]) == (1, False)  # ... starting over

        # A client resuming from its old token is told: recovered=false, at the head.
        async with Follower.open(node.url, PATTERN, since=saved) as resumed:
            assert resumed.result["recovered"] is False
            assert resumed.result["epoch"] == after["epoch"]
            assert resumed.result["position"] == f"{after['epoch']}-{after['position']}"
            later = await published(node.url, "docs/2", "new-2")
            await until(lambda: "new-2" in resumed.ids(), what="live events after it")
            assert [push["event"]["id"] for push in resumed.events] == ["new-2"]
        events, exact = await history(node.url, PATTERN)  # history from nothing: the new log
        assert [e["event"]["id"] for e in events] == ["new-1", "new-2"]
        assert exact
        assert later["epoch"] == after["epoch"]
        # Subscribers that stayed connected, on both nodes, had every event of the old
        # epoch; a node cannot know whether it missed any another node acked before the
        # loss, so their subscriptions end (1200) before the new epoch's first event ...
        for i, follower in enumerate((live, elsewhere)):
            await until(lambda f=follower: f.ended is not None, what="subscriptions end")
            assert follower.ended is not None and follower.ended["code"] == 1200
            assert [push["event"]["id"] for push in follower.events] == [
                f"old-{n}" for n in range(5)
            ]
            # ... and subscribing again from their token says so: recovered=false.
            async with Follower.open(node.url, PATTERN, since=follower.token) as again:
                assert again.result["recovered"] is False
                await published(node.url, "docs/1", f"again-{i}")
                await until(lambda a=again: len(a.events) == 1, what="the new epoch's events")


async def test_a_node_behind_when_redis_lost_its_data_ends_its_live_subscriptions(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    """Node m is stopped (SIGSTOP: a long GC pause, a slow host) while node n acks events
    that m has not read, then Redis restarts without them. m cannot deliver them: its
    live subscribers must be told (`unsubscribed` 1200, then `recovered=false` from their
    token), not handed the new epoch's events after a silent gap."""
    redis = redis_server()
    python: list[str] = []  # what the Python client's subscription yields: ids, and gaps

    async def follow(sub: Any) -> None:
        while True:
            try:
                python.append((await anext(sub)).event.id)
            except ContinuityLost:
                python.append("<gap>")

    async with (
        serving(tmp_path, redis.url + "?timeout=1", "n", "m") as (n, m),
        Follower.open(m.url, PATTERN) as live,
        hybridbus.client.connect(m.url) as client,
        client.subscribe(PATTERN) as sub,
    ):
        reading = asyncio.create_task(follow(sub))
        for i in range(3):
            await published(n.url, "docs/1", f"old-{i}")
        await until(lambda: len(live.events) == 3, what="m's subscriber has the first ones")
        await until(lambda: len(python) == 3, what="and the Python client's")
        m.signal(signal.SIGSTOP)
        try:
            lost = [await published(n.url, "docs/1", f"lost-{i}") for i in range(3)]
            await asyncio.to_thread(redis.restart)  # without persistence: they are gone
            await published(n.url, "docs/1", "new-1")
        finally:
            m.signal(signal.SIGCONT)
        await published(n.url, "docs/1", "new-2")
        await until(lambda: live.ended is not None or "new-2" in live.ids(), what="m goes on")
        got = live.ids()
        assert "lost-2" not in got  # stopped, m could read one more XREAD reply at most
        assert lost[-1]["epoch"] == live.result["epoch"]  # acked by n, in the old epoch
        # m missed acked events: it must not go on as if nothing happened.
        assert live.ended is not None, f"a silent gap: {sorted(got)}"
        assert live.ended["code"] == 1200, live.ended
        assert not {"new-1", "new-2"} & got
        async with Follower.open(m.url, PATTERN, since=live.token) as again:
            assert again.result["recovered"] is False  # told, never a silent gap
            later = await published(n.url, "docs/1", "new-3")
            await until(lambda: "new-3" in again.ids(), what="it follows the new epoch")
            assert later["offset"] == 3
        # The Python client resubscribes by itself and raises the gap once, then goes on.
        await until(lambda: "new-3" in python, what="the Python client goes on")
        reading.cancel()
        gap = python.index("<gap>")
        assert python[:gap] == [f"old-{i}" for i in range(3)] + python[3:gap]
        assert set(python[3:gap]) <= {"lost-0"} and python[-1] == "new-3"
        assert python.count("<gap>") == 1 and not {"lost-1", "lost-2"} & set(python)


async def test_redis_killed_with_aof_always_loses_no_acked_event(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    redis = redis_server("--appendonly", "yes", "--appendfsync", "always")
    async with (
        serving(tmp_path, redis.url + "?timeout=1", "n") as (node,),
        Follower.open(node.url, PATTERN) as live,
        WsClient.open(node.url) as c1,
        WsClient.open(node.url) as c2,
        WsClient.open(node.url) as c3,
        WsClient.open(node.url) as c4,
    ):
        publishers = [
            Publisher(client, f"p{n}", f"docs/{n % 2}") for n, client in enumerate((c1, c2, c3, c4))
        ]
        stop = asyncio.Event()
        running = [asyncio.create_task(p.run(stop, limit=5_000)) for p in publishers]

        def count() -> int:
            return sum(len(p.acked) for p in publishers)

        await until(lambda: count() >= 200, what="200 acks")
        epoch = publishers[0].acked[0].epoch
        redis.kill()  # kill -9 under load
        await asyncio.sleep(0.5)
        killed_at = count()
        await asyncio.to_thread(redis.start)  # same port, same directory: the AOF replays
        await until(lambda: count() >= killed_at + 200, what="200 acks after the restart")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)

        acked = [ack for p in publishers for ack in p.acked]
        assert not any(p.broken for p in publishers)  # the node stayed up throughout
        assert {ack.epoch for ack in acked} == {epoch}  # nothing lost: the same epoch
        refused = [code for p in publishers for code in p.refused]
        assert refused and set(refused) == {1301}  # the crash was refused retriably
        events, exact = await history(node.url, PATTERN)
        assert exact
        stored = [(e["topic"], e["offset"], e["event"]["id"]) for e in events]
        assert {(a.topic, a.offset, a.id) for a in acked} <= set(stored)  # 0 acked lost
        assert len({id for _, _, id in stored}) == len(stored)  # retries appended once
        for topic in ("docs/0", "docs/1"):
            offsets = [offset for t, offset, _ in stored if t == topic]
            assert offsets == list(range(1, len(offsets) + 1)), topic
        # The live subscriber saw every acked event once, in per-topic order.
        await until(lambda: {a.id for a in acked} <= live.ids(), what="deliveries")
        assert collections.Counter(live.seen()).most_common(1)[0][1] == 1
        assert [s for s in live.seen() if s in set(stored)] == live.seen()


async def http_publisher(
    base: str, name: str, stop: asyncio.Event, acked: list[Acked], refused: list[int]
) -> None:
    """POST events one by one until `stop`; a 503 (1301) is retried with the same event."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        n = 1
        while not stop.is_set():
            sent = event(id=f"{name}-{n}", source=f"/{name}", data={"n": n})
            response = await http.post(
                "/v1/topics/acme/docs/h/events",
                json=sent,
                headers={"content-type": "application/cloudevents+json"},
            )
            if response.status_code in (200, 201):  # 200: a retry, appended the first time
                (ack,) = response.json()["acks"]
                acked.append(
                    Acked("docs/h", ack["offset"], sent["id"], ack["epoch"], ack["position"])
                )
                n += 1
                continue
            assert response.status_code == 503, response.text
            assert response.json()["code"] == 1301, response.text
            assert "retry-after" in response.headers
            refused.append(response.json()["code"])
            await asyncio.sleep(0.05)


async def test_a_paused_redis_delays_or_refuses_publishes_retriably_and_loses_none(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    redis = redis_server()
    async with (
        serving(tmp_path, redis.url + "?timeout=1", "n") as (node,),
        Follower.open(node.url, PATTERN) as live,
        WsClient.open(node.url) as c1,
        WsClient.open(node.url) as c2,
    ):
        publishers = [Publisher(c, f"w{n}", "docs/w") for n, c in enumerate((c1, c2))]
        http_acked: list[Acked] = []
        http_refused: list[int] = []
        stop = asyncio.Event()
        base = f"http://127.0.0.1:{node.port}"
        running = [asyncio.create_task(p.run(stop, limit=100_000)) for p in publishers]
        running += [
            asyncio.create_task(http_publisher(base, f"h{n}", stop, http_acked, http_refused))
            for n in range(2)
        ]

        def count() -> int:
            return sum(len(p.acked) for p in publishers) + len(http_acked)

        await until(lambda: count() >= 100, what="100 acks")
        redis.pause()  # SIGSTOP
        paused = time.monotonic()
        await asyncio.sleep(5)
        redis.resume()  # SIGCONT
        await asyncio.sleep(0)
        resumed_at = count()
        await until(lambda: count() >= resumed_at + 100, what="100 acks after the resume")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)
        assert time.monotonic() - paused >= 5

        assert node.process.poll() is None  # the server stayed up
        ws_refused = [code for p in publishers for code in p.refused]
        assert set(ws_refused) <= {1301} and set(http_refused) <= {1301}
        assert ws_refused and http_refused  # refused retriably while paused (timeout=1)
        acked = [ack for p in publishers for ack in p.acked] + http_acked
        assert not any(p.broken for p in publishers)
        assert len({ack.epoch for ack in acked}) == 1
        events, exact = await history(node.url, PATTERN)
        assert exact
        stored = {(e["topic"], e["offset"], e["event"]["id"]) for e in events}
        assert {(a.topic, a.offset, a.id) for a in acked} <= stored  # none acked and lost
        await until(lambda: {a.id for a in acked} <= live.ids(), what="subscribers see all")
        for topic in ("docs/w", "docs/h"):
            offsets = [push["offset"] for push in live.events if push["topic"] == topic]
            assert offsets == list(range(1, len(offsets) + 1)), topic
        assert (await published(node.url, "docs/after", "after"))["offset"] == 1  # serves on
