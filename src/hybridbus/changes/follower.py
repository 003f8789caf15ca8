"""`Follower`: keep a directory identical to a watched one, applying change events in order.

Owns: the mirror's state (`<dir>/.hybridbus/follow.json`: the resume token,
each file's known content hash with the size and mtime the follower wrote,
open conflicts, the Lamport clock), the subscription from that token (the
client resumes exactly after a drop), applying each change after checking
its before-hash — a mismatch never applies: the follower asks the watcher
for a full copy on `<topic>/requests` and applies the `snapshot` that comes
back in order — reporting local edits as conflicts instead of overwriting
them (a conflict ends when the local file is deleted or restored: a full
copy is then fetched), acks on `<topic>/acks`, the instance announcement
and its heartbeat on `<topic>/instances`, and the callback per applied
change. Big text files are kept as `textdiff.Text` over the file mapped in
memory (shared), so a one-line diff is one memmove of the file's tail in the
page cache, nothing read back.
Must not decide encodings (`core.changes`) nor know the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import mmap
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from hybridbus.changes.registry import ANNOUNCE_TYPE, topics
from hybridbus.client import Client
from hybridbus.core.changes import (
    ACK_TYPE,
    Ack,
    Assembler,
    Change,
    Lamport,
    decode_change,
)
from hybridbus.core.textdiff import Hunk, Text, tree_hash

__all__ = ["FollowConfig", "Follower"]

log = logging.getLogger(__name__)
STATE_DIR = ".hybridbus"
KEEP_TEXT = 1 << 20  # text files at least this big stay in memory for fast diffs
Callback = Callable[[Change, Path], Awaitable[None] | None]


def _splice(mapped: mmap.mmap, start: int, end: int, added: bytes) -> None:
    """Replace bytes `start`..`end` of a file mapped in memory with `added` (resizing it)."""
    size = len(mapped)
    delta = len(added) - (end - start)
    if delta > 0:
        mapped.resize(size + delta)  # the file grows too
        mapped.move(end + delta, end, size - end)
    elif delta < 0:
        mapped.move(end + delta, end, size - end)
        mapped.resize(size + delta)
    mapped[start : start + len(added)] = added


class FollowConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one follower (an instance)."""

    topic: str
    instance: str
    service: str = ""
    version: str = ""
    fingerprint: str = ""
    heartbeat: float = 10.0  # seconds between announcements (and conflict checks)
    source: str = "/hybridbus/follow"


class Follower:
    """Mirrors `config.topic` into `root`; `on_change(change, path)` after each applied change."""

    def __init__(
        self, client: Client, root: Path, config: FollowConfig, on_change: Callback | None = None
    ) -> None:
        self.client = client
        self.root = root.resolve()
        self.config = config
        self.topics = topics(config.topic)
        self.on_change = on_change
        self.clock = Lamport()
        self.position: str | None = None
        self.known: dict[str, list[Any]] = {}  # path -> [hash, size, mtime_ns]
        self.conflicts: set[str] = set()
        self.stale: set[str] = set()  # asked for a full copy
        self.texts: dict[str, Text] = {}
        self.applied = 0
        self._assembler = Assembler()
        self._state = self.root / STATE_DIR / "follow.json"
        self._acks: set[asyncio.Task[Any]] = set()

    # -- state -----------------------------------------------------------------------

    def _load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._state.is_file():
            state = json.loads(self._state.read_text())
            self.position = state.get("position")
            self.known = state.get("known", {})
            self.conflicts = set(state.get("conflicts", []))
            self.clock = Lamport(state.get("clock", 0))

    def _save(self) -> None:
        self._state.parent.mkdir(exist_ok=True)
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "position": self.position,
                    "known": self.known,
                    "conflicts": sorted(self.conflicts),
                    "clock": self.clock.time,
                }
            )
        )
        tmp.replace(self._state)

    def _local_hash(self, rel: str) -> str | None:
        """The file's content hash now (None: no file), without reading it if untouched."""
        path = self.root / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        known = self.known.get(rel)
        if known is not None and known[1] == st.st_size and known[2] == st.st_mtime_ns:
            return str(known[0])
        return tree_hash(path.read_bytes())

    def _edited(self, rel: str) -> bool:
        """Whether the local file differs from what the follower last wrote (or knew)."""
        known = self.known.get(rel)
        return self._local_hash(rel) != (known[0] if known else None)

    def _record(self, rel: str, hash: str) -> None:
        st = (self.root / rel).stat()
        self.known[rel] = [hash, st.st_size, st.st_mtime_ns]

    # -- applying --------------------------------------------------------------------

    def _write(self, rel: str, data: bytes, hash: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".hybridbus-tmp")
        tmp.write_bytes(data)
        self._forget(rel)
        tmp.replace(path)
        self._record(rel, hash)

    def _conflict(self, rel: str) -> str:
        """`rel` was edited here: keep the local file, apply nothing to it until resolved."""
        self.conflicts.add(rel)
        self._forget(rel)
        return "conflict"

    def _forget(self, rel: str) -> None:
        """Drop the kept text of `rel` (closing its file's mapping)."""
        text = self.texts.pop(rel, None)
        if text is not None and isinstance(text.buffer, mmap.mmap):
            text.buffer.close()

    def _write_diff(self, change: Change, payload: bytes) -> None:
        """A line diff on the file's kept text: a big file is spliced in place, mapped in memory.

        A file of at least `KEEP_TEXT` bytes stays mapped (shared: the splice
        is the write — one memmove of the tail in the page cache, nothing
        read back); a smaller one is read, changed and written from the
        changed line on.
        """
        rel = change.path
        path = self.root / rel
        hunk = Hunk.parse(payload)
        text = self.texts.get(rel)
        if text is None:
            if path.stat().st_size >= KEEP_TEXT:
                with path.open("r+b") as f:
                    text = self.texts[rel] = Text.mapped(mmap.mmap(f.fileno(), 0))
            else:
                text = Text(path.read_bytes())
        mapped = text.buffer
        if isinstance(mapped, mmap.mmap):
            start, end, added = text.locate(hunk)
            if len(mapped) - (end - start) + len(added) > 0:
                try:
                    _splice(mapped, start, end, added)
                except (OSError, ValueError):
                    self._forget(rel)
                    raise
                text.replaced(start, end, len(added))
            else:  # about to be emptied (a mapping cannot be): written below
                content = text.content()
                self._forget(rel)
                text = Text(content)
        if text.buffer is None:  # a small file (or an emptied one): from the changed line on
            start = text.apply(hunk)
            content = text.content()
            fd = os.open(path, os.O_WRONLY)
            try:
                with memoryview(content) as view:
                    os.pwrite(fd, view[start:], start)
                os.ftruncate(fd, len(content))
            finally:
                os.close(fd)
        if text.hash != change.after:
            self._forget(rel)
            self._record(rel, tree_hash(path.read_bytes()))  # what is there: not a local edit
            self._ask(rel)
            raise ValueError("the result's content hash differs from the watcher's")
        self._record(rel, text.hash)

    def _apply(self, change: Change, payload: bytes) -> str:
        """Apply one change; its ack status ('applied', 'conflict', 'failed': raises)."""
        rel, kind = change.path, change.kind
        if kind == "moved":
            src = change.from_path or ""
            if src in self.conflicts or self._edited(src):
                return self._conflict(src)
            if self._local_hash(rel) not in (None, change.after) and rel in self.known:
                return self._conflict(rel)
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / src, self.root / rel)
            self.known.pop(src, None)
            if src in self.texts:
                self.texts[rel] = self.texts.pop(src)
            self._record(rel, str(change.after))
            return "applied"
        if rel in self.conflicts:
            return "conflict"
        local = self._local_hash(rel)
        known = self.known.get(rel)
        if local is not None and local != (known[0] if known else None):
            self._forget(rel)  # changed by someone else: a kept mapping may be of another file
            if local == change.after:  # already so
                self._record(rel, local)
                return "applied"
            return self._conflict(rel)
        if kind == "deleted":
            if local is not None:
                (self.root / rel).unlink()
            self.known.pop(rel, None)
            self._forget(rel)
            self.stale.discard(rel)
            return "applied"
        if change.encoding in ("none", "too-large"):
            raise ValueError(f"no content sent ({change.encoding})")
        if change.before is not None and local != change.before:
            self._ask(rel)
            raise ValueError(f"base {local} is not {change.before}: full copy requested")
        if change.encoding == "diff":
            self._write_diff(change, payload)
        else:
            old = None if local is None else (self.root / rel).read_bytes()
            data = decode_change(change, old, payload)
            if change.after is not None and tree_hash(data) != change.after:
                raise ValueError("the result's content hash differs from the watcher's")
            self._write(rel, data, str(change.after))
        self.stale.discard(rel)
        return "applied"

    def _ask(self, rel: str) -> None:
        if rel in self.stale:
            return
        self.stale.add(rel)
        self._spawn(
            self.client.publish(
                self.topics["requests"],
                {"id": uuid.uuid4().hex, "source": self.config.source,
                 "type": "dev.hybridbus.change.request",
                 "data": {"path": rel, "instance": self.config.instance}},
            )
        )

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def handle(self, data: Any, token: str) -> Change | None:
        """One chunk event; the change once it is complete and handled."""
        done = self._assembler.add(data)
        if done is None:
            return None
        change, payload = done
        self.clock.see(change.clock)
        target = change.target
        if target is not None and not target.matches(self.config.service, self.config.version):
            self.position = token
            self._save()
            return change
        error = None
        try:
            status = self._apply(change, payload)
        except (ValueError, OSError) as exc:
            status, error = "failed", str(exc)
            log.warning("change %s on %s failed: %s", change.id, change.path, exc)
        if status == "conflict":
            log.warning("conflict on %s: local edits kept (change %s)", change.path, change.id)
        self.position = token
        if status == "applied":  # the callback first: the file is written, the state can wait
            self.applied += 1
            if self.on_change is not None:
                result = self.on_change(change, self.root / change.path)
                if inspect.isawaitable(result):
                    await result
        self._save()  # a crash before it applies the change again: found already so
        ack = Ack(
            change=change.id, instance=self.config.instance, status=status,  # type: ignore[arg-type]
            clock=self.clock.tick(), service=self.config.service or None,
            version=self.config.version or None, error=error,
        )
        self._spawn(
            self.client.publish(
                self.topics["acks"],
                {"id": f"{change.id}/{self.config.instance}/{ack.clock}",
                 "source": self.config.source,
                 "type": ACK_TYPE, "subject": change.id,
                 "data": msgspec.to_builtins(ack)},
            )
        )
        return change

    # -- running -----------------------------------------------------------------------

    async def announce(self) -> None:
        data = {
            "instance": self.config.instance, "service": self.config.service,
            "version": self.config.version, "fingerprint": self.config.fingerprint,
            "at": time.time(),
        }
        await self.client.publish(
            self.topics["instances"],
            {"id": uuid.uuid4().hex, "source": self.config.source, "type": ANNOUNCE_TYPE,
             "data": data},
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            await self.announce()
            for rel in sorted(self.conflicts):
                known = self.known.get(rel)
                local = self._local_hash(rel)
                if local is None or (known is not None and local == known[0]):
                    self.conflicts.discard(rel)
                    self.known.pop(rel, None)
                    self._ask(rel)
            self._save()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Follow until cancelled: announce, subscribe from the saved token, apply."""
        self._load()
        await self.announce()
        since = self.position
        if since is None:
            since = str((await self.client.history(self.topics["files"], limit=0)).position)
        beat = asyncio.create_task(self._heartbeat(), name="hybridbus-follow heartbeat")
        try:
            async with self.client.subscribe(self.topics["files"], since=since) as sub:
                if ready is not None:
                    ready.set()
                async for received in sub:
                    await self.handle(received.event.data, str(received.token))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            for task in list(self._acks):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
