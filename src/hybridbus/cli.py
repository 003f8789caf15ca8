"""The `hybridbus` command line.

Owns: argument parsing and turning flags into a `ServerConfig` (flags >
`HYBRIDBUS_*` environment > TOML file > defaults, through `load_config`).
Must not hold server logic: `hybridbus serve` hands over to `hybridbus.serve`.

    hybridbus serve [--config FILE] [--engine URL] [--host H] [--port P]
                    [--anonymous-tenant T]

(`publish`, `subscribe` and `history` arrive with the Python client.)
"""

from __future__ import annotations

import argparse
import os
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
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses others
