"""Inbound webhooks (issue 11): signed requests/s accepted durable, beside a bare verifier.

`hybridbus serve` (a subprocess, sqlite with synchronous=full, the default) with one
Standard Webhooks endpoint (`billing/{type}` from `$.type`, subject `$.data.id`) takes
signed ~300-byte JSON webhooks, each answered 200 only once its event is committed. The
peer is a bare aiohttp endpoint (a subprocess too) that only verifies the same signature
(`core.webhooks.standard_verify`) and answers 200: what any receiver must do at least.
The same client, in this process: `CONCURRENCY` aiohttp workers over keep-alive
connections, each request signed beforehand with a distinct `webhook-id` (so every one is
appended, none a duplicate), for `publish_seconds`. The figure is 200 answers per second;
the ratio to the bare endpoint is what durability, routing and the bus cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from benchmarks.harness import Result, Settings
from hybridbus.core.webhooks import (
    new_secret,
    parse_key,
    signing_key,
    standard_headers,
    standard_verify,
)

CONCURRENCY = 32
SECRET = new_secret()


def _body(n: int) -> bytes:
    event = {
        "type": "invoice.paid",
        "timestamp": "2026-12-05T10:00:00Z",
        "data": {"id": f"in_{n}", "amount": 4200, "currency": "eur", "customer": "cus_" + "x" * 40},
        "pad": "p" * 150,
    }
    return json.dumps(event).encode()


# -- the servers (run as `python -m benchmarks.webhooks <kind> <data dir> <port file>`) ------------


async def _bare(port_file: Path) -> None:
    keys = [parse_key(_shared_secret())]

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        standard_verify(request.headers, body, keys, time.time())
        return web.Response(status=200)

    app = web.Application()
    app.add_routes([web.post("/v1/webhooks/{tenant}/{endpoint}", receive)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file.write_text(str(runner.addresses[0][1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def _hybridbus(data: Path, port_file: Path) -> None:
    from hybridbus.core.webhook_routes import Endpoint
    from hybridbus.serve import serve
    from hybridbus.server.config import ServerConfig

    endpoint = Endpoint(
        name="billing",
        tenant="acme",
        secrets=[_shared_secret()],
        topic="billing/{type}",
        type="$.type",
        subject="$.data.id",
    )
    config = ServerConfig(
        port=0, engine=f"sqlite://{data}", webhooks=[endpoint], log_level="warning"
    )
    await serve(config, listening=lambda addresses: port_file.write_text(str(addresses[0][1])))


def _shared_secret() -> str:
    """The secret the servers take from the client that started them."""
    return os.environ["BENCH_WEBHOOK_SECRET"]


# -- the client -----------------------------------------------------------------------------------


async def _drive(port: int, seconds: float) -> float:
    url = f"http://127.0.0.1:{port}/v1/webhooks/acme/billing"
    key = [signing_key(SECRET)]
    accepted = 0
    failed = 0
    deadline = 0.0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted, failed
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            body = _body(n)
            headers = standard_headers(uuid.uuid4().hex, int(time.time()), body, key)
            headers["content-type"] = "application/json"
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    accepted += 1
                else:
                    failed += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up: the first requests open the connections.
        deadline = time.perf_counter() + min(0.5, seconds / 4)
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        accepted = failed = 0
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{failed} webhooks were refused")
    return accepted / elapsed


def _measure(kind: str, settings: Settings, tmp: Path) -> float:
    data = tmp / f"data-{kind}-{uuid.uuid4().hex[:6]}"
    port_file = tmp / f"port-{kind}"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.webhooks", kind, str(data), str(port_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        return asyncio.run(_drive(int(port_file.read_text()), settings.publish_seconds))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(settings: Settings, log: Callable[[str], None]) -> list[Result]:
    """Inbound webhooks/s: hybridbus (sqlite, durable) against the bare verifier."""
    runs: dict[str, list[float]] = {"hybridbus": [], "bare": []}
    with tempfile.TemporaryDirectory(dir=settings.tmpdir) as tmp:
        for _ in range(settings.runs):
            for kind in runs:
                figure = _measure(kind, settings, Path(tmp))
                runs[kind].append(figure)
                log(f"  webhooks {kind}: {figure:,.0f} requests/s")
    return [
        Result(
            id="webhooks.inbound.sqlite",
            group="webhooks",
            label="inbound webhooks accepted durable (sqlite), Standard Webhooks v1",
            unit="ops/s",
            runs=runs["hybridbus"],
            peer="webhooks.inbound.bare",
        ),
        Result(
            id="webhooks.inbound.bare",
            group="webhooks",
            label="bare aiohttp: verify the signature, answer 200",
            unit="ops/s",
            runs=runs["bare"],
            is_peer=True,
        ),
    ]


if __name__ == "__main__":
    kind, data_dir, port_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if kind == "bare":
        asyncio.run(_bare(port_path))
    else:
        asyncio.run(_hybridbus(data_dir, port_path))
