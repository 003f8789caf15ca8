"""Outbound webhooks (issue 11): deliveries/s from the bus to a local receiver.

A bus on sqlite (synchronous=full, the default) in this process holds a backlog of
`EVENTS` ~300-byte JSON events on distinct topics; an outbound webhook subscription
(`server.webhooks_out.Outbound`, the one `hybridbus serve` runs) is created from the
beginning of the log and sends them, each POSTed in binary mode with its Standard Webhooks
signature, to an aiohttp receiver in a subprocess that verifies the signature
(`core.webhooks.standard_verify`) and answers 204. The figure is events acked (the group's
durable ack after the 2xx) per second, from the subscription's start to the last ack.
Cases: unordered with concurrency 32, and ordered (per-key order, every event its own
key) with the default concurrency 8.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

import hybridbus
from benchmarks.harness import Result, Settings
from hybridbus.core.webhooks import new_secret, parse_key, standard_verify
from hybridbus.core.webhooks_out import Subscription
from hybridbus.server.webhooks_out import Outbound

EVENTS = 3_000
SECRET = new_secret()
CASES = {"unordered": {"ordered": False, "concurrency": 32}, "ordered": {"concurrency": 8}}


async def _receiver(port_file: Path) -> None:
    keys = [parse_key(os.environ["BENCH_WEBHOOK_SECRET"])]

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        standard_verify(request.headers, body, keys, time.time())
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/hook", receive)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file.write_text(str(runner.addresses[0][1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def _deliver(port: int, data: Path, events: int, fields: dict[str, object]) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        pad = "p" * 250
        batch = [
            (
                f"acme/orders/{n}",
                {"id": f"o{n}", "source": "/shop", "type": "order", "data": {"n": n, "pad": pad}},
            )
            for n in range(events)
        ]
        for start in range(0, events, 1000):
            await bus.publish_many(batch[start : start + 1000])
        sub = Subscription(
            name="bench",
            tenant="acme",
            pattern="orders/#",
            url=f"http://127.0.0.1:{port}/hook",
            secrets=(SECRET,),
            start="earliest",
            **fields,  # type: ignore[arg-type]
        )
        registry = Outbound(bus, allow_private=True)
        await registry.start()
        try:
            started = time.perf_counter()
            await registry.put(sub)
            group = bus.groups.get("acme/webhook.bench")
            while group.acked_total < events:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            failed = [a for a in registry.get("acme", "bench").attempts.last() if a.error]
            if failed:
                raise RuntimeError(f"deliveries failed: {failed[0].error}")
        finally:
            await registry.close()
    return events / elapsed


def _measure(case: str, settings: Settings, tmp: Path) -> float:
    port_file = tmp / f"port-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "BENCH_WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.webhooks_out", str(port_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        events = 300 if settings.smoke else EVENTS
        data = tmp / f"data-{case}-{uuid.uuid4().hex[:6]}"
        return asyncio.run(_deliver(int(port_file.read_text()), data, events, CASES[case]))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(settings: Settings, log: Callable[[str], None]) -> list[Result]:
    """Outbound deliveries/s to a local receiver, unordered and ordered."""
    runs: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(dir=settings.tmpdir) as tmp:
        for _ in range(settings.runs):
            for case in CASES:
                figure = _measure(case, settings, Path(tmp))
                runs[case].append(figure)
                log(f"  webhooks_out {case}: {figure:,.0f} deliveries/s")
    return [
        Result(
            id="webhooks.outbound.unordered",
            group="webhooks_out",
            label="outbound webhook deliveries to a local receiver, unordered, concurrency 32",
            unit="deliveries/s",
            runs=runs["unordered"],
        ),
        Result(
            id="webhooks.outbound.ordered",
            group="webhooks_out",
            label="outbound webhook deliveries, per-key order (a key per event), concurrency 8",
            unit="deliveries/s",
            runs=runs["ordered"],
        ),
    ]


if __name__ == "__main__":
    asyncio.run(_receiver(Path(sys.argv[1])))
