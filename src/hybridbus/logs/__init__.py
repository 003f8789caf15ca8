"""Live logs: ship log records to `logs/<service>/<instance>` on the bus (docs/logs.md).

`Handler` plugs into Python's `logging`, `ShipToBus` into structlog
(`hybridbus.logs.structlog_processor`), and both hand records to a `Shipper`:
a bounded queue that never blocks the application, a background thread that
batches, retries and reconnects. Records become `log` CloudEvents
(`hybridbus.core.logs`). Transports (WebSocket, gRPC, HTTP, file) and
formatters (JSON, Protobuf, RFC 5424 syslog, plain) are plug-ins
(`hybridbus.logs.plugins`): third-party ones load from the entry point
groups `hybridbus.log_transports` and `hybridbus.log_formatters`.
A client of the bus like `hybridbus.changes`: it imports the Python client,
core and the generated gRPC messages, never the server.
"""

from hybridbus.core.logs import LEVELS, LogRecord, log_topic, record_from_line
from hybridbus.logs.formatters import Formatter
from hybridbus.logs.handler import Handler
from hybridbus.logs.plugins import formatter, transport
from hybridbus.logs.shipper import Shipper
from hybridbus.logs.transports import Rejected, Transport

__all__ = [
    "LEVELS",
    "Formatter",
    "Handler",
    "LogRecord",
    "Rejected",
    "Shipper",
    "Transport",
    "formatter",
    "log_topic",
    "record_from_line",
    "transport",
]
