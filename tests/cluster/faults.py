"""Helpers of the fault tests: real `hybridbus serve` processes on one real Redis, and clients.

`serving(tmp, engine, "a", "b")` starts one `hybridbus serve` subprocess per node id
on the same engine (anonymous clients in tenant `acme` may do everything) and kills
them by pid at the end. `Follower` is a subscriber reading in the background that
keeps its resume token as docs/protocol.md §7 says; `Publisher` publishes numbered
events in a loop over its own connection and records what was acked and what was
refused, until told to stop, a bound is reached, or its connection dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import Closed, ServerProcess, WsClient, event

__all__ = ["Acked", "Follower", "Publisher", "history", "seen", "serving", "until"]

CONFIG = 'anonymous_tenant = "acme"\n[[roles.anonymous]]\nallow = "*"\ntopics = "#"\n'


@contextlib.asynccontextmanager
async def serving(tmp: Path, engine: str, *names: str) -> AsyncIterator[list[ServerProcess]]:
    """One `hybridbus serve` per name on `engine`, listening; killed (kill -9) at the end."""
    config = tmp / "faults.toml"
    config.write_text(CONFIG)
    processes: list[ServerProcess] = []
    try:
        for name in names:
            processes.append(
                ServerProcess(
                    *("--config", str(config), "--engine", engine),
                    logs=tmp / f"{name}.log",
                    env={"HYBRIDBUS_NODE_ID": name, "HYBRIDBUS_REGISTRY": "local"},
                )
            )
        for process in processes:
            await process.wait_listening()
        yield processes
    finally:
        for process in processes:
            await process.kill()


async def until(condition: Any, timeout: float = 15.0, what: str = "") -> None:
    """Poll `condition()` every 20 ms until true; fail naming `what` after `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


Seen = tuple[str, int, str]  # (topic, offset, event id) of a delivery


def seen(push: dict[str, Any]) -> Seen:
    return (push["topic"], push["offset"], push["event"]["id"])


@dataclass
class Follower:
    """A subscription read in the background: every `event` push, and the token after it."""

    client: WsClient
    pattern: str
    result: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    token: str = ""
    closed: Closed | None = None
    ended: dict[str, Any] | None = None  # the `unsubscribed` push that ended it
    _task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, pattern: str, since: str | None = None
    ) -> AsyncIterator[Follower]:
        async with WsClient.open(url) as client:
            follower = cls(client, pattern)
            fields = {"pattern": pattern} if since is None else {"pattern": pattern, "since": since}
            answer = await client.request("subscribe", **fields)
            assert answer["type"] == "reply", answer
            follower.result = answer["result"]
            follower.token = answer["result"]["position"]
            follower._task = asyncio.create_task(follower._read())
            try:
                yield follower
            finally:
                follower._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower._task

    async def _read(self) -> None:
        epoch = self.result["epoch"]
        try:
            while True:
                while self.client.pushes:  # some may have come in the subscribe's frames
                    push = self.client.pushes.pop(0)
                    if push["type"] == "unsubscribed" and push["pattern"] == self.pattern:
                        self.ended = push
                    if push["type"] != "event" or push["pattern"] != self.pattern:
                        continue
                    # §7 with one shard: drop what was seen, else keep it and move the token.
                    if push["position"] <= int(self.token.rpartition("-")[2]):
                        continue
                    self.events.append(push)
                    self.token = f"{epoch}-{push['position']}"
                await self.client.read()
        except Closed as closed:
            self.closed = closed

    def ids(self) -> set[str]:
        return {push["event"]["id"] for push in self.events}

    def seen(self) -> list[Seen]:
        return [seen(push) for push in self.events]


@dataclass(frozen=True)
class Acked:
    topic: str
    offset: int
    id: str
    epoch: str
    position: int


@dataclass
class Publisher:
    """Publishes `<name>-<n>` to `topic` in a loop; `acked` and `refused` (codes) as answered.

    A refused event (it must be retriable) is sent again, the same event, until acked.
    """

    client: WsClient
    name: str
    topic: str
    acked: list[Acked] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    duplicates: int = 0  # acks of a retry whose refused try was appended after all
    broken: bool = False  # its connection died under it

    async def run(self, stop: asyncio.Event, limit: int) -> None:
        n = 1
        while n <= limit and not stop.is_set():
            sent = event(id=f"{self.name}-{n}", source=f"/{self.name}", data={"n": n})
            try:
                answer = await self.client.request("publish", topic=self.topic, event=sent)
            except (Closed, TimeoutError):
                self.broken = True
                return
            if answer["type"] == "reply":
                result = answer["result"]
                ack = Acked(
                    self.topic, result["offset"], sent["id"], result["epoch"], result["position"]
                )
                self.acked.append(ack)
                self.duplicates += result["duplicate"]
                n += 1
            else:
                assert answer["retriable"], answer
                self.refused.append(answer["code"])
                await asyncio.sleep(0.05)


async def history(url: str, pattern: str) -> tuple[list[dict[str, Any]], bool]:
    """Every retained event of `pattern` through the `history` command, and whether exact."""
    events: list[dict[str, Any]] = []
    since: str | None = None
    exact = True
    async with WsClient.open(url) as client:
        while True:
            fields: dict[str, Any] = {"pattern": pattern, "limit": 1000}
            if since is not None:
                fields["since"] = since
            answer = await client.request("history", **fields)
            assert answer["type"] == "reply", answer
            result = answer["result"]
            events += result["events"]
            exact = exact and result["exact"]
            since = result["position"]
            if not result["more"]:
                return events, exact
