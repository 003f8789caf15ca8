"""W3C Trace Context in an event: the CloudEvents Distributed Tracing extension, parsed.

Owns: reading and writing the `traceparent` header value (W3C Trace Context,
version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), the
cheap "is it sampled" check the hot paths make, and the names of the two
extension attributes (`traceparent`, `tracestate`) an event carries them in.
Must not do I/O nor know any tracing library: the server's OpenTelemetry
edge (`server.tracing`) turns these into its span contexts.

A value that is not a valid version-00 `traceparent` (a trace id or parent id
of all zeros included) parses to None: W3C says to ignore it and start a new
trace. A later version's value is read by its first four fields, as W3C asks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, NamedTuple

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "TraceParent",
    "format_traceparent",
    "parse_traceparent",
    "sampled",
    "trace_headers",
]

# The extension attributes of the CloudEvents Distributed Tracing extension
# (and the HTTP headers of W3C Trace Context).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

_VALUE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?",
)
_SAMPLED: Final = 0x01
_ODD: Final = frozenset("13579bdf")  # the last hex digit of flags with the sampled bit


class TraceParent(NamedTuple):
    """A parsed `traceparent`: ids as integers, and the trace flags."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        """The `sampled` flag: the caller recorded its span (and asks us to)."""
        return bool(self.flags & _SAMPLED)

    def __str__(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)


def parse_traceparent(value: object) -> TraceParent | None:
    """The `traceparent` in `value`, or None when it is not one (W3C: start a new trace)."""
    if type(value) is not str or len(value) < 55:
        return None
    found = _VALUE.fullmatch(value.strip())
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """The version-00 `traceparent` of a span."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def sampled(value: object) -> bool:
    """Whether `value` is a `traceparent` with the sampled flag (the hot paths' cheap check).

    Looks at the flags only (a valid value ends in them when its version is
    00); `parse_traceparent` checks the rest when a span is made.
    """
    return type(value) is str and len(value) == 55 and value[54] in _ODD


def trace_headers(extensions: Mapping[str, object]) -> dict[str, str]:
    """The W3C headers carrying an event's `traceparent` (and `tracestate`) extension.

    Empty when it has no valid `traceparent`: an outbound request then carries none.
    """
    parent = extensions.get(TRACEPARENT) if extensions else None
    if parse_traceparent(parent) is None:
        return {}
    headers = {TRACEPARENT: str(parent)}
    state = extensions.get(TRACESTATE)
    if type(state) is str and state:
        headers[TRACESTATE] = state
    return headers
