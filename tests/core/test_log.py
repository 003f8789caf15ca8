"""The log's vocabulary: resume tokens, the exactly-once cursor, the recovery rule."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import (
    MAX_POSITION,
    UNDECODED,
    Cursor,
    Delivery,
    Position,
    StoredDelivery,
    is_exact,
)
from hybridbus.errors import EngineCorrupt, ErrorCode, InvalidPosition

epochs = st.from_regex(r"[A-Za-z0-9_]{1,64}", fullmatch=True)
shard_positions = st.lists(st.integers(0, MAX_POSITION), min_size=1, max_size=8).map(tuple)
EVENT = Event(id="1", source="s", type="t")


def delivery(shard: int, position: int) -> Delivery:
    return Delivery(
        topic="a/b", offset=position, shard=shard, position=position, time=0.0, event=EVENT
    )


# Position ------------------------------------------------------------------------


@given(epochs, shard_positions)
def test_position_text_round_trip(epoch: str, positions: tuple[int, ...]) -> None:
    position = Position(epoch, positions)
    token = str(position)
    assert Position.parse(token) == position
    assert str(Position.parse(token)) == token


def test_position_text_form() -> None:
    assert str(Position("e1", (0, 12, 3))) == "e1-0.12.3"
    assert Position.parse("e1-0.12.3") == Position("e1", (0, 12, 3))
    assert Position.parse("A_b9-7") == Position("A_b9", (7,))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "-",
        "e1",  # no separator
        "e1-",  # no positions
        "-1.2",  # no epoch
        "e1-1..2",
        "e1-1.",
        "e1-.1",
        "e1--1",  # negative
        "e1-1.-2",
        "e1-x",
        "e1-1.2x",
        "e 1-1",
        "e.1-1",
        "e1-1 ",
        "e1- 1",
        "e1-+1",
        "e1-1_000",
        "e1-\u0661",  # ARABIC-INDIC DIGIT ONE: int() would take it
        "e1-0x10",
        "e1-1e3",
        "a" * 65 + "-1",  # epoch too long
        "e1-" + "9" * 5000,  # past int()'s digit limit
        "e1-99999999999999999999999",  # past the engines' 64-bit positions
        f"e1-{2**63}",
        f"e1-0.{2**64}.0",
        "e1-\uff11",  # FULLWIDTH DIGIT ONE
        "e1-1\u00b2",  # SUPERSCRIPT TWO
    ],
)
def test_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidPosition) as info:
        Position.parse(token)
    assert info.value.code is ErrorCode.INVALID_POSITION


@pytest.mark.parametrize("token", [None, 12, b"e1-1", ["e1-1"]])
def test_non_string_token_is_refused(token: object) -> None:
    with pytest.raises(InvalidPosition):
        Position.parse(token)  # type: ignore[arg-type]


TOKEN_GRAMMAR = re.compile(r"[A-Za-z0-9_]{1,64}-[0-9]+(?:\.[0-9]+)*")
# Near misses: the token alphabet plus what int() or a sloppy parser would let in.
near_tokens = st.builds(
    "{}-{}".format,
    st.text(alphabet="aZ_9.- ", max_size=4),
    st.text(alphabet="019.-+ _\t\u0661\u00b2x", max_size=6),
) | st.text(max_size=12)


@given(near_tokens)
def test_parse_accepts_exactly_the_token_grammar(token: str) -> None:
    try:
        position = Position.parse(token)
    except InvalidPosition:
        assert not TOKEN_GRAMMAR.fullmatch(token)
        return
    assert TOKEN_GRAMMAR.fullmatch(token)
    assert Position.parse(str(position)) == position


def test_the_largest_64_bit_position_is_a_position() -> None:
    assert MAX_POSITION == 2**63 - 1  # sqlite's INTEGER
    assert Position.parse(f"e1-{MAX_POSITION}.0") == Position("e1", (MAX_POSITION, 0))


def test_a_position_built_in_python_is_checked_too() -> None:
    assert Position("e1", (0, MAX_POSITION)).checked() == Position("e1", (0, MAX_POSITION))
    for positions in [(2**63,), (-1,), (), (1, 2**80)]:
        with pytest.raises(InvalidPosition):
            Position("e1", positions).checked()
    with pytest.raises(InvalidPosition):
        Position("e-1", (1,)).checked()


# What a client may send as `since`: integers of any size and sign, with their
# sign written or not, non-ASCII digits, empty parts, many shards.
digits = st.sampled_from(["0", "7", "\u0661", "\uff11", "\u00b2", "\U0001d7d8", "_", " "])
numbers = (
    st.integers().map(str)
    | st.integers(0, 2**80).map(lambda n: f"+{n}")
    | st.lists(digits, max_size=4).map("".join)
    | st.just("")
    | st.integers(MAX_POSITION - 2, MAX_POSITION + 2).map(str)
)
since_tokens = st.builds(
    "{}{}{}".format,
    epochs | st.text(max_size=6),
    st.sampled_from(["-", "--", "", "+", "\u2212"]),
    st.lists(numbers, min_size=0, max_size=40).map(".".join),
)


@given(since_tokens)
def test_any_since_is_a_position_in_range_or_invalid_position(token: str) -> None:
    try:
        position = Position.parse(token)
    except InvalidPosition:
        return  # the only exception it raises: anything else fails the test
    assert TOKEN_GRAMMAR.fullmatch(token)
    assert position.positions and all(0 <= p <= MAX_POSITION for p in position.positions)
    assert Position.parse(str(position)) == position


# Cursor ----------------------------------------------------------------------------


def test_advance_accepts_each_delivery_once() -> None:
    cursor = Cursor("e1", (0, 0))
    assert cursor.advance(delivery(0, 1))
    assert not cursor.advance(delivery(0, 1))  # the same again
    assert cursor.advance(delivery(1, 5))
    assert cursor.advance(delivery(0, 3))  # positions need not be dense
    assert not cursor.advance(delivery(0, 2))  # behind what was seen
    assert not cursor.advance(delivery(1, 5))
    assert cursor.position() == Position("e1", (3, 5))


def test_advance_refusal_does_not_move() -> None:
    cursor = Cursor("e1", (10,))
    assert not cursor.advance(delivery(0, 4))
    assert cursor.positions == [10]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 30)), max_size=40))
def test_history_then_live_overlap_delivers_exactly_once(raw: list[tuple[int, int]]) -> None:
    # A log: per shard, increasing positions. History and live overlap arbitrarily;
    # both arrive in log order per shard, and the cursor lets each through once.
    log = sorted(set(raw), key=lambda item: (item[1], item[0]))
    split = len(log) // 2
    history = log[: split + len(log) // 4]
    live = log[split:]
    cursor = Cursor("e1", (0, 0, 0))
    seen = [item for item in [*history, *live] if cursor.advance(delivery(*item))]
    assert sorted(seen) == sorted(log)
    assert len(seen) == len(set(seen))


def test_skip_to_moves_forward_only() -> None:
    cursor = Cursor("e1", (5, 1, 9))
    cursor.skip_to((3, 4, 9))
    assert cursor.positions == [5, 4, 9]
    assert not cursor.advance(delivery(1, 4))
    assert cursor.advance(delivery(1, 5))


@given(shard_positions, st.data())
def test_skip_to_never_moves_back(start: tuple[int, ...], data: st.DataObject) -> None:
    target = data.draw(st.lists(st.integers(0, 2**70), min_size=len(start), max_size=len(start)))
    cursor = Cursor("e1", start)
    cursor.skip_to(tuple(target))
    assert cursor.positions == [max(a, b) for a, b in zip(start, target, strict=True)]


def test_skip_to_refuses_another_shard_count() -> None:
    cursor = Cursor("e1", (0, 0))
    with pytest.raises(ValueError, match="zip"):
        cursor.skip_to((1, 2, 3))


def test_cursor_copies_its_positions() -> None:
    start = [1, 2]
    cursor = Cursor("e1", start)
    cursor.advance(delivery(0, 7))
    assert start == [1, 2]
    token = cursor.position()
    cursor.advance(delivery(0, 8))
    assert token == Position("e1", (7, 2))


# Delivery and the recovery rule ------------------------------------------------------


def test_delivery_expiry() -> None:
    assert not delivery(0, 1).expired(now=1e12)
    expiring = Delivery("a", 1, 0, 1, time=0.0, event=EVENT, expires=100.0)
    assert not expiring.expired(now=99.9)
    assert expiring.expired(now=100.0)
    assert expiring.expired(now=101.0)


@pytest.mark.parametrize(
    ("since", "epoch", "shards", "exact"),
    [
        (Position("e1", (1, 2)), "e1", 2, True),
        (Position("e1", (0, 0)), "e1", 2, True),
        (Position("e0", (1, 2)), "e1", 2, False),  # history was lost since
        (Position("e1", (1, 2)), "e1", 3, False),  # resharded
        (Position("e1", (1,)), "e1", 2, False),
    ],
)
def test_is_exact(since: Position, epoch: str, shards: int, exact: bool) -> None:
    assert is_exact(since, epoch, shards) is exact


def test_a_stored_delivery_decodes_its_event_when_asked_for_and_once() -> None:
    event = msgspec.structs.replace(EVENT, partitionkey="p-1", extensions={"traceparent": "00-ab"})
    payload = encode_msgpack(event)
    stored = StoredDelivery("a/b", 1, 0, 7, 0.0, UNDECODED, None, payload)
    assert stored.identity() == (event.source, event.id, "p-1")
    assert msgspec.structs.astuple(stored)[5] is None  # still undecoded
    assert stored.event == event
    assert stored.event is stored.event
    assert stored.identity() == Delivery("a/b", 1, 0, 7, 0.0, event).identity()
    assert isinstance(stored, Delivery) and stored.payload == payload


@pytest.mark.parametrize(
    "payload",
    [b"\xc1 not msgpack", msgspec.msgpack.encode({"source": "/s"}), msgspec.msgpack.encode([1])],
)
def test_a_stored_delivery_of_bytes_that_do_not_decode_is_corrupt(payload: bytes) -> None:
    stored = StoredDelivery("a/b", 1, 0, 7, 0.0, UNDECODED, None, payload)
    with pytest.raises(EngineCorrupt, match="position 7"):
        stored.identity()
    with pytest.raises(EngineCorrupt, match="position 7"):
        _ = stored.event


def test_a_stored_delivery_whose_keys_decode_but_not_its_event_is_corrupt_when_asked() -> None:
    payload = msgspec.msgpack.encode({"id": "1", "source": "/s", "type": "", "data": 1})
    stored = StoredDelivery("a/b", 1, 0, 7, 0.0, UNDECODED, None, payload)
    assert stored.identity() == ("/s", "1", None)
    with pytest.raises(EngineCorrupt, match="type"):
        _ = stored.event
