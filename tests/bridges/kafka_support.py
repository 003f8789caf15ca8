"""Kafka helpers of the bridge tests: kcat (a client nobody here wrote) and topic creation.

`kcat_produce` writes records with `kcat -P` (headers with -H, `key:value` lines with -K:),
`kcat_consume` reads a topic from the beginning with `kcat -C -J` (one JSON envelope per
record: topic, partition, offset, key, payload, headers). Topics with several partitions are
made with aiokafka's admin client (kcat cannot create topics).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

__all__ = ["committed", "create_topics", "kcat_consume", "kcat_produce"]


def kcat_produce(
    servers: str,
    topic: str,
    lines: Sequence[str],
    *,
    headers: Sequence[tuple[str, str]] = (),
    keyed: bool = False,
    partition: int | None = None,
) -> None:
    """Each of `lines` a record of `topic` (with `keyed`, `key:value` lines)."""
    # idempotent, so a retry (a broker restarting) cannot reorder a partition's records
    argv = ["kcat", "-b", servers, "-P", "-t", topic, "-X", "enable.idempotence=true"]
    if partition is not None:
        argv += ["-p", str(partition)]
    for name, value in headers:
        argv += ["-H", f"{name}={value}"]
    if keyed:
        argv += ["-K:"]
    subprocess.run(argv, input="\n".join(lines) + "\n", text=True, check=True, timeout=60)


def kcat_consume(servers: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """The first `count` records of `topic` (fewer if it has fewer: -e stops at its end)."""
    argv = ["kcat", "-b", servers, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"]
    argv += ["-c", str(count)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=timeout)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def headers_of(record: dict[str, Any]) -> dict[str, str]:
    """kcat's `headers` list ([name, value, name, value, ...]) as a dict."""
    flat = record.get("headers") or []
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def create_topics(servers: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, num_partitions=n, replication_factor=1)
                for name, n in partitions.items()
            ]
        )
    finally:
        await admin.close()


async def committed(servers: str, group: str) -> dict[tuple[str, int], int]:
    """The offsets the consumer group `group` committed, by (topic, partition)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
