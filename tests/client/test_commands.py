"""`hybridbus publish / subscribe / history` as a user runs them, against a real server.

Every test runs the installed entry point (`.venv/bin/hybridbus`) in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tests.client.sharded import sharded_server, topic_in
from tests.servers import Server, running_server

from hybridbus.core.log import Position

HYBRIDBUS = Path(sys.executable).with_name("hybridbus")  # the console script of this venv
Lines = list[dict[str, object]]


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, Lines, str]:
    """Run `hybridbus *args`; its exit status, stdout as JSON lines, and stderr."""
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines()]
    return process.returncode, lines, err.decode()


def test_the_entry_point_is_installed() -> None:
    assert HYBRIDBUS.is_file(), f"no console script at {HYBRIDBUS}: pip install -e ."


async def test_publish_history_subscribe_round_trip() -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        code, (ack,), _ = await cli("publish", "docs/42", "--data", '{"text": "hi"}', *url)
        assert code == 0
        assert (ack["offset"], ack["duplicate"]) == (1, False)
        code, (again,), _ = await cli("publish", "docs/43", "--data", "-", *url, stdin=b'{"n": 2}')
        assert code == 0
        assert again["position"] == 2
        code, lines, _ = await cli("history", "docs/+", *url)
        assert code == 0
        *events, last = lines
        assert [e["topic"] for e in events] == ["docs/42", "docs/43"]
        assert [e["event"]["data"] for e in events] == [{"text": "hi"}, {"n": 2}]  # type: ignore[index]
        assert last["more"] is False
        # Resume after the first event: only the second comes.
        code, (got,), _ = await cli(
            "subscribe", "docs/#", "--since", str(events[0]["position"]), "--count", "1", *url
        )
        assert code == 0
        assert (got["topic"], got["offset"]) == ("docs/43", 1)


# -- the token in publish's ack ---------------------------------------------------------


async def test_publish_can_print_only_its_token_for_a_shell_variable() -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        process = await asyncio.create_subprocess_exec(
            HYBRIDBUS, "publish", "docs/42", "--data", "1", "--print", "token", *url,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
        token = out.decode().strip()
        assert Position.parse(token).positions == (1,)
        code, _, _ = await cli("publish", "docs/42", "--data", "2", *url)
        assert code == 0
        code, (got,), _ = await cli("subscribe", "docs/#", "--since", token, "--count", "1", *url)
        assert code == 0
        assert (got["offset"], got["event"]["data"]) == (2, 2)  # type: ignore[index]


async def publish_all(url: str, topics: list[tuple[str, str]]) -> dict[str, str]:
    """Publish one event per (id, topic) with the CLI; each id's printed token."""
    tokens = {}
    for id, topic in topics:
        code, (ack,), err = await cli("publish", topic, "--id", id, "--data", "{}", "--url", url)
        assert code == 0, err
        tokens[id] = str(ack["token"])
    return tokens


async def resumed(url: str, pattern: str, since: str, count: int) -> tuple[list[str], list[str]]:
    """The ids `subscribe --since --count` prints, and those `history --since` prints."""
    code, lines, err = await cli(
        "subscribe", pattern, "--since", since, "--count", str(count), "--url", url
    )
    assert code == 0, err
    subscribed = [line["event"]["id"] for line in lines]  # type: ignore[index]
    code, lines, err = await cli("history", pattern, "--since", since, "--url", url)
    assert code == 0, err
    *events, _ = lines
    return subscribed, [line["event"]["id"] for line in events]  # type: ignore[index]


async def test_publish_prints_a_token_that_subscribe_since_resumes_right_after() -> None:
    async with running_server() as server:
        tokens = await publish_all(
            server.url, [("a", "docs/1"), ("b", "docs/2"), ("c", "docs/1"), ("d", "docs/2")]
        )
        subscribed, history = await resumed(server.url, "docs/1", tokens["a"], 1)
        assert subscribed == history == ["c"]
        subscribed, history = await resumed(server.url, "docs/+", tokens["b"], 2)
        assert subscribed == history == ["c", "d"]
        code, (again,), _ = await cli(
            "publish", "docs/2", "--id", "b", "--data", "{}", "--url", server.url
        )
        assert code == 0
        assert again["duplicate"] and again["token"] == tokens["b"]


async def test_with_two_shards_a_printed_token_resumes_after_its_event() -> None:
    async with sharded_server(2) as server:
        a = topic_in(0, 2, "acme/docs/").removeprefix("acme/")
        b = topic_in(1, 2, "acme/docs/").removeprefix("acme/")
        tokens = await publish_all(
            server.url, [("a1", a), ("b1", b), ("a2", a), ("b2", b), ("a3", a)]
        )
        assert Position.parse(tokens["a2"]).positions == (2, 1)
        subscribed, history = await resumed(server.url, a, tokens["a2"], 1)
        assert subscribed == history == ["a3"]
        subscribed, history = await resumed(server.url, "docs/+", tokens["a2"], 2)
        assert sorted(subscribed) == sorted(history) == ["a3", "b2"]
        # history's lines carry a token each: resuming from any line gives what follows it.
        code, lines, _ = await cli("history", "docs/+", "--url", server.url)
        assert code == 0
        *events, _ = lines
        for index, line in enumerate(events):
            _, after = await resumed(server.url, "docs/+", str(line["position"]), 0)
            assert after == [e["event"]["id"] for e in events[index + 1 :]]  # type: ignore[index]


# -- errors and exit statuses -----------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "docs/1", "--data", "{}"],
        ["subscribe", "docs/#"],
        ["history", "docs/#"],
    ],
)
async def test_a_server_that_is_down_fails_at_once_with_exit_status_3(argv: list[str]) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/v1/ws"
    started = time.monotonic()
    code, lines, err = await cli(*argv, "--url", url)
    elapsed = time.monotonic() - started
    assert (code, lines) == (3, [])
    assert f"hybridbus {argv[0]}: cannot connect to {url}" in err
    assert "HYBRIDBUS_URL" in err  # says how to point it elsewhere
    assert elapsed < 2.0, f"took {elapsed:.1f} s to give up"


async def test_refusals_print_the_code_and_its_name() -> None:
    roles = {"anonymous": [{"allow": ["subscribe", "history"], "topics": "#"}]}
    async with running_server(roles=roles) as server:
        code, lines, err = await cli("publish", "docs/1", "--data", "1", "--url", server.url)
        assert (code, lines) == (1, [])
        assert "hybridbus publish: 1110 FORBIDDEN: " in err
        code, _, err = await cli("publish", "docs/+", "--data", "1", "--url", server.url)
        assert code == 1
        assert "hybridbus publish: 1002 INVALID_TOPIC: " in err
        code, _, err = await cli("publish", "docs/1", "--data", "{not json", "--url", server.url)
        assert code == 1
        assert "not JSON" in err
    async with running_server(anonymous_tenant=None) as server:
        code, _, err = await cli("subscribe", "docs/#", "--url", server.url)
        assert code == 1
        assert "hybridbus subscribe: 4501 UNAUTHORIZED: " in err


def drop_all(server: Server) -> int:
    """Cut every client connection as a network failure would."""
    connections = list(server.node._connections.values())
    for connection in connections:
        connection.abort()
    return len(connections)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@asynccontextmanager
async def subscriber(url: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS, "subscribe", *args, "--url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_subscribe_reconnects_once_it_was_connected_and_says_so_on_stderr() -> None:
    async with running_server() as server, subscriber(server.url, "docs/#", "--count", "1") as sub:
        await wait_for(lambda: any(c.subscriptions for c in server.node._connections.values()))
        assert drop_all(server) == 1
        assert sub.stderr is not None and sub.stdout is not None
        async with asyncio.timeout(10):
            first = (await sub.stderr.readline()).decode()
            second = (await sub.stderr.readline()).decode()
        assert first.startswith("hybridbus subscribe: reconnecting (attempt 1, in "), first
        assert " s): " in first
        assert second == "hybridbus subscribe: reconnected\n"
        code, _, _ = await cli("publish", "docs/1", "--id", "after", "--url", server.url)
        assert code == 0
        async with asyncio.timeout(10):
            line = json.loads(await sub.stdout.readline())
            assert line["event"]["id"] == "after"
            assert await sub.wait() == 0


async def test_subscribe_says_when_continuity_was_lost_and_goes_on() -> None:
    async with (
        running_server() as server,
        subscriber(server.url, "docs/#", "--since", "another_epoch-7", "--count", "1") as sub,
    ):
        assert sub.stderr is not None and sub.stdout is not None
        async with asyncio.timeout(10):
            warning = (await sub.stderr.readline()).decode()
        assert warning.startswith("hybridbus subscribe: 1202 CONTINUITY_LOST: "), warning
        assert warning.endswith("(going on)\n")
        code, _, _ = await cli("publish", "docs/1", "--id", "later", "--url", server.url)
        assert code == 0
        async with asyncio.timeout(10):
            assert json.loads(await sub.stdout.readline())["event"]["id"] == "later"
            assert await sub.wait() == 0
