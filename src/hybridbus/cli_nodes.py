"""`hybridbus nodes`: the nodes of the deployment, from the node registry, over HTTP.

Owns: that command's arguments, its request (`GET /v1/nodes`, docs/http.md,
with the shared client of `cli_http`) and what it prints: a table for people
(the answering node marked `*`; a note on stderr when the nodes' config
fingerprints differ), `--json` for one JSON line per node. Must not know the
server beyond its HTTP API.

    hybridbus nodes [--json]        (needs an admin token or admin API key)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from hybridbus.cli_http import OK, listing, print_json, table

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `nodes` to `commands`; `client` is the parent with --url and --token."""
    nodes = commands.add_parser(
        "nodes",
        parents=[client],
        help="list the live nodes (admins): addresses, version, config, connections",
        description=(
            "List the nodes of the deployment whose registry lease is live, one line each: "
            "its id (* the node that answered), the addresses it listens on, version, "
            "CONFIG (a fingerprint of its settings, secrets left out: nodes started with "
            "other settings show another one), open connections, UPTIME and the AGE of "
            "its last heartbeat. Over the HTTP API (docs/http.md); needs an admin token "
            "or admin API key as --token."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    nodes.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus nodes`; the exit status."""
    answer, status = listing("nodes", args, "/v1/nodes")
    if status is not None:
        return status
    nodes: list[dict[str, Any]] = answer["nodes"]
    if args.json:
        for node in nodes:
            print_json(node)
        return OK
    now = time.time()
    header = ["ID", "ADDRESSES", "VERSION", "CONFIG", "CONNECTIONS", "UPTIME", "AGE"]
    rows = [
        [
            ("* " if node["id"] == answer["node"] else "  ") + node["id"],
            ",".join(node["addresses"]) or "-",
            node["version"],
            node["fingerprint"],
            str(node["connections"]),
            _duration(now - node["started"]),
            _duration(now - node["heartbeat"]),
        ]
        for node in nodes
    ]
    table(header, rows)
    fingerprints = {node["fingerprint"] for node in nodes}
    if len(fingerprints) > 1:
        print(
            f"hybridbus nodes: {len(fingerprints)} different CONFIG fingerprints: "
            "some nodes run with other settings",
            file=sys.stderr,
        )
    return OK


def _duration(seconds: float) -> str:
    """`42s`, `3m`, `5h`, `2d` (clocks of other hosts may be a little ahead: never negative)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
