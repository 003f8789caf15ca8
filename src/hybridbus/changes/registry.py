"""The instance registry and change status, read over the bus with the Python client.

Owns: the topic names under a change topic, reading a topic's whole
retained history, `instances` (who is online now: present on the changes
topic — presence is the heartbeat of the connection — joined with the latest
announcement of each instance on `<topic>/instances`) and `change_status`
(a change's targets against the acks on `<topic>/acks`). Must not decide
what a change is (`core.changes`) nor touch files.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hybridbus.client import Client
from hybridbus.core.changes import Ack, Change, Target, status

__all__ = ["ANNOUNCE_TYPE", "Instance", "change_status", "instances", "read_all", "topics"]

ANNOUNCE_TYPE = "dev.hybridbus.instance"
NAME_PREFIX = "hybridbus-follow/"  # a follower's connect `name`, as presence shows it


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """What a running instance announces about itself."""

    instance: str
    service: str = ""
    version: str = ""
    fingerprint: str = ""


def topics(base: str) -> dict[str, str]:
    """The topics of change topic `base`: files, instances, requests, acks, edits."""
    base = base.rstrip("/")
    return {k: f"{base}/{k}" for k in ("files", "instances", "requests", "acks", "edits")}


async def read_all(client: Client, topic: str, page: int = 500) -> list[Any]:
    """Every retained event of `topic`, oldest first (paged)."""
    out: list[Any] = []
    since = None
    while True:
        got = await client.history(topic, since=since, limit=page)
        out.extend(got.events)
        since = got.position
        if not got.more:
            return out


async def instances(client: Client, base: str, target: Target | None = None) -> list[Instance]:
    """The instances online now (and matching `target`), by name."""
    names = topics(base)
    present = {
        info.name.removeprefix(NAME_PREFIX)
        for info in await client.presence(names["files"])
        if info.name and info.name.startswith(NAME_PREFIX)
    }
    latest: dict[str, Instance] = {}
    for item in await read_all(client, names["instances"]):
        try:
            found = msgspec.convert(item.event.data, Instance)
        except msgspec.ValidationError:
            continue
        latest[found.instance] = found
    online = [latest.get(name, Instance(instance=name)) for name in sorted(present)]
    if target is None:
        return online
    return [i for i in online if target.matches(i.service, i.version)]


async def change_status(client: Client, base: str, change_id: str) -> dict[str, Any] | None:
    """`{"change", "applied", "failed", "missing"}` for change `change_id`; None if unknown."""
    names = topics(base)
    change: Change | None = None
    for item in await read_all(client, names["files"]):
        head = item.event.data.get("change") if isinstance(item.event.data, dict) else None
        if isinstance(head, dict) and head.get("id") == change_id and "kind" in head:
            change = msgspec.convert(head, Change)
            break
    if change is None:
        return None
    acks: list[Ack] = []
    for item in await read_all(client, names["acks"]):
        try:
            acks.append(msgspec.convert(item.event.data, Ack))
        except msgspec.ValidationError:
            continue
    return {"change": msgspec.to_builtins(change), **status(change, acks)}
