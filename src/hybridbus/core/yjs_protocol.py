"""The y-protocols wire format, as the stock `y-websocket` provider speaks it.

Owns: lib0's variable-length integers and strings, the message kinds a Yjs
WebSocket carries, their decoding (typed: `YjsMessageInvalid`, never another
exception, on any peer input) and encoding, and the close codes of the
`/v1/yjs/{room}` endpoint. Must not do I/O, know pycrdt (an update or a state
vector is opaque bytes here) nor decide anything about rooms.

A WebSocket binary message holds one message; `decode_messages` also reads
several back to back (newer providers send and read them so), but the server
sends one per WebSocket message: y-websocket 3.x reads only the first.

    message        = varuint kind, body
    kind 0 sync    = varuint 0 step 1, varbytes state vector
                   | varuint 1 step 2, varbytes update
                   | varuint 2 update, varbytes update
    kind 1 awareness = varbytes (varuint n, n x (varuint client, varuint clock,
                                                 varstring state as JSON, "null" = gone))
    kind 2 auth    = varuint 0 permission denied, varstring reason   (server -> client)
                   | varuint 1 token, varstring token                 (client -> server,
                                                                       hybridbus only)
    kind 3 queryAwareness (no body): answer with every awareness state

    varuint   = 7 bits a byte, least significant first, high bit: more follow
    varbytes  = varuint length, the bytes;  varstring = varbytes of UTF-8

The auth `token` message is hybridbus's own (the stock provider never sends
one): a client that cannot put its token in the URL sends it as its FIRST
message (docs/collaboration.md).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

import msgspec

from hybridbus.errors import YjsMessageInvalid

__all__ = [
    "MAX_VARUINT",
    "AuthToken",
    "AwarenessEntry",
    "AwarenessUpdate",
    "Message",
    "PermissionDenied",
    "QueryAwareness",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "YjsCloseCode",
    "decode_messages",
    "encode_auth_token",
    "encode_awareness",
    "encode_permission_denied",
    "encode_query_awareness",
    "encode_sync_step1",
    "encode_sync_step2",
    "encode_sync_update",
    "read_varuint",
    "update_of",
    "write_varuint",
]

MESSAGE_SYNC: Final = 0
MESSAGE_AWARENESS: Final = 1
MESSAGE_AUTH: Final = 2
MESSAGE_QUERY_AWARENESS: Final = 3
SYNC_STEP1: Final = 0
SYNC_STEP2: Final = 1
SYNC_UPDATE: Final = 2
AUTH_PERMISSION_DENIED: Final = 0
AUTH_TOKEN: Final = 1

_UPDATE_STEPS: Final = (SYNC_UPDATE, SYNC_STEP2)

# lib0 reads varuints into a JavaScript number: at most 2**53 - 1 (8 bytes of 7 bits).
MAX_VARUINT: Final = 2**53 - 1
_MAX_VARUINT_BYTES: Final = 8


class YjsCloseCode(IntEnum):
    """Why the server closed a `/v1/yjs/{room}` WebSocket (docs/collaboration.md).

    4400-4499: retrying cannot help — y-websocket 3.1's provider stops
    reconnecting and emits `closed` (its default `shouldReconnect`); the
    application fixes the cause (a new token) and calls `provider.connect()`.
    4500-4599 and the standard 1001/1011: reconnect, with backoff.
    """

    BAD_MESSAGE = 4400  # a message that does not decode, or an update pycrdt refuses
    UNAUTHORIZED = 4401  # no valid credentials (and no anonymous access)
    FORBIDDEN = 4403  # the rules do not let this token read the room
    BAD_ROOM = 4404  # the room name does not make a topic segment
    TOKEN_EXPIRED = 4410  # the token's `exp` passed: get a new one
    REVOKED = 4411  # its token, session or user was revoked
    MESSAGE_TOO_LARGE = 4413  # a message over `max_frame_size`
    TOO_MANY_CONNECTIONS = 4529  # the user holds its maximum: later, with backoff
    TOO_SLOW = 4530  # the client did not read: over `max_pending_bytes` unwritten
    SHUTDOWN = 1001  # the server is going away: reconnect (elsewhere)
    SERVER_ERROR = 1011  # the room could not load or append (the log is down): reconnect


class SyncStep1(msgspec.Struct, frozen=True, gc=False):
    """Sync step 1: the sender's state vector; answer with step 2."""

    state_vector: bytes


class SyncStep2(msgspec.Struct, frozen=True, gc=False):
    """Sync step 2: what the receiver of a step 1 lacked, as one update."""

    update: bytes


class SyncUpdate(msgspec.Struct, frozen=True, gc=False):
    """A document update."""

    update: bytes


class AwarenessEntry(msgspec.Struct, frozen=True, gc=False):
    """One client's awareness state: its JSON text (`"null"`: the client is gone)."""

    client: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        """True if this entry says the client left."""
        return self.state == "null"


class AwarenessUpdate(msgspec.Struct, frozen=True, gc=False):
    """Awareness states of one or more clients."""

    entries: list[AwarenessEntry]


class QueryAwareness(msgspec.Struct, frozen=True, gc=False):
    """A request for every awareness state the receiver knows."""


class PermissionDenied(msgspec.Struct, frozen=True, gc=False):
    """The server refused something (an update of a read-only client); `reason` says what."""

    reason: str


class AuthToken(msgspec.Struct, frozen=True, gc=False):
    """hybridbus's first message carrying the client's credential (a JWT or an API key)."""

    token: str


Message = (
    SyncStep1
    | SyncStep2
    | SyncUpdate
    | AwarenessUpdate
    | QueryAwareness
    | PermissionDenied
    | AuthToken
)


# -- primitives --------------------------------------------------------------------------


def write_varuint(out: bytearray, value: int) -> None:
    """Append `value` (0 to `MAX_VARUINT`) to `out` as a lib0 varuint."""
    if not 0 <= value <= MAX_VARUINT:
        raise ValueError(f"a varuint is 0 to 2**53 - 1, not {value}")
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def read_varuint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """The varuint at `at` in `data`, and where the next field starts."""
    value = 0
    shift = 0
    end = len(data)
    for _ in range(_MAX_VARUINT_BYTES):
        if at >= end:
            raise YjsMessageInvalid("a message ends inside a number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_VARUINT:
                raise YjsMessageInvalid("a number is over 2**53 - 1")
            return value, at
        shift += 7
    raise YjsMessageInvalid("a number is longer than 8 bytes")


def _write_bytes(out: bytearray, value: bytes) -> None:
    write_varuint(out, len(value))
    out += value


def _read_bytes(data: bytes | memoryview, at: int) -> tuple[bytes, int]:
    size, at = read_varuint(data, at)
    end = at + size
    if end > len(data):
        raise YjsMessageInvalid(f"a field of {size} bytes runs past the end of the message")
    return bytes(data[at:end]), end


def _read_string(data: bytes | memoryview, at: int) -> tuple[str, int]:
    raw, at = _read_bytes(data, at)
    try:
        return raw.decode("utf-8"), at
    except UnicodeDecodeError:
        raise YjsMessageInvalid("a string is not UTF-8") from None


# -- decoding ----------------------------------------------------------------------------


def update_of(frame: bytes) -> bytes | None:
    """The update of a frame that is exactly one sync update or step 2 under 16 KiB, else None.

    The common frame, read without building messages; any other frame (or a
    malformed one) is None: `decode_messages` reads it (or raises).
    """
    end = len(frame)
    if end > 3 and frame[0] == MESSAGE_SYNC and frame[1] in _UPDATE_STEPS:
        size = frame[2]
        at = 3
        if size >= 0x80:
            size = (size & 0x7F) | (frame[3] << 7) if frame[3] < 0x80 else -1
            at = 4
        if at + size == end:
            return bytes(frame[at:])
    return None


def decode_messages(frame: bytes) -> list[Message]:
    """Every message of one WebSocket frame, in order; raises `YjsMessageInvalid`.

    An awareness entry's state must be JSON (it is relayed to every client of
    the room, whose `JSON.parse` would throw on anything else).
    """
    update = update_of(frame)  # the common frame: one update of < 16 KiB
    if update is not None:
        return [SyncUpdate(update) if frame[1] == SYNC_UPDATE else SyncStep2(update)]
    data = memoryview(frame)
    messages: list[Message] = []
    at, end = 0, len(frame)
    if end == 0:
        raise YjsMessageInvalid("an empty frame")
    while at < end:
        kind, at = read_varuint(data, at)
        if kind == MESSAGE_SYNC:
            step, at = read_varuint(data, at)
            payload, at = _read_bytes(data, at)
            if step == SYNC_STEP1:
                messages.append(SyncStep1(payload))
            elif step == SYNC_STEP2:
                messages.append(SyncStep2(payload))
            elif step == SYNC_UPDATE:
                messages.append(SyncUpdate(payload))
            else:
                raise YjsMessageInvalid(f"unknown sync message {step}")
        elif kind == MESSAGE_AWARENESS:
            payload, at = _read_bytes(data, at)
            messages.append(AwarenessUpdate(decode_awareness(payload)))
        elif kind == MESSAGE_AUTH:
            what, at = read_varuint(data, at)
            text, at = _read_string(data, at)
            if what == AUTH_PERMISSION_DENIED:
                messages.append(PermissionDenied(text))
            elif what == AUTH_TOKEN:
                messages.append(AuthToken(text))
            else:
                raise YjsMessageInvalid(f"unknown auth message {what}")
        elif kind == MESSAGE_QUERY_AWARENESS:
            messages.append(QueryAwareness())
        else:
            raise YjsMessageInvalid(f"unknown message kind {kind}")
    return messages


def decode_awareness(payload: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness update's body; raises `YjsMessageInvalid`."""
    count, at = read_varuint(payload, 0)
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client, at = read_varuint(payload, at)
        clock, at = read_varuint(payload, at)
        state, at = _read_string(payload, at)
        try:
            msgspec.json.decode(state)
        except msgspec.DecodeError:
            raise YjsMessageInvalid(f"the awareness state of client {client} is not JSON") from None
        entries.append(AwarenessEntry(client, clock, state))
    if at != len(payload):
        raise YjsMessageInvalid("an awareness update has bytes after its last entry")
    return entries


# -- encoding ----------------------------------------------------------------------------


def _sync(step: int, payload: bytes) -> bytes:
    out = bytearray((MESSAGE_SYNC, step))
    _write_bytes(out, payload)
    return bytes(out)


def encode_sync_step1(state_vector: bytes) -> bytes:
    """Sync step 1 carrying `state_vector`."""
    return _sync(SYNC_STEP1, state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    """Sync step 2 carrying `update`."""
    return _sync(SYNC_STEP2, update)


def encode_sync_update(update: bytes) -> bytes:
    """A sync update message carrying `update`."""
    return _sync(SYNC_UPDATE, update)


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """One awareness message holding `entries` (states as JSON text)."""
    body = bytearray()
    write_varuint(body, len(entries))
    for entry in entries:
        write_varuint(body, entry.client)
        write_varuint(body, entry.clock)
        _write_bytes(body, entry.state.encode("utf-8"))
    out = bytearray((MESSAGE_AWARENESS,))
    _write_bytes(out, bytes(body))
    return bytes(out)


def encode_query_awareness() -> bytes:
    """A queryAwareness message."""
    return bytes((MESSAGE_QUERY_AWARENESS,))


def encode_permission_denied(reason: str) -> bytes:
    """An auth message: permission denied, because of `reason`."""
    out = bytearray((MESSAGE_AUTH, AUTH_PERMISSION_DENIED))
    _write_bytes(out, reason.encode("utf-8"))
    return bytes(out)


def encode_auth_token(token: str) -> bytes:
    """hybridbus's auth message carrying a credential (a client's first message)."""
    out = bytearray((MESSAGE_AUTH, AUTH_TOKEN))
    _write_bytes(out, token.encode("utf-8"))
    return bytes(out)
