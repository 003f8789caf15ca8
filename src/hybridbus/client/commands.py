"""The client side of the `hybridbus` command line: publish, subscribe, history.

Owns: turning those commands' arguments into client calls and printing the
results as JSON lines (one object per line: easy for `jq` and scripts).
Must not parse arguments (cli.py does) nor know the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

import msgspec

from hybridbus.client.connection import ClientConfig, connect
from hybridbus.core.codecs import encode_json
from hybridbus.errors import InvalidInput
from hybridbus.proto.client import HistoryItem, Received

__all__ = ["history", "publish", "read_data", "subscribe"]

_json = msgspec.json.Encoder()


def read_data(spec: str, stdin: TextIO = sys.stdin) -> Any:
    """The event data named by `--data`: JSON text, `@file` (JSON), or `-` (JSON on stdin)."""
    if spec == "-":
        text = stdin.read()
    elif spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text()
        except OSError as exc:
            raise InvalidInput(f"cannot read {spec[1:]}: {exc}") from exc
    else:
        text = spec
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--data is not JSON: {exc}") from exc


def _line(item: Received | HistoryItem, token: str | None) -> bytes:
    head = {"topic": item.topic, "offset": item.offset, "position": token}
    return _json.encode(head)[:-1] + b',"event":' + encode_json(item.event) + b"}\n"


async def publish(
    url: str, token: str | None, topic: str, data: Any, *, type: str, source: str, id: str | None
) -> None:
    """Publish one event; print its ack."""
    event = {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source, "type": type}
    if data is not None:
        event["data"] = data
    async with connect(url, token=token, config=ClientConfig(request_timeout=10.0)) as c:
        ack = await c.publish(topic, event)
    sys.stdout.buffer.write(_json.encode(ack) + b"\n")
    sys.stdout.flush()


async def subscribe(
    url: str, token: str | None, pattern: str, since: str | None, count: int | None
) -> None:
    """Print deliveries as JSON lines (missed ones first with `since`), `count` or forever."""
    out = sys.stdout.buffer
    async with (
        connect(url, token=token) as c,
        c.subscribe(pattern, since=since) as sub,
    ):
        seen = 0
        async for received in sub:
            out.write(_line(received, str(received.token)))
            out.flush()
            seen += 1
            if count is not None and seen >= count:
                return


async def history(url: str, token: str | None, pattern: str, since: str | None, limit: int) -> None:
    """Print retained events as JSON lines, then a last line with the resume position."""
    out = sys.stdout.buffer
    async with connect(url, token=token, config=ClientConfig(request_timeout=10.0)) as c:
        page = await c.history(pattern, since=since, limit=limit)
    epoch = page.position.epoch
    for item in page.events:
        # The token after each event: resume with `--since` from any line.
        out.write(_line(item, f"{epoch}-{item.position}" if item.shard == 0 else None))
    out.write(_json.encode({"position": str(page.position), "more": page.more}) + b"\n")
    out.flush()


def run(command: Any) -> int:
    """Run a coroutine of this module; a clean exit status on Ctrl-C."""
    try:
        asyncio.run(command)
    except KeyboardInterrupt:
        return 130
    return 0
