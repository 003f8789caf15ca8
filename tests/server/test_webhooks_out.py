"""Outbound webhooks in process: a bus, the registry and its senders, real HTTP receivers.

The receivers are aiohttp servers on 127.0.0.1 (so these tests switch
`allow_private` on) that succeed, fail, time out, answer 410 or slowly; they
check every request's signature with the `standardwebhooks` package from PyPI
and parse the CloudEvent with the `cloudevents` SDK. Retry waits are measured
on a `FakeClock` the tests move (the group's timer reads it every 10 ms of
real time); the HTTP timeouts and the rate limit run on real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook
from tests.support import FakeClock

import hybridbus
from hybridbus.core.webhooks import new_secret
from hybridbus.core.webhooks_out import Subscription, group_name
from hybridbus.errors import Forbidden, InvalidSettings
from hybridbus.hub.bus import Bus
from hybridbus.server.webhooks_out import EXHAUSTED_TYPE, Outbound, exhausted_topic

pytestmark = pytest.mark.timeout(60)

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


def status(code: int, body: str = "") -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=body)

    return answer


class Receiver:
    """An HTTP peer on 127.0.0.1 that verifies and keeps every request it gets.

    `behaviour` answers each request (it can be swapped while running);
    `clock` (if given) is read at each arrival, so retry times are fake seconds.
    """

    def __init__(self, secrets: list[str], clock: FakeClock | None = None) -> None:
        self.verifiers = [Webhook(s) for s in secrets]
        self.clock = clock
        self.behaviour: Behaviour = ok
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.port = 0
        self.groups: list[Any] = []  # the group whose retries `retry_at` watches
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        for verifier in self.verifiers:  # each active secret verifies on its own (rotation)
            verifier.verify(body, headers, json_parse=False)  # a body need not be JSON
        self.requests.append(
            {
                "headers": headers,
                "body": body,
                "time": time.monotonic(),
                "fake": self.clock.now if self.clock else 0.0,
            }
        )
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.behaviour(request)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def event(self, index: int = -1) -> Any:
        """The CloudEvent of request `index`, parsed by the cloudevents SDK."""
        request = self.requests[index]
        headers = {k.lower(): v for k, v in request["headers"].items()}
        message = ce_http.HTTPMessage(headers=headers, body=request["body"])
        return ce_http.from_http(message, JSONFormat())


@contextlib.asynccontextmanager
async def receiver(secrets: list[str], clock: FakeClock | None = None) -> AsyncIterator[Receiver]:
    peer = Receiver(secrets, clock)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@contextlib.asynccontextmanager
async def outbound(
    bus: Bus, *configured: Subscription, allow_private: bool = True, **kw: Any
) -> AsyncIterator[Outbound]:
    registry = Outbound(bus, configured, allow_private=allow_private, **kw)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()


def sub(url: str, secrets: list[str], **fields: Any) -> Subscription:
    return Subscription(
        name=fields.pop("name", "billing"),
        tenant="acme",
        pattern=fields.pop("pattern", "orders/#"),
        url=url,
        secrets=tuple(secrets),
        **fields,
    )


async def until(
    check: Callable[[], bool],
    clock: FakeClock | None = None,
    step: float = 0.0,
    timeout: float = 10.0,
) -> None:
    """Wait (real time) until `check()`; move the fake clock `step` per look."""
    async with asyncio.timeout(timeout):
        while not check():
            if clock is not None and step:
                clock.advance(step)
            await asyncio.sleep(0.01)


async def retry_at(peer: Receiver, clock: FakeClock, count: int, due: float) -> None:
    """Request number `count` is due at fake time `due`: not sent before, sent once due.

    The clock stands still but for two jumps, so how long a request takes in
    real time does not matter: the retry arrives at `due + 0.5` fake seconds.
    """
    group = None

    def waiting() -> bool:  # the failed delivery is back in the group, waiting
        nonlocal group
        group = group or next(iter(peer.groups))
        return any(
            e.attempts == count - 1 and e.member == "" and math.isfinite(e.due)
            for e in group.core.pending()
        )

    await until(waiting)
    assert group is not None
    (entry,) = group.core.pending()
    assert entry.due == pytest.approx(due)
    clock.now = due - 0.5
    await asyncio.sleep(0.1)  # ten turns of the group's timer
    assert len(peer.requests) == count - 1, "a retry came before it was due"
    clock.now = due + 0.5
    await until(lambda: len(peer.requests) == count)
    assert peer.requests[count - 1]["fake"] == due + 0.5


def ev(n: int | str, **fields: Any) -> dict[str, Any]:
    return {"id": f"o{n}", "source": "/shop", "type": "order.created", "data": {"n": n}, **fields}


@pytest.fixture
async def bus(clock: FakeClock) -> AsyncIterator[Bus]:
    async with hybridbus.open("memory://", clock=clock) as opened:
        yield opened


# -- delivering ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_events_arrive_signed_and_parse_as_cloudevents(
    bus: Bus, mode: str, clock: FakeClock
) -> None:
    old, new = new_secret(), new_secret()
    async with receiver([old, new]) as peer, outbound(bus, sub(peer.url, [old, new], mode=mode)):
        await bus.publish("acme/orders/7", ev(1, subject="order 7"))
        await bus.publish("acme/other/1", ev(2))  # not the pattern's
        await until(lambda: len(peer.requests) == 1)
        got = peer.event()
        assert (got.get_id(), got.get_source(), got.get_type()) == ("o1", "/shop", "order.created")
        assert got.get_subject() == "order 7"
        assert got.get_data() in ({"n": 1}, b'{"n":1}')
        headers = {k.lower(): v for k, v in peer.requests[0]["headers"].items()}
        content_type = headers["content-type"]
        expected = "application/cloudevents+json" if mode == "structured" else "application/json"
        assert content_type.startswith(expected)
        assert headers["hybridbus-topic"] == "orders/7"
        assert len(headers["webhook-signature"].split(" ")) == 2  # one per active secret
        await until(lambda: bus.groups.get("acme/webhook.billing").acked_total == 1)


async def test_webhook_id_is_the_same_on_retries_and_replays(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()
    async with (
        receiver([secret]) as peer,
        outbound(bus, sub(peer.url, [secret], schedule=(1.0,), jitter=0.0)) as registry,
    ):
        peer.behaviour = status(503)
        await bus.publish("acme/orders/1", ev(1))
        await until(lambda: len(peer.requests) == 1)
        peer.behaviour = ok
        await until(lambda: len(peer.requests) == 2, clock, 0.05)
        await registry.replay("acme", "billing", time=0)
        await until(lambda: len(peer.requests) == 3)
        ids = {r["headers"]["webhook-id"] for r in peer.requests}
        assert len(ids) == 1
        attempts = registry.get("acme", "billing").attempts.last()
        assert [(a.outcome, a.status, a.attempt) for a in attempts] == [
            ("delivered", 204, 1),
            ("delivered", 204, 2),
            ("failed", 503, 1),
        ]
        assert attempts[2].error == "HTTP 503"


async def test_retries_follow_the_schedule_then_dead_letter_and_exhausted_event(
    bus: Bus, clock: FakeClock
) -> None:
    secret = new_secret()
    async with (
        bus.subscribe(exhausted_topic("acme")) as exhausted,
        receiver([secret], clock) as peer,
        outbound(
            bus, sub(peer.url, [secret], schedule=(10.0, 20.0), jitter=0.0, max_deliveries=3)
        ) as registry,
    ):
        peer.behaviour = status(500, "down for maintenance " + "x" * 2000)
        await bus.publish("acme/orders/1", ev(1))
        await until(lambda: len(peer.requests) == 1)
        peer.groups.append(bus.groups.get("acme/webhook.billing"))
        first = peer.requests[0]["fake"]
        await retry_at(peer, clock, 2, first + 10.0)
        second = peer.requests[1]["fake"]
        await retry_at(peer, clock, 3, second + 20.0)
        await until(lambda: bool(bus.groups.dead_letters("acme/webhook.billing")))
        (dead,) = bus.groups.dead_letters("acme/webhook.billing")
        assert (dead.reason, dead.attempts, dead.error) == ("max_deliveries", 3, "HTTP 500")
        async with asyncio.timeout(10):
            announced = await exhausted.__anext__()
        assert announced.event.type == EXHAUSTED_TYPE
        assert announced.event.data["topic"] == "orders/1"
        assert announced.event.data["attempts"] == 3
        assert announced.event.data["dead_letter"] == dead.id
        attempts = registry.get("acme", "billing").attempts.last()
        assert [a.status for a in attempts] == [500, 500, 500]
        assert len(attempts[0].body.encode()) == 1024  # the first 1 KB of the answer
        assert attempts[0].body.startswith("down for maintenance")
        assert len(peer.requests) == 3


async def test_jitter_spreads_scheduled_waits(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()
    async with (
        receiver([secret], clock) as peer,
        outbound(bus, sub(peer.url, [secret], schedule=(100.0,), jitter=0.5, ordered=False)),
    ):
        peer.behaviour = status(500)
        await bus.publish_many("acme/orders/1", [ev(i) for i in range(8)])
        await until(lambda: len(peer.requests) == 8)
        group = bus.groups.get("acme/webhook.billing")
        await until(
            lambda: all(
                e.due != float("inf") and e.attempts == 1 and e.member == ""
                for e in group.core.pending()
            )
        )
        waits = [e.due - clock.now for e in group.core.pending()]
        assert all(50.0 - 1 <= w <= 150.0 for w in waits), waits
        assert len({round(w, 3) for w in waits}) > 1  # spread, not one instant


async def test_410_gone_disables_and_keeps_the_event(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()
    async with receiver([secret], clock) as peer:
        async with outbound(bus, sub(peer.url, [secret], schedule=(1.0,))) as registry:
            peer.behaviour = status(410)
            await bus.publish("acme/orders/1", ev(1))
            await until(lambda: not registry.get("acme", "billing").sub.enabled)
            found = registry.get("acme", "billing")
            assert found.disabled_reason == "the receiver answered 410 Gone"
            assert found.sender is None
            clock.advance(100)  # no member: nothing is sent again, however long it waits
            await asyncio.sleep(0.2)
            assert len(peer.requests) == 1
            info = await bus.groups.info("acme/webhook.billing")
            assert info.pending == 1  # kept, not lost
        # Stored: a new registry on the same bus sees it disabled.
        async with outbound(bus, sub(peer.url, [secret])) as registry:
            assert registry.get("acme", "billing").sub.enabled is False
            peer.behaviour = ok
            await registry.set_enabled("acme", "billing", True)
            await until(lambda: len(peer.requests) == 2, clock, 0.1)
            assert peer.event().get_id() == "o1"


async def test_timeouts_and_slow_answers(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(status=200, text="finally")

    async def stuck(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(status=200)

    async with (
        receiver([secret]) as peer,
        outbound(
            bus, sub(peer.url, [secret], timeout=1.0, schedule=(5.0,), jitter=0.0)
        ) as registry,
    ):
        peer.behaviour = slow
        await bus.publish("acme/orders/1", ev(1))
        log = registry.get("acme", "billing").attempts
        await until(lambda: log.total == 1)
        (done,) = log.last()
        assert (done.outcome, done.status, done.body) == ("delivered", 200, "finally")
        assert 0.3 <= done.latency < 1.0
        peer.behaviour = stuck
        await bus.publish("acme/orders/2", ev(2))
        await until(lambda: log.total == 2)
        late = log.last()[0]
        assert (late.outcome, late.status, late.error) == ("timeout", 0, "timeout (1 s)")
        # The attempt is cut at the subscription's timeout (1 s), not when the peer answers (30 s).
        assert late.latency >= 1.0, late.latency
        assert late.latency < 2.0, late.latency
        group = bus.groups.get("acme/webhook.billing")
        await until(lambda: any(e.error == "timeout (1 s)" for e in group.core.pending()))


async def test_concurrency_is_bounded(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    async with (
        receiver([secret]) as peer,
        outbound(bus, sub(peer.url, [secret], concurrency=3, ordered=False)),
    ):
        peer.behaviour = held
        await bus.publish_many("acme/orders/1", [ev(i) for i in range(10)])
        await until(lambda: peer.in_flight == 3)
        await asyncio.sleep(0.2)
        assert peer.most_in_flight == 3
        release.set()
        await until(lambda: len(peer.requests) == 10)
        assert peer.most_in_flight == 3


async def test_ordered_subscriptions_send_one_key_at_a_time(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()

    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=200)

    async with receiver([secret]) as peer, outbound(bus, sub(peer.url, [secret], concurrency=8)):
        peer.behaviour = slowish
        await bus.publish_many("acme/orders/1", [ev(i) for i in range(6)])
        await until(lambda: len(peer.requests) == 6)
        assert peer.most_in_flight == 1
        assert [peer.event(i).get_id() for i in range(6)] == [f"o{i}" for i in range(6)]


async def test_rate_limit_is_respected(bus: Bus, clock: FakeClock) -> None:
    secret = new_secret()
    async with (
        receiver([secret]) as peer,
        outbound(bus, sub(peer.url, [secret], rate=20.0, burst=1.0, ordered=False)),
    ):
        await bus.publish_many("acme/orders/1", [ev(i) for i in range(6)])
        await until(lambda: len(peer.requests) == 6)
        times = [r["time"] for r in peer.requests]
        # One token at first, then one every 1/20 s: 5 more take at least 0.25 s.
        assert times[-1] - times[0] >= 0.25 - 0.01


# -- SSRF ----------------------------------------------------------------------------------


async def test_creation_refuses_private_targets(bus: Bus) -> None:
    secret = new_secret()
    async with outbound(bus, allow_private=False) as registry:
        for url in (
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://localhost/x",
            "http://169.254.169.254/latest",
            "http://[::ffff:10.0.0.1]/",
        ):
            with pytest.raises(InvalidSettings, match="refused"):
                await registry.put(sub(url, [secret]))
        assert registry.all() == []


async def test_send_time_checks_resolved_addresses(bus: Bus, clock: FakeClock) -> None:
    """A name that resolves to a private address is refused before any connection."""
    secret = new_secret()
    looked: list[tuple[str, int]] = []

    async def lookup(host: str, port: int) -> list[str]:
        looked.append((host, port))
        return ["10.0.0.7", "fd00::1"]  # what a rebinding DNS answers at send time

    async with outbound(bus, allow_private=False, lookup=lookup) as registry:
        await registry.put(sub("http://hooks.example.com:8443/in", [secret], schedule=(1.0,)))
        await bus.publish("acme/orders/1", ev(1))
        log = registry.get("acme", "billing").attempts
        await until(lambda: log.total == 1)
        (refused,) = log.last()
        assert refused.outcome == "refused"
        assert "10.0.0.7 (private)" in refused.error and "fd00::1 (private)" in refused.error
        assert looked == [("hooks.example.com", 8443)]


# -- the registry ---------------------------------------------------------------------------


async def test_configured_subscriptions_cannot_be_replaced_or_deleted(bus: Bus) -> None:
    secret = new_secret()
    configured = sub("http://127.0.0.1:9/", [secret])
    async with outbound(bus, configured) as registry:
        with pytest.raises(Forbidden):
            await registry.put(sub("http://127.0.0.1:9/other", [secret]))
        with pytest.raises(Forbidden):
            await registry.delete("acme", "billing")
        disabled = await registry.set_enabled("acme", "billing", False)
        assert disabled.origin == "config" and not disabled.sub.enabled
    async with outbound(bus, configured) as registry:  # the stored `enabled` wins
        assert registry.get("acme", "billing").sub.enabled is False


async def test_delete_removes_the_group(bus: Bus) -> None:
    secret = new_secret()
    async with outbound(bus) as registry:
        await registry.put(sub("http://127.0.0.1:9/", [secret]))
        assert bus.groups.get(f"acme/{group_name('billing')}")
        await registry.delete("acme", "billing")
        assert registry.all() == []
        assert not bus.groups.active


async def test_a_restart_mid_retry_resumes_the_schedule(tmp_path: Path, clock: FakeClock) -> None:
    secret = new_secret()
    url = f"sqlite://{tmp_path / 'bus'}"
    async with receiver([secret], clock) as peer:
        peer.behaviour = status(500)
        async with hybridbus.open(url, clock=clock) as bus, outbound(bus) as registry:
            await registry.put(sub(peer.url, [secret], schedule=(30.0,), jitter=0.0))
            await bus.publish("acme/orders/1", ev(1))
            await until(lambda: len(peer.requests) == 1)
            group = bus.groups.get("acme/webhook.billing")
            await until(
                lambda: any(e.attempts == 1 and e.member == "" for e in group.core.pending())
            )
            failed_at = peer.requests[0]["fake"]
        clock.advance(10.0)  # down for 10 s of the 30 s wait
        peer.behaviour = ok
        async with hybridbus.open(url, clock=clock) as bus, outbound(bus) as registry:
            assert registry.get("acme", "billing").origin == "api"
            peer.groups[:] = [bus.groups.get("acme/webhook.billing")]
            await retry_at(peer, clock, 2, failed_at + 30.0)  # the wait goes on from before
            assert peer.event().get_id() == "o1"
            await until(lambda: bus.groups.get("acme/webhook.billing").acked_total == 1)
