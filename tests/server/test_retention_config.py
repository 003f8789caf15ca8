"""Retention rules from the config file reach the engine; recovery says what they removed.

A real server (tests/servers.py) with `[[retention]]` rules: logs keep their last
three events, documents everything; a WebSocket subscriber resuming from before
what retention removed gets `recovered: false`, one resuming past it `true`, as
with the engine-wide `max_per_topic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.servers import WsClient, event, running_server

from hybridbus.engine.base import RetentionRule
from hybridbus.errors import InvalidInput
from hybridbus.server.config import engine_config, load_config

RULES: list[dict[str, Any]] = [
    {"pattern": "+/logs/#", "max_per_topic": 3, "max_age": 3600},
    {"pattern": "+/docs/#"},
]


def test_the_config_file_gives_the_rules_in_order(tmp_path: Path) -> None:
    file = tmp_path / "hybridbus.toml"
    file.write_text(
        'engine = "sqlite://./data?max_per_topic=100"\n'
        "[[retention]]\n"
        'pattern = "+/logs/#"\n'
        "max_age = 3600\n"
        "max_bytes = 67108864\n"
        "[[retention]]\n"
        'pattern = "+/docs/#"\n'
    )
    config = load_config(file, env={})
    assert engine_config(config).retention == (
        RetentionRule(pattern="+/logs/#", max_age=3600, max_bytes=64 << 20),
        RetentionRule(pattern="+/docs/#"),
    )


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('[[retention]]\npattern = "a/#/b"\n', "'#' may only be the last segment"),
        ('[[retention]]\npattern = "+/logs/#"\nmax_bytes = 0\n', "max_bytes must be positive"),
        ('[[retention]]\npattern = "+/logs/#"\nmax_size = 10\n', "max_size"),
        ("[[retention]]\nmax_age = 10\n", "pattern"),
    ],
)
def test_a_bad_rule_is_refused_at_start_naming_it(tmp_path: Path, toml: str, names: str) -> None:
    file = tmp_path / "hybridbus.toml"
    file.write_text(toml)
    with pytest.raises(InvalidInput, match="retention") as info:
        load_config(file, env={})
    assert names in str(info.value)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("engine", ["memory://", "sqlite"])
async def test_rules_reach_the_engine_and_recovery_reports_the_loss(
    engine: str, tmp_path: Path
) -> None:
    url = engine if engine == "memory://" else f"sqlite://{tmp_path / 'data'}"
    async with (
        running_server(engine=url, retention=RULES) as server,
        WsClient.open(server.url) as client,
        aiohttp.ClientSession() as http,
    ):
        first: dict[str, str] = {}
        for n in range(5):
            for topic in ("logs/api/1", "docs/42"):
                reply = await client.request("publish", topic=topic, event=event(id=f"{topic}-{n}"))
                assert reply["type"] == "reply", reply
                ack = reply["result"]
                first.setdefault(topic, f"{ack['epoch']}-{ack['position']}")

        async def history(topic: str) -> dict[str, Any]:
            async with http.get(f"{server.http}/v1/topics/acme/{topic}/events") as response:
                assert response.status == 200
                body: dict[str, Any] = await response.json()
                return body

        logs = await history("logs/api/1")
        assert [e["offset"] for e in logs["events"]] == [3, 4, 5]
        assert logs["exact"] is False
        docs = await history("docs/42")
        assert [e["offset"] for e in docs["events"]] == [1, 2, 3, 4, 5]
        assert docs["exact"] is True

        # Resuming from after the first log line: the second is gone.
        reply = await client.request("subscribe", pattern="logs/#", since=first["logs/api/1"])
        assert reply["result"]["recovered"] is False
        pushes = await client.events(3)
        assert [p["offset"] for p in pushes] == [3, 4, 5]
        reply = await client.request("subscribe", pattern="docs/#", since=first["docs/42"])
        assert reply["result"]["recovered"] is True
        assert [p["offset"] for p in await client.events(4)] == [2, 3, 4, 5]
