"""The presence registry: members per topic, keyed by subscription; watchers notified."""

from __future__ import annotations

from hybridbus.proto.frames import ClientInfo
from hybridbus.server.presence import PresenceRegistry


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[bool, str, str]] = []

    def presence_changed(self, joined: bool, topic: str, info: ClientInfo) -> None:
        self.seen.append((joined, topic, info.client))


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
    assert watcher.seen == [(True, "t/room", "a"), (True, "t/room", "b"), (False, "t/room", "a")]
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
