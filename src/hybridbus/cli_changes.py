"""`hybridbus watch`, `hybridbus follow` and `hybridbus changes status`: code-change broadcast.

Owns: those commands' arguments and output. `watch` and `follow` run a
`hybridbus.changes.Watcher` / `Follower` until Ctrl-C (each applied change
and each conflict is one line on stderr); `changes status` prints who
applied a change, who failed (with the error) and who is missing, as a
table or `--json`. Must not hold their logic (`hybridbus.changes`).

    hybridbus watch DIR --topic changes/REPO [--debounce MS] [--service S [--versions SPEC]]
    hybridbus follow TOPIC DIR [--instance I] [--service S] [--version V] [--fingerprint F]
    hybridbus changes status ID --topic TOPIC [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from pathlib import Path

__all__ = ["add_parsers", "run"]


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client: argparse.ArgumentParser,
    epilog: str,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add `watch`, `follow` and `changes` to `commands` (`client`: --url, --token)."""
    watch = commands.add_parser(
        "watch",
        parents=[client],
        help="publish a directory's file changes (docs/changes.md)",
        description=(
            "Publish every change of the files under DIR (.gitignore respected) as change "
            "events on TOPIC/files: diffs for text, merge patches for JSON/YAML/TOML, full "
            "content for small binaries, in chunks of at most 16 KB. Runs until Ctrl-C."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    watch.add_argument("dir", type=Path, help="the directory to watch")
    watch.add_argument("--topic", required=True, help="the change topic, e.g. changes/myrepo")
    watch.add_argument("--debounce", type=int, default=50, metavar="MS",
                       help="saves within MS milliseconds are one batch (default: 50)")
    watch.add_argument("--service", help="send the changes to instances of this service only")
    watch.add_argument("--versions", default="", metavar="SPEC",
                       help="... whose version matches SPEC (PEP 440, e.g. '>=1.2,<2')")
    follow = commands.add_parser(
        "follow",
        parents=[client],
        help="keep a directory identical to a watched one (docs/changes.md)",
        description=(
            "Apply the changes published on TOPIC to DIR in order, resuming after a "
            "disconnect; local edits are reported as conflicts, never overwritten. "
            "Runs until Ctrl-C."
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    follow.add_argument("topic", help="the change topic, e.g. changes/myrepo")
    follow.add_argument("dir", type=Path, help="the mirror directory")
    follow.add_argument("--instance", default=None, help="this instance's name "
                        "(default: host name and DIR)")
    follow.add_argument("--service", default="", help="the service this instance runs")
    follow.add_argument("--version", default="", help="its version")
    follow.add_argument("--fingerprint", default="", help="a fingerprint of its configuration")
    follow.add_argument("--heartbeat", type=float, default=10.0, metavar="S",
                        help="seconds between announcements (default: 10)")
    changes = commands.add_parser(
        "changes",
        help="what became of a change: applied, failed, missing",
        epilog=epilog,
        formatter_class=formatter,
    )
    actions = changes.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="status: who applied a change"
    )
    status = actions.add_parser(
        "status",
        parents=[client],
        help="who applied change ID, who failed (and why), who is missing",
        formatter_class=formatter,
    )
    status.add_argument("id", help="the change id (watch prints it)")
    status.add_argument("--topic", required=True, help="the change topic")
    status.add_argument("--json", action="store_true", help="one JSON document")


def run(args: argparse.Namespace) -> int:
    """Run `watch`, `follow` or `changes status`; the exit status."""
    from hybridbus.client import commands

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "watch":
        return commands.run("watch", _watch(args))
    if args.command == "follow":
        return commands.run("follow", _follow(args))
    return commands.run("changes status", _status(args))


async def _watch(args: argparse.Namespace) -> None:
    from hybridbus.changes import WatchConfig, Watcher
    from hybridbus.client import connect
    from hybridbus.core.changes import Target

    target = Target(service=args.service, versions=args.versions) if args.service else None
    config = WatchConfig(topic=args.topic, debounce_ms=args.debounce, target=target)
    async with connect(args.url, token=args.token, ca=args.ca) as c:
        await Watcher(c, args.dir, config).run()


async def _follow(args: argparse.Namespace) -> None:
    from hybridbus.changes import FollowConfig, Follower
    from hybridbus.changes.registry import NAME_PREFIX
    from hybridbus.client import ClientConfig, connect

    instance = args.instance or f"{socket.gethostname()}:{args.dir.resolve()}"
    config = FollowConfig(
        topic=args.topic, instance=instance, service=args.service, version=args.version,
        fingerprint=args.fingerprint, heartbeat=args.heartbeat,
    )

    def applied(change: object, path: Path) -> None:
        print(f"applied {getattr(change, 'kind', '')} {path}", file=sys.stderr, flush=True)

    client_config = ClientConfig(name=NAME_PREFIX + instance)
    async with connect(args.url, token=args.token, config=client_config, ca=args.ca) as c:
        await Follower(c, args.dir, config, applied).run()


async def _status(args: argparse.Namespace) -> None:
    from hybridbus.changes import change_status
    from hybridbus.client import ClientConfig, connect
    from hybridbus.errors import InvalidInput

    config = ClientConfig(request_timeout=10, ca=args.ca)
    async with connect(args.url, token=args.token, config=config) as c:
        found = await change_status(c, args.topic, args.id)
    if found is None:
        raise InvalidInput(f"no change {args.id} on {args.topic}/files")
    if args.json:
        print(json.dumps(found))
        return
    print(f"{'INSTANCE':30} {'STATUS':10} ERROR")
    for key in ("applied", "failed", "missing"):
        for row in found[key]:
            status = row.get("status", key)
            print(f"{row['instance']:30} {status:10} {row.get('error') or ''}")
