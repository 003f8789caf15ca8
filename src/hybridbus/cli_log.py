"""`hybridbus log`: ship the lines of stdin, or of a tailed file, as log events.

Owns: the command's arguments; turning each line into a `LogRecord`
(`record_from_line`: a JSON object or plain text; `--level-default` for a
line that names no level); `--echo`; the flow of lines into a `Shipper`
(never more than `HIGH_WATER` unacknowledged: past it, reading waits, so a
fast producer is slowed, never dropped); in file mode the state file, saved
only once the lines before the position are acknowledged; and the exit
status (0 only when every line was acknowledged). Must not know a transport
(`hybridbus.logs.transports`), nor how a file is followed (`logs.tailing`).

    hybridbus log --source S [--instance I] [--url URL] [--token T] [--tenant T]
                  [--file PATH [--from-start] [--state FILE]] [--processors DIR]
                  [--level-default LEVEL] [--echo] [--timeout S]
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from hybridbus.core.logs import LogRecord
    from hybridbus.logs.shipper import Shipper
    from hybridbus.logs.tailing import Line, Tailer

__all__ = ["add_parser", "run"]

OK: Final = 0
FAILED: Final = 1
BAD_ARGUMENTS: Final = 2
UNREACHABLE: Final = 3
INTERRUPTED: Final = 130
# Unacknowledged lines past which reading waits (half the Shipper's queue: it never drops).
HIGH_WATER: Final = 5_000
MAX_QUEUE: Final = 10_000
# The keys a JSON line names its level with (as `core.logs.record_from_line` reads them).
_LEVEL_KEYS: Final = ("level", "severity", "levelname", "lvl")


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `log` to `commands` (`client`: --url, --token)."""
    log = commands.add_parser(
        "log",
        parents=[client],
        help="ship stdin's lines (or a file's) as log events (docs/logs.md)",
        description=(
            "Ship each line of stdin, or of the file --file names (followed like tail -F, "
            "across rotation), as a log event on logs/SOURCE/INSTANCE. A line is a JSON "
            "object (message, level, logger, time, trace_id, ... and fields) or plain text "
            "(a leading ERROR, [warn], W: sets its level). --url picks the way in: ws://, "
            "grpc://, http:// (with --tenant or ?tenant=) or file:///path. At the end of "
            "stdin (or on Ctrl-C, SIGTERM) it waits for every line to be acknowledged: "
            "exit status 0 only then."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    log.add_argument("--source", required=True, metavar="SERVICE",
                     help="the service the lines come from: the topic's second segment")
    log.add_argument("--instance", default=None, metavar="ID",
                     help="the instance: the topic's third segment (default: the host name)")
    log.add_argument("--tenant", default=None,
                     help="the tenant, for http:// and grpc:// URLs (default: ?tenant= in "
                     "the URL, else the token's tenantid claim)")
    log.add_argument("--file", type=Path, default=None, metavar="PATH",
                     help="follow this file instead of reading stdin (rotation: rename, "
                     "copytruncate, missing for a while)")
    log.add_argument("--from-start", action="store_true",
                     help="with --file: ship what the file holds already (default: from its end)")
    log.add_argument("--state", type=Path, default=None, metavar="FILE",
                     help="with --file: keep the position of the last acknowledged line here; "
                     "a restart goes on right after it")
    log.add_argument("--processors", type=Path, default=None, metavar="DIR",
                     help="run the processors in DIR (*.py with process(record)) on each "
                     "record; edits reload without a restart")
    log.add_argument("--level-default", default="info", metavar="LEVEL",
                     help="the level of a line that names none (default: info)")
    log.add_argument("--echo", action="store_true",
                     help="write each line to stdout too, so the command can sit in a pipe")
    log.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="at the end, how long to wait for acknowledgements (default: 30)")


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus log`; the exit status."""
    from hybridbus.core.logs import log_topic, normalize_level
    from hybridbus.errors import InvalidInput

    logging.basicConfig(level=logging.INFO, format="hybridbus log: %(message)s", stream=sys.stderr)
    instance = args.instance or _host()
    try:
        log_topic(args.source, instance)
        default = normalize_level(args.level_default)
    except InvalidInput as exc:
        return _say(f"{exc}", BAD_ARGUMENTS)
    if args.file is None and (args.from_start or args.state is not None):
        return _say("--from-start and --state go with --file", BAD_ARGUMENTS)
    from hybridbus.logs.plugins import transport
    from hybridbus.logs.processors import Processors
    from hybridbus.logs.shipper import Shipper

    processors = None
    try:
        tls = {"ca": args.ca} if args.ca and not args.url.startswith("file:") else {}
        if args.cert is not None and args.url.startswith("grpc"):
            # grpc takes PEM files, not the SSLContext `main` made of --ca/--cert/--key
            tls = {"ca": args.ca_file, "cert": args.cert, "key": args.key}
        way = transport(args.url, token=args.token, tenant=args.tenant, **tls)
        tailer = _tailer(args) if args.file is not None else None
        if args.processors is not None:
            processors = Processors(args.processors)
    except InvalidInput as exc:
        return _say(f"{exc}", BAD_ARGUMENTS)
    if processors is not None:
        processors.start()
    shipper = Shipper(
        way,
        service=args.source,
        instance=instance,
        max_queue=MAX_QUEUE,
        processors=None if processors is None else processors.apply,
    )
    stop = _Stop()
    restore = _on_signals(stop)
    try:
        if tailer is None:
            _from_stdin(shipper, default, args.echo, stop)
        else:
            with tailer:
                _from_file(shipper, tailer, default, args.echo, stop)
    except KeyboardInterrupt:
        pass  # the lines read so far are still shipped
    finally:
        restore()
    try:
        shipped = shipper.close(args.timeout)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        shipper.close(0)
        return _say(f"interrupted with {shipper.pending} lines not acknowledged", INTERRUPTED)
    finally:
        if processors is not None:
            processors.close()
    return _outcome(shipper, shipped, args.timeout)


def _host() -> str:
    """The host name, with what a topic segment cannot hold replaced by `_`."""
    name = socket.gethostname() or "localhost"
    return "".join("_" if c in "/+#" or c.isspace() or not c.isprintable() else c for c in name)


def _tailer(args: argparse.Namespace) -> Tailer:
    from hybridbus.errors import InvalidInput
    from hybridbus.logs.tailing import TailConfig, Tailer, TailState

    if args.file.is_dir():
        raise InvalidInput(f"--file {args.file} is a directory")
    if args.state is not None and not args.state.resolve().parent.is_dir():
        raise InvalidInput(f"--state {args.state}: no directory {args.state.parent}")
    state = None if args.state is None else TailState(args.state)
    return Tailer(args.file, TailConfig(from_start=args.from_start), state)


class _Stop(threading.Event):
    """Set by SIGINT or SIGTERM; `reading` while the main thread may block reading stdin."""

    reading = False


def _on_signals(stop: _Stop) -> Any:
    """SIGINT and SIGTERM end the command (reading stops, what was read is shipped)."""

    def handler(number: int, frame: object) -> None:
        stop.set()
        # Only an exception ends a blocking read; anywhere else (inside the Shipper's
        # bookkeeping) one could leave a count wrong: the loop sees `stop` instead.
        if stop.reading:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for number, old in previous.items():
            signal.signal(number, old)

    return restore


# -- lines to records ---------------------------------------------------------------------


def record(line: str, default: str) -> LogRecord:
    """The record of one line; `default` is the level of a line that names none."""
    from hybridbus.core.logs import record_from_line

    found = record_from_line(line)
    if default != "info" and found.level == "info" and not _names_level(line, found):
        found.level = default
    return found


def _names_level(line: str, found: LogRecord) -> bool:
    text = line.rstrip("\r\n")
    if found.message == text:  # plain text, nothing taken off: no level prefix
        return False
    if not text.lstrip().startswith("{"):
        return True  # plain text with a level prefix taken off
    try:
        decoded = msgspec.json.decode(text)
    except (msgspec.DecodeError, ValueError, UnicodeError, RecursionError):
        return True
    return isinstance(decoded, dict) and any(key in decoded for key in _LEVEL_KEYS)


# -- the two sources ----------------------------------------------------------------------


def _wait_for_acks(shipper: Shipper, stop: threading.Event) -> bool:
    """Wait until every line submitted is settled; False if stopped first."""
    while not shipper.flush(1.0):
        if stop.is_set():
            return False
    return True


def _from_stdin(shipper: Shipper, default: str, echo: bool, stop: _Stop) -> None:
    out, stdin = sys.stdout.buffer, sys.stdin.buffer
    while not stop.is_set():
        stop.reading = True
        try:
            raw = stdin.readline()
        finally:
            stop.reading = False
        if not raw:
            return
        if echo:
            out.write(raw)
            out.flush()
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.strip():
            shipper.submit(record(line, default))
            if shipper.pending >= HIGH_WATER and not _wait_for_acks(shipper, stop):
                return


def _from_file(
    shipper: Shipper, tailer: Tailer, default: str, echo: bool, stop: threading.Event
) -> None:
    out = sys.stdout
    for lines in _chunks(tailer.follow(stop)):
        for line in lines:
            if echo:
                out.write(line.text + "\n")
            if line.text.strip():
                shipper.submit(record(line.text, default))
        if echo:
            out.flush()
        if not _wait_for_acks(shipper, stop):
            return  # not acknowledged: the state keeps the last position that was
        tailer.save(lines[-1].position)


def _chunks(batches: Iterator[list[Line]]) -> Iterator[list[Line]]:
    """The tailer's batches, cut to at most `HIGH_WATER` lines."""
    for batch in batches:
        for start in range(0, len(batch), HIGH_WATER):
            yield batch[start : start + HIGH_WATER]


# -- the outcome --------------------------------------------------------------------------


def _outcome(shipper: Shipper, shipped: bool, timeout: float) -> int:
    lost = shipper.dropped + shipper.rejected
    if shipped and not lost:
        return OK
    unsettled = shipper.pending
    parts = []
    if unsettled:
        parts.append(f"{unsettled} not acknowledged within {timeout:g} s")
    if shipper.rejected:
        parts.append(f"{shipper.rejected} refused by the server")
    if shipper.dropped:
        parts.append(f"{shipper.dropped} dropped")
    detail = f" (last error: {shipper.last_error})" if shipper.last_error else ""
    message = f"of {shipper.submitted} lines, {', '.join(parts) or 'not all acknowledged'}{detail}"
    if shipper.shipped == 0 and shipper.retries and not shipper.rejected:
        return _say(f"{message}; nothing reached the server: is it running at --url?", UNREACHABLE)
    return _say(message, FAILED)


def _say(message: str, status: int) -> int:
    print(f"hybridbus log: {message}", file=sys.stderr)
    return status
