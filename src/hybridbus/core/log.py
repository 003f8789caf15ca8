"""The log's vocabulary: deliveries, acks, pages, positions and the recovery rule.

Owns: the values every engine returns and the hub hands to subscribers (a
`StoredDelivery` is a delivery whose event is decoded from its stored bytes
only when asked for), the resume token (`Position`) and its text form, the
`Cursor` that makes delivery exactly-once across the history→live hand-over,
and the pure rule that says whether recovery from a position is exact. Must
not do I/O.

Model. Each engine keeps one append-only log per shard. An appended event gets
a gap-free per-topic `offset` (1, 2, 3...) and a `position` in its shard's log
(increasing, not necessarily dense). `epoch` names one lifetime of the log: it
changes whenever history is lost, so positions from another epoch mean nothing.
A `Position` is an epoch plus, for every shard, the log position up to which a
reader has seen everything its pattern matches. Positions are 0 to
`MAX_POSITION` (2**63 - 1, sqlite's INTEGER): a token past that is refused as
an `InvalidPosition` here, before any engine sees it.
"""

from __future__ import annotations

import re
from typing import Final, cast

import msgspec

from hybridbus.core.codecs import decode_msgpack
from hybridbus.core.event import Event
from hybridbus.errors import EngineCorrupt, InvalidEvent, InvalidPosition

__all__ = [
    "MAX_POSITION",
    "UNDECODED",
    "Ack",
    "Cursor",
    "Delivery",
    "Page",
    "Position",
    "StoredDelivery",
    "is_exact",
]


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One logged event: where it is in the log, and the event itself.

    `time` is when it was appended and `expires` when it expires (Unix
    seconds; None: never). An expired delivery is never handed to anyone.
    `payload` is the event's MessagePack as the log holds it (what
    `core.codecs.encode_msgpack` made of it when it was appended: the
    MessagePack wire's encoding of the event), when the engine has it at
    hand; None when it has not. A server sends it to a MessagePack client as
    it is, instead of encoding the event again. (A `StoredDelivery` is one
    whose event is decoded from `payload` only when asked for.)
    """

    topic: str
    offset: int
    shard: int
    position: int
    time: float
    event: Event
    expires: float | None = None
    payload: bytes | None = None

    def expired(self, now: float) -> bool:
        """True if this delivery's event has expired at `now`."""
        return self.expires is not None and self.expires <= now

    def identity(self) -> tuple[str, str, str | None]:
        """The event's `source`, `id` and `partitionkey` (what a consumer group keys it by)."""
        event = self.event
        return event.source, event.id, event.partitionkey


class _Identity(msgspec.Struct, frozen=True, gc=False):
    """What `StoredDelivery.identity` reads of a stored event (its other keys are skipped)."""

    id: str
    source: str
    partitionkey: str | None = None


_identity_decoder: Final = msgspec.msgpack.Decoder(_Identity)
# The slot of `Delivery.event`: `StoredDelivery.event` (a property) reads and fills it.
_EVENT_SLOT: Final = Delivery.__dict__["event"]
# What a `StoredDelivery` holds in its `event` slot until the event is decoded.
UNDECODED: Final = cast(Event, None)


class StoredDelivery(Delivery, frozen=True, gc=False):
    """A delivery read from the log with its stored bytes, its event decoded when first asked for.

    Made by an engine's `read_stored` as `StoredDelivery(topic, offset,
    shard, position, time, UNDECODED, expires, payload)` (`payload` is
    required). For a reader that mostly passes the stored bytes on (a
    consumer group whose members speak MessagePack): `identity` reads only
    `source`, `id` and `partitionkey` of the bytes (once; about a third of a
    whole decode), `event` decodes them whole (once). Bytes that do not
    decode raise `EngineCorrupt` there.
    """

    keys: tuple[str, str, str | None] | None = None

    def identity(self) -> tuple[str, str, str | None]:
        """As `Delivery.identity`, without decoding the whole event."""
        keys = self.keys
        if keys is None:
            event = _EVENT_SLOT.__get__(self, StoredDelivery)
            if event is not None:
                keys = (event.source, event.id, event.partitionkey)
            else:
                try:
                    found = _identity_decoder.decode(self.payload)  # type: ignore[arg-type]
                except (msgspec.DecodeError, TypeError) as exc:
                    raise self._corrupt(exc) from exc
                keys = (found.source, found.id, found.partitionkey)
            msgspec.structs.force_setattr(self, "keys", keys)
        return keys

    def _corrupt(self, exc: BaseException) -> EngineCorrupt:
        return EngineCorrupt(
            f"the event at position {self.position} of shard {self.shard} cannot be decoded: {exc}"
        )


def _stored_event(self: StoredDelivery) -> Event:
    event: Event | None = _EVENT_SLOT.__get__(self, StoredDelivery)
    if event is None:
        payload = self.payload
        if payload is None:
            raise self._corrupt(ValueError("no stored bytes"))
        try:
            event = decode_msgpack(payload)
        except InvalidEvent as exc:
            raise self._corrupt(exc) from exc
        _EVENT_SLOT.__set__(self, event)
    return event


# A property in the subclass shadows the field's slot of the base (the slot still holds it).
setattr(StoredDelivery, "event", property(_stored_event, doc="The event (decoded once)."))  # noqa: B010


class Ack(msgspec.Struct, frozen=True, gc=False):
    """The answer to an append: where the event is, and whether it was a duplicate.

    For a duplicate (same `source` + `id` within the dedupe window) the fields
    describe the original append.

    `token` is the resume token right after this event (every publish ack on
    the wire carries it): `since=<token>` gives exactly the events of this
    topic appended after it, and for every other topic whatever was appended
    after the token's positions. With one shard that is the event's position.
    An engine with several shards fills `heads` with every shard's head as it
    saw them when it appended (its own shard's entry is replaced by
    `position`): events appended concurrently in other shards may come again,
    none appended after the ack is missed.
    """

    topic: str
    offset: int
    shard: int
    position: int
    epoch: str
    duplicate: bool = False
    heads: tuple[int, ...] | None = None

    @property
    def token(self) -> Position:
        """The resume token right after this event (see the class docstring)."""
        if self.heads is None:
            return Position(self.epoch, (self.position,))
        positions = list(self.heads)
        positions[self.shard] = self.position
        return Position(self.epoch, tuple(positions))


class Page(msgspec.Struct, frozen=True):
    """One read from the log.

    `deliveries` are in log order (per shard), expired ones left out.
    `positions` is where the next read continues: past the last delivery, or,
    when `more` is False, at the head of the log as of this read.
    `exact` is False if retention removed anything the read would have
    returned (the reader missed events it cannot get back).
    """

    epoch: str
    deliveries: list[Delivery]
    positions: tuple[int, ...]
    more: bool
    exact: bool


# The largest log position: every engine stores positions as signed 64-bit integers.
MAX_POSITION: Final = 2**63 - 1
_EPOCH: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
# ASCII digits only: int() alone would also take " 1", "+1", "1_0" and non-ASCII digits.
_POSITIONS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class Position(msgspec.Struct, frozen=True):
    """A resume token: an epoch and one log position per shard.

    `str(position)` is the opaque text form clients store; `Position.parse`
    reads it back.
    """

    epoch: str
    positions: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.epoch}-" + ".".join(map(str, self.positions))

    @classmethod
    def parse(cls, token: str) -> Position:
        """Read a token made by `str(position)`; raise `InvalidPosition` if malformed."""
        if not isinstance(token, str):
            raise InvalidPosition(f"a position token is a string, not {type(token).__name__}")
        epoch, sep, rest = token.rpartition("-")
        if not sep or not _EPOCH.fullmatch(epoch) or not _POSITIONS.fullmatch(rest):
            raise InvalidPosition(f"malformed position token {token!r}")
        try:
            positions = tuple(int(p) for p in rest.split("."))
        except ValueError:
            raise InvalidPosition(f"malformed position token {token!r}") from None
        if any(p > MAX_POSITION for p in positions):
            raise InvalidPosition(f"a position in token {token!r:.100} is past {MAX_POSITION}")
        return cls(epoch, positions)

    def checked(self) -> Position:
        """Return this position if `parse` would take its text form, else raise `InvalidPosition`.

        For positions built in Python rather than parsed.
        """
        if (
            type(self.epoch) is not str
            or not _EPOCH.fullmatch(self.epoch)
            or not self.positions
            or any(type(p) is not int or not 0 <= p <= MAX_POSITION for p in self.positions)
        ):
            raise InvalidPosition(f"not a valid position: {self!r:.200}")
        return self


class Cursor:
    """Where a reader is: the last position seen in each shard.

    `advance` accepts a delivery only if it lies past what was seen in its
    shard. A subscriber that feeds both history pages and live deliveries
    through one cursor gets each delivery exactly once, because both arrive in
    log order per shard.
    """

    __slots__ = ("epoch", "positions")

    def __init__(self, epoch: str, positions: tuple[int, ...] | list[int]) -> None:
        self.epoch = epoch
        self.positions = list(positions)

    def advance(self, delivery: Delivery) -> bool:
        """Move past `delivery`; False (and no move) if it was already seen."""
        shard = delivery.shard
        if delivery.position <= self.positions[shard]:
            return False
        self.positions[shard] = delivery.position
        return True

    def skip_to(self, positions: tuple[int, ...]) -> None:
        """Move forward (never back) to `positions`, e.g. the head after a read."""
        self.positions = [max(a, b) for a, b in zip(self.positions, positions, strict=True)]

    def position(self) -> Position:
        """The resume token for this cursor."""
        return Position(self.epoch, tuple(self.positions))


def is_exact(since: Position, epoch: str, shards: int) -> bool:
    """Can a reader resume exactly from `since` in a log of this epoch and shard count?

    Positions are only comparable within one epoch and one sharding; whether
    retention removed something since then is for the engine's `Page.exact`.
    """
    return since.epoch == epoch and len(since.positions) == shards
