"""What a bridge is, as the `[[bridges]]` tables of the settings file say: a struct per kind.

Owns: the settings of every bridge kind (a tagged union on `kind`), their
defaults and checks, and the consumer-group settings an "out" bridge runs
with. Must not import a broker's client library nor do I/O: `server.config`
reads these structs with the rest of the file, and a bridge kind's module
(`bridges.mqtt`, `bridges.postgres`, ...) is imported only when a bridge of
that kind starts.

One table is one bridge: one `kind` and one `direction`. `"in"` takes
messages of the other system onto bus topics, `"out"` takes the events of
a bus pattern to the other system (a consumer group `bridge.<name>` in the
pattern's tenant). A system bridged both ways takes two tables. Adding a
kind: a struct here (a subclass of `BridgeSettings` with `tag="<kind>"`,
added to `AnyBridge`), a module `bridges/<kind>.py` with a `make(settings,
bus)` and its line in `bridges.registry.KINDS` (docs/bridges.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

from hybridbus.core.bindings import TopicTemplate, Wrap
from hybridbus.core.group_settings import GroupSettings, Redelivery
from hybridbus.core.topics import is_pattern, tenant_of, validate_pattern, validate_topic
from hybridbus.errors import InvalidPattern, InvalidTopic

__all__ = [
    "BROKER_PLACEHOLDERS",
    "BUS_PLACEHOLDERS",
    "DOTTED_PLACEHOLDERS",
    "AmqpBinding",
    "AmqpBridge",
    "AmqpWrap",
    "AnyBridge",
    "BridgeSettings",
    "KafkaBridge",
    "KafkaWrap",
    "MqttBridge",
    "PostgresBridge",
    "group_name",
]

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
Direction = Literal["in", "out"]
# What an "in" bridge's bus topic template may use: the other system's topic (or queue).
BUS_PLACEHOLDERS: Final = ("topic",)
# What an "out" bridge's topic template for the other system may use.
BROKER_PLACEHOLDERS: Final = ("topic", "relative", "tenant", "type", "subject", "source")
# Kafka and AMQP add `{dotted}`: the bus topic without its tenant, '/' replaced by '.'
# (a Kafka topic name has no '/', an AMQP topic exchange splits routing keys on '.').
DOTTED_PLACEHOLDERS: Final = (*BROKER_PLACEHOLDERS, "dotted")


_DEFAULT_WRAP: Final = Wrap()


def group_name(name: str) -> str:
    """The consumer group an "out" bridge runs as, in its pattern's tenant."""
    return f"bridge.{name}"


class BridgeSettings(
    msgspec.Struct, tag_field="kind", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """What every bridge has; the kind's subclass adds its own.

    In ("in"): `topic` is the bus topic a message goes to, a template whose
    `{topic}` is the message's topic on the other system (its first segment
    must be a literal tenant); `wrap` turns messages that are not
    CloudEvents into events (`true`: the default rule, `false`: they are
    rejected; `wrapper` is the rule or None); `rejected`, a bus
    topic, takes each rejected message wrapped with the reason (none: it is
    dropped, logged and counted); `batch` is the most messages appended in
    one write.

    Out ("out"): `pattern` is the bus pattern whose events go out (tenant
    first, literal); the group `bridge.<name>` hands them out (`start`,
    `ordered` per `partitionkey` else topic, `concurrency` in flight,
    `ack_wait`, `max_deliveries`, `redelivery`); an event is acked once the
    other system confirmed it, nacked with the group's backoff on failure,
    and a dead letter after `max_deliveries`.
    """

    name: Name
    direction: Direction
    enabled: bool = True
    # -- in --
    topic: str | None = None
    wrap: Wrap | bool = True
    rejected: str | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # -- out --
    pattern: str | None = None
    start: str = "latest"
    ordered: bool = True
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    ack_wait: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    max_deliveries: Annotated[int, msgspec.Meta(ge=1)] = 10
    redelivery: Redelivery = Redelivery(base=1.0, factor=2.0, max=60.0)

    def __post_init__(self) -> None:
        if self.direction == "in":
            if self.topic is None:
                raise ValueError(f"bridge {self.name!r}: an 'in' bridge needs topic")
            template = TopicTemplate(self.topic, BUS_PLACEHOLDERS, f"bridge {self.name!r}: topic")
            head = self.topic.split("/", 1)[0]
            if "{" in head or not head:
                raise ValueError(
                    f"bridge {self.name!r}: topic must start with a literal tenant, "
                    f"not {self.topic!r:.80}"
                )
            _check_topic(template.render({"topic": "x"}), f"bridge {self.name!r}: topic")
            if self.rejected is not None:
                _check_topic(self.rejected, f"bridge {self.name!r}: rejected")
        else:
            if self.pattern is None:
                raise ValueError(f"bridge {self.name!r}: an 'out' bridge needs pattern")
            try:
                validate_pattern(self.pattern)
            except InvalidPattern as exc:
                raise ValueError(f"bridge {self.name!r}: pattern: {exc}") from None
            if is_pattern(tenant_of(self.pattern)) or self.pattern.startswith("$"):
                raise ValueError(
                    f"bridge {self.name!r}: pattern must start with a literal tenant, "
                    f"not {self.pattern!r:.80}"
                )

    @property
    def wrapper(self) -> Wrap | None:
        """The wrap rule of an "in" bridge, or None if messages must be CloudEvents."""
        if isinstance(self.wrap, Wrap):
            return self.wrap
        return _DEFAULT_WRAP if self.wrap else None

    @property
    def kind(self) -> str:
        """The kind's tag (`mqtt`, `postgres`, ...)."""
        tag = type(self).__struct_config__.tag
        return str(tag)

    def group_settings(self) -> GroupSettings:
        """The settings of the consumer group an "out" bridge runs as."""
        assert self.pattern is not None
        return GroupSettings(
            pattern=self.pattern,
            start=self.start,
            ack_wait=self.ack_wait,
            redelivery=self.redelivery,
            max_deliveries=self.max_deliveries,
            ordered=self.ordered,
            member_in_flight=self.concurrency,
            max_in_flight=max(self.concurrency, 1000),
        )

    def shown(self) -> dict[str, Any]:
        """The settings as `/v1/bridges` shows them: secrets (passwords in URLs) left out."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        for key in ("url", "password"):
            if isinstance(out.get(key), str):
                out[key] = _without_password(out[key]) if key == "url" else "***"
        return out


def _check_topic(topic: str, what: str) -> None:
    try:
        validate_topic(topic)
    except InvalidTopic as exc:
        raise ValueError(f"{what}: {exc}") from None


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class MqttBridge(BridgeSettings, tag="mqtt", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An MQTT bridge (docs/bridges.md, "MQTT"): QoS 1, a persistent session.

    `url` is `mqtt://[user:password@]host[:port]` (`mqtts://` for TLS);
    `protocol` is `"5"` (binary mode: attributes in user properties, or
    structured) or `"3.1.1"` (structured JSON only). The session is kept by
    the broker `session_expiry` seconds after the bridge disconnects, under
    `client_id` (default `hybridbus-<name>`): what was published meanwhile
    waits for it. In: `subscribe` lists MQTT topic filters. Out:
    `mqtt_topic` is the template of the MQTT topic (`{relative}`: the bus
    topic without its tenant), `mode` binary or structured, `retain`.
    `receive_maximum` bounds the messages the broker sends before the bridge
    acknowledges them (in), `max_inflight` the publishes awaiting PUBACK (out).
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^mqtts?://\S+$")]
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    session_expiry: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 86400
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=65535)] = 30
    subscribe: list[str] = msgspec.field(default_factory=list)
    mqtt_topic: str = "{relative}"
    mode: Literal["binary", "structured"] = "binary"
    retain: bool = False
    receive_maximum: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction == "in":
            if not self.subscribe:
                raise ValueError(f"bridge {self.name!r}: an MQTT 'in' bridge needs subscribe")
            for mqtt_filter in self.subscribe:
                try:
                    validate_pattern(mqtt_filter)
                except InvalidPattern as exc:
                    raise ValueError(f"bridge {self.name!r}: subscribe: {exc}") from None
        else:
            TopicTemplate(self.mqtt_topic, BROKER_PLACEHOLDERS, f"bridge {self.name!r}: mqtt_topic")
            if self.protocol == "3.1.1" and self.mode == "binary":
                raise ValueError(
                    f"bridge {self.name!r}: MQTT 3.1.1 has no user properties: "
                    "set mode = 'structured' (binary mode needs protocol '5')"
                )

    @property
    def session_id(self) -> str:
        """The MQTT client id the session is kept under."""
        return self.client_id or f"hybridbus-{self.name}"


class PostgresBridge(
    BridgeSettings, tag="postgres", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """The PostgreSQL audit sink (docs/bridges.md, "PostgreSQL"): "out" only.

    The events of `patterns` (absolute; every tenant's with `+/#`) go into
    `table` in `schema`: a column per CloudEvents attribute, `data` as
    `jsonb` (binary data as a base64 string, `data_base64` true) or `bytea`
    (the payload as binary mode sends it), upserted by (`source`, `id`), in
    transactions of up to `batch` rows that also store the bridge's position
    in the log (table `<table>_positions`): exactly once into the table.
    Rows that fail go to `<table>_dead` with the error. `start` is where a
    new sink begins: `"earliest"` (every retained event) or `"latest"`.
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^postgres(ql)?://\S+$")]
    patterns: list[str] = msgspec.field(default_factory=list)
    table: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,40}$")] = "hybridbus_events"
    schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "public"
    data: Literal["jsonb", "bytea"] = "jsonb"
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    start: str = "earliest"
    direction: Direction = "out"

    def __post_init__(self) -> None:
        if self.direction != "out":
            raise ValueError(f"bridge {self.name!r}: the PostgreSQL sink is 'out' only")
        if not self.patterns:
            raise ValueError(f"bridge {self.name!r}: a PostgreSQL sink needs patterns")
        for pattern in self.patterns:
            try:
                validate_pattern(pattern)
            except InvalidPattern as exc:
                raise ValueError(f"bridge {self.name!r}: patterns: {exc}") from None
        if self.start not in ("earliest", "latest"):
            raise ValueError(f"bridge {self.name!r}: start is 'earliest' or 'latest'")


class KafkaWrap(Wrap, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The wrap rule of a Kafka "in" bridge: as `Wrap`, but `id` defaults to `"position"`.

    A record's `<topic>-<partition>-<offset>` is unique and the same on every
    redelivery, so a record read again after a crash is dropped by the bus's dedupe.
    """

    id: str = "position"


class KafkaBridge(
    BridgeSettings, tag="kafka", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """A Kafka bridge (docs/bridges.md, "Kafka"), aiokafka, CloudEvents Kafka binding.

    `url` is `kafka://host:port[,host:port...]` (`kafka+ssl://` for TLS): the
    bootstrap servers. In: `topics` (names) or `topics_regex` (a regex of
    names), read in the consumer group `group_id` (default
    `hybridbus-<name>`), from `offset_reset` where the group has no offset;
    offsets are committed only after the durable append. Out: `kafka_topic`
    is the template of the topic produced to (`{dotted}`: the bus topic
    without its tenant, dots for slashes), `mode` binary (`ce_` headers) or
    structured; the producer is idempotent with `acks=all`, the record key
    is the event's `partitionkey`, else its bus topic.
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^kafka(\+ssl)?://[^/\s]+/?$")]
    client_id: str | None = None
    wrap: KafkaWrap | bool = True
    # -- in --
    topics: list[str] = msgspec.field(default_factory=list)
    topics_regex: str | None = None
    group_id: str | None = None
    offset_reset: Literal["earliest", "latest"] = "earliest"
    # -- out --
    kafka_topic: str | None = None
    mode: Literal["binary", "structured"] = "binary"
    linger_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f"bridge {self.name!r}"
        if self.direction == "in":
            if bool(self.topics) == (self.topics_regex is not None):
                raise ValueError(f"{what}: a Kafka 'in' bridge needs topics or topics_regex")
            for name in self.topics:
                if not _KAFKA_TOPIC.match(name):
                    raise ValueError(f"{what}: topics: {name!r:.80} is not a Kafka topic name")
            if self.topics_regex is not None:
                try:
                    re.compile(self.topics_regex)
                except re.error as exc:
                    raise ValueError(f"{what}: topics_regex: {exc}") from None
        else:
            if self.kafka_topic is None:
                raise ValueError(f"{what}: a Kafka 'out' bridge needs kafka_topic")
            TopicTemplate(self.kafka_topic, DOTTED_PLACEHOLDERS, f"{what}: kafka_topic")

    @property
    def wrapper(self) -> Wrap | None:
        if isinstance(self.wrap, Wrap):
            return self.wrap
        return _KAFKA_WRAP if self.wrap else None

    @property
    def consumer_group(self) -> str:
        """The Kafka consumer group an "in" bridge reads in."""
        return self.group_id or f"hybridbus-{self.name}"

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers, `host:port` each."""
        rest = self.url.partition("://")[2].rstrip("/")
        return [server for server in rest.split(",") if server]


_KAFKA_TOPIC: Final = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
_KAFKA_WRAP: Final = KafkaWrap()


class AmqpWrap(Wrap, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The wrap rule of an AMQP "in" bridge: `id` defaults to the `message_id` property
    (the hash of the routing key and body when a message has none)."""

    id: str = "property:message_id"


class AmqpBinding(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A binding an AMQP "in" bridge makes for each queue it declares."""

    exchange: str
    routing_key: str = "#"


class AmqpBridge(BridgeSettings, tag="amqp", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An AMQP 0-9-1 bridge (docs/bridges.md, "AMQP"), aio-pika, CloudEvents AMQP binding.

    `url` is `amqp://user:password@host:port/vhost` (`amqps://` for TLS).
    In: `queues` consumed with manual acknowledgements, at most `prefetch`
    unacknowledged at once; with `declare` they are declared durable (and
    bound by `bindings`), else they must exist. Out: each event is published
    to `exchange` with the routing key `routing_key` (a template), with
    publisher confirms; `mandatory` makes an unroutable message come back,
    and it becomes a dead letter. `mode` binary (attributes as headers named
    `prefix` + attribute) or structured; `persistent` sets delivery mode 2.
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^amqps?://\S+$")]
    wrap: AmqpWrap | bool = True
    # -- in --
    queues: list[str] = msgspec.field(default_factory=list)
    declare: bool = True
    bindings: list[AmqpBinding] = msgspec.field(default_factory=list)
    prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    # -- out --
    exchange: str | None = None
    routing_key: str = "{dotted}"
    mode: Literal["binary", "structured"] = "binary"
    prefix: Literal["cloudEvents:", "cloudEvents_", "ce-"] = "cloudEvents:"
    mandatory: bool = True
    persistent: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f"bridge {self.name!r}"
        if self.direction == "in":
            if not self.queues:
                raise ValueError(f"{what}: an AMQP 'in' bridge needs queues")
            for queue in self.queues:
                if not 0 < len(queue.encode()) <= 255:
                    raise ValueError(f"{what}: queues: {queue!r:.80} is not a queue name")
            if self.bindings and not self.declare:
                raise ValueError(f"{what}: bindings are made for declared queues (declare = true)")
        else:
            if self.exchange is None:
                raise ValueError(f"{what}: an AMQP 'out' bridge needs exchange ('' is the default)")
            TopicTemplate(self.routing_key, DOTTED_PLACEHOLDERS, f"{what}: routing_key")

    @property
    def wrapper(self) -> Wrap | None:
        if isinstance(self.wrap, Wrap):
            return self.wrap
        return _AMQP_WRAP if self.wrap else None


_AMQP_WRAP: Final = AmqpWrap()

# Every kind, for `server.config` (a table's `kind` picks one).
AnyBridge = MqttBridge | PostgresBridge | KafkaBridge | AmqpBridge
