"""The gRPC gateway's messages: CloudEvents in protobuf, acks, deliveries, statuses.

Owns: loading the code generated from protos/ (`grpc_gen`, built by
`make grpc`: a clear error when it is missing), converting an `Event` to and
from `io.cloudevents.v1.CloudEvent` (the CloudEvents Protobuf Event Format;
docs/grpc.md, "Events"), building the `hybridbus.v1` messages of acks and
deliveries with their resume tokens, reading requests (one that does not parse
is `Malformed`, refused 1000 by its call), and the table from a `BusError` to a
gRPC status code and its trailing metadata. Must not do I/O, serve calls nor
decide who may do what (`gateways.grpc` does, through the guard).

Every message of the generated modules is typed `Any` here (they are not
type-checked): these functions are the typed edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Final

import grpc
import msgspec
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from hybridbus.core.codecs import is_json_content_type
from hybridbus.core.event import Event, event_from_dict
from hybridbus.core.log import Ack, Delivery, Position
from hybridbus.errors import (
    BusClosed,
    BusError,
    EngineUnavailable,
    ErrorCode,
    Forbidden,
    InvalidEvent,
    InvalidInput,
    LimitExceeded,
    RateLimited,
    Revoked,
    SubscriptionEnded,
    TooManyRevocations,
    Unauthorized,
    public_message,
)

__all__ = [
    "CODE_KEY",
    "INDEX_KEY",
    "RETRIABLE_KEY",
    "Malformed",
    "Tokens",
    "ack_message",
    "cloudevent_of",
    "delivery_message",
    "event_of",
    "generated",
    "message_of",
    "parsed",
    "request_parser",
    "status_of",
    "trailers_of",
]

CODE_KEY: Final = "hybridbus-code"
RETRIABLE_KEY: Final = "hybridbus-retriable"
INDEX_KEY: Final = "hybridbus-index"

_INT32: Final = range(-(2**31), 2**31)
# Attributes a CloudEvent message carries in fields of their own, never in its map.
_FIELDS: Final = frozenset({"id", "source", "specversion", "type", "data", "data_base64"})
_TEXT_ATTRIBUTES: Final = (
    "subject",
    "datacontenttype",
    "tenantid",
    "appid",
    "partitionkey",
    "sequence",
)
_json = msgspec.json.Encoder()
_json_any = msgspec.json.Decoder()

# A BusError class -> the status answering it, most specific first (docs/grpc.md).
_STATUS: Final[tuple[tuple[type[BusError], grpc.StatusCode], ...]] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Revoked, grpc.StatusCode.PERMISSION_DENIED),  # good credentials, withdrawn
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (TooManyRevocations, grpc.StatusCode.FAILED_PRECONDITION),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SubscriptionEnded, grpc.StatusCode.ABORTED),  # resubscribe from the last token
    (BusClosed, grpc.StatusCode.UNAVAILABLE),
    (EngineUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def generated() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The generated modules (bus_pb2, bus_pb2_grpc, cloudevents_pb2), or `InvalidInput`."""
    try:
        from hybridbus.gateways.grpc_gen import bus_pb2, bus_pb2_grpc, cloudevents_pb2
    except ImportError as exc:
        raise InvalidInput(
            "grpc_port is set but the gRPC code generated from protos/ is missing "
            f"({exc}): run `make grpc` (pip install -e '.[grpc,grpc-build]' and "
            "python scripts/build_grpc.py)"
        ) from exc
    return bus_pb2, bus_pb2_grpc, cloudevents_pb2


_bus, _, _ce = generated()
_CloudEvent: Final[Callable[..., Any]] = _ce.CloudEvent
_Value: Final[Callable[..., Any]] = _ce.CloudEvent.CloudEventAttributeValue
_Ack: Final[Callable[..., Any]] = _bus.Ack
_Delivery: Final[Callable[..., Any]] = _bus.Delivery


# -- requests -------------------------------------------------------------------------------


class Malformed:
    """A request message that does not parse: its call answers `error` (1000).

    grpc's own deserializer would raise, and grpc end the call UNKNOWN,
    logging a servicer failure.
    """

    __slots__ = ("error",)

    def __init__(self, kind: str, exc: Exception) -> None:
        self.error = InvalidInput(f"a {kind} message that does not parse: {exc}")


def request_parser(message: Any) -> Callable[[bytes], Any]:
    """`message.FromString` (a generated message class), answering `Malformed` for bytes
    that do not parse instead of raising."""
    parse = message.FromString
    kind = message.DESCRIPTOR.name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(kind, exc)

    return deserialize


def parsed(request: Any) -> Any:
    """`request`, or its `InvalidInput` (1000) raised if it did not parse."""
    if isinstance(request, Malformed):
        raise request.error
    return request


# -- statuses -------------------------------------------------------------------------------


def status_of(error: BusError | None) -> grpc.StatusCode:
    """The gRPC status code answering `error` (None: an unexpected failure, INTERNAL)."""
    if error is not None:
        for cls, status in _STATUS:
            if isinstance(error, cls):
                return status
    return grpc.StatusCode.INTERNAL


def message_of(error: BusError | None) -> str:
    """The status's details: what a peer may learn (server-side failures stay in the log)."""
    if error is None:
        return "internal error; the details are in the server's log"
    return public_message(error)


def trailers_of(error: BusError | None, **more: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refusal: its code, whether to retry, and `more`.

    `retry-after` (whole seconds) when over a rate, as HTTP's header.
    """
    if error is None:
        code, retriable = int(ErrorCode.INTERNAL_ERROR), True
    else:
        code, retriable = int(error.code), error.retriable
    pairs = [(CODE_KEY, str(code)), (RETRIABLE_KEY, "true" if retriable else "false")]
    if isinstance(error, RateLimited):
        pairs.append(("retry-after", str(max(1, math.ceil(error.retry_after)))))
    attribute = getattr(error, "attribute", None)
    if isinstance(attribute, str):
        pairs.append(("hybridbus-attribute", attribute))
    pairs.extend(more.items())
    return tuple(pairs)


# -- events ---------------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value.seconds), UTC).replace(microsecond=value.nanos // 1000)


def _attribute(name: str, value: Any) -> object:
    """The Python value of one attribute of the map, by the CloudEvents type it has."""
    kind = value.WhichOneof("attr")
    if kind is None:
        raise InvalidEvent(f"attribute {name} has no value", attribute=name)
    if kind == "ce_bytes":
        raise InvalidEvent(
            f"attribute {name}: Binary attributes are not supported (send base64 in ce_string)",
            attribute=name,
        )
    if kind == "ce_timestamp":
        return _timestamp(value.ce_timestamp)
    got: object = getattr(value, kind)
    return got


def event_of(message: Any) -> Event:
    """The `Event` of a `CloudEvent` message, checked as every codec checks one.

    Raises `InvalidEvent` naming the attribute. `text_data` is JSON when the
    content type is JSON or absent (text if it does not parse, then), text
    otherwise; `binary_data` is bytes; `proto_data` becomes bytes too, with
    `datacontenttype` application/protobuf and the message's type URL as
    `dataschema` unless they are given.
    """
    fields: dict[str, Any] = {
        "id": message.id,
        "source": message.source,
        "specversion": message.spec_version,
        "type": message.type,
    }
    for name, value in message.attributes.items():
        if name in _FIELDS:
            raise InvalidEvent(
                f"attribute {name} has a field of its own, not a place in `attributes`",
                attribute=name,
            )
        fields[name] = _attribute(name, value)
    if "lamport" in fields and isinstance(fields["lamport"], str):
        lamport = fields["lamport"]
        if not (lamport.isascii() and lamport.isdigit()):
            raise InvalidEvent("lamport must be a non-negative integer", attribute="lamport")
        fields["lamport"] = int(lamport)
    kind = message.WhichOneof("data")
    content_type = fields.get("datacontenttype")
    if kind == "binary_data":
        fields["data"] = bytes(message.binary_data)
    elif kind == "proto_data":
        fields["data"] = bytes(message.proto_data.value)
        fields.setdefault("datacontenttype", "application/protobuf")
        if message.proto_data.type_url:
            fields.setdefault("dataschema", message.proto_data.type_url)
    elif kind == "text_data":
        text: str = message.text_data
        if not isinstance(content_type, str) or is_json_content_type(content_type):
            try:
                fields["data"] = _json_any.decode(text)
            except msgspec.DecodeError as exc:
                if content_type is not None:
                    raise InvalidEvent(f"text_data is not JSON: {exc}", attribute="data") from exc
                fields["data"] = text  # no content type said JSON: plain text
            except RecursionError as exc:
                raise InvalidEvent("data nests too deep", attribute="data") from exc
        else:
            fields["data"] = text
    return event_from_dict(fields)


def _value(value: object) -> Any:
    if isinstance(value, bool):
        return _Value(ce_boolean=value)
    if isinstance(value, int):
        # lamport may be past an Integer's range: as text then (read back either way)
        return _Value(ce_integer=value) if value in _INT32 else _Value(ce_string=str(value))
    if isinstance(value, datetime):
        stamp = _Value()
        stamp.ce_timestamp.FromDatetime(value)
        return stamp
    return _Value(ce_string=str(value))


def cloudevent_of(event: Event) -> Any:
    """The `CloudEvent` message of `event` (the inverse of `event_of`)."""
    attributes: dict[str, Any] = {}
    for name in _TEXT_ATTRIBUTES:
        text = getattr(event, name)
        if text is not None:
            attributes[name] = _Value(ce_string=text)
    if event.dataschema is not None:
        attributes["dataschema"] = _Value(ce_uri=event.dataschema)
    for name in ("time", "expirytime", "lamport"):
        value = getattr(event, name)
        if value is not None:
            attributes[name] = _value(value)
    for name, extension in event.extensions.items():
        attributes[name] = _value(extension)
    message = _CloudEvent(
        id=event.id,
        source=event.source,
        spec_version=event.specversion,
        type=event.type,
        attributes=attributes,
    )
    data = event.data
    if isinstance(data, bytes):
        message.binary_data = data
    elif isinstance(data, str) and not is_json_content_type(event.datacontenttype):
        message.text_data = data
    elif data is not None:
        message.text_data = _json.encode(data).decode()
    return message


# -- acks and deliveries -------------------------------------------------------------------


def ack_message(ack: Ack) -> Any:
    """The `Ack` message of an ack, with its resume token."""
    return _Ack(
        topic=ack.topic,
        offset=ack.offset,
        shard=ack.shard,
        position=ack.position,
        epoch=ack.epoch,
        duplicate=ack.duplicate,
        token=str(ack.token),
    )


class Tokens:
    """The resume token after each delivery of a stream or page that starts at `start`.

    As the SSE gateway's ids: the last position handed out in each shard.
    """

    __slots__ = ("_epoch", "_positions")

    def __init__(self, start: Position) -> None:
        self._epoch = start.epoch + "-"
        self._positions = list(start.positions)

    def after(self, delivery: Delivery) -> str:
        positions = self._positions
        if len(positions) == 1:
            return self._epoch + str(delivery.position)
        positions[delivery.shard] = delivery.position
        return self._epoch + ".".join(map(str, positions))


def delivery_message(delivery: Delivery, token: str) -> Any:
    """The `Delivery` message of a delivery, `token` the resume token after it."""
    return _Delivery(
        topic=delivery.topic,
        offset=delivery.offset,
        shard=delivery.shard,
        position=delivery.position,
        token=token,
        event=cloudevent_of(delivery.event),
    )
