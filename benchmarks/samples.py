"""The events the benchmarks use: a small one (~150 bytes) and a ~1 KB one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from hybridbus import Event

__all__ = ["KB_ATTRIBUTES", "KB_DATA", "WHEN", "kb_event", "small_event"]

WHEN: Final = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def small_event(publisher: int, seq: int) -> Event:
    """A ~150-byte event (MessagePack, as the log stores it; ~230 bytes as JSON).

    `publisher` + `seq` make the id unique, so dedupe never short-circuits.
    """
    return Event(
        id=f"{publisher:03d}-{seq:09d}",
        source="/bench/publisher",
        type="com.acme.doc.edited",
        subject=f"doc-{publisher}",
        time=WHEN,
        data={"doc": publisher, "seq": seq, "op": "insert", "at": 42, "text": "hello, world"},
    )


# A ~1 KB event: every common attribute, hybridbus's typed extensions, and a
# JSON document edit as data. No free-form extension (see docs/benchmarks.md).
KB_ATTRIBUTES: Final[dict[str, Any]] = {
    "specversion": "1.0",
    "id": "5f0c6a1e-8d2b-4c1a-9a57-0b9a2f6c3d41",
    "source": "https://docs.acme.example/collab/editor",
    "type": "com.acme.docs.document.edited",
    "subject": "documents/doc-4242/sections/7",
    "time": "2025-01-02T03:04:05.678Z",
    "datacontenttype": "application/json",
    "tenantid": "acme",
    "appid": "docs",
    "partitionkey": "doc-4242",
    "sequence": "000000001234",
}
KB_DATA: Final[dict[str, Any]] = {
    "document": "doc-4242",
    "revision": 1234,
    "author": {"id": "user-17", "name": "Ann Example", "color": "#3366ff"},
    "ops": [
        {"op": "retain", "count": 120 + k, "attributes": {"bold": k % 2 == 0}}
        if k % 3 == 0
        else {"op": "insert", "text": f"collaborative editing paragraph {k}", "at": 40 * k}
        for k in range(8)
    ],
    "cursor": {"anchor": 512, "head": 530},
    "clientTime": 1735787045.678,
}


def kb_event() -> Event:
    """The ~1 KB event (about 1,000 bytes as CloudEvents JSON)."""
    attributes = {k: v for k, v in KB_ATTRIBUTES.items() if k not in ("specversion", "time")}
    return Event(
        **attributes,
        time=datetime.fromisoformat(KB_ATTRIBUTES["time"]),
        data=KB_DATA,
    )
