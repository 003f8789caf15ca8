"""`hybridbus tail PATTERN`: follow log events as lines, filtered by the server.

Owns: the `tail` command's arguments, turning them into a server-side
`Filter` (`--level`, `--grep`, `--regex`, `--field k=v`, `--type`), where it
starts (`--since 10m`: the position of that time, asked of the server with a
history read at that time; `--since TOKEN`: a resume token), printing each
log event through a formatter (`hybridbus.logs.formatters`: plain, json,
syslog, or a plug-in's) with level colours on a terminal, any other event as
a JSON line, and the live rate line on stderr (a terminal only). Must not
filter anything itself (the server does) nor handle reconnects (the client
resumes from its position: no gap, no repeat). docs/logs.md "Tailing
(hybridbus tail)" is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from typing import Any, BinaryIO, Final, TextIO

import msgspec

from hybridbus.client import commands
from hybridbus.client.connection import connect
from hybridbus.client.subscription import ClientSubscription
from hybridbus.client.tls import Ca
from hybridbus.core.codecs import encode_json
from hybridbus.core.event import Event
from hybridbus.core.filters import FieldValue, Filter, parse_field
from hybridbus.core.log import Position
from hybridbus.core.logs import EVENT_TYPE, record_from_data
from hybridbus.errors import ContinuityLost, InvalidInput
from hybridbus.logs.formatters import Formatter
from hybridbus.logs.plugins import formatter
from hybridbus.proto.client import Received

__all__ = ["add_parser", "run"]

_DURATION: Final = re.compile(r"\d+(?:\.\d+)?[smhd]")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RESET: Final = b"\x1b[0m"
# Level -> the ANSI colour its lines are printed in on a terminal (info: none).
COLOURS: Final[dict[str, bytes]] = {
    "trace": b"\x1b[2m",  # dim
    "debug": b"\x1b[2m",
    "warn": b"\x1b[33m",  # yellow
    "error": b"\x1b[31m",  # red
    "fatal": b"\x1b[1;31m",  # bold red
}


def add_parser(
    commands_: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter_class: type[argparse.HelpFormatter],
) -> None:
    """Add `tail` to `commands_` (`client`: --url, --token)."""
    tail = commands_.add_parser(
        "tail",
        parents=[client],
        help="follow log events as lines, filtered by the server (docs/logs.md)",
        description=(
            "Print the log events of a pattern (e.g. 'logs/api/#') as lines until Ctrl-C or "
            "--count: the server sends only what the filters let through. Follows across "
            "reconnects from its position: no line missed, none twice."
        ),
        epilog=epilog,
        formatter_class=formatter_class,
    )
    tail.add_argument("pattern", help="a topic or pattern (+, #), relative to your tenant")
    tail.add_argument("--level", help="at least this level: trace debug info warn error fatal")
    tail.add_argument("--grep", metavar="TEXT", help="the message holds TEXT (case matters)")
    tail.add_argument("--regex", metavar="RE", help="an RE2 pattern found in the message")
    tail.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="K=V",
        help="the record's field K equals V (repeatable: all must hold)",
    )
    tail.add_argument(
        "--type", action="append", default=[], metavar="T", help="only events of type T"
    )
    tail.add_argument(
        "--since",
        metavar="AGE|TOKEN",
        help="start with what was appended in the last AGE (90s, 10m, 2h, 1d), or after "
        "a resume token (default: from now)",
    )
    tail.add_argument(
        "--format",
        default="plain",
        metavar="NAME",
        help="plain, json, syslog, or a plug-in formatter (default: plain)",
    )
    tail.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour lines by level: auto (on a terminal, unless $NO_COLOR), always, never",
    )
    tail.add_argument(
        "--no-color", dest="color", action="store_const", const="never", help="= --color never"
    )
    tail.add_argument("--count", type=int, default=None, metavar="N", help="stop after N lines")


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus tail`; its exit status (cli.py's EXIT_STATUSES)."""
    try:
        spec = _filter(args)
        since = _since(args.since)
        shown = formatter(args.format)
    except InvalidInput as exc:
        print(f"hybridbus tail: {exc}", file=sys.stderr)
        return 2
    colour = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    printer = Printer(sys.stdout.buffer, shown, colour=colour)
    return commands.run(
        "tail",
        tail(args.url, args.token, args.pattern, spec, since, printer, args.count, ca=args.ca),
    )


def _filter(args: argparse.Namespace) -> Filter | None:
    fields: dict[str, FieldValue] = {}
    for text in args.field:
        key, value = parse_field(text)
        fields[key] = value
    spec = Filter(
        level=args.level, contains=args.grep, regex=args.regex, fields=fields, types=args.type
    )
    return None if spec.empty() else spec


def _since(text: str | None) -> Position | float | None:
    """A resume token, or the Unix time `text` (an age: `10m`) ago; None: from now."""
    if text is None:
        return None
    if _DURATION.fullmatch(text):
        return time.time() - float(text[:-1]) * _UNITS[text[-1]]
    return Position.parse(text)  # InvalidPosition (an InvalidInput) if it is neither


async def tail(
    url: str,
    token: str | None,
    pattern: str,
    spec: Filter | None,
    since: Position | float | None,
    printer: Printer,
    count: int | None = None,
    *,
    ca: Ca | None = None,
) -> None:
    """Print what the server sends of `pattern` through `spec`, `count` lines or forever."""
    rate = Rate(sys.stderr) if sys.stderr.isatty() else None
    async with connect(url, token=token, ca=ca) as c:
        if isinstance(since, float):  # the position at that time: read it once, then resume
            since = (await c.history(pattern, since=since, limit=0)).position
        async with c.subscribe(pattern, since=since, filter=spec) as sub:
            if rate is None:
                await _follow(sub, printer, None, count)
                return
            ticker = asyncio.create_task(rate.run())
            try:
                await _follow(sub, printer, rate, count)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                rate.clear()


async def _follow(
    sub: ClientSubscription, printer: Printer, rate: Rate | None, count: int | None
) -> None:
    seen = 0
    while count is None or seen < count:
        try:
            received = await anext(sub)
        except StopAsyncIteration:
            return
        except ContinuityLost as gap:
            print(f"hybridbus tail: {commands.describe(gap)} (going on)", file=sys.stderr)
            continue
        if rate is not None:
            rate.clear()
            rate.count += 1
        printer.print(received)
        seen += 1


class Printer:
    """Writes a delivery as one line: a log event through the formatter, another as JSON."""

    def __init__(self, out: BinaryIO, shown: Formatter, *, colour: bool) -> None:
        self._out = out
        self._formatter = shown
        self._colour = colour

    def line(self, received: Received) -> bytes:
        event: Event = received.event
        if event.type == EVENT_TYPE and isinstance(event.data, dict):
            with contextlib.suppress(InvalidInput):
                record = record_from_data(event.data)
                service, instance = _source_of(received.topic)
                text = self._formatter.format(record, service, instance)
                colour = COLOURS.get(record.level) if self._colour else None
                if colour is not None and text.endswith(b"\n"):
                    return colour + text[:-1] + _RESET + b"\n"
                return text
        head: dict[str, Any] = {
            "topic": received.topic,
            "offset": received.offset,
            "position": str(received.token),
        }
        return msgspec.json.encode(head)[:-1] + b',"event":' + encode_json(event) + b"}\n"

    def print(self, received: Received) -> None:
        self._out.write(self.line(received))
        self._out.flush()


def _source_of(topic: str) -> tuple[str, str]:
    """(service, instance) of `logs/<service>/<instance>` (else the topic, and "")."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "logs":
        return parts[1], "/".join(parts[2:])
    return topic, ""


class Rate:
    """The live rate line on stderr (a terminal): lines/s over the last second, and the total."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.count = 0
        self._shown = False

    async def run(self) -> None:
        last, then = 0, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rate = (self.count - last) / max(now - then, 1e-9)
            last, then = self.count, now
            self._stream.write(f"\r\x1b[K{rate:,.0f} lines/s, {self.count:,} lines")
            self._stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Take the rate line away before a line goes to the same terminal."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
