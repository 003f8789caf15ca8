"""`Shipper`: takes log records from any thread without blocking and ships them in batches.

Owns: the bounded queue (drop-oldest, counted, and reported later by one
`warn` record), the background thread running its own asyncio loop, batching
(up to `batch` records or `linger` seconds), the event ids that make a
retried batch land once (`<boot-id>-<seq>`, source `/logs/<service>/<instance>`),
retrying with backoff and reopening the transport, and `flush` / `close`.
Used by the logging `Handler`, the structlog processor and `hybridbus log`.
Must not format records nor know how they travel: transports do.

Theory of operation. `submit` appends to a deque under a lock held for a few
instructions (the sender holds it no longer, to take a batch), and wakes the
sender only when it sleeps: an application thread never waits on I/O. The
sender takes records in submission order, runs the optional processors
(`record -> record | None`), gives each an id and ships the batch; until
the transport says it is appended (or refused for good: `Rejected`), it
sends the same batch again, after a backoff delay, reopening the transport
first. One batch at a time: order per source holds across reconnects, and
the dedupe of `source` + `id` on the server keeps a resent batch from
appearing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Final

from hybridbus.core.backoff import Backoff
from hybridbus.core.event import Event
from hybridbus.core.logs import LogRecord, log_event, log_topic, rfc3339
from hybridbus.logs.transports import Rejected, Transport

__all__ = ["Processor", "Shipper"]

Processor = Callable[[LogRecord], LogRecord | None]

log = logging.getLogger(__name__)
_LOGGER: Final = "hybridbus.logs"


class Shipper:
    """Ships the records `submit`ted to `logs/<service>/<instance>` through `transport`.

    Counters (read them any time): `submitted`, `shipped` (appended, duplicates
    included), `dropped` (the queue was full: oldest first), `rejected` (the
    server refused them for good), `filtered` (a processor returned None),
    `processor_errors`, `retries`; `last_error` is the last failure's text.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        service: str,
        instance: str,
        max_queue: int = 10_000,
        batch: int = 500,
        linger: float = 0.05,
        processors: Processor | None = None,
        backoff: Backoff | None = None,
        send_timeout: float = 10.0,
    ) -> None:
        if max_queue < 1 or batch < 1 or linger < 0 or send_timeout <= 0:
            raise ValueError("max_queue and batch must be >= 1, linger >= 0, send_timeout > 0")
        self.topic = log_topic(service, instance)
        self.service = service
        self.instance = instance
        self.source = f"/logs/{service}/{instance}"
        self.boot = uuid.uuid4().hex[:16]
        self.transport = transport
        self.max_queue = max_queue
        self.batch = batch
        self.linger = linger
        self.processors = processors
        self.backoff = backoff or Backoff(base=0.05, cap=2.0)
        self.send_timeout = send_timeout
        self.submitted = self.shipped = self.dropped = self.rejected = 0
        self.filtered = self.processor_errors = self.retries = 0
        self.last_error = ""
        self._seq = 0
        self._done = 0  # records settled: shipped, rejected, dropped or filtered
        self._unreported = 0  # drops not yet told in a warn record
        self._queue: deque[tuple[LogRecord, float]] = deque()
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._sleeping = False
        self._closing = False
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._ready = threading.Event()
        self._note: tuple[LogRecord, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"hybridbus-shipper-{service}", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    @property
    def thread_id(self) -> int | None:
        """The sender thread's id (a logging handler ignores records it emits)."""
        return self._thread.ident

    @property
    def pending(self) -> int:
        """Records submitted and not settled yet."""
        with self._lock:
            return self.submitted - self._done

    def submit(self, record: LogRecord) -> None:
        """Queue `record`; never blocks. When the queue is full the oldest record is dropped."""
        now = time.time()
        with self._lock:
            if self._closed:
                self.submitted += 1
                self.dropped += 1
                self._done += 1
                return
            self.submitted += 1
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                self._unreported += 1
                self._done += 1
            self._queue.append((record, now))
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._loop.call_soon_threadsafe(self._wake.set)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record submitted so far is settled; True if all were, in time.

        Settled: shipped, refused by the server, dropped or filtered out —
        compare `dropped` and `rejected` before and after to know which.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self.submitted
            if self._sleeping and self._done < target:
                self._sleeping = False
                self._loop.call_soon_threadsafe(self._wake.set)
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._settled.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Ship what is queued (for up to `timeout` seconds), then stop; True if all was shipped.

        Records submitted afterwards are dropped. Idempotent.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("a Shipper cannot be closed from its own thread")
        shipped = self.flush(timeout)
        with self._lock:
            self._closing = self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._stop, shipped)
            self._thread.join(max(1.0, timeout))
        return shipped

    def _stop(self, shipped: bool) -> None:
        """In the sender thread: end at once if `close` gave up waiting, else once idle."""
        self._wake.set()
        if not shipped and self._task is not None:
            self._task.cancel()

    # -- the sender thread --------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._main())
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._ready.set()
        opened = False
        try:
            while True:
                taken = await self._take()
                if taken is None:
                    return
                events = self._events(taken)
                if events:
                    opened = await self._ship(events, opened)
                with self._lock:
                    self._done += len(taken)
                    self._settled.notify_all()
        finally:
            if opened:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.transport.close(), 5.0)

    async def _take(self) -> list[tuple[LogRecord, float]] | None:
        """The next batch, oldest first; None once closing with nothing left."""
        while True:
            with self._lock:
                if self._queue:
                    break
                if self._closing:
                    return None
                self._sleeping = True
                self._wake.clear()
            await self._wake.wait()
        if self.linger and not self._closing:
            with self._lock:
                short = len(self._queue) < self.batch
            if short:
                await asyncio.sleep(self.linger)
        with self._lock:
            count = min(self.batch, len(self._queue))
            taken = [self._queue.popleft() for _ in range(count)]
            unreported, self._unreported = self._unreported, 0
        if unreported:
            note = LogRecord(
                message=f"hybridbus: dropped {unreported} log records (the queue was full)",
                level="warn",
                logger=_LOGGER,
                fields={"dropped": unreported},
            )
            # Not submitted, so not counted: it settles nothing.
            self._note = (note, time.time())
        else:
            self._note = None
        return taken

    def _events(self, taken: list[tuple[LogRecord, float]]) -> list[Event]:
        records: list[tuple[LogRecord, float]] = []
        if self._note is not None:
            records.append(self._note)
        for record, when in taken:
            processed: LogRecord | None = record
            if self.processors is not None:
                try:
                    processed = self.processors(record)
                except Exception as exc:  # noqa: BLE001 - a processor must not stop shipping
                    self.processor_errors += 1
                    self.last_error = f"processor: {exc!r}"
                    processed = record
            if processed is None:
                self.filtered += 1
                continue
            records.append((processed, when))
        events = []
        for record, when in records:
            if not record.time:
                record.time = rfc3339(when)
            self._seq += 1
            try:
                event = log_event(
                    record,
                    service=self.service,
                    instance=self.instance,
                    source=self.source,
                    id=f"{self.boot}-{self._seq}",
                )
            except Exception as exc:  # noqa: BLE001 - a bad record (a processor's) is refused
                self.rejected += 1
                self.last_error = f"record: {exc}"
                continue
            events.append(event)
        return events

    async def _ship(self, events: list[Event], opened: bool) -> bool:
        """Send `events` until appended or refused; returns whether the transport is open."""
        attempt = 0
        while True:
            try:
                if not opened:
                    await asyncio.wait_for(self.transport.open(), self.send_timeout)
                    opened = True
                await asyncio.wait_for(self.transport.send(self.topic, events), self.send_timeout)
            except Rejected as exc:
                self.rejected += len(exc.refused)
                self.shipped += len(events) - len(exc.refused)
                self.last_error = f"refused: {exc}"
                return opened
            except Exception as exc:  # noqa: BLE001 - any failure: reopen and send again
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.retries += 1
                if opened:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.transport.close(), 5.0)
                    opened = False
                await asyncio.sleep(self.backoff.delay(min(attempt, 30), self._rng))
                attempt += 1
                continue
            self.shipped += len(events)
            return opened
