"""The presence registry: members per topic, keyed by subscription or session; watchers notified.

Sessions (server/sessions.py) hold their places while their client is away:
watchers see `degraded` / `active`, never a leave and a join; pages of big
topics come from the registry's join order.
"""

from __future__ import annotations

import msgspec
import pytest

from hybridbus.errors import InvalidCursor
from hybridbus.proto.frames import ClientInfo
from hybridbus.server.presence import Change, PresenceRegistry


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[Change, str, str]] = []

    def presence_changed(self, change: Change, topic: str, info: ClientInfo) -> None:
        self.seen.append((change, topic, info.client))


class Mirror:
    def __init__(self) -> None:
        self.changes: list[tuple[bool, str, str, ClientInfo]] = []

    def changed(self, joined: bool, member: str, topic: str, info: ClientInfo) -> None:
        self.changes.append((joined, member, topic, info))


def test_join_leave_and_watchers() -> None:
    registry = PresenceRegistry()
    watcher = Recorder()
    registry.watch("t/room", watcher)
    a, b = ClientInfo(client="a"), ClientInfo(client="b", user="u")
    registry.join("t/room", "sub-a", a)
    registry.join("t/room", "sub-a", a)  # idempotent: no second join
    registry.join("t/room", "sub-b", b)
    registry.join("t/other", "sub-c", ClientInfo(client="c"))
    assert registry.clients("t/room") == [a, b]
    registry.leave("t/room", "sub-a")
    registry.leave("t/room", "sub-a")  # idempotent
    assert registry.clients("t/room") == [b]
    assert watcher.seen == [
        ("join", "t/room", "a"),
        ("join", "t/room", "b"),
        ("leave", "t/room", "a"),
    ]
    registry.unwatch_all(watcher)
    registry.leave("t/room", "sub-b")
    assert len(watcher.seen) == 3
    assert registry.clients("t/room") == []
    assert registry.topics() == 1


def test_members_are_keyed_by_subscription_so_a_late_leave_keeps_the_newer_one() -> None:
    registry = PresenceRegistry()
    info = ClientInfo(client="a")
    registry.join("t/x", "old-sub", info)
    registry.join("t/x", "new-sub", info)  # resubscribed before the old one was torn down
    registry.leave("t/x", "old-sub")
    assert registry.clients("t/x") == [info]


def test_a_held_session_degrades_then_comes_back_without_leave_or_join() -> None:
    registry = PresenceRegistry()
    mirror = registry.mirror = Mirror()
    watcher = Recorder()
    registry.watch("t/room", watcher)
    info = ClientInfo(client="a", session="s1")
    registry.join("t/room", "sub-1", info)
    assert registry.hold("s1", "degraded") == 1
    registry.leave("t/room", "sub-1")  # the dead connection's subscription goes: no effect
    assert [i.state for i in registry.clients("t/room")] == ["degraded"]
    registry.join("t/room", "sub-2", info)  # the resumed connection subscribes again
    assert registry.clients("t/room") == [info]
    assert watcher.seen == [
        ("join", "t/room", "a"),
        ("degraded", "t/room", "a"),
        ("active", "t/room", "a"),
    ]
    # The other nodes were told: the held place changed state, then left for the new one.
    assert [(joined, i.state) for joined, _, _, i in mirror.changes] == [
        (True, "active"),
        (True, "degraded"),
        (True, "active"),
        (False, "degraded"),
    ]
    registry.release("s1")  # nothing held any more: the subscription stays
    assert registry.clients("t/room") == [info]
    registry.leave("t/room", "sub-2")
    assert watcher.seen[-1] == ("leave", "t/room", "a")


def test_a_session_that_ends_while_held_leaves() -> None:
    registry = PresenceRegistry()
    watcher = Recorder()
    registry.watch("t/room", watcher)
    registry.join("t/room", "sub-1", ClientInfo(client="a", session="s1"))
    registry.join("t/other", "sub-2", ClientInfo(client="a", session="s1"))
    assert registry.hold("s1", "degraded") == 2
    registry.release("s1")
    assert registry.clients("t/room") == [] and registry.topics() == 0
    assert watcher.seen == [
        ("join", "t/room", "a"),
        ("degraded", "t/room", "a"),
        ("leave", "t/room", "a"),
    ]


def test_one_session_on_two_nodes_is_one_member() -> None:
    registry = PresenceRegistry()
    watcher = Recorder()
    registry.watch("t/room", watcher)
    active = ClientInfo(client="a", session="s1")
    degraded = msgspec.structs.replace(active, state="degraded")
    registry.apply("n1", True, "1", "t/room", active)
    registry.apply("n1", True, "1", "t/room", degraded)  # its node lost the connection
    registry.apply("n2", True, "7", "t/room", active)  # it continued on another node
    registry.drop("n1")
    assert registry.clients("t/room") == [active]
    assert watcher.seen == [
        ("join", "t/room", "a"),
        ("degraded", "t/room", "a"),
        ("active", "t/room", "a"),
    ]


def test_pages_of_ten_thousand_members_show_each_once_while_members_come_and_go() -> None:
    registry = PresenceRegistry()
    for n in range(10_000):
        registry.join("t/big", f"sub-{n}", ClientInfo(client=f"c{n}"))
    assert registry.count("t/big") == 10_000
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        clients, cursor = registry.page("t/big", 1000, cursor)
        seen += [c.client for c in clients]
        pages += 1
        # While paging: one member that was already shown leaves, one new one joins.
        registry.leave("t/big", f"sub-{pages * 1000 - 1}")
        registry.join("t/big", f"new-{pages}", ClientInfo(client=f"new{pages}"))
        if cursor is None:
            break
    first = [f"c{n}" for n in range(10_000)]
    assert seen[:10_000] == first  # every member present from the start, once, in order
    assert len(seen) == len(set(seen))
    assert set(seen[10_000:]) <= {f"new{n}" for n in range(1, pages + 1)}
    with pytest.raises(InvalidCursor):
        registry.page("t/big", 10, "nope.1")
    with pytest.raises(InvalidCursor):
        PresenceRegistry().page("t/big", 10, cursor or registry.page("t/big", 1)[1])
