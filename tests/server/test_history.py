"""A history reply cut to fit a frame continues right after its last event."""

from __future__ import annotations

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Position
from hybridbus.hub.bus import History
from hybridbus.server.history import history_result


def delivery(position: int, size: int, shard: int = 0) -> Delivery:
    event = Event(id=f"e{position}", source="/s", type="t", data="x" * size)
    return Delivery(f"acme/t/{position}", position, shard, position, 0.0, event)


def encode(d: Delivery) -> bytes:
    return b'{"id":"%s","data":"%s"}' % (d.event.id.encode(), str(d.event.data).encode())


def test_a_page_that_fits_is_returned_whole_with_relative_topics() -> None:
    page = History([delivery(5, 10), delivery(6, 10)], Position("E", (6,)), False, True)
    result = history_result(page, prefix="acme/", encode=encode, budget=10_000, start=(4,))
    assert [e.topic for e in result.events] == ["t/5", "t/6"]
    assert (result.position, result.more, result.exact) == ("E-6", False, True)
    assert bytes(result.events[0].event) == encode(page.deliveries[0])


def test_a_page_over_the_budget_is_cut_and_continues_after_the_last_event() -> None:
    page = History(
        [delivery(5, 400), delivery(6, 400), delivery(7, 400)], Position("E", (9,)), False, False
    )
    result = history_result(page, prefix="acme/", encode=encode, budget=1200, start=(4,))
    assert [e.position for e in result.events] == [5, 6]
    assert (result.position, result.more, result.exact) == ("E-6", True, False)


def test_one_event_always_goes_out_even_over_the_budget() -> None:
    page = History([delivery(5, 5000), delivery(6, 1)], Position("E", (6,)), False, True)
    result = history_result(page, prefix="acme/", encode=encode, budget=100, start=(0,))
    assert [e.position for e in result.events] == [5]
    assert result.position == "E-5" and result.more


def test_a_cut_keeps_the_start_of_shards_it_did_not_reach() -> None:
    page = History(
        [delivery(5, 400, shard=0), delivery(3, 400, shard=1)], Position("E", (5, 3)), False, True
    )
    result = history_result(page, prefix="acme/", encode=encode, budget=600, start=(2, 1))
    assert result.position == "E-5.1"
