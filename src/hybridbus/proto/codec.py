"""The two wire encodings of the client protocol: `hybridbus.v1.json` and `hybridbus.v1.msgpack`.

Owns: turning frames into messages and messages into frames for each
subprotocol, the encoding of the events they carry, and the fast path that
encodes one delivery's push (`event`, `group_event`) once for all its
subscribers. Must not keep any connection state (that is `proto.session`),
nor do I/O.

    hybridbus.v1.json     text frames; one JSON object per line ("\\n"
                          between messages); events are CloudEvents in the
                          JSON structured format
    hybridbus.v1.msgpack  binary frames; a frame is a MessagePack array of
                          messages (maps); events are maps as
                          `core.codecs.encode_msgpack` makes them (other
                          extensions under `x-extensions`); decoding also
                          takes them as top-level keys, as in JSON

Decoding peer input raises `hybridbus.errors.ProtocolError` and nothing else
(events: `InvalidEvent`): `code` says what was wrong, `id` is the command id
when it could be read. Frames come out of `frame` as bytes in both
subprotocols: a gateway sends them as a text frame when `binary` is False
(the bytes are UTF-8), which spares a decode and re-encode per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, get_args

import msgspec

from hybridbus.core.codecs import decode_json, decode_msgpack, encode_json, encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.errors import ErrorCode, InvalidEvent, ProtocolError
from hybridbus.proto.frames import (
    ClientMessage,
    Command,
    Pong,
    Result,
    ServerMessage,
)

__all__ = [
    "JSON",
    "JSON_SUBPROTOCOL",
    "MSGPACK",
    "MSGPACK_SUBPROTOCOL",
    "SUBPROTOCOLS",
    "Chunk",
    "Data",
    "WireCodec",
    "codec_for",
]

JSON_SUBPROTOCOL: Final = "hybridbus.v1.json"
MSGPACK_SUBPROTOCOL: Final = "hybridbus.v1.msgpack"

# What a gateway hands in: the payload of one WebSocket message. Decoded
# messages may reference it (a publish's event is a view into it): do not
# reuse a bytearray or memoryview's buffer afterwards.
Data = bytes | bytearray | memoryview | str
# One message of a frame, as `split` cuts it out.
Chunk = bytes | str | msgspec.Raw

R = TypeVar("R", bound=Result)

# Every exception msgspec (or the unicode machinery under it) raises on bad
# input; RecursionError comes from deeply nested arrays.
_BAD_INPUT: Final = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError, TypeError)
_MAX_DETAIL: Final = 300
_COMMAND_TAGS: Final = frozenset(t.__struct_config__.tag for t in (*get_args(Command), Pong))
_SERVER_TAGS: Final = frozenset(t.__struct_config__.tag for t in get_args(ServerMessage))


class _Probe(msgspec.Struct):
    """What can still be read of a message that failed validation."""

    id: Any = None
    type: Any = None


class _PushHead(msgspec.Struct, tag_field="type", tag="event"):
    """`frames.EventPush` without its event: encoded, then the event bytes are spliced in."""

    pattern: str
    topic: str
    offset: int
    shard: int
    position: int


class _GroupPushOut(msgspec.Struct, tag_field="type", tag="group_event"):
    """`frames.GroupEventPush`, built positionally: its event (`Raw`) is copied in as it is.

    One struct and one encode beat a head encoded and the event spliced after
    it (the splice's copies cost twice the head's encoding).
    """

    group: str
    delivery: str
    attempt: int
    dedupe: str
    topic: str
    offset: int
    event: msgspec.Raw | Event


class _PushStart(msgspec.Struct, tag_field="type", tag="event"):
    """The start of `_PushHead` (its first fields): shared by a batch's pushes of one topic."""

    pattern: str
    topic: str


class _ReplyOut(msgspec.Struct, tag_field="type", tag="reply", kw_only=True):
    """`frames.Reply` for encoding: the result struct is encoded in place, not as Raw."""

    id: int
    result: Any


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def _readable_id(value: object) -> int | None:
    if type(value) is int and 1 <= value <= 2**53 - 1:
        return value
    return None


class WireCodec:
    """One subprotocol's encoding. Stateless: share `JSON` and `MSGPACK`."""

    subprotocol: str
    binary: bool
    # True if an `Event` encodes in a message as `encode_event` encodes it alone.
    _nests_events = False

    def __init__(
        self,
        *,
        subprotocol: str,
        binary: bool,
        module: Any,
        encode_event: Callable[[Event], bytes],
        decode_event: Callable[[bytes], Event],
    ) -> None:
        self.subprotocol = subprotocol
        self.binary = binary
        self._module = module
        self._encode_event = encode_event
        self._decode_event = decode_event
        self._encoder = module.Encoder()
        self._client = module.Decoder(ClientMessage)
        self._server = module.Decoder(ServerMessage)
        self._probe = module.Decoder(_Probe)
        self._results: dict[type[Any], Any] = {}

    def __repr__(self) -> str:
        return f"<WireCodec {self.subprotocol}>"

    # -- frames ------------------------------------------------------------

    def split(self, data: Data) -> list[Chunk]:
        """The encoded messages of one frame. Raises `ProtocolError` (MALFORMED_MESSAGE)."""
        raise NotImplementedError

    def frame(self, encoded: Sequence[bytes]) -> bytes:
        """Coalesce encoded messages (from `encode`, `encode_push`...) into ONE frame."""
        raise NotImplementedError

    # -- messages ----------------------------------------------------------

    def encode(self, message: ClientMessage | ServerMessage) -> bytes:
        """One message, encoded (not yet a frame: see `frame`)."""
        return self._encoder.encode(message)  # type: ignore[no-any-return]

    def encode_reply(self, id: int, result: Result) -> bytes:
        """The encoded `Reply` to command `id`: the same bytes as `encode(Reply(...))`."""
        return self._encoder.encode(_ReplyOut(id=id, result=result))  # type: ignore[no-any-return]

    def decode_command(self, message: Chunk) -> ClientMessage:
        """Decode one client message (of `split`). Raises `ProtocolError`."""
        return self._decode(message, self._client.decode, _COMMAND_TAGS)  # type: ignore[no-any-return]

    def decode_commands(self, data: Data) -> list[ClientMessage]:
        """Every client message of one frame; the first bad one raises `ProtocolError`."""
        return [self.decode_command(message) for message in self.split(data)]

    def decode_server_message(self, message: Chunk) -> ServerMessage:
        """Decode one server message (of `split`). Raises `ProtocolError`.

        The codes read as for commands: UNKNOWN_COMMAND is an unknown message
        `type` (a client ignores those), INVALID_COMMAND a field of the wrong type.
        """
        return self._decode(message, self._server.decode, _SERVER_TAGS)  # type: ignore[no-any-return]

    def decode_server(self, data: Data) -> list[ServerMessage]:
        """Every server message of one frame; the first bad one raises `ProtocolError`."""
        return [self.decode_server_message(message) for message in self.split(data)]

    def _decode(self, message: Chunk, decode: Callable[[Any], Any], tags: frozenset[str]) -> Any:
        try:
            return decode(message)
        except msgspec.ValidationError as exc:
            invalid: BaseException = exc
        except _BAD_INPUT as exc:
            raise ProtocolError(
                ErrorCode.MALFORMED_MESSAGE, f"malformed message: {_detail(exc)}"
            ) from exc
        # Well-formed but not a valid message: read what can be read of it.
        try:
            probe = self._probe.decode(message)
        except _BAD_INPUT:
            raise ProtocolError(
                ErrorCode.MALFORMED_MESSAGE, "a message must be an object (a map)"
            ) from invalid
        id = _readable_id(probe.id)
        if type(probe.type) is not str or probe.type not in tags:
            raise ProtocolError(
                ErrorCode.UNKNOWN_COMMAND, f"unknown message type {probe.type!r:.60}", id
            ) from invalid
        raise ProtocolError(
            ErrorCode.INVALID_COMMAND, f"invalid {probe.type}: {_detail(invalid)}", id
        ) from invalid

    def decode_result(self, raw: msgspec.Raw | bytes, result_type: type[R]) -> R:
        """Decode a `Reply.result` as the struct its command expects. Raises `ProtocolError`."""
        decoder = self._results.get(result_type)
        if decoder is None:
            decoder = self._results[result_type] = self._module.Decoder(result_type)
        try:
            return decoder.decode(raw)  # type: ignore[no-any-return]
        except _BAD_INPUT as exc:
            raise ProtocolError(
                ErrorCode.INVALID_COMMAND,
                f"invalid {result_type.__name__}: {_detail(exc)}",
            ) from exc

    # -- events --------------------------------------------------------------

    def encode_event(self, event: Event) -> bytes:
        """An event in this subprotocol's encoding (raises `InvalidEvent` if it has none)."""
        try:
            return self._encode_event(event)
        except (TypeError, OverflowError, ValueError) as exc:
            raise InvalidEvent(f"the event has no encoding: {_detail(exc)}", "data") from exc

    def decode_event(self, raw: msgspec.Raw | bytes | str) -> Event:
        """The event of a `Publish`, `EventPush` or `HistoryEvent`. Raises `InvalidEvent`."""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        try:
            return self._decode_event(data)
        except (RecursionError, UnicodeError) as exc:
            raise InvalidEvent(f"malformed event: {_detail(exc)}") from exc

    def encode_push(
        self,
        pattern: str,
        delivery: Delivery,
        event: bytes | msgspec.Raw,
        *,
        topic: str | None = None,
    ) -> bytes:
        """The encoded `EventPush` of `delivery` for a subscription to `pattern`.

        `event` is `encode_event(delivery.event)`, made ONCE per delivery and
        shared by every push of it: it is copied in, never re-encoded.
        `topic` is the topic as the client sees it (relative to its tenant);
        it defaults to `delivery.topic`. Pushes of one delivery to
        subscribers of the same pattern and tenant are identical bytes: a
        server can encode one and send it to all of them. The bytes are those
        of `encode(EventPush(...))`, built faster: the small head is encoded
        and the event spliced in after it.
        """
        head = self._encoder.encode(
            _PushHead(
                pattern,
                delivery.topic if topic is None else topic,
                delivery.offset,
                delivery.shard,
                delivery.position,
            )
        )
        return self._splice(head, event)

    def encode_group_push(
        self,
        group: str,
        delivery_id: str,
        attempt: int,
        dedupe: str,
        topic: str,
        offset: int,
        event: bytes | msgspec.Raw | Event,
    ) -> bytes:
        """The encoded `GroupEventPush`: the same bytes as `encode(GroupEventPush(...))`.

        `event` is `encode_event(...)` of the delivery's event, shared with
        every other push of it (it is copied in, never re-encoded), or the
        event itself when nobody shares its encoding: MessagePack then encodes
        it in place, within the push (no bytes of its own made and copied).
        Raises `InvalidEvent` if the event has no encoding.
        """
        if isinstance(event, Event):
            if not self._nests_events:
                event = self.encode_event(event)
            else:
                try:
                    return self._encoder.encode(  # type: ignore[no-any-return]
                        _GroupPushOut(group, delivery_id, attempt, dedupe, topic, offset, event)
                    )
                except (TypeError, OverflowError, ValueError, RecursionError):
                    event = self.encode_event(event)  # raises what it should
        raw = event if type(event) is msgspec.Raw else msgspec.Raw(event)
        return self._encoder.encode(  # type: ignore[no-any-return]
            _GroupPushOut(group, delivery_id, attempt, dedupe, topic, offset, raw)
        )

    def encode_pushes(
        self, pattern: str, deliveries: Sequence[Delivery], cut: int = 0
    ) -> list[bytes]:
        """`encode_push` of every delivery in `deliveries`, in order: the same bytes.

        For a batch no other subscriber shares (a recovery): each event is
        encoded here, not taken from a cache. `cut` characters are cut off the
        front of each topic (the tenant's prefix).
        """
        encode_event = self.encode_event
        encode_push = self.encode_push
        return [
            encode_push(pattern, d, encode_event(d.event), topic=d.topic[cut:]) for d in deliveries
        ]

    def _splice(self, head: bytes, event: bytes | msgspec.Raw) -> bytes:
        raise NotImplementedError


class _JsonCodec(WireCodec):
    def split(self, data: Data) -> list[Chunk]:
        if isinstance(data, str):
            if "\n" not in data:
                return [data] if data.strip() else []
            return [line for line in data.split("\n") if line.strip()]
        if isinstance(data, (bytes, bytearray, memoryview)):
            buf = bytes(data)
            if b"\n" not in buf:
                return [buf] if buf.strip() else []
            return [line for line in buf.split(b"\n") if line.strip()]
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, "a frame must be text or bytes")

    def frame(self, encoded: Sequence[bytes]) -> bytes:
        if len(encoded) == 1:
            return encoded[0]
        return b"\n".join(encoded)

    def encode_pushes(
        self, pattern: str, deliveries: Sequence[Delivery], cut: int = 0
    ) -> list[bytes]:
        # The head up to the offset is the same for every delivery of a topic;
        # the three integers are formatted as msgspec writes them (decimal),
        # and a plain event (no extensions, no binary data) is encoded as
        # `encode_json` does: specversion first, then the struct's fields.
        encode = self._encoder.encode
        encode_event = self.encode_event
        heads: dict[str, bytes] = {}
        out: list[bytes] = []
        append = out.append
        try:
            for d in deliveries:
                topic = d.topic
                head = heads.get(topic)
                if head is None:
                    start = encode(_PushStart(pattern, topic[cut:]))
                    head = heads[topic] = start[:-1] + b',"offset":'
                event = d.event
                if event.extensions or isinstance(event.data, bytes):
                    append(
                        b'%b%d,"shard":%d,"position":%d,"event":%b}'
                        % (head, d.offset, d.shard, d.position, encode_event(event))
                    )
                else:
                    append(
                        b'%b%d,"shard":%d,"position":%d,"event":{"specversion":"1.0",%b}'
                        % (head, d.offset, d.shard, d.position, encode(event)[1:])
                    )
        except (*_BAD_INPUT, OverflowError):
            # An event without an encoding: the plain path raises what it should.
            return super().encode_pushes(pattern, deliveries, cut)
        return out

    def _splice(self, head: bytes, event: bytes | msgspec.Raw) -> bytes:
        # {"type":"event",...,"position":7} -> {"type":"event",...,"position":7,"event":{...}}
        return b"".join((head[:-1], b',"event":', event, b"}"))


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])


class _MsgpackCodec(WireCodec):
    _nests_events = True

    def split(self, data: Data) -> list[Chunk]:
        if isinstance(data, str):
            raise ProtocolError(
                ErrorCode.MALFORMED_MESSAGE, f"{MSGPACK_SUBPROTOCOL} frames are binary, not text"
            )
        try:
            items = _raw_list.decode(data)
        except _BAD_INPUT as exc:
            raise ProtocolError(
                ErrorCode.MALFORMED_MESSAGE,
                f"a frame must be a MessagePack array of messages: {_detail(exc)}",
            ) from exc
        return list(items)

    def frame(self, encoded: Sequence[bytes]) -> bytes:
        return _array_header(len(encoded)) + b"".join(encoded)

    def _splice(self, head: bytes, event: bytes | msgspec.Raw) -> bytes:
        # A fixmap of n (0x80 | n, n < 15) becomes one of n + 1 with "event" last.
        return b"".join((bytes((head[0] + 1,)), head[1:], b"\xa5event", event))


JSON: Final[WireCodec] = _JsonCodec(
    subprotocol=JSON_SUBPROTOCOL,
    binary=False,
    module=msgspec.json,
    encode_event=encode_json,
    decode_event=decode_json,
)
MSGPACK: Final[WireCodec] = _MsgpackCodec(
    subprotocol=MSGPACK_SUBPROTOCOL,
    binary=True,
    module=msgspec.msgpack,
    encode_event=encode_msgpack,
    decode_event=decode_msgpack,
)

# Every subprotocol a server speaks, in its order of preference.
SUBPROTOCOLS: Final = (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)
_BY_NAME: Final = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}


def codec_for(subprotocol: str | None) -> WireCodec | None:
    """The codec of a negotiated subprotocol, or None if hybridbus does not speak it."""
    if subprotocol is None:
        return None
    return _BY_NAME.get(subprotocol)
