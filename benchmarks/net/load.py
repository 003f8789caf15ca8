"""The load client: `python -m benchmarks.net.load ROLE KIND PORT OPTIONS_JSON`.

Run as a subprocess pinned away from the server (see `procs.ClientProcess`); prints JSON
lines: `{"ready": …}` once set up (then, for the roles that wait, reads a command line on
stdin), and its result last. Every role stops by itself: bounded counts and timeouts.

Roles:
- `fanout`: N subscribers + one publisher sending bursts of 100 events and waiting for
  them to be taken; deliveries/s from the first publish until every subscriber has all.
- `subscribe`: N subscribers over T topics (+ idle connections that only answer the
  heartbeat); records receive time - send time of every event (10 µs histogram, overall
  and per 10-second window); on `stop SENT` waits for what it should get and reports loss.
- `publish`: the open-loop publisher: events at a fixed rate on a fixed schedule, each in a
  frame of its own, never waiting for answers (a reader drains them); prints its figures,
  then stays connected until a line on stdin.
- `idle`: K connections held open (ready), then on `go` each subscribes to a topic of its
  own (ready again); the parent reads the server's RSS in between.
- `catchup`: subscribe (taking the position), unsubscribe, have E events published, then
  subscribe with `since`: ms until all E arrived.
- `herd`: N subscribers of one pattern, E events published while they are away, then all
  reconnect at once with `since`: time until all N x E arrived, server RSS meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import sys
import time
from typing import Any

from benchmarks.harness import run_async
from benchmarks.net.kinds import Kind, Scan, kind_for
from benchmarks.net.procs import cpu_seconds, raise_nofile, rss_kib
from benchmarks.net.stats import Histogram

__all__ = ["main"]

BURST = 100
WINDOW_S = 10.0


def _emit(payload: dict[str, Any]) -> None:
    """One JSON line on stdout, written whole.

    After `uvloop.run`, `print` of a line longer than the pipe's buffer (64 KiB) wrote its
    first 64 KiB and dropped the rest without an error (seen here: the result of 2,000
    subscribers in one process); writing the bytes with `os.write` until all are out does not.
    """
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    left = memoryview((json.dumps(payload) + "\n").encode())
    while left:
        try:
            left = left[os.write(fd, left) :]
        except BlockingIOError:
            select.select([], [fd], [])


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _open_many(kind: Kind, count: int, step: int = 200) -> list[Any]:
    conns: list[Any] = []
    for first in range(0, count, step):
        conns += await asyncio.gather(*(kind.open() for _ in range(min(step, count - first))))
    return conns


async def _subscribe_many(kind: Kind, conns: list[Any], channels: list[str]) -> list[Any]:
    out: list[Any] = []
    step = 200
    for first in range(0, len(conns), step):
        out += await asyncio.gather(
            *(
                kind.subscribe(conn, channels[first + i])
                for i, conn in enumerate(conns[first : first + step])
            )
        )
    return out


def _ignore(n: int, stamps: object) -> None:
    return None


def _topic(prefix: str, topics: int, i: int) -> str:
    return prefix if topics == 1 else f"{prefix}/{i % topics}"


class _Cpu:
    """This process's CPU share over a phase (is the client its own bottleneck?)."""

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def pct(self) -> float:
        wall = time.perf_counter() - self.wall
        return 100.0 * (time.process_time() - self.cpu) / wall if wall > 0 else 0.0


# -- fan-out --------------------------------------------------------------------------


async def fanout(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    subscribers, events = opts["subscribers"], opts["events"]
    mode = opts.get("mode", "t")  # "per-message" for the bare per-frame case
    conns = await _open_many(kind, subscribers)
    await _subscribe_many(kind, conns, ["t"] * subscribers)
    publisher = await kind.open_publisher()
    await asyncio.sleep(0.2)
    expected = events * subscribers
    got = 0
    done = asyncio.Event()

    def on_events(n: int, _: object) -> None:
        nonlocal got
        got += n
        if got >= expected:
            done.set()

    tasks = [asyncio.create_task(kind.consume(c, on_events)) for c in conns]
    pid = opts.get("server_pid")
    cpu0 = cpu_seconds(pid) if pid else 0.0
    me = _Cpu()
    start = time.perf_counter()
    for first in range(0, events, BURST):
        await kind.publish_burst(publisher, min(BURST, events - first), mode)
    waiter = asyncio.create_task(done.wait())
    finished, _ = await asyncio.wait([waiter, *tasks], timeout=120, return_when="FIRST_COMPLETED")
    elapsed = time.perf_counter() - start
    for task in finished:
        if task is not waiter and task.exception():
            raise task.exception()  # type: ignore[misc]
    if not done.is_set():
        raise RuntimeError(f"fan-out incomplete: {got} of {expected} deliveries")
    server_cpu = cpu_seconds(pid) - cpu0 if pid else None
    return {
        "deliveries_per_s": got / elapsed,
        "seconds": elapsed,
        "server_cpu_s": server_cpu,
        "client_cpu_pct": me.pct(),
    }


# -- open-loop latency: subscribers and publisher --------------------------------------


async def subscribe(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    n, topics, prefix = opts["subscribers"], opts.get("topics", 1), opts.get("prefix", "t")
    offset = opts.get("offset", 0)  # this process's first subscriber, of all processes
    conns = await _open_many(kind, n)
    channels = [_topic(prefix, topics, offset + i) for i in range(n)]
    await _subscribe_many(kind, conns, channels)
    idle = await _open_many(kind, opts.get("idle", 0))
    received = [0] * n
    hist = Histogram()
    windows: list[Histogram] = []
    origin = time.time()
    clock = time.time

    def sink(i: int) -> Any:
        def on_events(n: int, stamps: list[float] | None) -> None:
            received[i] += n
            now = clock()
            w = int((now - origin) / WINDOW_S)
            while len(windows) <= w:
                windows.append(Histogram())
            window = windows[w]
            for ts in stamps or ():
                if ts > 0:  # 0: a warm-up event
                    hist.add(now - ts)
                    window.add(now - ts)

        return on_events

    tasks = [
        asyncio.create_task(kind.consume(c, sink(i), want_ts=True)) for i, c in enumerate(conns)
    ]
    tasks += [asyncio.create_task(kind.consume(c, _ignore)) for c in idle]
    _emit({"ready": n + len(idle)})
    me = _Cpu()
    while not (line := (await _stdin_line()).split()) or line[0] != "stop":
        if not line:
            raise RuntimeError("stdin closed before stop")
    sent = int(line[1])
    expected = [
        sent // topics + (1 if (offset + i) % topics < sent % topics else 0) for i in range(n)
    ]
    deadline = time.monotonic() + opts.get("grace", 10.0)
    while received != expected and time.monotonic() < deadline:
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.05)
    for task in tasks:
        if task.done() and task.exception():
            raise task.exception()  # type: ignore[misc]
        task.cancel()
    lost = sum(max(0, e - r) for e, r in zip(expected, received, strict=True))
    return {
        "hist": hist.as_json(),
        "windows": [w.as_json() for w in windows],
        "received": sum(received),
        "expected": sum(expected),
        "lost": lost,
        "client_cpu_pct": me.pct(),
    }


async def publish(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = opts["rate"], opts["seconds"]
    topics, prefix = opts.get("topics", 1), opts.get("prefix", "t")
    warmup = int(rate * opts.get("warmup_s", 0.5))
    total = warmup + int(rate * seconds)
    pub = await kind.open_publisher()
    drain = asyncio.create_task(kind.drain_answers(pub))
    channels = [_topic(prefix, topics, i) for i in range(topics)]
    pid = opts.get("server_pid")
    cpu0 = cpu_seconds(pid) if pid else 0.0
    me = _Cpu()
    start = time.perf_counter()
    lag = 0.0
    sleep = asyncio.sleep
    clock = time.perf_counter
    for i in range(total):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await sleep(delay)
        else:
            lag = max(lag, -delay)
        await kind.publish_one(pub, channels[i % topics], time.time() if i >= warmup else 0.0)
        if drain.done():
            drain.result()
    elapsed = time.perf_counter() - start
    server_cpu = cpu_seconds(pid) - cpu0 if pid else None
    result = {
        "sent": total,
        "measured": total - warmup,
        "seconds": elapsed,
        "max_lag_ms": lag * 1e3,
        "server_cpu_pct": 100.0 * server_cpu / elapsed if server_cpu is not None else None,
        "client_cpu_pct": me.pct(),
    }
    # Stay connected until the parent says the subscribers are done: a server still
    # working through this connection's backlog may drop it when the connection closes.
    _emit(result)
    await _stdin_line()
    if drain.done():
        drain.result()
    drain.cancel()
    return {}


# -- memory: idle connections, then one subscription each -------------------------------


async def idle(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    conns = await _open_many(kind, opts["connections"])
    tasks = [asyncio.create_task(kind.consume(c, _ignore)) for c in conns]
    _emit({"ready": len(conns), "connect_s": time.perf_counter() - start})
    await _stdin_line()
    await _subscribe_many_idle(kind, conns)
    _emit({"ready": len(conns), "subscribed": True})
    await _stdin_line()  # held open until the parent has read the RSS
    for task in tasks:
        task.cancel()
    return {}


async def _subscribe_many_idle(kind: Kind, conns: list[Any]) -> None:
    """Subscribe each connection to a topic of its own (`m/<i>`), without reading the
    replies here: the connection's reader task is already consuming them."""
    step = 500
    for first in range(0, len(conns), step):
        for i, c in enumerate(conns[first : first + step]):
            n = first + i
            if kind.name.startswith("hybridbus"):
                c.send(f'{{"type":"subscribe","id":7,"pattern":"m/{n}"}}')
            elif kind.name == "centrifugo":
                c.send(f'{{"id":7,"subscribe":{{"channel":"m/{n}"}}}}')
            elif kind.name == "nats":
                c.write(f"SUB m.{n} 1\r\n".encode())
            else:  # bare: one shared fan-out set
                c.send("sub")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # every subscription is in place


# -- catch-up ---------------------------------------------------------------------------


async def catchup(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    events = opts["events"]
    channel = kind.channel("c", history=True)
    sub = await kind.open()
    since = await kind.subscribe(sub, channel)
    await kind.close(sub)
    publisher = await kind.open_publisher()
    for first in range(0, events, BURST):
        await kind.publish_burst(publisher, min(BURST, events - first), channel)
    conn = await kind.open()
    pid = opts.get("server_pid")
    got = 0
    done = asyncio.get_running_loop().create_future()

    def on_events(n: int, _: object) -> None:
        nonlocal got
        got += n
        if got >= events and not done.done():
            done.set_result(None)

    scan = Scan(kind, conn, on_events, want_ts=False)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    await kind.subscribe(conn, channel, since)
    conn.scan(scan)
    await asyncio.wait([done, conn.ended], timeout=60, return_when="FIRST_COMPLETED")
    elapsed = time.perf_counter() - start
    if scan.error or got < events:
        raise RuntimeError(f"catch-up: {got} of {events} events; {scan.error}")
    return {
        "ms": elapsed * 1e3,
        "received": got,
        "events": events,
        "recovered": scan.recovered,
        "server_cpu_ms": (cpu_seconds(pid) - cpu0) * 1e3 if pid else None,
    }


# -- the reconnect herd -----------------------------------------------------------------


async def herd(kind: Kind, opts: dict[str, Any]) -> dict[str, Any]:
    n, events, pid = opts["subscribers"], opts["events"], opts["server_pid"]
    live = opts.get("live", 100)
    centrifugo = kind.name == "centrifugo"
    pattern = kind.channel("storm", history=True) if centrifugo else "storm/#"
    topics = [pattern] if centrifugo else [f"storm/{k}" for k in range(10)]
    conns = await _open_many(kind, n)
    await _subscribe_many(kind, conns, [pattern] * n)
    publisher = await kind.open_publisher()
    got = 0
    expected = n * live

    done = asyncio.Event()

    def count(n: int, _: object) -> None:
        nonlocal got
        got += n
        if got >= expected:
            done.set()

    tasks = [asyncio.create_task(kind.consume(c, count)) for c in conns]
    since: Any = None
    for first in range(0, live, BURST):  # the steady state: live fan-out
        since = await kind.publish_burst(publisher, min(BURST, live - first), topics[0])
    while got < expected:
        await asyncio.sleep(0.05)
        if any(t.done() for t in tasks):
            raise RuntimeError("herd: a subscriber ended before the steady state")
    await asyncio.sleep(0.5)
    steady_kib = rss_kib(pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(kind.close(c) for c in conns), return_exceptions=True)
    for first in range(0, events, BURST):  # the subscribers are away; `since` stays
        await kind.publish_burst(
            publisher, min(BURST, events - first), topics[(first // BURST) % len(topics)]
        )
    await asyncio.sleep(0.5)
    before_kib = rss_kib(pid)
    got = 0
    expected = n * events
    done.clear()
    peak_kib = before_kib
    cpu0 = cpu_seconds(pid)
    me = _Cpu()
    start = time.perf_counter()

    async def rejoin() -> None:
        conn = await kind.open()
        await kind.subscribe(conn, pattern, since)
        await kind.consume(conn, count)

    tasks = [asyncio.create_task(rejoin()) for _ in range(n)]
    deadline = start + opts.get("timeout", 300.0)
    while got < expected and time.perf_counter() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.05)
        peak_kib = max(peak_kib, rss_kib(pid))
        failed = [t for t in tasks if t.done()]
        if failed:
            raise RuntimeError(f"herd: a subscriber ended: {failed[0].exception()!r}")
    elapsed = time.perf_counter() - start
    server_cpu = cpu_seconds(pid) - cpu0
    for task in tasks:
        task.cancel()
    return {
        "seconds": elapsed,
        "deliveries": got,
        "expected": expected,
        "complete": got >= expected,
        "deliveries_per_s": got / elapsed,
        "steady_rss_mib": steady_kib / 1024,
        "before_rss_mib": before_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "server_cpu_pct": 100.0 * server_cpu / elapsed,
        "client_cpu_pct": me.pct(),
    }


ROLES = {
    "fanout": fanout,
    "subscribe": subscribe,
    "publish": publish,
    "idle": idle,
    "catchup": catchup,
    "herd": herd,
}


async def _main(role: str, kind_name: str, port: int, opts: dict[str, Any]) -> dict[str, Any]:
    if role == "durable":
        from benchmarks.net.durable import durable

        return await durable(kind_name, port, opts)
    async with kind_for(kind_name, port, opts.get("ca")) as kind:  # "ca": over TLS
        return await ROLES[role](kind, opts)


def main(argv: list[str]) -> None:
    role, kind_name, port, options = argv
    raise_nofile()
    sys.setrecursionlimit(10_000)
    _emit(run_async(_main(role, kind_name, int(port), json.loads(options))))


if __name__ == "__main__":
    main(sys.argv[1:])
