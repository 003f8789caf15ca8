"""`hybridbus webhooks`: outbound webhook subscriptions, over HTTP.

Owns: the `webhooks` command's arguments, its requests to the server's HTTP
API (docs/webhooks.md "Outbound"; through `cli_http`) and what it prints: a
table or JSON lines for `list` and `attempts`, JSON for the others (`create`
prints the secret the server made, the only time it is shown), the problem's
code and name on stderr when the server refuses. Must not know the server
beyond its HTTP API.

    hybridbus webhooks list [--json]
    hybridbus webhooks show NAME
    hybridbus webhooks create NAME PATTERN URL [--mode binary|structured] [--secret S ...]
                          [--timeout S] [--concurrency N] [--rate R] [--unordered]
    hybridbus webhooks delete NAME
    hybridbus webhooks enable|disable NAME
    hybridbus webhooks replay NAME (--position TOKEN | --time UNIX)
    hybridbus webhooks attempts NAME [--limit N] [--json]

They take `--url` and `--token` as `hybridbus groups` does.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from hybridbus.cli_http import OK, Api, Failed, http_base, print_json, table

__all__ = ["add_parsers", "run"]


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `webhooks` to `commands`; `client` is the parent with --url and --token."""
    webhooks = commands.add_parser(
        "webhooks",
        help="outbound webhooks: POST a pattern's events to a URL",
        description=(
            "Outbound webhooks of your tenant: each POSTs the events of a pattern to a URL, "
            "signed (Standard Webhooks), retried on a schedule, as the consumer group "
            "webhook.NAME (docs/webhooks.md). Needs `manage` on the pattern."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    actions = webhooks.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="what to do with them"
    )

    def action(name: str, text: str, named: bool = True) -> argparse.ArgumentParser:
        parser = actions.add_parser(
            name, parents=[client], help=text, epilog=epilog, formatter_class=formatter
        )
        if named:
            parser.add_argument("name", help="the subscription's name (an admin's: TENANT/NAME)")
        return parser

    listing = action("list", "the subscriptions: pattern, URL, enabled, attempts", named=False)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    action("show", "one subscription, with its group's pending events and lag (JSON)")
    create = action("create", "create a subscription (prints its secret, shown only then)")
    create.add_argument("pattern", help="the events to send, e.g. 'orders/#'")
    create.add_argument("target", metavar="URL", help="where to POST them (http:// or https://)")
    create.add_argument(
        "--mode",
        choices=("binary", "structured"),
        default="binary",
        help="CloudEvents HTTP mode (default: %(default)s)",
    )
    create.add_argument(
        "--secret",
        action="append",
        metavar="S",
        help="a whsec_/whsk_ key (twice to rotate); default: made",
    )
    create.add_argument("--timeout", type=float, help="seconds for an answer (default: 15)")
    create.add_argument("--concurrency", type=int, help="requests at once (default: 8)")
    create.add_argument("--rate", type=float, help="events a second (default: unlimited)")
    create.add_argument(
        "--unordered",
        action="store_true",
        help="no per-key order: faster, events of a key may overtake",
    )
    action("delete", "delete a subscription and its group")
    action("enable", "start delivering; what waited goes first")
    action("disable", "stop delivering; events wait in the group")
    replay = action("replay", "deliver again from a position or a time")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--position", metavar="TOKEN", help="a resume token")
    where.add_argument("--time", type=float, metavar="UNIX", help="Unix seconds")
    attempts = action("attempts", "the last delivery attempts, newest first")
    attempts.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N (1-100, default: %(default)s)"
    )
    attempts.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _path(name: str, *rest: str) -> str:
    return "/v1/webhooks/outbound/" + "/".join(quote(part, safe="") for part in (name, *rest))


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus webhooks ...`; the exit status."""
    command = f"webhooks {args.action}"
    try:
        api = Api(http_base(args.url), args.token, args.ca)
        if args.action == "list":
            _list(api, args.json)
        elif args.action == "show":
            print_json(api.call("GET", _path(args.name)), indent=2)
        elif args.action == "create":
            print_json(api.call("PUT", _path(args.name), _created(args)), indent=2)
        elif args.action == "delete":
            api.call("DELETE", _path(args.name))
        elif args.action in ("enable", "disable"):
            shown = api.call("POST", _path(args.name, args.action))
            print_json({"name": shown["name"], "enabled": shown["enabled"]})
        elif args.action == "replay":
            body = {"position": args.position} if args.position else {"time": args.time}
            print_json(api.call("POST", _path(args.name, "replay"), body))
        else:
            _attempts(api, args.name, args.limit, args.json)
    except Failed as exc:
        print(f"hybridbus {command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    return OK


def _created(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"pattern": args.pattern, "url": args.target, "mode": args.mode}
    if args.secret:
        body["secrets"] = args.secret
    for name in ("timeout", "concurrency", "rate"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.unordered:
        body["ordered"] = False
    return body


def _list(api: Api, as_json: bool) -> None:
    webhooks = api.call("GET", "/v1/webhooks/outbound")["webhooks"]
    if as_json:
        for webhook in webhooks:
            print_json(webhook)
        return
    header = ["NAME", "PATTERN", "URL", "MODE", "ENABLED", "ATTEMPTS", "ORIGIN"]
    rows = [
        [
            w["name"],
            w["pattern"],
            w["url"],
            w["mode"],
            "yes" if w["enabled"] else "no",
            str(w["attempts"]),
            w["origin"],
        ]
        for w in webhooks
    ]
    table(header, rows)


def _attempts(api: Api, name: str, limit: int, as_json: bool) -> None:
    if not 1 <= limit <= 100:
        raise Failed("--limit is 1 to 100", 2)
    found = api.call("GET", _path(name, "attempts") + f"?limit={limit}")["attempts"]
    if as_json:
        for attempt in found:
            print_json(attempt)
        return
    header = ["TIME", "EVENT", "TOPIC", "ATTEMPT", "OUTCOME", "STATUS", "MS", "ERROR"]
    rows = [
        [
            datetime.fromtimestamp(a["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            a["event_id"],
            a["topic"],
            str(a["attempt"]),
            a["outcome"],
            str(a["status"] or "-"),
            f"{a['latency'] * 1000:.0f}",
            a["error"],
        ]
        for a in found
    ]
    table(header, rows)
