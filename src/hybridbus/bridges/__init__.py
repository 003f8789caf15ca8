"""Bridges: other systems (MQTT, Kafka, AMQP, the PostgreSQL audit sink) to and from the bus.

Each bridge is one `[[bridges]]` table of the settings file (`bridges.settings`),
run inside `hybridbus serve` or alone by `hybridbus bridge CONFIG`, by the
registry (`bridges.registry.Bridges`). The framework (`bridges.base`) holds
what every kind shares: the "out" side as a consumer group member that acks
an event once the other system confirmed it, the "in" side as batched durable
appends acknowledged to the other system only afterwards, the state and
counters `/v1/bridges` and `/metrics` show. Pure mapping (CloudEvents
bindings, topic templates, wrapping) is in `core.bindings`. This package sits
between the server and the hub: it uses the bus, never a gateway or the server.
See docs/bridges.md.
"""
