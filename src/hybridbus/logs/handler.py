"""`Handler`: a `logging.Handler` that ships Python log records to the bus.

Owns: turning a `logging.LogRecord` into a `LogRecord` (level, logger name,
message, time, `exc_info` and `stack_info`, `extra` as fields, OpenTelemetry
trace and span ids) and handing it to a `Shipper`. Must not block nor raise
into the application: `emit` only queues, and a record that cannot be turned
into a log record is shipped as its raw text.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from typing import Any, Final

import msgspec

from hybridbus.core.logs import LogRecord, normalize_level, rfc3339
from hybridbus.errors import InvalidInput
from hybridbus.logs.plugins import transport as transport_for
from hybridbus.logs.shipper import Processor, Shipper
from hybridbus.logs.transports import Transport

__all__ = ["Handler", "default_instance", "from_logging"]

# What every logging.LogRecord has: anything else on a record came from `extra`.
_STANDARD: Final = frozenset(
    logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None).__dict__
) | {"message", "asctime", "otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"}
_json = msgspec.json.Encoder()
_formatter = logging.Formatter()


def default_instance() -> str:
    """`<hostname>-<pid>`, with what a topic segment cannot hold replaced by `_`."""
    name = f"{socket.gethostname() or 'host'}-{os.getpid()}"
    return "".join("_" if c in "/+#" or not c.isprintable() or c.isspace() else c for c in name)


def _jsonable(value: Any) -> Any:
    try:
        _json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return repr(value)
    return value


def _otel_ids() -> tuple[str, str]:
    """The current OpenTelemetry span's ids, if OpenTelemetry is in use (never imported here)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return "", ""
    try:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}", f"{context.span_id:016x}"
    except Exception:  # noqa: BLE001 - a broken tracer must not break logging
        pass
    return "", ""


def from_logging(record: logging.LogRecord) -> LogRecord:
    """The log record for a `logging.LogRecord` (see the module docstring)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - bad format arguments: keep what there is
        message = f"{record.msg!s} {record.args!r}"
    try:
        level = normalize_level(record.levelno)
    except InvalidInput:
        level = "trace"  # NOTSET (0) or below
    fields = {
        key: _jsonable(value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }
    if record.exc_info:
        fields["exception"] = _formatter.formatException(record.exc_info)
    elif record.exc_text:
        fields["exception"] = record.exc_text
    if record.stack_info:
        fields["stack"] = record.stack_info
    trace_id = str(fields.pop("trace_id", "") or getattr(record, "otelTraceID", "") or "")
    span_id = str(fields.pop("span_id", "") or getattr(record, "otelSpanID", "") or "")
    if trace_id.strip("0") == "":  # OpenTelemetry's logging instrumentation says "0" for none
        trace_id = span_id = ""
    if not trace_id:
        trace_id, span_id = _otel_ids()
    return LogRecord(
        message=message,
        level=level,
        logger=record.name,
        fields=fields,
        trace_id=trace_id,
        span_id=span_id,
        time=rfc3339(record.created),
    )


class Handler(logging.Handler):
    """Ships the records it handles to `logs/<service>/<instance>` (docs/logs.md).

    `url` picks the transport (`ws://`, `grpc://`, `http://`, `file:///`, a
    plug-in's scheme; `hybridbus.logs.plugins.transport`), or is a
    `Transport` already made. `instance` defaults to `<hostname>-<pid>`.
    `token` authenticates; `tenant` is for HTTP and gRPC (absolute topics);
    `formatter` is for files; other `transport_options` go to the transport.
    `max_queue`, `batch`, `linger` and `processors` are the `Shipper`'s.
    `emit` never blocks nor raises; `close()` ships what is queued (for up to
    `close_timeout` seconds) and stops. `shipper` has the counters.
    """

    def __init__(
        self,
        url: str | Transport,
        *,
        service: str,
        instance: str | None = None,
        token: str | None = None,
        tenant: str | None = None,
        level: int | str = logging.NOTSET,
        max_queue: int = 10_000,
        batch: int = 500,
        linger: float = 0.05,
        processors: Processor | None = None,
        close_timeout: float = 5.0,
        **transport_options: Any,
    ) -> None:
        super().__init__(level)
        carrier = (
            url
            if not isinstance(url, str)
            else transport_for(url, token=token, tenant=tenant, **transport_options)
        )
        self.close_timeout = close_timeout
        self.shipper = Shipper(
            carrier,
            service=service,
            instance=instance or default_instance(),
            max_queue=max_queue,
            batch=batch,
            linger=linger,
            processors=processors,
        )
        self._sender = self.shipper.thread_id
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        # Records the shipper's own thread logs (its client reconnecting, say) would
        # feed themselves back: leave them to the other handlers.
        if threading.get_ident() == self._sender or getattr(self._inside, "on", False):
            return
        self._inside.on = True
        try:
            self.shipper.submit(from_logging(record))
        except Exception:  # noqa: BLE001 - never into the application
            self.shipper.dropped += 1
        finally:
            self._inside.on = False

    def flush(self) -> None:
        """Wait (up to `close_timeout` seconds) until what was handled so far is shipped."""
        self.shipper.flush(self.close_timeout)

    def close(self) -> None:
        try:
            self.shipper.close(self.close_timeout)
        finally:
            super().close()
