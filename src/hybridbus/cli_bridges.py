"""`hybridbus bridge CONFIG` (the bridges alone) and `hybridbus bridges` (listing them over HTTP).

Owns: those two commands' arguments and what they do. `bridge` reads the
settings file as `hybridbus serve` does (flags > `HYBRIDBUS_*` > the file),
opens the bus on its `engine` and runs only its `[[bridges]]` (no listener),
logging and tracing (`[tracing]`) as the server does, until SIGTERM or SIGINT: then it stops them
(what is not confirmed yet comes again at the next start) and exits 0.
`bridges` asks `GET /v1/bridges` (docs/bridges.md) and prints a table, or
JSON lines. Must not hold bridge logic (`bridges.registry` runs them).

    hybridbus bridge CONFIG [--engine URL] [--only NAME ...]
    hybridbus bridges [--json]                  (over HTTP)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hybridbus.cli_http import OK, listing, print_json, table

if TYPE_CHECKING:
    from hybridbus.bridges.settings import BridgeSettings
    from hybridbus.server.config import ServerConfig

__all__ = ["add_parsers", "run", "run_standalone"]

log = logging.getLogger("hybridbus.bridges")


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `bridge` and `bridges` to `commands`; `client` is the parent with --url and --token."""
    bridge = commands.add_parser(
        "bridge",
        help="run the [[bridges]] of a settings file alone, against its engine",
        description=(
            "Run the bridges of the settings file CONFIG (its [[bridges]] tables, "
            "docs/bridges.md) in this process, on the bus of its engine, without serving "
            "clients; until SIGTERM or SIGINT. The engine must be one this process may open "
            "beside the server (a shared one, redis://...), or the server must not run: an "
            "sqlite directory belongs to one process."
        ),
        formatter_class=formatter,
    )
    bridge.add_argument("config", type=Path, metavar="CONFIG", help="a TOML settings file")
    bridge.add_argument("--engine", metavar="URL", help="the engine URL (else the file's)")
    bridge.add_argument(
        "--only", action="append", metavar="NAME", help="run only this bridge (repeatable)"
    )
    listing = commands.add_parser(
        "bridges",
        parents=[client],
        help="list the server's bridges: state, lag, counters",
        description=(
            "List the bridges of the server that answers (GET /v1/bridges, docs/bridges.md): "
            "NAME, KIND, DIRECTION, STATE, LAG, IN (taken from the source side), OUT (written "
            "and confirmed), ERRORS and the last error. Admins see all; others the bridges of "
            "their tenant they may manage."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus bridges`; the exit status."""
    answer, status = listing("bridges", args, "/v1/bridges")
    if status is not None:
        return status
    found = answer["bridges"]
    if args.json:
        for bridge in found:
            print_json(bridge)
        return OK
    header = ["NAME", "KIND", "DIRECTION", "STATE", "LAG", "IN", "OUT", "ERRORS", "LAST ERROR"]
    rows = [
        [
            b["name"],
            b["kind"],
            b["direction"],
            b["state"],
            str(b["lag"]),
            str(b["received"]),
            str(b["delivered"]),
            str(b["errors"]),
            (b["last_error"] or "-")[:60],
        ]
        for b in found
    ]
    table(header, rows)
    return OK


def run_standalone(args: argparse.Namespace) -> int:
    """Run `hybridbus bridge CONFIG`; the exit status (2: bad settings, 1: cannot start)."""
    from hybridbus.errors import BusError, InvalidInput
    from hybridbus.server.config import load_config
    from hybridbus.server.logs import configure_logging

    try:
        config = load_config(args.config, os.environ, {"engine": args.engine})
        configure_logging(config.log_level, config.log_format)
    except (InvalidInput, ValueError) as exc:
        print(f"hybridbus bridge: {exc}", file=sys.stderr)
        return 2
    chosen = config.bridges
    if args.only:
        unknown = set(args.only) - {b.name for b in chosen}
        if unknown:
            print(f"hybridbus bridge: no bridge {sorted(unknown)[0]!r} in {args.config}",
                  file=sys.stderr)  # fmt: skip
            return 2
        chosen = [b for b in chosen if b.name in args.only]
    if not chosen:
        print(f"hybridbus bridge: {args.config} has no [[bridges]]", file=sys.stderr)
        return 2
    failure: BaseException | None = None
    try:
        asyncio.run(_standalone(config, chosen))
    except (OSError, BusError) as exc:  # InvalidInput too: [tracing] without OpenTelemetry
        failure = exc
    if failure is not None:
        log.error("cannot run the bridges: %s", failure, extra={"error": type(failure).__name__})
        print(f"hybridbus bridge: {failure}", file=sys.stderr)
        return 1
    return OK


async def _standalone(config: ServerConfig, settings: Sequence[BridgeSettings]) -> None:
    from hybridbus.app import open as open_bus
    from hybridbus.bridges.registry import Bridges
    from hybridbus.server.config import engine_config
    from hybridbus.server.tracing_start import trace

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(number, stop.set)
    engine = config.engine
    bus = await open_bus(engine, engine=engine_config(config))  # the same retention as the server
    close_tracing = None
    try:
        # [tracing] as the server's (docs/tracing.md): this process's spans, `<kind> out` ...
        node = config.node_id or f"{socket.gethostname()}-{os.getpid()}-bridges"
        close_tracing = trace(bus, config.tracing, node=node, engine=engine.split(":")[0])
        bridges = Bridges(bus, settings)
        await bridges.start()
        log.info("bridges running", extra={"engine": engine, "pid": os.getpid()})
        try:
            await stop.wait()
        finally:
            await bridges.close()
    finally:
        await bus.close()
        if close_tracing is not None:
            await close_tracing()  # the spans left are exported
    log.info("stopped")
