"""The awareness rules of one Yjs room across sockets and nodes (server/rooms_awareness.py)."""

from __future__ import annotations

from hybridbus.core.yjs_protocol import MAX_VARUINT, AwarenessEntry, encode_awareness
from hybridbus.server.rooms_awareness import Remote, RoomAwareness


def test_an_echo_at_the_same_clock_takes_nothing_from_the_owner() -> None:
    room = RoomAwareness(1024)
    owner, echoer = object(), object()
    assert room.apply(owner, [AwarenessEntry(7, 1, '{"u":1}')])
    assert room.apply(echoer, [AwarenessEntry(7, 1, '{"u":1}')]) == []  # y-websocket echoes
    assert room.leave(echoer) == []
    assert room.leave(owner) == [AwarenessEntry(7, 2, "null")]


def test_a_nodes_states_go_with_it_and_a_full_list_replaces_them() -> None:
    room = RoomAwareness(1024)
    a = Remote("a")
    room.apply(a, [AwarenessEntry(1, 1, "{}"), AwarenessEntry(2, 3, "{}")])
    assert room.local() == []
    assert room.replace(a, [AwarenessEntry(2, 3, "{}")]) == [AwarenessEntry(1, 2, "null")]
    assert room.leave(a) == [AwarenessEntry(2, 4, "null")]
    assert not room


def test_a_state_sent_again_below_its_removal_is_answered_with_the_removal() -> None:
    room = RoomAwareness(1024)
    room.apply(Remote("a"), [AwarenessEntry(5, 4, '{"u":5}')])
    room.leave(Remote("a"))  # node a died: removal at clock 5
    peer = object()
    refused: list[AwarenessEntry] = []
    assert room.apply(peer, [AwarenessEntry(5, 4, '{"u":5}')], refused) == []
    assert refused == [AwarenessEntry(5, 5, "null")]
    assert room.apply(peer, [AwarenessEntry(5, 6, '{"u":5}')]) == [AwarenessEntry(5, 6, '{"u":5}')]
    assert room.local() == [AwarenessEntry(5, 6, '{"u":5}')]


def test_a_removal_after_the_largest_clock_stays_at_it_and_encodes() -> None:
    # A state at 2**53 - 1 (what a varuint holds): its removal at + 1 did not encode, and
    # the room's send-out callback failed on it for good, updates included.
    room = RoomAwareness(1024)
    owner, node = object(), Remote("a")
    room.apply(owner, [AwarenessEntry(1, MAX_VARUINT, "{}")])
    room.apply(node, [AwarenessEntry(2, MAX_VARUINT, "{}")])
    assert room.leave(owner) == [AwarenessEntry(1, MAX_VARUINT, "null")]
    assert room.replace(node, []) == [AwarenessEntry(2, MAX_VARUINT, "null")]
    assert encode_awareness([AwarenessEntry(1, MAX_VARUINT, "null")])
