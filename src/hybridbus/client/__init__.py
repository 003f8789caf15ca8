"""The Python client: `async with hybridbus.client.connect(url) as c: ...`.

`connect()` raises `ConnectFailed` at once if the first connection fails;
once connected, the client reconnects by itself with exponential backoff and
full jitter (logging each reconnect), resubscribes from each subscription's
last position, and retries in-flight publishes with the same event id (the
server dedupes them), so an application sees every event once, in order, or
an explicit `ContinuityLost`. A publish's ack (`PublishResult`) carries
`token`, the resume token right after the event; `publish_many` sends many
events in one frame (the server appends them in one commit). Given a
`TokenProvider` instead of a fixed token, it refreshes the token before it
expires and reconnects with a fresh one after a 4004 (TOKEN_EXPIRED).
`c.group(name, pattern, **settings)` joins a consumer group (`async for d in
g: ...; await d.ack()`, as in-process) and rejoins it as the same member
after a reconnect. `c.subscribe(pattern, filter=Filter(level="warn"))` has the
server send only what the filter lets through. `c.awareness(topic)` shows and follows
cursors and other ephemeral state; `c.state(topic)` and `c.patch(...)` keep a JSON document
changed by merge patches (`hybridbus.client.collab`, docs/collaboration.md).
`c.presence_watch(topic)` keeps a topic's members current and yields their
joins, leaves and degraded/active changes (`hybridbus.client.presence_watch`).
Imports `proto` and `core` only, never the server.
"""

from hybridbus.client.collab import AwarenessChange, ClientAwareness, ClientState, StateChange
from hybridbus.client.connection import Client, ClientConfig, TokenProvider, connect
from hybridbus.client.groups import ClientDelivery, ClientGroup
from hybridbus.client.presence_watch import ClientPresence, PresenceChange
from hybridbus.client.subscription import ClientSubscription, Filter
from hybridbus.errors import ConnectFailed
from hybridbus.proto.client import HistoryPage, Received
from hybridbus.proto.frames import PublishResult

__all__ = [
    "AwarenessChange",
    "Client",
    "ClientAwareness",
    "ClientConfig",
    "ClientDelivery",
    "ClientGroup",
    "ClientPresence",
    "ClientState",
    "ClientSubscription",
    "ConnectFailed",
    "Filter",
    "HistoryPage",
    "PresenceChange",
    "PublishResult",
    "Received",
    "StateChange",
    "TokenProvider",
    "connect",
]
