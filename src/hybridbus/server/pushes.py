"""The encode-once caches of a node: one encoding per delivery, one push per stream, shared.

Owns: the encoding of a delivery's event per codec, the `event` push of a
delivery per codec and (absolute) pattern, and the runs of pushes that the
connections draining the same batch share. Every connection subscribed to the
same absolute pattern with the same codec gets the same bytes, so the encoding
happens once per delivery, not once per subscriber. Must not know connections
or sockets (the node and its connections use it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from hybridbus.core.log import Delivery
from hybridbus.proto.codec import WireCodec

__all__ = ["Pushes"]

# Encoded events and pushes kept for sharing: a delivery is pushed to all its
# subscribers within a few loop turns, so a few thousand entries suffice.
_CACHE_SIZE: Final = 4096
# Batches of pushes kept for sharing: the connections drain them within a loop turn.
_BATCH_CACHE_SIZE: Final = 256


def _push_key(absolute: str, prefix: str) -> str:
    """The cache key of pushes for `absolute`: an admin (no prefix) sees other bytes."""
    return absolute if prefix else "/" + absolute


class Pushes:
    """The encode-once caches (see the module docstring)."""

    def __init__(self) -> None:
        # OrderedDicts: evicting a plain dict's oldest entry (`del d[next(iter(d))]`)
        # scans the slots its earlier deletions left, microseconds per insert.
        self._events: OrderedDict[tuple[str, int, int, float], bytes] = OrderedDict()
        self._pushes: OrderedDict[tuple[str, str, int, int, float], bytes] = OrderedDict()
        self._batches: OrderedDict[tuple[str, str, int, int, float, int], list[bytes]] = (
            OrderedDict()
        )
        # The last run of pushes `push_batch` handed out (see there).
        self._last_run: tuple[Delivery, Delivery, int, WireCodec, str, str, list[bytes]] | None = (
            None
        )

    def event_bytes(self, codec: WireCodec, delivery: Delivery) -> bytes:
        """`delivery`'s event in `codec`'s encoding, encoded once for every connection.

        Keyed by (subprotocol, shard, position, append time): the time keeps an
        entry from an older epoch (after an engine reset) from ever matching.
        """
        key = (codec.subprotocol, delivery.shard, delivery.position, delivery.time)
        events = self._events
        encoded = events.get(key)
        if encoded is None:
            encoded = codec.encode_event(delivery.event)
            if len(events) >= _CACHE_SIZE:
                events.popitem(last=False)
            events[key] = encoded
        return encoded

    def push_bytes(
        self, codec: WireCodec, absolute: str, pattern: str, prefix: str, delivery: Delivery
    ) -> bytes:
        """The encoded `event` push of `delivery` for subscriptions to `absolute`.

        `pattern` is `absolute` as the client wrote it (without `prefix`, its tenant's);
        every connection subscribed to the same absolute pattern with the same
        codec gets the same bytes.
        """
        key = (
            codec.subprotocol,
            _push_key(absolute, prefix),
            delivery.shard,
            delivery.position,
            delivery.time,
        )
        pushes = self._pushes
        encoded = pushes.get(key)
        if encoded is None:
            topic = delivery.topic[len(prefix) :]
            encoded = codec.encode_push(
                pattern, delivery, self.event_bytes(codec, delivery), topic=topic
            )
            if len(pushes) >= _CACHE_SIZE:
                pushes.popitem(last=False)
            pushes[key] = encoded
        return encoded

    def push_batch(
        self,
        codec: WireCodec,
        absolute: str,
        pattern: str,
        prefix: str,
        batch: list[Delivery],
        *,
        whole: bool = True,
        cached: bool = True,
    ) -> list[bytes]:
        """`push_bytes` of every delivery in `batch`, in order (the fan-out's hot path).

        The list is shared: callers copy from it, never change it. With `whole`
        (nothing of the subscription's stream was left out), the batch is a run
        of consecutive deliveries of one stream — every subscription to
        `absolute` gets the same stream — so its first delivery and its length
        name it: the connections that drain the same batch in one loop turn
        share one list, made once. Without `cached` (a recovered batch, which
        other connections share whole if at all) the deliveries are encoded in
        one go, past the per-delivery caches.
        """
        if whole:
            # The connections of one write pass drain the same run one after the
            # other: the last run found is checked first, by identity.
            run_of = self._last_run
            if run_of is not None:
                first_of, last_of, count, codec_of, absolute_of, prefix_of, shared = run_of
                if (
                    batch[0] is first_of
                    and batch[-1] is last_of
                    and len(batch) == count
                    and codec is codec_of
                    and absolute == absolute_of
                    and prefix == prefix_of
                ):
                    return shared
        subprotocol = codec.subprotocol
        key = _push_key(absolute, prefix)
        batches = self._batches
        if whole:
            first, last = batch[0], batch[-1]
            run = (subprotocol, key, first.shard, first.position, first.time, last.position)
            found = batches.get(run)
            if found is not None and len(found) == len(batch):
                self._last_run = (first, last, len(batch), codec, absolute, prefix, found)
                return found
        out: list[bytes]
        if cached:
            pushes = self._pushes
            out = []
            for delivery in batch:
                encoded = pushes.get(
                    (subprotocol, key, delivery.shard, delivery.position, delivery.time)
                )
                if encoded is None:
                    encoded = self.push_bytes(codec, absolute, pattern, prefix, delivery)
                out.append(encoded)
        else:
            out = codec.encode_pushes(pattern, batch, len(prefix))
        if whole:
            if len(batches) >= _BATCH_CACHE_SIZE:
                batches.popitem(last=False)
            batches[run] = out
            self._last_run = (first, last, len(batch), codec, absolute, prefix, out)
        return out
