"""`hybridbus groups` and `hybridbus dlq`: consumer groups and their dead letters, over HTTP.

Owns: those commands' arguments, their requests to the server's HTTP API
(docs/http.md §10; the standard library's `urllib`, so the commands load
nothing else), and what they print: tables for people, `--json` for JSON
lines, the problem's code and name on stderr when the server refuses
(`1401 UNKNOWN_GROUP: ...`) and the exit statuses of the other client
commands (cli.py's `EXIT_STATUSES`). Must not know the server beyond its
HTTP API.

    hybridbus groups [--json]
    hybridbus dlq list GROUP [--after ID] [--limit N] [--json]
    hybridbus dlq show GROUP ID
    hybridbus dlq replay GROUP (ID ... | --all) [--to topic|group]
    hybridbus dlq purge GROUP (ID ... | --all)

They take the same `--url` and `--token` as publish and subscribe: the HTTP
API is at the same host and port as the WebSocket endpoint (`ws://h:p/v1/ws`
→ `http://h:p`; an `http(s)://` URL is taken as it is, less a trailing
`/v1/ws`), and the token (a JWT or an API key) goes as the bearer.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

# The HTTP client of the commands over the HTTP API (shared with cli_schemas, cli_webhooks).
from hybridbus.cli_http import OK, Api, Failed, http_base, print_json, table

__all__ = ["add_parsers", "run"]


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `groups` and `dlq` to `commands`; `client` is the parent with --url and --token."""
    groups = commands.add_parser(
        "groups",
        parents=[client],
        help="list consumer groups: pending, lag, dead letters",
        description=(
            "List the consumer groups you may consume from or manage, one line each: its "
            "pattern, members, pending events (LEASED of them handed to a member now), LAG "
            "(log positions behind the head: an upper bound on the events not taken yet), "
            "dead letters, and REDELIVERED (deliveries after an event's first, since the "
            "server started). Over the HTTP API (docs/http.md), where --token may also be an "
            "API key."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    groups.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay and purge a group's dead letters",
        description=(
            "A consumer group's dead letters: the events it gave up on (max_deliveries "
            "failed deliveries, or term). Needs `manage` on the group's pattern."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    actions = dlq.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="what to do with them"
    )
    listing = actions.add_parser(
        "list",
        parents=[client],
        help="the dead letters, oldest first",
        epilog=epilog,
        formatter_class=formatter,
    )
    listing.add_argument("group", help="the group's name (an admin's: TENANT/NAME)")
    listing.add_argument("--after", metavar="ID", help="only those after this dead letter")
    listing.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N (1-1000, default: 100)"
    )
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = actions.add_parser(
        "show",
        parents=[client],
        help="a dead letter and its event (JSON)",
        epilog=epilog,
        formatter_class=formatter,
    )
    show.add_argument("group", help="the group's name")
    show.add_argument("id", help="the dead letter's id (from `dlq list`)")
    for name, text in (
        ("replay", "replay dead letters to their topic or into the group"),
        ("purge", "remove dead letters from the list"),
    ):
        action = actions.add_parser(
            name,
            parents=[client],
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=epilog,
            formatter_class=formatter,
        )
        action.add_argument("group", help="the group's name")
        action.add_argument("ids", nargs="*", metavar="ID", help="these dead letters")
        action.add_argument("--all", action="store_true", help="every dead letter of the group")
        if name == "replay":
            action.add_argument(
                "--to",
                choices=("topic", "group"),
                default="topic",
                help="topic: appended again to the original topic, every subscriber and "
                "group sees it; group: only this group gets it again (default: %(default)s)",
            )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `hybridbus groups` or `hybridbus dlq ...`; the exit status."""
    command = args.command if args.command == "groups" else f"dlq {args.action}"
    if args.command == "dlq" and args.action in ("replay", "purge") and bool(args.ids) == args.all:
        parser.exit(2, f"hybridbus {command}: give dead letter ids or --all (not both)\n")
    if args.command == "dlq" and args.action == "list" and not 1 <= args.limit <= 1000:
        parser.exit(2, f"hybridbus {command}: --limit is 1 to 1000\n")
    try:
        api = Api(http_base(args.url), args.token, args.ca)
        if args.command == "groups":
            _groups(api, args.json)
        elif args.action == "list":
            _list(api, args.group, args.after, args.limit, args.json)
        elif args.action == "show":
            print_json(api.call("GET", _path(args.group, "dead-letters", args.id)), indent=2)
        else:
            body: dict[str, Any] = {"all": True} if args.all else {"ids": args.ids}
            if args.action == "replay":
                body["to"] = args.to
            print_json(api.call("POST", _path(args.group, "dead-letters", args.action), body))
    except Failed as exc:
        print(f"hybridbus {command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    return OK


# -- the requests --------------------------------------------------------------------


def _path(group: str, *rest: str) -> str:
    return "/v1/groups/" + "/".join(quote(part, safe="") for part in (group, *rest))


# -- the output ------------------------------------------------------------------------


def _groups(api: Api, as_json: bool) -> None:
    groups = api.call("GET", "/v1/groups")["groups"]
    if as_json:
        for group in groups:
            print_json(group)
        return
    fields = ("pattern", "members", "pending", "leased", "lag", "dead_letters", "redelivered")
    header = ["GROUP", *(f.upper().replace("_", "-") for f in fields)]
    rows = [
        [g["name"]] + [str(len(g[f])) if f == "members" else str(g[f]) for f in fields]
        for g in groups
    ]
    table(header, rows)


def _list(api: Api, group: str, after: str | None, limit: int, as_json: bool) -> None:
    query = {"limit": str(limit), **({"after": after} if after else {})}
    page = api.call("GET", _path(group, "dead-letters") + "?" + urlencode(query))
    letters = page["dead_letters"]
    if as_json:
        for letter in letters:
            print_json(letter)
    else:
        header = ["ID", "TOPIC", "OFFSET", "REASON", "ATTEMPTS", "TIME", "ERROR"]
        rows = [
            [
                d["id"],
                d["topic"],
                str(d["offset"]),
                d["reason"],
                str(d["attempts"]),
                _time(d["time"]),
                d["error"],
            ]
            for d in letters
        ]
        table(header, rows)
    if page["more"] and letters:
        print(f"(more: --after {letters[-1]['id']})", file=sys.stderr)


def _time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
