"""`hybridbus serve --workers N` as a user runs it: one port, N processes, one supervisor.

Real processes: the parent is `python -m hybridbus serve --workers 2`, its
workers are the processes it starts; the node registry they share is a real
redis-server, so each worker shows up as a node. The supervision tests run
on `memory://` (each worker has its own bus: the fastest start); the last
test runs the workers on the Redis engine, where they are one bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import WsClient, event
from tests.services import RedisServer

from hybridbus.server.access import new_api_key

pytestmark = pytest.mark.timeout(60)

ADMIN_KEY, ADMIN_HASH = new_api_key()
ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """`hybridbus serve --workers N ...` in a subprocess; every process logs to one file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp / "serve.log"
        config = tmp / "serve.toml"
        config.write_text(
            'anonymous_tenant = "acme"\n'
            '[[roles.anonymous]]\nallow = "*"\ntopics = "#"\n'
            f'[[api_keys]]\nname = "ops"\nhash = "{ADMIN_HASH}"\nadmin = true\n'
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hybridbus", "serve", "--config", str(config), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "HYBRIDBUS_LOG_LEVEL": "info", **(env or {})},
                cwd=ROOT,
            )

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def record(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("message") == message]

    async def listening(self, count: int, timeout: float = 30.0) -> dict[int, int]:
        """Wait until `count` workers listen: their pids -> ports."""
        async with asyncio.timeout(timeout):
            while len(found := self.record("listening")) < count:
                assert self.process.poll() is None, self.log_path.read_text()
                await asyncio.sleep(0.05)
        return {r["pid"]: r["addresses"][0][1] for r in found}

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        """The parent and what is left of its workers, by pid (a failed test leaves none)."""
        pids = [self.process.pid, *(r["pid"] for r in self.record("listening"))]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


async def nodes(port: int) -> dict[str, Any]:
    """`GET /v1/nodes` on a new connection (the kernel picks the worker)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(timeout=10.0, headers=headers) as http:
        response = await http.get(f"http://127.0.0.1:{port}/v1/nodes")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def listed(port: int, count: int, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while len((answer := await nodes(port))["nodes"]) != count:
            await asyncio.sleep(0.05)
    return answer


def test_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hybridbus", "serve", "--workers", "2",
         "--engine", f"sqlite://{tmp_path}/data", "--port", "0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--workers 2 needs a shared engine (redis://...)" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


async def test_workers_share_one_port_and_one_that_dies_is_reported(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    redis = redis_server()
    env = {"HYBRIDBUS_REGISTRY": redis.url, "HYBRIDBUS_REGISTRY_TTL": "1"}
    workers = Workers(tmp_path, "--engine", "memory://", "--workers", "2", "--port", "0", env=env)
    try:
        ports = await workers.listening(2)
        assert len(ports) == 2 and workers.process.pid not in ports
        (port,) = set(ports.values())  # one port, two processes
        (started,) = workers.record("workers started")
        assert sorted(started["pids"]) == sorted(ports)
        assert workers.record("each worker has its own memory bus: clients on different "
                              "workers do not see each other's events (use a shared engine: "
                              "redis://...)")  # fmt: skip

        answer = await listed(port, 2)
        ids = [node["id"] for node in answer["nodes"]]
        assert [i.rsplit("-", 1)[1] for i in ids] == ["w1", "w2"]  # <host>-<parent pid>-w<i>
        assert {node["pid"] for node in answer["nodes"]} == set(ports)
        assert {node["addresses"][0] for node in answer["nodes"]} == {f"127.0.0.1:{port}"}
        # The kernel spreads new connections over both (2^-23 that 24 all go to one).
        answering = {(await nodes(port))["node"] for _ in range(24)}
        assert answering == set(ids)

        victim, survivor = sorted(ports)
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(10):
            while not (exited := workers.record("worker exited")):
                await asyncio.sleep(0.05)
        (report,) = exited
        assert report["worker_pid"] == victim
        assert report["signal"] == "SIGKILL"
        assert report["level"] == "error"
        answer = await listed(port, 1)  # its lease lapsed; the other answers every request
        assert [node["pid"] for node in answer["nodes"]] == [survivor]
        assert workers.process.poll() is None

        workers.process.send_signal(signal.SIGTERM)
        assert await workers.wait() == 1  # a worker failed
        assert len(workers.record("worker stopped")) == 1
    finally:
        workers.kill()


async def test_workers_on_a_redis_engine_are_one_bus(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    pytest.importorskip("hybridbus.engine.redis", reason="the Redis engine is not there yet")
    redis = redis_server()
    engine = redis.url + "?prefix=workers"
    workers = Workers(tmp_path, "--engine", engine, "--workers", "2", "--port", "0")
    try:
        ports = await workers.listening(2)
        (port,) = set(ports.values())
        answer = await listed(port, 2)  # the registry follows the engine: in its Redis
        assert answer["registry"] == "redis"
        assert not workers.record("each worker has its own memory bus: clients on different "
                                  "workers do not see each other's events (use a shared "
                                  "engine: redis://...)")  # fmt: skip
        async with WsClient.open(f"ws://127.0.0.1:{port}/v1/ws") as sub:
            assert (await sub.request("subscribe", pattern="docs/#"))["type"] == "reply"
            sent = []
            for n in range(16):  # each on a new connection: the kernel picks the worker
                sent.append(event(data={"n": n}))
                async with httpx.AsyncClient(timeout=10.0) as http:
                    response = await http.post(
                        f"http://127.0.0.1:{port}/v1/topics/acme/docs/1/events",
                        json=sent[-1],
                        headers={"content-type": "application/cloudevents+json"},
                    )
                assert response.status_code == 201, response.text
            pushes = await sub.events(16)  # every event, whichever worker took it, in order
        assert [p["event"]["id"] for p in pushes] == [e["id"] for e in sent]
        assert [p["offset"] for p in pushes] == list(range(1, 17))

        workers.process.send_signal(signal.SIGTERM)  # fans out: both stop gracefully
        assert await workers.wait() == 0
        assert len(workers.record("worker stopped")) == 2
        assert len(workers.record("deregistered")) == 2
    finally:
        workers.kill()
