"""The client side of the `hybridbus` command line: publish, subscribe, history, presence.

Owns: turning those commands' arguments into client calls, printing the
results as JSON lines (one object per line: easy for `jq` and scripts), and
what a user sees when something fails: one line on stderr naming the error
code and its name (`1110 FORBIDDEN: ...`), reconnects as they happen, and the
exit status (cli.py's `EXIT_STATUSES` documents them). Must not parse
arguments (cli.py does) nor know the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import uuid
from collections.abc import Callable, Coroutine
from enum import IntEnum
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from hybridbus.client.connection import ClientConfig, connect
from hybridbus.client.tls import Ca, cli_hint
from hybridbus.core.codecs import encode_json
from hybridbus.core.log import Position
from hybridbus.errors import (
    BusError,
    ConnectFailed,
    ContinuityLost,
    Disconnected,
    ErrorCode,
    InvalidInput,
    InvalidPosition,
)
from hybridbus.proto.client import HistoryItem, HistoryPage, Received
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import ClientInfo

__all__ = [
    "describe",
    "failed",
    "history",
    "presence",
    "publish",
    "read_data",
    "run",
    "subscribe",
]

OK: Final = 0
FAILED: Final = 1  # refused by the server (its code is printed), or bad input
UNREACHABLE: Final = 3  # the first connection failed: no server there, or not this one
INTERRUPTED: Final = 130  # Ctrl-C

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
    url: str,
    token: str | None,
    topic: str,
    data: Any,
    *,
    type: str,
    source: str,
    id: str | None,
    only_token: bool = False,
    ca: Ca | None = None,
) -> None:
    """Publish one event; print its ack (its `token` is the resume token after it).

    With `only_token`, print the token alone (for `since=$(hybridbus publish ...)`).
    """
    event = {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source, "type": type}
    if data is not None:
        event["data"] = data
    async with connect(url, token=token, config=ClientConfig(request_timeout=10.0), ca=ca) as c:
        ack = await c.publish(topic, event)
    line = ack.token.encode() if only_token and ack.token else _json.encode(ack)
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


async def subscribe(
    url: str,
    token: str | None,
    pattern: str,
    since: str | None,
    count: int | None,
    *,
    ca: Ca | None = None,
) -> None:
    """Print deliveries as JSON lines (missed ones first with `since`), `count` or forever.

    A gap (`ContinuityLost`: events were missed, e.g. the server lost its history)
    is said on stderr, and printing goes on.
    """
    out = sys.stdout.buffer
    if count is not None and count <= 0:
        return
    async with (
        connect(url, token=token, ca=ca) as c,
        c.subscribe(pattern, since=since) as sub,
    ):
        seen = 0
        while True:
            try:
                received = await anext(sub)
            except StopAsyncIteration:
                return
            except ContinuityLost as gap:
                print(f"hybridbus subscribe: {describe(gap)} (going on)", file=sys.stderr)
                continue
            out.write(_line(received, str(received.token)))
            out.flush()
            seen += 1
            if count is not None and seen >= count:
                return


async def history(
    url: str,
    token: str | None,
    pattern: str,
    since: str | None,
    limit: int,
    *,
    ca: Ca | None = None,
) -> None:
    """Print retained events as JSON lines, then a last line with the resume position."""
    out = sys.stdout.buffer
    async with connect(url, token=token, config=ClientConfig(request_timeout=10.0), ca=ca) as c:
        page = await c.history(pattern, since=since, limit=limit)
    # The token after each event: resume with `--since` from any line.
    positions = _start(page, since)
    for item in page.events:
        positions[item.shard] = item.position
        out.write(_line(item, str(Position(page.position.epoch, tuple(positions)))))
    out.write(_json.encode({"position": str(page.position), "more": page.more}) + b"\n")
    out.flush()


_COLUMNS = ("client", "user", "device", "name", "state")


async def presence(
    url: str,
    token: str | None,
    topic: str,
    *,
    watch: bool = False,
    as_json: bool = False,
    ca: Ca | None = None,
) -> None:
    """Print `topic`'s members (a table, or JSON lines); with `watch`, then each change.

    A change is a line of its own: `join`, `leave`, `degraded` or `active`
    and the member (JSON: the member's object with `"change"`). Watching goes
    on across reconnects (said on stderr) until Ctrl-C.
    """
    out = sys.stdout
    config = ClientConfig(request_timeout=10.0)
    async with connect(url, token=token, config=config, ca=ca) as c:
        if not watch:
            members, cursor = [], None
            while True:  # a page at a time: a topic may have 10,000 members
                page = await c.presence_page(topic, limit=1000, cursor=cursor)
                members += page.clients
                if (cursor := page.cursor) is None:
                    break
            _members(out, members, as_json)
            return
        async with c.presence_watch(topic) as room:
            _members(out, list(room.members.values()), as_json)
            async for change in room:
                row = _row(change.info)
                if as_json:
                    out.write(_json.encode({"change": change.kind, **row}).decode() + "\n")
                else:
                    out.write(f"{change.kind:<9} " + "  ".join(map(_cell, row.values())) + "\n")
                out.flush()


def _row(info: ClientInfo) -> dict[str, str | None]:
    return {name: getattr(info, name) for name in _COLUMNS}


def _cell(value: str | None) -> str:
    return "-" if value is None else value


def _members(out: TextIO, members: list[ClientInfo], as_json: bool) -> None:
    """The members as JSON lines, or as a table under a header (aligned columns)."""
    rows = [_row(info) for info in members]
    if as_json:
        out.writelines(_json.encode(row).decode() + "\n" for row in rows)
    else:
        cells = [[name.upper() for name in _COLUMNS]]
        cells += [[_cell(value) for value in row.values()] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
        for line in cells:
            out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            out.write("\n")
    out.flush()


def _start(page: HistoryPage, since: str | None) -> list[int]:
    """Where the server read `page` from: `since`, or the start of every shard."""
    shards = len(page.position.positions)
    if since is not None:
        with contextlib.suppress(InvalidPosition):
            start = Position.parse(since)
            if start.epoch == page.position.epoch and len(start.positions) == shards:
                return list(start.positions)
    return [0] * shards  # no token, or one of another epoch: read from the start


def describe(error: BusError) -> str:
    """`error` for a user: the code and its name first (`1110 FORBIDDEN: ...`)."""
    if isinstance(error, ConnectFailed):
        hint = cli_hint(error.url, str(error))  # --ca, or --cert/--key, if TLS is why
        if hint is not None:
            return f"{error} ({hint})"
        return f"{error} (is the server running there? point --url or $HYBRIDBUS_URL at it)"
    if isinstance(error, Disconnected):
        close = error.close_code
        if close is None:
            return f"{int(error.code)} {error.code.name}: {error.reason}"
        return f"{close} {_name(CloseCode, close, 'CLOSED')}: {error.reason}"
    code = int(error.code)
    return f"{code} {_name(ErrorCode, code, 'ERROR')}: {error}"


def _name(codes: type[IntEnum], code: int, unknown: str) -> str:
    try:
        return codes(code).name
    except ValueError:  # a code of a newer server
        return unknown


def failed(command: str, error: BusError) -> int:
    """Say why `hybridbus <command>` failed on stderr; its exit status."""
    print(f"hybridbus {command}: {describe(error)}", file=sys.stderr)
    return UNREACHABLE if isinstance(error, ConnectFailed) else FAILED


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the `fast` extra), as the server's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(command: str, coroutine: Coroutine[Any, Any, None]) -> int:
    """Run a coroutine of this module for `hybridbus <command>`; its exit status.

    It runs on uvloop when installed. While it runs, the client's reconnects
    are printed on stderr.
    """
    logger = logging.getLogger("hybridbus.client")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"hybridbus {command}: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(coroutine)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BusError as exc:
        return failed(command, exc)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    return OK
