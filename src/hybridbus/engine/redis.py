"""The Redis engine: the log in Redis (or Valkey, or a Redis Cluster), shared by many nodes.

Owns: the asyncio face of the Redis engine — the per-shard writers that
batch appends into one Lua script call, the tailers that feed the listener
(`engine._redis_tailer`), the epoch agreed with Redis and every other node,
the sweeper, and the `Engine` methods. The Lua scripts and the key layout
are `engine._redis_scripts`'s; the connection, errors and decoding
`engine._redis_io`'s; reads, topics, revocations and groups
`engine._redis_store`'s. Must not block the event loop, and must not ack
anything Redis has not confirmed.

Theory of operation. The log has `config.shards` shards; a topic's shard is
a stable hash of its tenant (its first segment), so one tenant's topics,
its offsets and its dedupe window live in one shard, one Redis Stream, one
Cluster slot. `append` queues its item on its shard's writer; the writer
takes everything queued (up to `batch_max` events, whole requests only) and
runs the APPEND script once: dedupe check, per-topic offset, position,
`XADD` with id `<position>-0`, count and size retention (each topic's limits
from `engine._redis_retention`) and expiry bookkeeping, all atomic. The acks
do not resolve then: every node, this one included, learns of appends from
its tailer, one per shard, which reads the shard's stream
with blocking `XREAD` and hands each read to the listener in log order. An
ack resolves once this node's tailer has handed its position to the
listener. So the listener sees every node's appends, in one order per shard,
and an ack always comes after its delivery. The tailer hands this node's own
appends over as the writer built them (no decoding), and also those that
count or size retention removed before it read them.

`append_many` whose items all fall in one shard (every item of one tenant)
is atomic and contiguous, as the contract says. Items in several shards are
appended as one script call per shard, in shard order: each shard's part is
atomic and contiguous, but not the whole — if a later shard's call fails,
the earlier parts stay appended and the call raises `EngineUnavailable`
(retrying it is safe: dedupe answers for what was appended).

Epochs. Each shard's meta hash holds the epoch; shard 0's is the authority.
A shard whose meta vanished lost its data (restart without persistence,
`FLUSHALL`, a failover to an empty replica): every script checks the epoch
first and refuses with `HBLOST`, a tailer notices it between reads, and the
engine begins a new epoch (compare-and-set on shard 0, then every shard
adopts it). Positions go on from the highest this node saw, never back. A
position counter behind what a tailer has seen (a replica that missed
writes) is a loss too. Clients resuming from the old epoch get
`recovered=false`, never a silent gap.

Failure. A command that fails or times out (`timeout` seconds) fails its
callers with `EngineUnavailable`; nothing is acked that Redis did not
confirm. After a timeout the script may still have run: a retry of the same
event is answered by dedupe. An ack whose delivery the tailer has not
reached within 3 x `timeout` (at least 10 s) fails the same way. Tasks:
one writer per shard, one engine-wide writer (revocations, groups), one
tailer per shard and the sweeper, all ended by `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Page
from hybridbus.core.revocation import Revocation
from hybridbus.core.topics import is_pattern
from hybridbus.engine import _redis_io as rio
from hybridbus.engine import _redis_retention as retain
from hybridbus.engine import _redis_scripts as lua
from hybridbus.engine import _redis_store as store
from hybridbus.engine._redis_leases import RedisLeases, stale_fences
from hybridbus.engine._redis_queue import (
    Append,
    Queue,
    Step,
    Write,
    pack_appends,
    settle_appends,
    take_writes,
)
from hybridbus.engine._redis_tailer import Tailer
from hybridbus.engine._retention import Retention
from hybridbus.engine.base import (
    Clock,
    EngineConfig,
    GroupWrite,
    Listener,
    StoredGroup,
    TopicInfo,
    system_clock,
)
from hybridbus.errors import BusClosed, EngineError, EngineUnavailable, InvalidPosition
from hybridbus.tasks import stop

__all__ = ["RedisEngine"]

log = logging.getLogger(__name__)

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"
_ATTEMPTS: Final = 3  # script calls refused for the epoch are retried after agreeing on it


class RedisEngine(RedisLeases):
    """The `Engine` contract on Redis; `url` as in `engine._redis_io.parse_target`.

    With `engine.base.Leases` (`engine._redis_leases`): one coordinator node per group.
    """

    def __init__(
        self,
        url: str,
        config: EngineConfig = EngineConfig(),  # noqa: B008 - frozen, so sharing is safe
        clock: Clock = system_clock,
    ) -> None:
        if config.shards < 1:
            raise ValueError("shards must be at least 1")
        if config.batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._target = rio.parse_target(url)
        self._config = config
        self._retention = Retention(config)
        self._clock = clock
        self._keys = [rio.ShardKeys(self._target.prefix, s) for s in range(config.shards)]
        self._state = _NEW
        self._epoch = ""
        self._sync = asyncio.Lock()
        self._tailers: list[Tailer] = []
        self._writers: list[Queue] = []
        self._global: Queue | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self.client: rio.Client = rio.connect(self._target)
        self.listener: Listener = _no_listener

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def shards(self) -> int:
        return self._config.shards

    # lifecycle -------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        """Connect, agree on the epoch, then follow every shard from its head."""
        if self._state != _NEW:
            raise RuntimeError("a RedisEngine starts once; make a new one to reopen")
        self.listener = listener
        try:
            await self._check_shards()
            heads = await self._establish(None)
            for keys in self._keys:  # rules: every topic gets its age limit
                await retain.set_ages(self.client, keys, self._epoch, self._retention)
        except BaseException as exc:  # failed, or cancelled, while opening
            with contextlib.suppress(Exception):
                await self.client.aclose()
            self._state = _CLOSED
            if isinstance(exc, EngineError) or not isinstance(exc, Exception):
                raise
            raise rio.wrap(exc, "cannot open") from exc
        self._tailers = [
            Tailer(self, self._keys[s], s, self._epoch, heads[s], self._ack_timeout)
            for s in range(self.shards)
        ]
        for tailer in self._tailers:
            tailer.start()
        self._writers = [
            Queue(f"redis-writer-{s}", self._flush_appends(s), self._take_appends)
            for s in range(self.shards)
        ]
        self._global = Queue("redis-writer-global", self._flush_writes, take_writes)
        self._state = _OPEN
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="redis-engine-sweep")

    async def close(self) -> None:
        """Finish queued writes (their acks resolve), then stop the tasks and disconnect."""
        if self._state != _OPEN:
            self._state = _CLOSED
            return
        self._state = _CLOSING
        if self._sweeper is not None:
            await stop(self._sweeper)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self._ack_timeout)
        for queue in [*self._writers, *([self._global] if self._global else [])]:
            await queue.stop()
        await asyncio.gather(*(tailer.stop() for tailer in self._tailers))
        self._state = _CLOSED
        with contextlib.suppress(Exception):
            await self.client.aclose()

    @property
    def _ack_timeout(self) -> float:
        return max(3 * self._target.timeout, 10.0)

    def _check_open(self) -> None:
        if self._state != _OPEN:
            raise BusClosed("the redis engine is closed")

    async def _check_shards(self) -> None:
        """Refuse to open data written with another shard count (topics would move)."""
        key = self._keys[0].tag + ":shards"
        await self.client.set(key, self.shards, nx=True)
        stored = int(await self.client.get(key) or 0)
        if stored != self.shards:
            raise EngineError(
                f"redis engine: prefix {self._target.prefix!r} holds a log of {stored} shards, "
                f"not {self.shards}: use shards={stored} or another prefix"
            )

    # epochs ----------------------------------------------------------------

    async def _establish(self, lost: str | None) -> list[int]:
        """Agree on the epoch with Redis; `lost`: the epoch in which data was lost.

        Returns every shard's position. Shard 0 decides; the others adopt its
        epoch. A shard with no data once the log was made (shard 0 says
        `ready`) lost it: a new epoch begins, as it does when `lost` is still
        shard 0's epoch.
        """
        async with self._sync:
            if lost is not None and lost != self._epoch:
                return [t.position for t in self._tailers]  # handled already
            floors = [t.position for t in self._tailers] or [0] * self.shards

            async def adopt(shard: int, epoch: str, mode: str) -> tuple[str, int, int, bool]:
                got = await rio.call(
                    self.client, lua.ADOPT, [self._keys[shard].meta], [epoch, floors[shard], mode]
                )
                return got[0].decode(), int(got[1]), int(got[2]), got[3] == b"1"

            epoch, _, head0, ready = await adopt(0, rio.new_epoch(), "create")
            bump = lost is not None and epoch == lost
            heads = [head0]
            for shard in range(1, self.shards):
                if bump:
                    break
                _, status, head, _ = await adopt(shard, epoch, "set")
                bump = status == 1 and ready
                heads.append(head)
            if bump:
                log.error("redis engine: a shard lost its data; beginning a new epoch")
                epoch, _, head0, _ = await adopt(0, rio.new_epoch(), f"cas:{epoch}")
                heads = [head0]
                for shard in range(1, self.shards):
                    heads.append((await adopt(shard, epoch, "set"))[2])
            if not ready:
                await self.client.hset(self._keys[0].meta, "ready", 1)
            if self._epoch and epoch != self._epoch:
                log.warning("redis engine: epoch %s follows %s", epoch, self._epoch)
            self._epoch = epoch
            return heads

    async def lost(self, epoch: str, shard: int, floor: int) -> None:
        """A tailer or script found shard `shard` lost data seen in `epoch`."""
        try:
            await self._establish(epoch)
        except Exception as exc:
            raise rio.wrap(exc, "cannot begin a new epoch") from exc

    async def moved(self) -> None:
        """A script or tailer saw another node's new epoch: adopt it."""
        try:
            await self._establish(None)
        except Exception as exc:
            raise rio.wrap(exc, "cannot read the epoch") from exc

    async def _agreeing(self, what: str, run: Callable[[str], Any]) -> Any:
        """`await run(epoch)`, agreeing on the epoch again when a script refuses it."""
        for _ in range(_ATTEMPTS):
            epoch = self._epoch
            try:
                return await run(epoch)
            except EngineError:
                raise
            except Exception as exc:
                kind = rio.Epochs.kind(exc)
                if kind == rio.Epochs.LOST:
                    await self.lost(epoch, 0, 0)
                elif kind == rio.Epochs.MOVED:
                    await self.moved()
                else:
                    raise rio.wrap(exc, what) from exc
        raise EngineUnavailable(f"redis engine: {what}: the epoch keeps changing")

    # appends ---------------------------------------------------------------

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        """Append in the next script call of its shard; resolves once the listener saw it."""
        self._check_open()
        shard = rio.shard_of(topic, self._config.shards)
        request = Append(((topic, event, payload),), True)
        self._writers[shard].put(request)
        epoch, steps = await self._settled(request)
        return self._ack(epoch, shard, steps[0])

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        """Append `items`: one script call per shard (see the module docstring)."""
        self._check_open()
        if not items:
            return []
        shards = self.shards
        if shards == 1:  # one request, as it is: no copies, no task per shard
            request = Append(items, dedupe)
            self._writers[0].put(request)
            epoch, steps = await self._settled(request)
            return [self._ack(epoch, 0, step) for step in steps]
        parts: dict[int, list[int]] = {}
        for index, (topic, _, _) in enumerate(items):
            parts.setdefault(rio.shard_of(topic, shards), []).append(index)
        requests = {}
        for shard in sorted(parts):
            requests[shard] = request = Append([items[i] for i in parts[shard]], dedupe)
            self._writers[shard].put(request)
        acks: list[Ack | None] = [None] * len(items)
        results = await asyncio.gather(
            *(self._settled(r) for r in requests.values()), return_exceptions=True
        )
        for shard, result in zip(requests, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            epoch, steps = result
            for index, step in zip(parts[shard], steps, strict=True):
                acks[index] = self._ack(epoch, shard, step)
        return [a for a in acks if a is not None]

    async def _settled(self, request: Append) -> tuple[str, list[Step]]:
        """The request's outcome; the tailer fails it if not delivered in `_ack_timeout`."""
        future = request.future
        pending = self._pending
        pending.add(future)
        try:
            return await future
        finally:
            pending.discard(future)

    def _ack(self, epoch: str, shard: int, step: Step) -> Ack:
        duplicate, topic, offset, position = step
        heads = None
        if self._config.shards > 1:
            heads = tuple(t.position if t.epoch == epoch else 0 for t in self._tailers)
        return Ack(topic, offset, shard, position, epoch, duplicate, heads)

    def _take_appends(self, queue: deque[Append]) -> list[Append]:
        batch = [queue.popleft()]
        size = len(batch[0].items)
        limit = self._config.batch_max
        while queue and size + len(queue[0].items) <= limit:
            size += len(queue[0].items)
            batch.append(queue.popleft())
        return batch

    def _flush_appends(self, shard: int) -> Callable[[list[Append]], Any]:
        keys = self._keys[shard]
        config = self._config
        window = repr(float(config.dedupe_window))
        retention = self._retention
        rules = "0" if retention.uniform else "1"
        limits: dict[str, tuple[int, int, float]] = {}  # each topic's, as the items carry them

        def limits_of(topic: str) -> tuple[int, int, float]:
            limit = limits.get(topic)
            if limit is None:
                if len(limits) >= 65536:
                    limits.clear()
                limit = limits[topic] = retain.item_limits(retention, topic)
            return limit

        async def flush(batch: list[Append]) -> None:
            items, topics, sending = pack_appends(batch, limits_of)
            args = ["", "", window, rules, items, topics]  # epoch and now: `run`'s
            times: list[float] = []
            tailer = self._tailers[shard]

            async def run(epoch: str) -> tuple[str, Any]:
                now = float(self._clock())
                times.append(now)
                args[0] = epoch
                args[1] = repr(now)
                reply = await rio.call(self.client, lua.APPEND, [keys.meta], args)
                return epoch, reply

            # The tailer may read these entries before the reply comes: it takes
            # their events from here rather than decode them.
            tailer.sending = sending
            try:
                result = await self._agreeing("append failed", run)
            except EngineError as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                return
            finally:
                tailer.sending = {}
            epoch, (first, plan) = result
            settle_appends(batch, plan, first, epoch, times[-1], shard, tailer)

        return flush

    # the global writer: revocations and groups ------------------------------

    async def _flush_writes(self, batch: list[Write]) -> None:
        prefix = self._target.prefix
        if batch[0].kind == "revoke":
            script, key = lua.REVOKE, store.revocations_key(prefix)
            args: list[Any] = store.revoke_args([w.payload for w in batch])
        else:
            script, key = lua.GROUPS_WRITE, store.groups_key(prefix)
            args = store.group_args([g for w in batch for g in w.payload])
        try:
            answer = await rio.call(self.client, script, [key], args)
        except Exception as exc:  # noqa: BLE001 - wrapped and handed to the callers
            error = rio.wrap(exc, "write failed, nothing was stored")
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(error)
            return
        if (stale := stale_fences(answer)) is not None:  # nothing was written
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(stale)
            return
        for w in batch:
            if not w.future.done():
                w.future.set_result(None)

    async def _write(self, kind: str, payload: Any) -> None:
        self._check_open()
        assert self._global is not None
        write = Write(kind, payload)
        self._global.put(write)
        self._pending.add(write.future)
        write.future.add_done_callback(self._pending.discard)
        await asyncio.shield(write.future)

    async def revoke(self, revocation: Revocation) -> None:
        await self._write("revoke", revocation)

    async def write_groups(self, writes: Sequence[GroupWrite]) -> None:
        self._check_open()
        if writes:
            await self._write("groups", list(writes))

    async def revocations(self) -> list[Revocation]:
        self._check_open()
        try:
            return await store.list_revocations(self.client, self._target.prefix, self._clock())
        except EngineError:
            raise
        except Exception as exc:
            raise rio.wrap(exc, "cannot read revocations") from exc

    async def shorten_revocations(self, latest: float) -> int:
        self._check_open()
        key = store.revocations_key(self._target.prefix)
        try:
            return int(await rio.call(self.client, lua.REVOCATIONS_SHORTEN, [key], [repr(latest)]))
        except Exception as exc:
            raise rio.wrap(exc, "cannot shorten revocations") from exc

    async def groups(self) -> list[StoredGroup]:
        self._check_open()
        try:
            return await store.list_groups(self.client, self._target.prefix)
        except Exception as exc:
            raise rio.wrap(exc, "cannot read groups") from exc

    # reads -----------------------------------------------------------------

    async def read(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        self._check_open()
        n = self.shards
        if after is None:
            after = (0,) * n
        elif len(after) != n:
            raise InvalidPosition(f"the redis engine has {n} shards, not {len(after)}")
        wildcard = is_pattern(pattern)
        targets = range(n) if wildcard else (rio.shard_of(pattern, n),)

        async def run(epoch: str) -> Page:
            now = self._clock()
            positions = list(after)
            if len(targets) < n:
                heads = await self._heads(epoch)
                positions = [max(a, h) for a, h in zip(after, heads, strict=True)]
            found: list[Delivery] = []
            more = False
            exact = True
            for shard in targets:
                want = limit - len(found)
                part = await store.read_shard(
                    self.client,
                    self._keys[shard],
                    shard,
                    epoch,
                    pattern,
                    wildcard,
                    after[shard],
                    want + 1,
                    now,
                )
                exact = exact and part.exact
                if len(part.deliveries) > want:
                    more = True
                    taken = part.deliveries[: max(want, 0)]
                    found += taken
                    positions[shard] = taken[-1].position if taken else after[shard]
                    break
                found += part.deliveries
                positions[shard] = max(part.head, after[shard])
            return Page(epoch, found, tuple(positions), more, exact)

        page: Page = await self._agreeing(f"cannot read {pattern!r}", run)
        return page

    async def _heads(self, epoch: str) -> list[int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for keys in self._keys:
                pipe.hmget(keys.meta, ["epoch", "pos"])
            metas = await pipe.execute()
        for raw_epoch, _ in metas:
            if raw_epoch is None:
                raise rio.refusal(rio.Epochs.LOST)
            if raw_epoch.decode() != epoch:
                raise rio.refusal(rio.Epochs.MOVED)
        return [int(pos or 0) for _, pos in metas]

    async def head(self) -> tuple[int, ...]:
        self._check_open()
        heads: list[int] = await self._agreeing("cannot read the head", self._heads)
        return tuple(heads)

    async def topics(self, prefix: str, after: str, limit: int) -> list[TopicInfo]:
        self._check_open()

        async def run(epoch: str) -> list[TopicInfo]:
            return await store.list_topics(self.client, self._keys, epoch, prefix, after, limit)

        found: list[TopicInfo] = await self._agreeing("cannot list topics", run)
        return found

    # sweeps and reset ---------------------------------------------------------

    async def sweep(self) -> int:
        """Expiry, age retention, the dedupe window and revocations, now; events removed."""
        self._check_open()
        window = self._config.dedupe_window
        removed = 0
        for keys in self._keys:

            async def run(epoch: str, keys: rio.ShardKeys = keys) -> int:
                return await retain.sweep_shard(
                    self.client, keys, epoch, self._retention, self._clock, window
                )

            removed += await self._agreeing("sweep failed", run)
        key = store.revocations_key(self._target.prefix)
        try:
            await rio.call(self.client, lua.REVOCATIONS_SWEEP, [key], [repr(self._clock())])
        except Exception as exc:
            raise rio.wrap(exc, "sweep failed") from exc
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval)
            try:
                await self.sweep()
            except EngineError as exc:
                log.warning("redis sweep failed: %s", exc)

    async def reset(self) -> str:
        """Drop every shard's history and begin a new epoch (positions go on)."""
        self._check_open()
        async with self._sync:
            epoch = rio.new_epoch()
            try:
                for shard, keys in enumerate(self._keys):
                    floor = self._tailers[shard].position
                    await rio.call(self.client, lua.RESET, [keys.meta], ["", epoch, floor])
            except Exception as exc:
                raise rio.wrap(exc, "reset failed") from exc
            self._epoch = epoch
        return epoch


def _no_listener(deliveries: Sequence[object]) -> None:
    pass
