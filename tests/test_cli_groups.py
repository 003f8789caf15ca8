"""`hybridbus groups` and `hybridbus dlq` as a user runs them, against a real server.

Every test runs the installed entry point (`.venv/bin/hybridbus`) in a
subprocess; the groups are made and fed over the HTTP API (httpx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import Server, event, running_server

from hybridbus.cli import parser
from hybridbus.cli_http import http_base

pytestmark = pytest.mark.timeout(90)

HYBRIDBUS = Path(sys.executable).with_name("hybridbus")  # the console script of this venv
CLOUDEVENT = {"content-type": "application/cloudevents+json"}


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `hybridbus *args`; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table(text: str) -> list[dict[str, str]]:
    """A printed table as rows of {column: cell} (cells hold no spaces in these tests)."""
    header, *rows = [line.split() for line in text.splitlines()]
    return [dict(zip(header, row, strict=False)) for row in rows]


@asynccontextmanager
async def feed(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server's HTTP API; the group `billing` over acme/invoices/# exists."""
    async with httpx.AsyncClient(base_url=server.http, timeout=30.0) as http:
        body = {"pattern": "acme/invoices/#", "settings": {"start": "earliest", "ordered": False}}
        assert (await http.put("/v1/groups/billing", json=body)).status_code == 201
        yield http


async def publish(http: httpx.AsyncClient, topic: str, **fields: Any) -> None:
    response = await http.post(
        f"/v1/topics/{topic}/events", content=json.dumps(event(**fields)), headers=CLOUDEVENT
    )
    assert response.status_code == 201, response.text


async def fetch(http: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    response = await http.post("/v1/groups/billing/fetch", json={"max": n, "wait": 5})
    got: list[dict[str, Any]] = response.json()["deliveries"]
    assert len(got) == n, got
    return got


def test_the_http_base_follows_the_websocket_url() -> None:
    assert http_base("ws://127.0.0.1:8080/v1/ws") == "http://127.0.0.1:8080"
    assert http_base("wss://bus.example.com/v1/ws") == "https://bus.example.com"
    assert http_base("https://bus.example.com/hub/") == "https://bus.example.com/hub"
    assert http_base("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


async def test_groups_prints_a_table_of_counts() -> None:
    async with running_server() as server:
        async with feed(server) as http:
            for n in range(4):
                await publish(http, f"acme/invoices/{n}")
            got = await fetch(http, 3)
            await http.post("/v1/groups/billing/ack", json={"ids": [got[0]["id"]]})
            await http.post("/v1/groups/billing/nack", json={"id": got[1]["id"], "delay": 60})
        code, out, err = await cli("groups", "--url", server.url)
        assert (code, err) == (0, "")
        (row,) = table(out)
        assert row == {
            "GROUP": "billing",
            "PATTERN": "acme/invoices/#",
            "MEMBERS": "0",
            "PENDING": "3",  # 1 leased, 1 waiting after its nack, 1 never handed out
            "LEASED": "1",
            "LAG": "0",
            "DEAD-LETTERS": "0",
            "REDELIVERED": "0",
        }
        code, out, _ = await cli("groups", "--json", "--url", server.http)  # an HTTP URL too
        assert code == 0
        (line,) = [json.loads(x) for x in out.splitlines()]
        assert (line["name"], line["acked"], line["pending"]) == ("billing", 1, 3)


async def test_dlq_list_show_replay_and_purge() -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        async with feed(server) as http:
            for n in range(4):
                await publish(http, f"acme/invoices/{n}", id=f"inv-{n}")
            for d in await fetch(http, 4):
                await http.post("/v1/groups/billing/term", json={"id": d["id"], "reason": "nope"})

            code, out, err = await cli("dlq", "list", "billing", "--limit", "3", *url)
            assert code == 0
            rows = table(out)
            assert [r["TOPIC"] for r in rows] == [f"acme/invoices/{n}" for n in range(3)]
            assert all(r["REASON"] == "term" and r["ERROR"] == "nope" for r in rows)
            assert f"--after {rows[-1]['ID']}" in err
            code, out, _ = await cli(
                "dlq", "list", "billing", "--after", rows[-1]["ID"], "--json", *url
            )
            (last,) = [json.loads(x) for x in out.splitlines()]
            ids = [r["ID"] for r in rows] + [last["id"]]

            code, out, _ = await cli("dlq", "show", "billing", ids[0], *url)
            assert code == 0
            shown = json.loads(out)
            assert shown["dead_letter"]["topic"] == "acme/invoices/0"
            assert (shown["event"]["id"], shown["event"]["dlqreason"]) == ("inv-0", "term")

            code, out, _ = await cli("dlq", "replay", "billing", ids[0], *url)
            assert (code, json.loads(out)) == (0, {"replayed": 1})
            (again,) = await fetch(http, 1)  # appended to its topic again: the group takes it
            assert (again["topic"], again["offset"], again["attempt"]) == ("acme/invoices/0", 2, 1)
            code, out, _ = await cli("dlq", "replay", "billing", ids[1], "--to", "group", *url)
            assert (code, json.loads(out)) == (0, {"replayed": 1})
            (again,) = await fetch(http, 1)
            assert (again["topic"], again["offset"], again["attempt"]) == ("acme/invoices/1", 1, 1)

            code, out, _ = await cli("dlq", "purge", "billing", "--all", *url)
            assert (code, json.loads(out)) == (0, {"purged": 2})
            code, out, _ = await cli("dlq", "list", "billing", *url)
            assert (code, table(out)) == (0, [])


async def test_refusals_name_their_code_and_exit_1() -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        code, out, err = await cli("dlq", "list", "nope", *url)
        assert (code, out) == (1, "")
        assert err.startswith("hybridbus dlq list: 1401 UNKNOWN_GROUP:"), err
        code, _, err = await cli("dlq", "show", "bad name", "1.1", *url)
        assert code == 1
        assert "1006 INVALID_SETTINGS" in err
        async with feed(server):
            code, _, err = await cli("dlq", "purge", "billing", "9.9", *url)
        assert code == 1
        assert "1404 UNKNOWN_DEAD_LETTER" in err


async def test_bad_arguments_exit_2() -> None:
    for args in (
        ("dlq", "replay", "billing"),  # neither ids nor --all
        ("dlq", "purge", "billing", "1.2", "--all"),  # both
        ("dlq", "replay", "billing", "--all", "--to", "elsewhere"),
        ("dlq", "list", "billing", "--limit", "0"),
        ("groups", "--url", "ftp://example.com"),
    ):
        code, out, err = await cli(*args)
        assert (code, out) == (2, ""), (args, err)
        assert err


def test_every_argument_of_dlq_has_help() -> None:
    (commands,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (actions,) = [
        a for a in commands.choices["dlq"]._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert set(actions.choices) == {"list", "show", "replay", "purge"}
    for name, command in actions.choices.items():
        for action in command._actions:
            assert action.help and action.help.strip(), f"hybridbus dlq {name} {action.dest}"


async def test_no_server_at_the_url_exits_3() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await cli("groups", "--url", f"ws://127.0.0.1:{port}/v1/ws")
    assert (code, out) == (3, "")
    assert "cannot connect" in err
