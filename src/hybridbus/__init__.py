"""hybridbus: a real-time event hub for collaborative applications.

async with hybridbus.open("sqlite:///var/lib/hybridbus") as bus:
    ack = await bus.publish("acme/docs/42", event)
    async with bus.subscribe("acme/docs/+", since=token) as sub:
        async for delivery in sub: ...
"""

from hybridbus.app import open
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Position
from hybridbus.engine.base import EngineConfig
from hybridbus.errors import BusError
from hybridbus.hub.bus import Bus, BusConfig, History
from hybridbus.hub.subscription import Subscription

__all__ = [
    "Ack",
    "Bus",
    "BusConfig",
    "BusError",
    "Delivery",
    "EngineConfig",
    "Event",
    "History",
    "Position",
    "Subscription",
    "open",
]
