"""The `hybridbus` command line.

Owns: argument parsing and turning flags into a `ServerConfig` (flags >
`HYBRIDBUS_*` environment > TOML file > defaults, through `load_config`).
Must not hold server logic: `hybridbus serve` hands over to `hybridbus.serve`.

    hybridbus serve [--config FILE] [--engine URL] [--host H] [--port P] [--grpc-port P]
                    [--anonymous-tenant T] [--workers N]               (N > 1: workers.py)
                    [--dev-tls]                  (a development CA: server/dev_tls.py)
    hybridbus publish TOPIC --data JSON|@file|- [--type T] [--source S] [--id ID]
    hybridbus subscribe PATTERN [--since TOKEN] [--count N]     (JSON lines)
    hybridbus history TOPIC|PATTERN [--since TOKEN] [--limit N]  (JSON lines)
    hybridbus presence TOPIC [--watch] [--json]        (the members, then their changes)
    hybridbus token --sub USER --tenant T [--role R ...] [--ttl 1h] [--device D]
                    [--sid S] [--app A] [--topic PATTERN ...] [--admin] [--kid KID]
                    [--issuer ISS] [--audience AUD]
                    [--secret-file FILE | --private-key FILE --alg RS256|ES256|EdDSA
                     | --config FILE]
    hybridbus key --name N (--tenant T | --admin) [--role R ...]
    hybridbus groups [--json]                                  (over HTTP: cli_groups.py)
    hybridbus nodes [--json]                                   (over HTTP: cli_nodes.py)
    hybridbus bridge CONFIG [--engine URL] [--only NAME]    (the bridges alone: cli_bridges.py)
    hybridbus bridges [--json]                                 (over HTTP: cli_bridges.py)
    hybridbus dlq list|show|replay|purge GROUP ...
    hybridbus schemas list|show|register|test|mode ...        (over HTTP: cli_schemas.py)
    hybridbus webhooks list|show|create|delete|enable|disable|replay|attempts   (cli_webhooks.py)
    hybridbus watch DIR --topic T | follow TOPIC DIR | changes status ID   (cli_changes.py)
    hybridbus tail PATTERN [--level L] [--grep T] [--regex R] [--field K=V] [--since 10m|TOKEN]
                   [--format plain|json|syslog] [--no-color]           (cli_tail.py)
    hybridbus log --source S [--instance I] [--file PATH [--from-start] [--state FILE]]
                  [--processors DIR] [--level-default L] [--echo]      (cli_log.py)

The client commands take `--url` (default `$HYBRIDBUS_URL` or ws://127.0.0.1:8080/v1/ws),
`--token`, `--ca` (the CA a wss:// or https:// server is verified against) and `--cert`/`--key`
(a client certificate for mutual TLS: `main` makes one context of the three, as `args.ca`),
each defaulting to `$HYBRIDBUS_<FLAG>`; exit statuses: `EXIT_STATUSES` (3: cannot connect).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from hybridbus import (
    cli_bridges,
    cli_changes,
    cli_groups,
    cli_log,
    cli_nodes,
    cli_schemas,
    cli_tail,
    cli_webhooks,
)
from hybridbus.errors import InvalidInput
from hybridbus.server.config import ENV_PREFIX, ServerConfig, load_config

if TYPE_CHECKING:
    from hybridbus.server.keys import KeySpec

__all__ = ["main", "parser"]


# Where the client commands connect, and with which token, unless --url / --token say.
URL_VARIABLE = f"{ENV_PREFIX}URL"
TOKEN_VARIABLE = f"{ENV_PREFIX}TOKEN"
CA_VARIABLE = f"{ENV_PREFIX}CA"
CERT_VARIABLE = f"{ENV_PREFIX}CERT"
KEY_VARIABLE = f"{ENV_PREFIX}KEY"
DEFAULT_URL = "ws://127.0.0.1:8080/v1/ws"

_ENVIRONMENT = f"""\
environment:
  {URL_VARIABLE}    the server's WebSocket endpoint when --url is not given
                   (default: {DEFAULT_URL})
  {TOKEN_VARIABLE}  the connection token (a JWT) when --token is not given
                   (default: none: an anonymous client, if the server lets it in)
  {CA_VARIABLE}     a PEM file of the CA certificates a wss:// or https:// server's
                   certificate must be signed by when --ca is not given
                   (default: the system's trusted CAs)
  {CERT_VARIABLE}   a PEM client certificate for a server requiring one (mutual TLS)
  {KEY_VARIABLE}    its private key (PEM, unencrypted); --cert and --key say otherwise
  `hybridbus serve` reads {ENV_PREFIX}* settings (docs/configuration.md)"""

# The exit statuses of the client commands (client/commands.py and cli_groups.py return them).
EXIT_STATUSES = """\
exit status:
  0    done
  1    refused or failed: stderr names the error code, e.g. "1110 FORBIDDEN: ..."
       (docs/errors.md), or a terminal close code, e.g. "4501 UNAUTHORIZED: ..."
  2    bad arguments
  3    cannot connect: nothing answers at the URL. Only the first connection
       fails like this, at once; once connected, subscribe, tail and
       presence --watch reconnect by themselves and say so on stderr
  130  interrupted (Ctrl-C)"""


class _Formatter(argparse.HelpFormatter):
    """Fills paragraphs of one line (descriptions); keeps laid-out ones (the epilogs)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text  # (not inside the generator: super() needs the method)
        return "\n\n".join(
            paragraph if "\n" in paragraph else fill(paragraph, width, indent)
            for paragraph in text.split("\n\n")
        )


def _file_option(parser: argparse.ArgumentParser, flag: str, variable: str, help: str) -> None:
    """An option naming a file, by default the environment's `variable` (unset or empty: none)."""
    parser.add_argument(flag, default=os.environ.get(variable) or None, metavar="FILE", help=help)


def parser() -> argparse.ArgumentParser:
    """The argument parser of `hybridbus`."""
    root = argparse.ArgumentParser(
        prog="hybridbus",
        description="A real-time event hub for collaborative applications.",
        epilog=f"{_ENVIRONMENT}\n\n{EXIT_STATUSES}",
        formatter_class=_Formatter,
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
        "--grpc-port", type=int, metavar="P", help="serve the gRPC API on this port too (0: any)"
    )
    serve.add_argument(
        "--anonymous-tenant",
        metavar="T",
        help="let clients without a token connect, in tenant T",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N server processes on one port (SO_REUSEPORT), each a node; needs a shared "
        "engine (redis://...), not sqlite (docs/scale-out.md)",
    )
    serve.add_argument(
        "--dev-tls",
        action="store_true",
        help="serve HTTPS/WSS (and gRPC over TLS) with a self-signed development CA made "
        "for localhost and 127.0.0.1 in the data directory (sqlite) or a temporary one; "
        "prints the CA file for clients to trust. Not for production (docs/security.md)",
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url",
        default=os.environ.get(URL_VARIABLE, DEFAULT_URL),
        help=f"the server's WebSocket endpoint (default: ${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    client.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE),
        metavar="JWT",
        help=(
            f"the connection token, a JWT (default: ${TOKEN_VARIABLE}, else none: "
            "an anonymous client); see `hybridbus token`"
        ),
    )
    _file_option(
        client,
        "--ca",
        CA_VARIABLE,
        "trust a wss:// or https:// server whose certificate this PEM file's CA signed "
        f"(default: ${CA_VARIABLE}, else the system's CAs); never unverified",
    )
    _file_option(
        client,
        "--cert",
        CERT_VARIABLE,
        "present this PEM client certificate to a server that requires one (mutual "
        f"TLS); its key is in --key, or in the same file (default: ${CERT_VARIABLE})",
    )
    _file_option(
        client,
        "--key",
        KEY_VARIABLE,
        f"the PEM private key of --cert, unencrypted (default: ${KEY_VARIABLE})",
    )
    epilog = f"{_ENVIRONMENT}\n\n{EXIT_STATUSES}"
    publish = commands.add_parser(
        "publish",
        parents=[client],
        help="publish one event (prints the ack)",
        description=(
            "Publish one event and print its ack as a JSON line. Its `token` is the resume "
            "token right after the event: `hybridbus subscribe PATTERN --since TOKEN` "
            "gets exactly the events of the topic that came after it."
        ),
        epilog=epilog,
        formatter_class=_Formatter,
    )
    publish.add_argument("topic", help="the topic, relative to your tenant")
    publish.add_argument(
        "--data", default=None, help="the event's data: JSON, @file (JSON), or - for stdin"
    )
    publish.add_argument(
        "--type", default="com.example.cli", help="the event's type (default: %(default)s)"
    )
    publish.add_argument(
        "--source", default="/hybridbus/cli", help="the event's source (default: %(default)s)"
    )
    publish.add_argument("--id", default=None, help="the event's id (default: a new UUID)")
    publish.add_argument(
        "--print",
        choices=("ack", "token"),
        default="ack",
        dest="output",
        help="what to print: the whole ack as JSON, or only its resume token "
        "(default: %(default)s)",
    )
    subscribe = commands.add_parser(
        "subscribe",
        parents=[client],
        help="print deliveries as JSON lines",
        description=(
            "Print the events of a topic or pattern as JSON lines, each with the resume "
            "token after it (`position`), until --count or Ctrl-C. Once connected it "
            "reconnects by itself and resumes without loss, saying so on stderr."
        ),
        epilog=epilog,
        formatter_class=_Formatter,
    )
    subscribe.add_argument("pattern", help="a topic or pattern (+, #), relative to your tenant")
    subscribe.add_argument(
        "--since",
        default=None,
        metavar="TOKEN",
        help="first the events after this resume token (from publish, history or a line)",
    )
    subscribe.add_argument(
        "--count", type=int, default=None, metavar="N", help="stop after N deliveries"
    )
    history = commands.add_parser(
        "history",
        parents=[client],
        help="print retained events as JSON lines",
        description=(
            "Print retained events of a topic or pattern as JSON lines, oldest first, each "
            "with the resume token after it (`position`), then a last line with the "
            "token to continue from and whether there is more."
        ),
        epilog=epilog,
        formatter_class=_Formatter,
    )
    history.add_argument("pattern", help="a topic or pattern (+, #), relative to your tenant")
    history.add_argument(
        "--since",
        default=None,
        metavar="TOKEN",
        help="only the events after this resume token (default: from the oldest)",
    )
    history.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N events (default: 100)"
    )
    presence = commands.add_parser(
        "presence",
        parents=[client],
        help="print who is in a topic (and, with --watch, who joins and leaves)",
        description=(
            "Print the members of a topic (the clients subscribed to exactly it) as a "
            "table: client id, user, device, name and state (active, or degraded while "
            "its connection is gone and its session waits for it). With --watch, then "
            "print a line per change — join, leave, degraded, active — until Ctrl-C, "
            "reconnecting by itself (said on stderr) without missing or repeating one."
        ),
        epilog=epilog,
        formatter_class=_Formatter,
    )
    presence.add_argument("topic", help="a topic (no wildcards), relative to your tenant")
    presence.add_argument(
        "--watch", action="store_true", help="then print each change until Ctrl-C"
    )
    presence.add_argument(
        "--json",
        action="store_true",
        help='JSON lines instead: one object per member, and per change with "change"',
    )
    _add_token_parser(commands)
    _add_key_parser(commands)
    cli_groups.add_parsers(commands, client, epilog, _Formatter)
    cli_nodes.add_parser(commands, client, epilog, _Formatter)
    cli_bridges.add_parsers(commands, client, epilog, _Formatter)
    cli_schemas.add_parsers(commands, client, epilog, _Formatter)
    cli_webhooks.add_parsers(commands, client, epilog, _Formatter)
    cli_changes.add_parsers(commands, client, epilog, _Formatter)
    cli_tail.add_parser(commands, client, epilog, _Formatter)
    cli_log.add_parser(commands, client, epilog, _Formatter)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if getattr(args, "cert", None) is not None or getattr(args, "key", None) is not None:
        from hybridbus.client.tls import client_context  # (the package loads aiohttp)

        try:  # one context, trusting --ca and presenting --cert, for every client to take
            args.ca_file, args.ca = args.ca, client_context(args.ca, args.cert, args.key)
        except InvalidInput as exc:
            parser().exit(2, f"hybridbus {args.command}: --cert/--key: {exc}\n")
    if args.command == "serve":
        flags = {
            "engine": args.engine,
            "host": args.host,
            "port": args.port,
            "grpc_port": args.grpc_port,
            "anonymous_tenant": args.anonymous_tenant,
            "workers": args.workers,
        }
        try:
            config = load_config(args.config, os.environ, flags)
            if args.dev_tls:
                config = _dev_tls(config)
        except InvalidInput as exc:
            parser().exit(2, f"hybridbus serve: {exc}\n")
        if config.workers > 1:  # a supervisor of `hybridbus serve` processes
            from hybridbus.workers import supervise

            return supervise(config, argv)
        from hybridbus.serve import run  # aiohttp and the engines load only to serve

        return run(config)
    if args.command == "token":
        return _token(args)
    if args.command == "key":
        return _key(args)
    if args.command in ("groups", "dlq"):
        return cli_groups.run(args, parser())
    if args.command == "nodes":
        return cli_nodes.run(args)
    if args.command == "bridge":
        return cli_bridges.run_standalone(args)
    if args.command == "bridges":
        return cli_bridges.run(args)
    if args.command == "schemas":
        return cli_schemas.run(args)
    if args.command == "webhooks":
        return cli_webhooks.run(args)
    if args.command in ("watch", "follow", "changes"):
        return cli_changes.run(args)
    if args.command == "tail":
        return cli_tail.run(args)
    if args.command == "log":
        return cli_log.run(args)
    from hybridbus.client import commands
    from hybridbus.errors import BusError

    name = args.command
    if name == "publish":
        try:
            data = None if args.data is None else commands.read_data(args.data)
        except BusError as exc:
            return commands.failed(name, exc)
        return commands.run(
            name,
            commands.publish(
                args.url,
                args.token,
                args.topic,
                data,
                type=args.type,
                source=args.source,
                id=args.id,
                only_token=args.output == "token",
                ca=args.ca,
            ),
        )
    if name == "subscribe":
        return commands.run(
            name,
            commands.subscribe(
                args.url, args.token, args.pattern, args.since, args.count, ca=args.ca
            ),
        )
    if name == "history":
        return commands.run(
            name,
            commands.history(
                args.url, args.token, args.pattern, args.since, args.limit, ca=args.ca
            ),
        )
    if name == "presence":
        return commands.run(
            name,
            commands.presence(
                args.url, args.token, args.topic, watch=args.watch, as_json=args.json, ca=args.ca
            ),
        )
    raise AssertionError(f"unhandled command {name!r}")  # argparse refuses others


def _dev_tls(config: ServerConfig) -> ServerConfig:
    """`serve --dev-tls`: the config with a development certificate (made unless still good)."""
    from hybridbus.app import parse_url
    from hybridbus.server.dev_tls import dev_certificates, dev_directory

    if config.tls_cert is not None:
        raise InvalidInput("--dev-tls makes its own certificate: not with tls_cert and tls_key")
    scheme, path, _, _ = parse_url(config.engine)
    directory = dev_directory(path if scheme == "sqlite" else None)
    try:
        files = dev_certificates(directory)
    except OSError as exc:
        raise InvalidInput(f"--dev-tls: cannot write in {directory}: {exc}") from exc
    ca = files.ca.resolve()
    print(
        f"hybridbus serve: --dev-tls: a development certificate for localhost and 127.0.0.1, "
        f"signed by the CA in {ca} (not for production). Clients trust it with "
        f"--ca {ca} (or HYBRIDBUS_CA={ca}), curl --cacert {ca}, NODE_EXTRA_CA_CERTS={ca}",
        file=sys.stderr,
        flush=True,
    )
    return msgspec.structs.replace(config, tls_cert=str(files.cert), tls_key=str(files.key))


# -- hybridbus token ----------------------------------------------------------------
# Imports of `server.tokens` and `server.keys` are local: the other commands need no
# cryptography.


def _add_token_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token",
        help="print a signed connection token (JWT), for development",
        description=(
            "Print a connection token. It is signed with the HS256 secret in "
            f"{ENV_PREFIX}JWT_SECRET (at least 32 bytes) unless --secret-file, or "
            "--private-key FILE --alg ALG, is given."
        ),
    )
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--tenant", required=True, help="the tenant")
    token.add_argument(
        "--role",
        action="append",
        default=[],
        dest="roles",
        metavar="ROLE",
        help="a role whose rules apply (repeat for several)",
    )
    token.add_argument("--ttl", type=_duration, default="1h", help="lifetime: 90, 45s, 30m, 1h, 2d")
    token.add_argument("--device", help="the device")
    token.add_argument("--sid", help="the session id")
    token.add_argument("--app", help="the app id (claim appid)")
    token.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="PATTERN",
        help="grant subscribe, history and presence on PATTERN (relative to the tenant)",
    )
    token.add_argument(
        "--admin", action="store_true", help="an operator token: absolute topics, everything"
    )
    token.add_argument("--kid", help="the key id to name in the header")
    token.add_argument("--issuer", help="the iss claim")
    token.add_argument("--audience", help="the aud claim")
    key = token.add_mutually_exclusive_group()
    key.add_argument("--secret-file", type=Path, metavar="FILE", help="an HS256 secret")
    key.add_argument("--private-key", type=Path, metavar="FILE", help="a PEM private key")
    token.add_argument(
        "--alg", choices=["RS256", "ES256", "EdDSA"], help="the private key's algorithm"
    )
    token.add_argument("--config", type=Path, metavar="FILE", help="the server's TOML settings")


def _add_key_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = commands.add_parser(
        "key",
        help="make an HTTP API key and print it with its configuration entry",
        description=(
            "Print a new API key (keep it secret: it is shown once) and the [[api_keys]] "
            "entry to add to the server's TOML settings, which holds only its hash."
        ),
    )
    key.add_argument("--name", required=True, help="a name for the key (audit events use it)")
    scope = key.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", help="a key that acts only inside this tenant")
    scope.add_argument("--admin", action="store_true", help="a key that acts everywhere")
    key.add_argument(
        "--role",
        action="append",
        default=[],
        dest="roles",
        metavar="ROLE",
        help="a role whose rules apply to the key (repeat for several)",
    )


def _key(args: argparse.Namespace) -> int:
    from hybridbus.server.access import ApiKeys, new_api_key

    key, digest = new_api_key()
    entry: dict[str, object] = {"name": args.name, "hash": digest}
    if args.admin:
        entry["admin"] = True
    else:
        entry["tenant"] = args.tenant
    if args.roles:
        entry["roles"] = args.roles
    try:
        ApiKeys([entry])  # the entry is one the server takes
    except InvalidInput as exc:
        parser().exit(2, f"hybridbus key: {exc}\n")
    print(key)
    print()
    print("[[api_keys]]")
    for name, value in entry.items():
        print(f"{name} = {_toml(value)}")
    return 0


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return msgspec.json.encode(value).decode()  # a JSON string is a TOML basic string


def _duration(text: str) -> float:
    from hybridbus.server.tokens import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # its message would quote a byte of the key
        raise ValueError(f"key file {path} is not UTF-8 text") from None


def _token_key(args: argparse.Namespace, env: Mapping[str, str]) -> KeySpec:
    """The key `hybridbus token` signs with (`ValueError` if none or a bad one).

    `--secret-file`, else `--private-key` with `--alg`, else the server's settings
    (`--config` and `$HYBRIDBUS_JWT_SECRET`).
    """
    from hybridbus.server.keys import KeySpec

    if args.alg is not None and args.private_key is None:
        raise ValueError("--alg goes with --private-key")
    if args.secret_file is not None:
        text = _read_key_file(args.secret_file).rstrip("\r\n")  # `echo s > file` works
        return KeySpec(kid=args.kid, alg="HS256", secret=text)
    if args.private_key is not None:
        if args.alg is None:
            raise ValueError("--private-key needs --alg RS256|ES256|EdDSA")
        return KeySpec(kid=args.kid, alg=args.alg, private_key=_read_key_file(args.private_key))
    # The server's own settings: `jwt_secret` or a `jwt_keys` entry that can sign,
    # from --config and the environment ($HYBRIDBUS_JWT_SECRET), as `serve` reads them.
    from hybridbus.server.access import keys_of

    try:
        keys = keys_of(load_config(args.config, env))
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None
    for key in keys:
        if (key.secret or key.private_key) and args.kid in (None, key.kid):
            return key
        if key.secret and key.kid is None:  # the development secret, named as asked
            return msgspec.structs.replace(key, kid=args.kid)
    raise ValueError(
        f"no signing key: set {ENV_PREFIX}JWT_SECRET (an HS256 secret of at least 32 "
        "bytes), or give --config FILE naming jwt_secret or a jwt_keys entry with a "
        "private_key, or --secret-file FILE, or --private-key FILE --alg ALG"
    )


def _max_lifetime(args: argparse.Namespace) -> float:
    """The server's `max_token_lifetime` (`--config`, the environment): no longer token is made."""
    try:
        return load_config(args.config, os.environ).max_token_lifetime
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


def _token(args: argparse.Namespace) -> int:
    from hybridbus.server.tokens import mint

    try:
        token = mint(
            _token_key(args, os.environ),
            sub=args.sub,
            tenant=args.tenant,
            roles=args.roles,
            ttl=args.ttl,
            device=args.device,
            sid=args.sid,
            app=args.app,
            topics=args.topics,
            admin=args.admin,
            issuer=args.issuer,
            audience=args.audience,
            max_lifetime=_max_lifetime(args),
        )
    except ValueError as exc:
        parser().exit(2, f"hybridbus token: {exc}\n")
    print(token)
    return 0
