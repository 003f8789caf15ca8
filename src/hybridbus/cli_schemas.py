"""`hybridbus schemas`: the event types' JSON Schemas, over HTTP.

Owns: the `schemas` command's arguments, its requests to the server's HTTP
API (docs/schemas.md; through `cli_http`'s client, the standard library's
`urllib`) and what it prints: a table or JSON lines for `list`, JSON for the
others, the problem's code and name on stderr when the server refuses
(`1502 SCHEMA_INCOMPATIBLE: ...`). Must not know the server beyond its HTTP API.

    hybridbus schemas list [--json]
    hybridbus schemas show TYPE [VERSION]
    hybridbus schemas register TYPE SCHEMA          (JSON, @file or -)
    hybridbus schemas test TYPE DATA [--version N]  (JSON, @file or -; exit 1 if invalid)
    hybridbus schemas mode TYPE backward|forward|full|none

They take `--url` and `--token` as `hybridbus groups` does (cli_groups.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from hybridbus.cli_http import OK, Api, Failed, http_base, print_json, table

__all__ = ["add_parsers", "run"]

INVALID: Final = 1  # `test`: the data does not match
_MODES: Final = ("backward", "forward", "full", "none")


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `schemas` to `commands`; `client` is the parent with --url and --token."""
    schemas = commands.add_parser(
        "schemas",
        help="list, show, register and test event types' JSON Schemas",
        description=(
            "The JSON Schemas (Draft 2020-12) of your tenant's event types: events of a type "
            "with a schema are checked on every way in (docs/schemas.md). Registering and "
            "setting a mode need `manage` on $schemas/<type>."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    actions = schemas.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="what to do"
    )

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, parents=[client], help=text, epilog=epilog, formatter_class=formatter
        )

    listing = action("list", "the types with schemas: mode, latest version, URI")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = action("show", "a type (mode, versions) or one version with its schema (JSON)")
    show.add_argument("type", help="the event type (an admin's: TENANT/TYPE)")
    show.add_argument("version", nargs="?", help="a version number or latest")
    register = action("register", "register a schema as the type's next version")
    register.add_argument("type", help="the event type")
    register.add_argument("schema", help="the JSON Schema: JSON text, @file or - (stdin)")
    test = action("test", "check data against the type's schema (exit status 1 if invalid)")
    test.add_argument("type", help="the event type")
    test.add_argument("data", help="the event's data: JSON text, @file or - (stdin)")
    test.add_argument("--version", help="a version number (default: the latest)")
    mode = action("mode", "set the type's compatibility mode")
    mode.add_argument("type", help="the event type")
    mode.add_argument("mode", choices=_MODES, help="checked when a version is registered")


def run(args: argparse.Namespace) -> int:
    """Run `hybridbus schemas ...`; the exit status."""
    command = f"schemas {args.action}"
    try:
        api = Api(http_base(args.url), args.token, args.ca)
        if args.action == "list":
            _list(api, args.json)
        elif args.action == "show":
            rest = () if args.version is None else (args.version,)
            print_json(api.call("GET", _path(args.type, *rest)), indent=2)
        elif args.action == "register":
            print_json(api.call("POST", _path(args.type), {"schema": _json_argument(args.schema)}))
        elif args.action == "test":
            body: dict[str, Any] = {"data": _json_argument(args.data)}
            if args.version is not None:
                body["version"] = int(args.version) if args.version.isdigit() else args.version
            result = api.call("POST", _path(args.type, "test"), body)
            print_json(result)
            if not result["valid"]:
                return INVALID
        else:
            print_json(api.call("PUT", _path(args.type, "mode"), {"mode": args.mode}))
    except Failed as exc:
        print(f"hybridbus {command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    return OK


def _path(type: str, *rest: str) -> str:
    return "/v1/schemas/" + "/".join(quote(part, safe="") for part in (type, *rest))


def _json_argument(text: str) -> Any:
    """JSON from the text itself, `@file` or `-` (stdin); `Failed` (status 2) if not JSON."""
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            text = Path(text[1:]).read_text()
        return json.loads(text)
    except OSError as exc:
        raise Failed(f"cannot read {text[1:]!r}: {exc.strerror}", 2) from None
    except ValueError as exc:
        raise Failed(f"not JSON: {exc}", 2) from None


def _list(api: Api, as_json: bool) -> None:
    types = api.call("GET", "/v1/schemas")["schemas"]
    if as_json:
        for found in types:
            print_json(found)
        return
    rows = [[t["name"], t["mode"], str(t["latest"]), t["uri"] or "-"] for t in types]
    table(["TYPE", "MODE", "LATEST", "URI"], rows)
