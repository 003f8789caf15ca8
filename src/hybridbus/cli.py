"""The `hybridbus` command line.

Owns: argument parsing and turning flags into a `ServerConfig` (flags >
`HYBRIDBUS_*` environment > TOML file > defaults, through `load_config`).
Must not hold server logic: `hybridbus serve` hands over to `hybridbus.serve`.

    hybridbus serve [--config FILE] [--engine URL] [--host H] [--port P]
                    [--anonymous-tenant T]
    hybridbus publish TOPIC --data JSON|@file|- [--type T] [--source S] [--id ID]
    hybridbus subscribe PATTERN [--since TOKEN] [--count N]     (JSON lines)
    hybridbus history TOPIC|PATTERN [--since TOKEN] [--limit N]  (JSON lines)

The client commands take `--url` (default `$HYBRIDBUS_URL` or
ws://127.0.0.1:8080/v1/ws) and `--token` (default `$HYBRIDBUS_TOKEN`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hybridbus.errors import InvalidInput
from hybridbus.server.config import ENV_PREFIX, load_config

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The argument parser of `hybridbus`."""
    root = argparse.ArgumentParser(
        prog="hybridbus", description="A real-time event hub for collaborative applications."
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description=(
            "Run the server. Settings come from flags, then "
            f"{ENV_PREFIX}* environment variables, then the TOML file, then defaults "
            "(docs/configuration.md)."
        ),
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="a TOML configuration file")
    serve.add_argument("--engine", metavar="URL", help="memory:// or sqlite:///path")
    serve.add_argument("--host", metavar="H", help="address to listen on")
    serve.add_argument("--port", type=int, metavar="P", help="port to listen on (0: any)")
    serve.add_argument(
        "--anonymous-tenant",
        metavar="T",
        help="let clients without a token connect, in tenant T",
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url",
        default=os.environ.get(f"{ENV_PREFIX}URL", "ws://127.0.0.1:8080/v1/ws"),
        help="the server's WebSocket endpoint",
    )
    client.add_argument("--token", default=os.environ.get(f"{ENV_PREFIX}TOKEN"))
    publish = commands.add_parser(
        "publish", parents=[client], help="publish one event (prints the ack)"
    )
    publish.add_argument("topic", help="the topic, relative to your tenant")
    publish.add_argument("--data", default=None, help="JSON, @file (JSON), or - for stdin")
    publish.add_argument("--type", default="com.example.cli", help="the event's type")
    publish.add_argument("--source", default="/hybridbus/cli", help="the event's source")
    publish.add_argument("--id", default=None, help="the event's id (default: a new UUID)")
    subscribe = commands.add_parser(
        "subscribe", parents=[client], help="print deliveries as JSON lines"
    )
    subscribe.add_argument("pattern")
    subscribe.add_argument("--since", default=None, help="resume after this position token")
    subscribe.add_argument("--count", type=int, default=None, help="stop after N deliveries")
    history = commands.add_parser(
        "history", parents=[client], help="print retained events as JSON lines"
    )
    history.add_argument("pattern")
    history.add_argument("--since", default=None)
    history.add_argument("--limit", type=int, default=100)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    if args.command == "serve":
        flags = {
            "engine": args.engine,
            "host": args.host,
            "port": args.port,
            "anonymous_tenant": args.anonymous_tenant,
        }
        try:
            config = load_config(args.config, os.environ, flags)
        except InvalidInput as exc:
            parser().exit(2, f"hybridbus serve: {exc}\n")
        from hybridbus.serve import run  # aiohttp and the engines load only to serve

        return run(config)
    from hybridbus.client import commands
    from hybridbus.errors import BusError

    try:
        if args.command == "publish":
            data = None if args.data is None else commands.read_data(args.data)
            return commands.run(
                commands.publish(
                    args.url,
                    args.token,
                    args.topic,
                    data,
                    type=args.type,
                    source=args.source,
                    id=args.id,
                )
            )
        if args.command == "subscribe":
            return commands.run(
                commands.subscribe(args.url, args.token, args.pattern, args.since, args.count)
            )
        if args.command == "history":
            return commands.run(
                commands.history(args.url, args.token, args.pattern, args.since, args.limit)
            )
    except BusError as exc:
        print(f"hybridbus {args.command}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses others
