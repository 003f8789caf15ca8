"""A `history` reply from a page of the bus, cut to fit a frame.

Owns: turning a `hub.History` page into the protocol's `HistoryResult` for a
client (topics relative to its tenant, events in its encoding) and cutting it
short, with a token that continues right after the last event sent, when the
events would not fit `max_frame_size`. Must not read the bus or encode events
itself (the caller's `encode` shares encodings with the pushes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from hybridbus.core.log import Delivery, Position
from hybridbus.hub.bus import History
from hybridbus.proto.frames import HistoryEvent, HistoryResult

__all__ = ["history_result"]

# Bytes of a history entry besides its event: topic, numbers, keys.
_OVERHEAD: Final = 96


def history_result(
    page: History,
    *,
    prefix: str,
    encode: Callable[[Delivery], bytes],
    budget: int,
    start: Sequence[int],
) -> HistoryResult:
    """The reply to a `history` command that read `page`.

    At least one event is always included; after that, events stop once their
    encoded size passes `budget` bytes, and the result says `more` with a
    position right after the last event included. `start` is where the read
    began in each shard (the `since` positions, or zeros).
    """
    skip = len(prefix)
    events: list[HistoryEvent] = []
    used = 0
    deliveries = page.deliveries
    for delivery in deliveries:
        encoded = encode(delivery)
        used += len(encoded) + len(delivery.topic) + _OVERHEAD
        if events and used > budget:
            break
        events.append(
            HistoryEvent(
                topic=delivery.topic[skip:],
                offset=delivery.offset,
                shard=delivery.shard,
                position=delivery.position,
                event=msgspec.Raw(encoded),
            )
        )
    position = page.position
    more = page.more
    if len(events) < len(deliveries):
        after = list(start)
        for event in events:
            after[event.shard] = max(after[event.shard], event.position)
        position = Position(position.epoch, tuple(after))
        more = True
    return HistoryResult(events=events, position=str(position), more=more, exact=page.exact)
