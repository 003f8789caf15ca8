"""The Redis engine's stored things apart from appending: reads, topics, revocations, groups.

Owns: building the arguments of the read, topic, revocation and group
scripts of `engine._redis_scripts` and turning their replies into the
engine's values (`Page` parts, `TopicInfo`, `Revocation`, `StoredGroup`).
Must not hold state or decide epochs: every function takes the client and
the epoch and raises the driver's exceptions for the engine to handle.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from hybridbus.core.log import Delivery
from hybridbus.core.revocation import Revocation
from hybridbus.engine import _redis_io as rio
from hybridbus.engine import _redis_scripts as lua
from hybridbus.engine.base import GroupWrite, StoredGroup, TopicInfo
from hybridbus.errors import EngineCorrupt

__all__ = [
    "ShardRead",
    "fences_key",
    "group_args",
    "lease_key",
    "list_groups",
    "list_revocations",
    "list_topics",
    "read_group",
    "read_shard",
    "revoke_args",
]

# Stream entries one pattern-read script call scans at most (keeps Redis responsive).
_SCAN_BUDGET: Final = 20_000


class ShardRead(msgspec.Struct):
    """What one shard gave a read: up to `want` deliveries, its head, exactness."""

    deliveries: list[Delivery]
    head: int
    exact: bool


async def read_shard(
    client: rio.Client,
    keys: rio.ShardKeys,
    shard: int,
    epoch: str,
    pattern: str,
    wildcard: bool,
    after: int,
    want: int,
    now: float,
) -> ShardRead:
    """Up to `want` live deliveries of `pattern` in shard `shard` past `after`."""
    if not wildcard:
        head, trim, found = await rio.call(
            client, lua.READ_TOPIC, [keys.meta], [epoch, pattern, after, want, repr(now)]
        )
        return ShardRead(_entries(shard, found), int(head), int(trim) <= after)
    deliveries: list[Delivery] = []
    head = upto = -1
    exact = True
    cursor = after
    while True:
        reply = await rio.call(
            client,
            lua.READ_PATTERN,
            [keys.meta],
            [epoch, pattern, cursor, want - len(deliveries), repr(now), upto, _SCAN_BUDGET],
        )
        raw_head, inexact, scanned, found = reply
        if head < 0:
            head = upto = int(raw_head)
            exact = not int(inexact)
        deliveries += _entries(shard, found)
        cursor = int(scanned)
        if len(deliveries) >= want or cursor >= upto:
            return ShardRead(deliveries, head, exact)


def _entries(shard: int, found: Sequence[Sequence[object]]) -> list[Delivery]:
    out = []
    for position, flat in found:
        assert isinstance(position, bytes | int) and isinstance(flat, list)
        out.append(rio.decode_entry(shard, int(position), rio.fields_of(flat)))
    return out


async def list_topics(
    client: rio.Client,
    shard_keys: Sequence[rio.ShardKeys],
    epoch: str,
    prefix: str,
    after: str,
    limit: int,
) -> list[TopicInfo]:
    """Up to `limit` topics of every shard starting with `prefix`, after `after`, by name."""
    if limit <= 0:
        return []
    if not after and not prefix:
        lower = "-"
    elif after >= prefix:
        lower = "(" + after
    else:
        lower = "[" + prefix
    per_shard: list[list[TopicInfo]] = []
    for keys in shard_keys:
        flat = await rio.call(client, lua.TOPICS, [keys.meta], [epoch, lower, prefix, limit])
        per_shard.append(
            [TopicInfo(n.decode(), int(o)) for n, o in zip(flat[0::2], flat[1::2], strict=True)]
        )
    if len(per_shard) == 1:
        return per_shard[0]
    merged = heapq.merge(*per_shard, key=lambda info: info.topic.encode())
    return [info for _, info in zip(range(limit), merged, strict=False)]


# revocations -----------------------------------------------------------------


def revocations_key(prefix: str) -> str:
    return f"{{hb:{prefix}:r}}:rv"


def revoke_args(revocations: Sequence[Revocation]) -> list[bytes | str]:
    """The REVOKE script's arguments: field, until, at, reason per revocation."""
    args: list[bytes | str] = []
    for r in revocations:
        field = msgspec.msgpack.encode((r.kind, r.tenant, r.value))
        args += [field, repr(float(r.until)), repr(float(r.at)), r.reason]
    return args


async def list_revocations(client: rio.Client, prefix: str, now: float) -> list[Revocation]:
    """Every stored revocation whose `until` is after `now`."""
    stored: dict[Any, Any] = await client.hgetall(revocations_key(prefix))
    found = []
    for field, value in stored.items():
        try:
            kind, tenant, subject = msgspec.msgpack.decode(field)
            until, at, reason = value.decode().split("\n", 2)
            revocation = Revocation(
                kind=kind,
                tenant=tenant,
                value=subject,
                until=float(until),
                at=float(at),
                reason=reason,
            )
        except (ValueError, msgspec.DecodeError) as exc:
            raise EngineCorrupt(f"redis engine: a stored revocation is invalid: {exc}") from exc
        if revocation.until > now:
            found.append(revocation)
    return found


# consumer groups -------------------------------------------------------------


def groups_key(prefix: str) -> str:
    return f"{{hb:{prefix}:g}}:s"


def group_args(writes: Sequence[GroupWrite]) -> list[bytes | str | int]:
    """The GROUPS_WRITE script's arguments for `writes`, in order."""
    args: list[bytes | str | int] = []
    for w in writes:
        args += [
            w.group,
            int(w.drop),
            int(w.state is not None),
            w.state if w.state is not None else b"",
            "" if w.fence is None else w.fence,
            len(w.put),
            len(w.delete),
        ]
        for key, value in w.put:
            args += [key, value]
        args += list(w.delete)
    return args


async def list_groups(client: rio.Client, prefix: str) -> list[StoredGroup]:
    """Every stored group with its entries, from one script call (one snapshot)."""
    flat = await rio.call(client, lua.GROUPS_READ, [groups_key(prefix)], [])
    found = []
    for name, state, entries in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        pairs = {k.decode(): v for k, v in zip(entries[0::2], entries[1::2], strict=True)}
        found.append(StoredGroup(name.decode(), state, pairs))
    return found


async def read_group(client: rio.Client, prefix: str, name: str) -> StoredGroup | None:
    """The stored group `name` with its entries (one snapshot), None if there is none."""
    found = await rio.call(client, lua.GROUP_READ, [groups_key(prefix)], [name])
    if not found:
        return None
    state, entries = found
    pairs = {k.decode(): v for k, v in zip(entries[0::2], entries[1::2], strict=True)}
    return StoredGroup(name, state, pairs)


def lease_key(prefix: str, name: str) -> str:
    """The lease of `name`, in the groups' slot (see `engine._redis_scripts`)."""
    return f"{{hb:{prefix}:g}}:l:{name}"


def fences_key(prefix: str) -> str:
    return f"{{hb:{prefix}:g}}:f"
