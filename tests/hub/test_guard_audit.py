"""The audit trail when it cannot be written: the Guard over a real bus on the sqlite engine.

Mandatory audits (`revoke`, `admin.publish`) are appended before the operation
they record: when the audit event cannot be appended the operation is refused
(`EngineUnavailable`, 1301) and not done. Best-effort audits (`denials`,
`key.use`) are dropped, logged and counted (`Guard.audits_dropped`, the
`hybridbus_audit_dropped_total` metric), and the operation goes on.

The disk is really full: SQLite's `max_page_count` caps the database at its
current size, so the next write that needs a page fails with SQLITE_FULL
("database or disk is full"), as on a full file system.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hybridbus.core.identity import Identity
from hybridbus.core.permissions import Policy
from hybridbus.core.revocation import Revocation
from hybridbus.engine.base import EngineConfig
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineUnavailable, ErrorCode, Forbidden, Revoked
from hybridbus.hub.bus import Bus
from hybridbus.hub.guard import Guard, Limits
from hybridbus.server.config import ServerConfig
from hybridbus.server.metrics import Metrics
from hybridbus.server.node import Node

POLICY = Policy.from_config({"all": [{"allow": "*", "topics": "#"}]})
ADMIN = Identity(tenant="ops", user="root", admin=True)
ALICE = Identity(tenant="acme", user="alice", roles=("all",))
NOBODY = Identity(tenant="acme", user="nobody")  # no roles: refused everything
BOB = Identity(tenant="acme", user="bob", roles=("all",))


def ev(id: str) -> dict[str, str]:
    return {"id": id, "source": "/test", "type": "test.event"}


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    started = Bus(SqliteEngine(tmp_path, EngineConfig(sweep_interval=3600)))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


def _engine(bus: Bus) -> SqliteEngine:
    engine = bus.engine
    assert isinstance(engine, SqliteEngine)
    return engine


async def disk_full(bus: Bus, full: bool = True) -> None:
    """Cap the database at its current size (full), or lift the cap."""

    def cap(db: object) -> None:
        conn: sqlite3.Connection = db._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] if full else 1 << 30
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await _engine(bus)._command(cap)


async def fill(bus: Bus) -> None:
    """Publish ever smaller events until not even an empty one fits (no room for an audit)."""
    n = 0
    for size in (1000, 100, 10, 0):
        with contextlib.suppress(EngineUnavailable):
            while n < 10_000:
                n += 1
                await bus.publish("filler/x", {**ev(f"fill-{n}"), "data": "x" * size})
    with pytest.raises(EngineUnavailable, match="full"):
        await bus.publish("filler/x", ev("one-more"))


async def audits(bus: Bus, tenant: str, kind: str) -> list[str]:
    return [d.event.type for d in (await bus.history(f"$audit/{tenant}/{kind}")).deliveries]


def revocation(value: str) -> Revocation:
    now = time.time()
    return Revocation(kind="user", tenant="acme", value=value, until=now + 600, at=now)


async def test_a_revocation_whose_audit_cannot_be_appended_is_refused(bus: Bus) -> None:
    guard, seen = Guard(bus, POLICY), []
    guard.on_revoke(seen.append)
    await guard.start()
    admin = guard.admit(ADMIN)
    await disk_full(bus)
    await fill(bus)
    with pytest.raises(EngineUnavailable) as refused:
        await guard.revoke(admin, revocation("bob"))
    assert refused.value.code == ErrorCode.ENGINE_UNAVAILABLE == 1301
    assert "audit" in str(refused.value) and "full" in str(refused.value.__cause__)
    # Refused means not done: not stored, not applied, nobody told.
    assert await bus.engine.revocations() == []
    guard.admit(BOB)
    assert seen == []
    await disk_full(bus, full=False)
    await guard.revoke(admin, revocation("bob"))
    with pytest.raises(Revoked):
        guard.admit(BOB)
    assert [r.value for r in await bus.engine.revocations()] == ["bob"]
    assert await audits(bus, "acme", "revoke") == ["io.hybridbus.audit.revoke"]


async def test_an_admin_publish_whose_audit_cannot_be_appended_is_refused(
    bus: Bus, tmp_path: Path
) -> None:
    guard = Guard(bus, POLICY)
    admin = guard.admit(ADMIN)
    # Only audit appends fail (a real SQLite error raised inside the append's
    # transaction): the publish itself would be stored if it were tried.
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute(
            "CREATE TRIGGER full BEFORE INSERT ON log WHEN NEW.topic LIKE '$audit/%' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    with pytest.raises(EngineUnavailable, match="audit"):
        await guard.publish(admin, "acme/y", ev("by-admin"))
    assert (await bus.history("acme/y")).deliveries == []
    # A tenant's publish is not audited: it goes on.
    ack = await guard.publish(guard.admit(ALICE), "y", ev("by-alice"))
    assert (ack.topic, ack.offset) == ("acme/y", 1)
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("DROP TRIGGER full")
    await guard.publish(admin, "acme/y", ev("by-admin"))
    assert [d.event.id for d in (await bus.history("acme/y")).deliveries] == [
        "by-alice",
        "by-admin",
    ]
    assert await audits(bus, "acme", "admin.publish") == ["io.hybridbus.audit.admin.publish"]


async def test_denial_and_key_use_audits_are_dropped_counted_and_logged(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(bus, POLICY, Limits(audit_denials=2))
    dropped: list[str] = []
    guard.on_audit_dropped(dropped.append)
    nobody = guard.admit(NOBODY)
    await disk_full(bus)
    await fill(bus)
    caplog.set_level(logging.WARNING, "hybridbus.guard")
    for _ in range(3):  # refusals go on while their audit cannot be written
        with pytest.raises(Forbidden):
            guard.check(nobody, "publish", "docs/1")
    guard.key_used(guard.admit(ALICE), "billing")
    await guard.drain_audits()
    assert dropped == ["denials", "key.use"]
    assert guard.audits_dropped == {"denials": 1, "key.use": 1}
    lines = [r for r in caplog.records if r.name == "hybridbus.guard"]
    assert len(lines) == 2
    assert all("dropped" in r.getMessage() and "full" in r.getMessage() for r in lines)
    await disk_full(bus, full=False)
    assert await audits(bus, "acme", "denials") == []


async def test_dropped_audits_are_a_metric_of_the_node(bus: Bus) -> None:
    metrics = Metrics()
    node = Node(bus, ServerConfig(), metrics)
    await node.guard.start()
    await disk_full(bus)
    await fill(bus)
    node.guard.key_used(node.guard.admit(ALICE), "billing")
    await node.guard.drain_audits()
    assert 'hybridbus_audit_dropped_total{kind="key.use"} 1.0' in metrics.render().decode()
