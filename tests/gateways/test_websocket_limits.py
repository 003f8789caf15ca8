"""The limits of docs/protocol.md §9, as a client meets them on a real WebSocket.

Each case sends what is over one limit and checks two things: the server
answers with the code §9's table gives for that limit, and the table gives it
(so the page and the server cannot drift apart again).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tests.servers import WsClient, event, running_server

from hybridbus.core.topics import MAX_TOPIC_LENGTH

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
LONG = "docs/" + "x" * MAX_TOPIC_LENGTH  # one segment too long for the whole


def limits_row(first_cell: str) -> str:
    """The row of §9's table whose first cell starts with `first_cell`."""
    text = PROTOCOL.read_text()
    section = text[text.index("## 9. Limits") : text.index("## 10.")]
    rows = [line for line in section.splitlines() if line.startswith(f"| {first_cell}")]
    assert len(rows) == 1, f"§9 has no single row for {first_cell!r}"
    return rows[0]


@pytest.mark.parametrize(
    ("command", "fields", "code"),
    [
        ("publish", {"topic": LONG, "event": event()}, 1002),
        ("presence", {"topic": LONG}, 1002),
        ("subscribe", {"pattern": LONG}, 1003),
        ("history", {"pattern": LONG}, 1003),
        ("publish", {"topic": "", "event": event()}, 1002),
        ("subscribe", {"pattern": ""}, 1003),
    ],
    ids=["publish", "presence", "subscribe", "history", "empty topic", "empty pattern"],
)
async def test_a_topic_or_pattern_over_the_limit_is_1002_or_1003(
    command: str, fields: dict[str, Any], code: int
) -> None:
    assert re.search(rf"\b{code}\b", limits_row("topic / pattern"))
    async with running_server() as server, WsClient.open(server.url) as client:
        answer = await client.request(command, **fields)
        assert (answer["type"], answer["code"]) == ("error", code), answer
        assert (await client.request("ping"))["type"] == "reply"  # the connection goes on


@pytest.mark.parametrize("field", ["name", "version", "device", "token"])
async def test_an_over_long_connect_field_closes_with_4500_as_section_4_says(field: str) -> None:
    assert "4500" in limits_row("`token` / `name`")
    size = 16_385 if field == "token" else 257
    async with (
        running_server() as server,
        WsClient.open(server.url, connect_first=False) as client,
    ):
        await client.send(client.command("connect", **{field: "x" * size}))
        closed = await client.closed()
    assert closed.code == 4500 and field in closed.reason, closed


async def test_a_refresh_token_or_since_over_the_limit_is_1012() -> None:
    row = limits_row("`token` / `name`")
    assert "1012" in row and "refresh" in row, row
    async with running_server() as server, WsClient.open(server.url) as client:
        answer = await client.request("history", pattern="docs/1", since="x" * 4097)
        assert answer["code"] == 1012, answer
        answer = await client.request("refresh", token="x" * 16_385)
        assert answer["code"] == 1012, answer
        assert (await client.request("ping"))["type"] == "reply"  # the connection goes on
