"""The y-protocols wire format (core/yjs_protocol.py): round trips, lib0's own bytes, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.yjs_protocol import (
    MAX_VARUINT,
    AuthToken,
    AwarenessEntry,
    AwarenessUpdate,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_messages,
    encode_auth_token,
    encode_awareness,
    encode_permission_denied,
    encode_query_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
    read_varuint,
    update_of,
    write_varuint,
)
from hybridbus.errors import ErrorCode, YjsMessageInvalid


@given(st.integers(0, MAX_VARUINT))
def test_varuints_round_trip(value: int) -> None:
    out = bytearray()
    write_varuint(out, value)
    assert read_varuint(bytes(out), 0) == (value, len(out))


def test_varuints_are_lib0s() -> None:
    # lib0: 7 bits a byte, least significant first (encoding.writeVarUint).
    for value, wire in [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")]:
        out = bytearray()
        write_varuint(out, value)
        assert bytes(out) == wire


def test_the_messages_are_the_providers_bytes() -> None:
    # As y-protocols writes them: [messageSync, step, varUint8Array].
    assert encode_sync_step1(b"\x00") == b"\x00\x00\x01\x00"
    assert encode_sync_step2(b"ab") == b"\x00\x01\x02ab"
    assert encode_sync_update(b"ab") == b"\x00\x02\x02ab"
    assert encode_query_awareness() == b"\x03"
    assert encode_permission_denied("no") == b"\x02\x00\x02no"
    # awareness: [1, varUint8Array([n, client, clock, varString(json)])]
    assert encode_awareness([AwarenessEntry(5, 1, "null")]) == b"\x01\x08\x01\x05\x01\x04null"


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=50).map(SyncStep1),
            st.binary(max_size=50).map(SyncStep2),
            st.binary(max_size=50).map(SyncUpdate),
            st.just(QueryAwareness()),
            st.text(max_size=20).map(AuthToken),
            st.lists(
                st.builds(
                    AwarenessEntry,
                    st.integers(0, 2**32 - 1),
                    st.integers(0, 2**40),
                    st.sampled_from(["null", '{"user":"é😀"}', "{}", "[1,2]"]),
                ),
                max_size=4,
            ).map(AwarenessUpdate),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_messages_round_trip_back_to_back(messages: list[object]) -> None:
    wire = b""
    for message in messages:
        if isinstance(message, SyncStep1):
            wire += encode_sync_step1(message.state_vector)
        elif isinstance(message, SyncStep2):
            wire += encode_sync_step2(message.update)
        elif isinstance(message, SyncUpdate):
            wire += encode_sync_update(message.update)
        elif isinstance(message, QueryAwareness):
            wire += encode_query_awareness()
        elif isinstance(message, AuthToken):
            wire += encode_auth_token(message.token)
        elif isinstance(message, AwarenessUpdate):
            wire += encode_awareness(message.entries)
    assert decode_messages(wire) == messages


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # nothing
        b"\x09",  # an unknown kind
        b"\x00\x07\x00",  # an unknown sync step
        b"\x00\x02\x05ab",  # a field running past the end
        b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a number longer than 8 bytes
        b"\x01\x08\x01\x05\x01\x04nul!",  # an awareness state that is not JSON
        b"\x01\x09\x01\x05\x01\x04null\x00",  # bytes after the last awareness entry
        b"\x02\x00\x02\xff\xfe",  # a reason that is not UTF-8
    ],
)
def test_bad_input_raises_the_typed_error_only(wire: bytes) -> None:
    with pytest.raises(YjsMessageInvalid) as caught:
        decode_messages(wire)
    assert caught.value.code == ErrorCode.YJS_MESSAGE_INVALID


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_the_typed_error(wire: bytes) -> None:
    try:
        decode_messages(wire)
    except YjsMessageInvalid:
        pass


@pytest.mark.parametrize("size", [1, 126, 127, 128, 129, 16383, 16384, 20000])
@pytest.mark.parametrize("kind", [SyncUpdate, SyncStep2])
def test_one_update_a_frame_decodes_at_every_length_of_its_length(
    size: int, kind: type[SyncUpdate] | type[SyncStep2]
) -> None:
    """The common frame (one update) has a shortcut: it reads as the general path does,
    and a frame whose length field does not match the frame is not taken by it."""
    update = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encode = encode_sync_update if kind is SyncUpdate else encode_sync_step2
    wire = encode(update)
    assert decode_messages(wire) == [kind(update)]
    assert decode_messages(wire + wire) == [kind(update), kind(update)]
    assert decode_messages(wire + encode_query_awareness()) == [kind(update), QueryAwareness()]
    with pytest.raises(YjsMessageInvalid):
        decode_messages(wire[:-1])
    # The gateway's shortcut for the same frame, for an update under 16 KiB (its length in
    # one or two bytes); a larger one goes the general way.
    assert update_of(wire) == (update if size < 16384 else None)
    assert update_of(wire + wire) is None
    assert update_of(wire[:-1]) is None
    assert update_of(encode_sync_step1(update)) is None


@given(st.binary(max_size=64))
def test_the_one_update_shortcut_reads_what_decoding_reads(wire: bytes) -> None:
    update = update_of(wire)
    if update is not None:
        assert decode_messages(wire) in ([SyncUpdate(update)], [SyncStep2(update)])
