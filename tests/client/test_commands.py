"""`hybridbus publish / subscribe / history` as a user runs them, against a real server."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.servers import running_server


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, list[dict[str, object]], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hybridbus", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines()]
    return process.returncode, lines, err.decode()


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


async def test_errors_exit_non_zero_with_a_message() -> None:
    async with running_server() as server:
        code, lines, err = await cli("publish", "docs/+", "--data", "1", "--url", server.url)
        assert code == 1
        assert lines == []
        assert "hybridbus publish:" in err
        code, _, err = await cli("publish", "docs/1", "--data", "{not json", "--url", server.url)
        assert code == 1
        assert "not JSON" in err
