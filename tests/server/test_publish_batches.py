"""The `publish` commands of one frame go to the engine as one batch, each answered on its own.

A connection checks every `publish` as it reads it (a refusal is that command's
error reply) and appends the rest of its loop turn in one `append_many`: one
engine call and one commit, however many commands the frame held.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.servers import WsClient, event, running_server

from hybridbus.core.event import Event
from hybridbus.core.log import Ack

pytestmark = pytest.mark.timeout(30)


class Calls:
    """Counts the engine's append calls (wrapping the running engine's methods)."""

    def __init__(self, engine: Any) -> None:
        self.single = 0
        self.batches: list[int] = []
        append, append_many = engine.append, engine.append_many

        async def counted(topic: str, event: Event, payload: bytes) -> Ack:
            self.single += 1
            result: Ack = await append(topic, event, payload)
            return result

        async def counted_many(
            items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
        ) -> list[Ack]:
            self.batches.append(len(items))
            result: list[Ack] = await append_many(items, dedupe=dedupe)
            return result

        engine.append, engine.append_many = counted, counted_many


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_frame_of_publishes_is_one_append_with_one_reply_each(
    engine: str, tmp_path: Path
) -> None:
    url = "memory://" if engine == "memory" else f"sqlite://{tmp_path}"
    async with (
        running_server(engine=url) as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        await sub.request("subscribe", pattern="docs/#")
        calls = Calls(server.node.bus.engine)
        commits = getattr(server.node.bus.engine, "commits", 0)
        commands = [
            pub.command("publish", topic=f"docs/{n % 3}", event=event(id=f"e{n}"))
            for n in range(50)
        ]
        await pub.send(*commands)
        replies = [await pub.answer(c["id"]) for c in commands]
        assert calls.batches == [50] and calls.single == 0
        if engine == "sqlite":
            assert server.node.bus.engine.commits == commits + 1  # type: ignore[attr-defined]
        results = [r["result"] for r in replies]
        assert [r["offset"] for r in results] == [n // 3 + 1 for n in range(50)]
        positions = [r["position"] for r in results]
        assert positions == list(range(positions[0], positions[0] + 50))
        assert all(r["token"].endswith(f"-{r['position']}") for r in results)
        pushes = await sub.events(50)
        assert [p["event"]["id"] for p in pushes] == [f"e{n}" for n in range(50)]
        assert server.sample("hybridbus_publishes_total", gateway="websocket") == 50


async def test_refused_commands_are_answered_alone_and_the_rest_appended_in_order() -> None:
    async with (
        running_server(
            roles={"anonymous": [{"allow": "publish", "topics": "docs/#"}]},
            publish_rate=1,
            publish_burst=3,
        ) as server,
        WsClient.open(server.url) as pub,
    ):
        calls = Calls(server.node.bus.engine)
        duplicate = event(id="same", source="/s")
        commands = [
            pub.command("publish", topic="docs/1", event=duplicate),
            pub.command("publish", topic="news/1", event=event()),  # forbidden: no token taken
            pub.command("publish", topic="docs/1", event={"id": "x"}),  # invalid: no token taken
            pub.command("publish", topic="docs/+", event=event()),  # not a topic
            pub.command("publish", topic="docs/2", event=event(id="two")),
            pub.command("publish", topic="docs/1", event=duplicate),
            pub.command("publish", topic="docs/1", event=event()),  # past the burst of 3
        ]
        await pub.send(*commands)
        replies = [await pub.answer(c["id"]) for c in commands]
        kinds = [r["type"] if r["type"] == "reply" else r["code"] for r in replies]
        assert kinds == ["reply", 1110, 1001, 1002, "reply", "reply", 1121]
        ok = [replies[i]["result"] for i in (0, 4, 5)]
        assert [(r["offset"], r["duplicate"]) for r in ok] == [(1, False), (1, False), (1, True)]
        assert ok[2]["position"] == ok[0]["position"]
        assert calls.batches == [3] and calls.single == 0
        assert server.sample("hybridbus_duplicates_total", gateway="websocket") == 1


async def test_an_engine_failure_answers_every_command_of_the_batch(tmp_path: Path) -> None:
    async with (
        running_server(engine=f"sqlite://{tmp_path}") as server,
        WsClient.open(server.url) as pub,
    ):
        first = await pub.request("publish", topic="docs/1", event=event(id="first"))
        assert first["result"]["offset"] == 1
        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.id LIKE 'bad%' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        ids = ["ok-1", "ok-2", "bad", "ok-3"]
        commands = [pub.command("publish", topic="docs/1", event=event(id=i)) for i in ids]
        await pub.send(*commands)
        replies = [await pub.answer(c["id"]) for c in commands]
        assert [(r["type"], r.get("code")) for r in replies] == [("error", 1301)] * 4
        history = await pub.request("history", pattern="docs/1")
        assert [e["event"]["id"] for e in history["result"]["events"]] == ["first"]
        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute("DROP TRIGGER boom")
        again = await pub.request("publish", topic="docs/1", event=event(id="ok-1"))
        assert (again["result"]["offset"], again["result"]["duplicate"]) == (2, False)
