"""The embedded durable engine: the log in one SQLite database, written by one thread.

Owns: the asyncio face of the sqlite engine — the writer thread and its group
commit, the reader thread, the periodic sweep task, and the hand-over of
results to the event loop. What is stored and how (SQL, snapshots) lives
in `engine._sqlite_store` (consumer groups in `engine._sqlite_groups`,
retention in `engine._sqlite_retention`); the database layout, its versions and opening
connections in `engine._sqlite_schema`; the queued request kinds in
`engine._sqlite_requests`. Must not block the event loop on disk: the loop
only enqueues work and awaits futures.

Theory of operation. `append` puts `((topic, event, payload), future)` on a
deque, `append_many` its items and one future, `write_groups` its writes
and one future, and each wakes the writer thread unless it is awake
already. The writer takes everything waiting (up to `batch_max` events, a
group write counting as one, but never part of one request), appends the
events and applies the group writes in one transaction, commits, and posts
one callback to the loop, which first calls the listener with the batch's
new deliveries (in position order), then resolves each request's future, in
queued order. So an ack means "committed" and "the listener has seen it", a
burst of N concurrent appends and group writes (a consumer group's acks)
costs a handful of fsyncs, not N, an `append_many` or `write_groups` is all
committed or not at all, and a failed transaction fails every request in
it. `revoke` goes on the same deque and is group-committed the same way:
consecutive revocations are upserted in one transaction, then their futures
resolve. `sweep` and `reset` are commands on the same deque (there is one
writer); `read`, `head`, `topics`, `revocations` and `groups` run on a
single reader thread with its own connection, each in one read transaction
(WAL lets it proceed while the writer commits).

There is one shard; positions are the log table's integer primary key and
are never reused within an epoch.

One process per data directory: opening takes the directory's lock (see
`engine._sqlite_schema`) and `close` releases it last, after both
connections are closed. A write transaction that fails is logged here, once
with its cause, whoever asked for it (a run of failures with one cause, as on
a full disk, is logged at its start, every ten seconds, and when writes
succeed again), and its callers get the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy as _copy
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Page
from hybridbus.core.revocation import Revocation
from hybridbus.engine import _sqlite_groups as group_store
from hybridbus.engine import _sqlite_requests as req
from hybridbus.engine import _sqlite_schema as schema
from hybridbus.engine import _sqlite_store as store
from hybridbus.engine.base import (
    Clock,
    EngineConfig,
    GroupWrite,
    Listener,
    StoredGroup,
    TopicInfo,
    system_clock,
)
from hybridbus.errors import BusClosed, BusError, EngineError, EngineUnavailable, InvalidPosition

__all__ = ["SqliteEngine"]

log = logging.getLogger(__name__)

_SYNCHRONOUS: Final = frozenset({"full", "normal"})
_NEW, _OPEN, _CLOSED = "new", "open", "closed"

_Batch = list[req.Append | req.AppendMany | req.GroupWrites]


class SqliteEngine:
    """The embedded durable engine: one SQLite database in directory `path`.

    `config.synchronous` is "full" (an ack survives power loss) or "normal"
    (it survives a crash of the process). `clock` gives Unix seconds for
    append times, the dedupe window, age and expiry; the writer thread calls
    it, so it must be thread-safe (a function returning a float is).
    """

    # Seconds a statement waits for a lock held by another connection before
    # failing with EngineUnavailable.
    busy_timeout: float = 5.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: EngineConfig = EngineConfig(),  # noqa: B008 - frozen, so sharing is safe
        clock: Clock = system_clock,
    ) -> None:
        if config.synchronous.lower() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'full' or 'normal', not {config.synchronous!r}")
        if config.batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._directory = Path(path)
        self._config = config
        self._clock = clock
        self._state = _NEW
        self._epoch = ""
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[req.Request] = deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._store: store.Store | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None  # reader thread only
        self._sweeper: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None  # why the writer thread died, if it did
        self._failures = _Failures()  # the writer thread's

    @property
    def epoch(self) -> str:
        """The current epoch; valid after `start`."""
        return self._epoch

    @property
    def shards(self) -> int:
        """Always 1: the sqlite engine keeps one log."""
        return 1

    @property
    def commits(self) -> int:
        """Append transactions committed since `start` (one per group-committed batch)."""
        return self._store.commits if self._store is not None else 0

    # lifecycle -------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        """Open (or create) the database, then start the writer, reader and sweeper."""
        if self._state != _NEW:
            raise RuntimeError("a SqliteEngine starts once; make a new one to reopen")
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        ready: concurrent.futures.Future[store.Store] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._write_forever, args=(ready,), name="hybridbus-sqlite-writer", daemon=True
        )
        self._writer.start()
        try:
            self._store = await asyncio.wrap_future(ready)
        except BaseException:  # failed to open, or cancelled while opening
            self._submit(req.Command(None, None))
            await asyncio.to_thread(self._writer.join)
            self._state = _CLOSED
            raise
        self._epoch = self._store.epoch
        self._reader = concurrent.futures.ThreadPoolExecutor(1, "hybridbus-sqlite-reader")
        self._state = _OPEN
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="hybridbus-sqlite-sweep")

    async def close(self) -> None:
        """Stop sweeping, let the writer commit everything queued, release both threads."""
        if self._state != _OPEN:
            self._state = _CLOSED
            return
        self._state = _CLOSED  # from here on, nothing new is queued
        assert self._writer is not None
        assert self._reader is not None
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        self._submit(req.Command(None, None))
        # The writer posted its last callbacks before it exited, and this
        # await resumes through a later loop callback, so every ack of the
        # queued appends has resolved when it returns.
        await asyncio.to_thread(self._writer.join)
        self._fail_queued(BusClosed("the sqlite engine closed"))  # only after a writer crash
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader, self._close_reader)
        await asyncio.to_thread(self._reader.shutdown)
        if self._store is not None:
            self._store.lock.release()  # last: no connection of ours is left open

    # the log ---------------------------------------------------------------

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        """Append in the next group commit; resolves once committed and delivered.

        Cancelling the await does not withdraw the event: it may still be appended.
        """
        self._check_open()
        assert self._loop is not None
        future: asyncio.Future[Ack] = self._loop.create_future()
        self._submit(((topic, event, payload), future))
        return await future

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        """Append `items` in order in one transaction (all or none); one ack per item.

        `dedupe=False` appends each item even if its key is in the dedupe
        window (a replay). Resolves once committed and delivered. Cancelling
        the await does not withdraw them: they may still be appended.
        """
        self._check_open()
        if not items:
            return []
        assert self._loop is not None
        future: asyncio.Future[list[Ack]] = self._loop.create_future()
        self._submit(req.AppendMany(items, future, dedupe))
        return await future

    async def read(
        self, pattern: str, after: Sequence[int] | None, limit: int, stored: bool = False
    ) -> Page:
        """Up to `limit` deliveries matching `pattern` past `after`, from one snapshot."""
        if after is not None and len(after) != 1:
            raise InvalidPosition(f"the sqlite engine has 1 shard, not {len(after)}")
        start = 0 if after is None else after[0]
        now = self._clock()
        page: Page = await self._on_reader(store.read_page, pattern, start, limit, now, stored)
        return page

    async def read_stored(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        """`read` of `StoredDelivery`s, for a group (its events decoded only if asked for)."""
        return await self.read(pattern, after, limit, True)

    async def topics(self, prefix: str, after: str, limit: int) -> list[TopicInfo]:
        """Up to `limit` topics starting with `prefix`, after `after`, by name (on the reader)."""
        found: list[TopicInfo] = await self._on_reader(store.list_topics, prefix, after, limit)
        return found

    async def head(self) -> tuple[int, ...]:
        """The newest position ever assigned in this epoch (0: none)."""
        return (await self._on_reader(store.head),)

    async def sweep(self) -> int:
        """Apply age retention, expiry and the dedupe window now (in the writer)."""
        removed: int = await self._command(store.Store.sweep)
        return removed

    async def reset(self) -> str:
        """Drop all history, offsets and dedupe records; return the new epoch."""
        epoch: str = await self._command(store.Store.reset, self._set_epoch)
        return epoch

    async def revoke(self, revocation: Revocation) -> None:
        """Upsert `revocation` in the next revocation group commit; resolves once committed.

        Cancelling the await does not withdraw it: it may still be stored.
        """
        self._check_open()
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._submit(req.Revoke(revocation, future))
        await future

    async def revocations(self) -> list[Revocation]:
        """The stored revocations whose `until` is after the clock (on the reader)."""
        found: list[Revocation] = await self._on_reader(store.list_revocations, self._clock())
        return found

    async def groups(self) -> list[StoredGroup]:
        """Every stored consumer group with its entries, from one snapshot (on the reader)."""
        found: list[StoredGroup] = await self._on_reader(group_store.list_groups)
        return found

    async def write_groups(self, writes: Sequence[GroupWrite]) -> None:
        """Apply `writes` in the next group commit, with the appends queued around them.

        Resolves once committed. Cancelling the await does not withdraw them:
        they may still be applied.
        """
        self._check_open()
        if not writes:
            return
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._submit(req.GroupWrites(writes, future))
        await future

    async def shorten_revocations(self, latest: float) -> int:
        """Lower the stored `until`s past `latest` to it (in the writer); return how many."""
        changed: int = await self._command(lambda db: db.shorten_revocations(latest))
        return changed

    # event-loop side ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != _OPEN:
            raise BusClosed("the sqlite engine is closed")
        if self._crash is not None:
            raise EngineUnavailable("the sqlite writer thread died") from self._crash

    def _submit(self, item: req.Request) -> None:
        self._queue.append(item)
        # Safe without a lock: the writer clears the flag *before* draining.
        if not self._wake.is_set():
            self._wake.set()

    async def _command(
        self, fn: Callable[[store.Store], Any], on_loop: Callable[[Any], None] | None = None
    ) -> Any:
        self._check_open()
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._submit(req.Command(fn, future, on_loop))
        return await future

    async def _on_reader(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._with_reader, fn, args)

    def _writer_died(self, crash: BaseException) -> None:
        self._crash = crash
        self._fail_queued(EngineUnavailable("the sqlite writer thread died"))

    def _fail_queued(self, error: BusError) -> None:
        """Fail what the writer will never take (it is gone); on the loop."""
        while self._queue:
            item = self._queue.popleft()
            future = item[1] if isinstance(item, tuple) else item.future
            if future is not None and not future.done():
                future.set_exception(_copy_error(error))

    def _set_epoch(self, epoch: str) -> None:
        self._epoch = epoch

    def _settle_batch(
        self,
        deliveries: list[Delivery],
        batch: _Batch,
        outcome: list[Ack] | BaseException,
    ) -> None:
        """On the loop: tell the listener, then resolve each request (in queued order)."""
        if deliveries:
            assert self._listener is not None
            try:
                self._listener(deliveries)
            except Exception:
                log.exception("the listener failed on %d deliveries", len(deliveries))
        if isinstance(outcome, BaseException):
            for entry in batch:
                future = entry[1] if type(entry) is tuple else entry.future  # type: ignore[union-attr]
                if not future.done():
                    future.set_exception(_copy_error(outcome))
            return
        index = 0
        for entry in batch:
            if type(entry) is tuple:
                single: asyncio.Future[Ack] = entry[1]
                if not single.done():
                    single.set_result(outcome[index])
                index += 1
            elif type(entry) is req.GroupWrites:
                if not entry.future.done():
                    entry.future.set_result(None)
            else:
                assert isinstance(entry, req.AppendMany)
                end = index + len(entry.items)
                if not entry.future.done():
                    entry.future.set_result(outcome[index:end])
                index = end

    def _settle_revocations(
        self, futures: list[asyncio.Future[None]], error: BaseException | None
    ) -> None:
        for future in futures:
            if future.done():
                continue
            if error is not None:
                future.set_exception(_copy_error(error))
            else:
                future.set_result(None)

    def _settle_command(
        self, command: req.Command, result: Any, error: BaseException | None
    ) -> None:
        if error is None and command.on_loop is not None:
            command.on_loop(result)
        future = command.future
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    # writer thread -----------------------------------------------------------

    def _write_forever(self, ready: concurrent.futures.Future[store.Store]) -> None:
        try:
            db = store.Store(self._directory, self._config, self._clock, self.busy_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to `start`, which raises it
            ready.set_exception(exc)
            return
        ready.set_result(db)
        try:
            while self._drain(db):
                self._wake.wait()
                self._wake.clear()
        except BaseException as exc:  # the thread's boundary: report, do not hang appends
            log.exception("the sqlite writer thread crashed")
            self._post(self._writer_died, exc)
        finally:
            db.close()

    def _drain(self, db: store.Store) -> bool:
        """Process everything queued; False once the stop command was seen."""
        queue = self._queue
        batch_max = self._config.batch_max
        while queue:
            batch: _Batch = []
            events = 0
            # Whole requests only: an append_many (or write_groups) larger
            # than batch_max goes alone.
            while queue:
                head = queue[0]
                kind = type(head)
                if kind is tuple:
                    size = 1
                elif kind is req.GroupWrites:
                    size = len(head.writes)  # type: ignore[union-attr]
                elif kind is req.AppendMany:
                    size = len(head.items)  # type: ignore[union-attr]
                else:
                    break
                if batch and events + size > batch_max:
                    break
                batch.append(queue.popleft())  # type: ignore[arg-type]
                events += size
            if batch:
                self._commit(db, batch)
                continue
            revokes: list[req.Revoke] = []
            while queue and len(revokes) < batch_max and type(queue[0]) is req.Revoke:
                revokes.append(queue.popleft())  # type: ignore[arg-type]
            if revokes:
                self._commit_revocations(db, revokes)
                continue
            command = queue.popleft()
            assert isinstance(command, req.Command)
            if command.fn is None:
                return False
            self._run_command(db, command)
        return True

    def _commit(self, db: store.Store, batch: _Batch) -> None:
        deliveries: list[Delivery] = []
        outcome: list[Ack] | BaseException
        items: list[req.Item] = []
        replays: set[int] = set()  # indexes of the items appended with dedupe off
        writes: list[Sequence[GroupWrite]] = []
        for entry in batch:
            if type(entry) is tuple:
                items.append(entry[0])
            elif type(entry) is req.GroupWrites:
                writes.append(entry.writes)
            else:
                assert isinstance(entry, req.AppendMany)
                if not entry.dedupe:
                    replays.update(range(len(items), len(items) + len(entry.items)))
                items.extend(entry.items)
        try:
            outcome, deliveries = db.append(items, replays, writes)
        except Exception as exc:  # noqa: BLE001 - logged by _Failures, handed to the requests
            self._failures.failed(_what(len(items), sum(map(len, writes))), exc)
            outcome = exc
        else:
            self._failures.succeeded()
        self._post(self._settle_batch, deliveries, batch, outcome)

    def _commit_revocations(self, db: store.Store, revokes: list[req.Revoke]) -> None:
        error: BaseException | None = None
        try:
            db.revoke([item.revocation for item in revokes])
        except Exception as exc:  # noqa: BLE001 - logged by _Failures, handed to the callers
            self._failures.failed(_count(len(revokes), "revocation", "store"), exc)
            error = exc
        else:
            self._failures.succeeded()
        self._post(self._settle_revocations, [item.future for item in revokes], error)

    def _run_command(self, db: store.Store, command: req.Command) -> None:
        assert command.fn is not None
        try:
            result = command.fn(db)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                log.exception("the sqlite writer failed on a command")
            self._post(self._settle_command, command, None, exc)
        else:
            self._post(self._settle_command, command, result, None)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            log.warning("the event loop is closed; dropping the sqlite writer's results")

    # reader thread -----------------------------------------------------------

    def _with_reader(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._reader_conn is None:
            self._reader_conn = schema.connect_reader(self._directory, self.busy_timeout)
        return fn(self._reader_conn, *args)

    def _close_reader(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval)
            try:
                removed = await self.sweep()
            except EngineError as exc:
                log.warning("sqlite sweep failed: %s", exc)
            else:
                if removed:
                    log.debug("sqlite sweep removed %d events", removed)


class _Failures:
    """Failed write transactions, logged once each without flooding the log.

    The first failure of a run is logged with its cause, and so is every
    failure with a new cause; repeats of the same cause are counted and
    logged at most every `_REPEAT` seconds. The first success after a run
    says how many failed. Writer thread only.
    """

    __slots__ = ("_cause", "_logged_at", "_run", "_since_logged")

    def __init__(self) -> None:
        self._run = 0  # failures since the last success
        self._since_logged = 0  # failures not logged yet
        self._cause = ""
        self._logged_at = 0.0

    def failed(self, what: str, exc: Exception) -> None:
        self._run += 1
        cause = str(exc)
        now = time.monotonic()
        if cause == self._cause and now - self._logged_at < _REPEAT:
            self._since_logged += 1
            return
        more = f" ({self._since_logged} more since the last line)" if self._since_logged else ""
        if isinstance(exc, EngineError):
            # The driver's message is in `cause`; its traceback would say nothing more.
            log.error("the sqlite engine could not %s: %s%s", what, cause, more)
        else:  # a bug, not the disk
            log.error("the sqlite writer failed to %s%s", what, more, exc_info=exc)
        self._cause = cause
        self._logged_at = now
        self._since_logged = 0

    def succeeded(self) -> None:
        if self._run:
            log.warning(
                "the sqlite engine writes again after %d failed write transactions", self._run
            )
            self._run = self._since_logged = 0
            self._cause = ""


# Seconds between two log lines for failures with the same cause.
_REPEAT: Final = 10.0


def _count(n: int, noun: str, verb: str) -> str:
    return f"{verb} {n} {noun}{'' if n == 1 else 's'}"


def _what(events: int, group_writes: int) -> str:
    """What a failed group commit could not do, for the log."""
    if not group_writes:
        return _count(events, "event", "append")
    done = _count(group_writes, "group write", "apply")
    return f"{_count(events, 'event', 'append')} and {done}" if events else done


def _copy_error(error: BaseException) -> BaseException:
    """A fresh instance per future, so tracebacks do not pile up on one object."""
    copy = _copy.copy(error)
    copy.__cause__ = error.__cause__
    copy.__suppress_context__ = True
    return copy
