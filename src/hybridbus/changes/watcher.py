"""`Watcher`: publish a directory's file changes as change events (watchfiles).

Owns: the watched tree's state (each file's bytes, as a `textdiff.Text` for
text — one piece per chunk of lines — so a save is diffed against what was
kept: memcmp from both ends, only the changed lines split and rehashed),
turning watchfiles' coalesced batches into created / modified / deleted /
moved changes (a delete and a create of the same content in one batch is a
move), `.gitignore` (pathspec; `.git/` and `.hybridbus/` always ignored), the
Lamport clock, publishing each change's chunks in order on `<topic>/files`,
resolving a target to the instances online then, and answering full-copy
requests (`<topic>/requests`) with a `snapshot` change in the same order.
Must not decide encodings (`core.changes`) nor know the server: it is a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec

from hybridbus.changes.registry import instances, read_all, topics
from hybridbus.client import Client
from hybridbus.core.changes import (
    EVENT_TYPE,
    Change,
    Format,
    Lamport,
    Target,
    encode_change,
    format_of,
    split,
)
from hybridbus.core.textdiff import Hunk, Text, tree_hash

__all__ = ["WatchConfig", "Watcher"]

log = logging.getLogger(__name__)
ALWAYS_IGNORED = (".git/", ".hybridbus/")


class WatchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one watcher."""

    topic: str  # e.g. changes/myrepo
    debounce_ms: int = 50  # saves within this window are one batch (watchfiles)
    source: str = "/hybridbus/watch"
    target: Target | None = None
    snapshot_at_start: bool = True  # publish every file once at start (late followers)


class _File:
    """What the watcher keeps of one file: its bytes (a `Text` for text) and content hash."""

    __slots__ = ("_data", "hash", "text")

    def __init__(self, path: str, data: bytes) -> None:
        self.text = Text(data) if format_of(path, data) != "binary" else None
        self._data = data if self.text is None else b""
        self.hash = self.text.hash if self.text is not None else tree_hash(data)

    @property
    def data(self) -> bytes:
        """The whole content (for text, joined from the kept pieces: a copy)."""
        return self._data if self.text is None else self.text.content()


def _is_text(lines: tuple[bytes, ...]) -> bool:
    """Whether changed lines keep a text file text: UTF-8 (whole lines), no NUL."""
    try:
        for line in lines:
            if b"\0" in line:
                return False
            line.decode()
    except UnicodeDecodeError:
        return False
    return True


class Watcher:
    """Watches `root` and publishes its changes on `config.topic` through `client`."""

    def __init__(self, client: Client, root: Path, config: WatchConfig) -> None:
        self.client = client
        self.root = root.resolve()
        self.config = config
        self.topics = topics(config.topic)
        self.clock = Lamport()
        self.files: dict[str, _File] = {}
        self.published: list[str] = []  # change ids, in order (tests, benchmarks)
        self._lock = asyncio.Lock()
        self._spec: Any = None

    # -- state -------------------------------------------------------------------------

    def _load_ignores(self) -> None:
        import pathspec

        lines = list(ALWAYS_IGNORED)
        ignore = self.root / ".gitignore"
        if ignore.is_file():
            lines += ignore.read_text().splitlines()
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignored(self, rel: str) -> bool:
        if self._spec is None:
            self._load_ignores()
        return bool(self._spec.match_file(rel))

    def _scan(self) -> list[str]:
        found = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.is_symlink() and not self.ignored(rel):
                found.append(rel)
        return found

    async def start(self) -> None:
        """Load the tree, take the clock from the log, publish snapshots (if configured)."""
        self._load_ignores()
        for item in await read_all(self.client, self.topics["files"]):
            head = item.event.data.get("change") if isinstance(item.event.data, dict) else None
            if isinstance(head, dict) and isinstance(head.get("clock"), int):
                self.clock.see(head["clock"])
        for rel in self._scan():
            data = (self.root / rel).read_bytes()
            self.files[rel] = _File(rel, data)
            if self.config.snapshot_at_start:
                await self._publish_full(rel, "snapshot")

    # -- publishing -----------------------------------------------------------------------

    async def _send(self, change: Change, payload: bytes) -> Change:
        if self.config.target is not None:
            online = await instances(self.client, self.config.topic, self.config.target)
            change = msgspec.structs.replace(
                change, target=self.config.target, targets=tuple(i.instance for i in online)
            )
        events = [
            {
                "id": f"{change.id}/{i}",
                "source": self.config.source,
                "type": EVENT_TYPE,
                "subject": change.path,
                "data": data,
            }
            for i, data in enumerate(split(change, payload))
        ]
        await self.client.publish_many(self.topics["files"], events)
        self.published.append(change.id)
        log.info("%s %s (%s)", change.kind, change.path, change.id)
        return change

    def _change(self, kind: Any, rel: str, **fields: Any) -> Change:
        change_id = uuid.uuid4().hex[:16]
        return Change(id=change_id, kind=kind, path=rel, clock=self.clock.tick(), **fields)

    async def _publish_full(self, rel: str, kind: str) -> Change:
        state = self.files[rel]
        data = state.data
        fmt = format_of(rel, data)
        encoding, _, payload = encode_change(fmt, None, data, None)
        change = self._change(kind, rel, format=fmt, encoding=encoding, after=state.hash)
        return await self._send(change, payload)

    def _edit_in_place(self, rel: str, text: Text) -> Hunk | None:
        """Bring `text` up to the saved file, mapped in memory (never read whole); the hunk.

        OSError if it cannot be mapped (gone, empty, unreadable).
        """
        with (self.root / rel).open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise OSError("empty: nothing to map")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as saved:
                return text.edit(saved)

    async def file_changed(self, rel: str) -> Change | None:
        """Publish what happened to `rel` since it was last seen; the change, if any.

        A plain text file is compared in place (`_edit_in_place`): the cost of
        a save is a memcmp of the file against the kept pieces, then the
        changed lines' split and hash (nothing after them moves); only the
        changed lines are checked to be UTF-8 still.
        """
        path = self.root / rel
        old = self.files.get(rel)
        # By name (text content assumed): plain text, not a JSON / YAML / TOML document.
        if old is not None and old.text is not None and format_of(rel, b"") == "text":
            before = old.hash
            try:
                hunk = self._edit_in_place(rel, old.text)
            except OSError:
                pass  # read below: gone, or empty
            else:
                if hunk is None:
                    return None
                if _is_text(hunk.added):
                    old.hash = old.text.hash
                    return await self._modified(rel, "text", before, old, b"", hunk)
                # No longer text: `old` is the new content now; published whole below.
                content = old.text.content()
                self.files[rel] = state = _File(rel, content)
                return await self._modified(rel, format_of(rel, content), before, state, b"", None)
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError:
            data = None
        if data is None:
            if old is None:
                return None
            del self.files[rel]
            return await self._send(self._change("deleted", rel, before=old.hash), b"")
        if old is None:
            self.files[rel] = _File(rel, data)
            return await self._publish_full(rel, "created")
        old_data = old.data
        if old_data == data:
            return None
        before = old.hash
        fmt = format_of(rel, data)
        hunk = None
        if old.text is not None and fmt != "binary":
            hunk = old.text.edit(data)
            old.hash = old.text.hash
        else:
            self.files[rel] = old = _File(rel, data)
        return await self._modified(rel, fmt, before, old, old_data, hunk)

    async def _modified(
        self, rel: str, fmt: Format, before: str, state: _File, old_data: bytes, hunk: Hunk | None
    ) -> Change:
        """Publish `rel` modified: from content hash `before` to `state` (`hunk`, if text)."""
        if fmt == "text" and hunk is not None:
            encoding, style, payload = "diff", None, hunk.render()
        else:
            encoding, style, payload = encode_change(fmt, old_data, state.data, hunk)
        change = self._change(
            "modified", rel, format=fmt, encoding=encoding, style=style,
            before=before, after=state.hash,
        )
        return await self._send(change, payload)

    async def batch(self, paths: set[str]) -> list[Change]:
        """Publish one coalesced batch of changed paths (moves detected), in path order."""
        async with self._lock:
            rels: set[str] = set()
            for raw in paths:
                try:
                    rel = Path(raw).relative_to(self.root).as_posix()
                except ValueError:
                    continue
                if self.ignored(rel):
                    continue
                if rel == ".gitignore":
                    self._load_ignores()
                if (self.root / rel).is_dir():
                    rels.update(r for r in self._scan() if r.startswith(rel + "/"))
                elif rel not in self.files and any(f.startswith(rel + "/") for f in self.files):
                    rels.update(f for f in self.files if f.startswith(rel + "/"))
                else:
                    rels.add(rel)
            gone = {r for r in rels if r in self.files and not (self.root / r).is_file()}
            new = {r for r in rels if r not in self.files and (self.root / r).is_file()}
            done: list[Change] = []
            for src in sorted(gone):
                for dst in sorted(new):
                    data = (self.root / dst).read_bytes()
                    if data == self.files[src].data:
                        state = self.files.pop(src)
                        self.files[dst] = state
                        change = self._change(
                            "moved", dst, from_path=src, before=state.hash, after=state.hash
                        )
                        done.append(await self._send(change, b""))
                        new.discard(dst)
                        rels -= {src, dst}
                        break
            for rel in sorted(rels):
                changed = await self.file_changed(rel)
                if changed is not None:
                    done.append(changed)
            return done

    async def answer(self, rel: str) -> None:
        """A follower asked for a full copy of `rel`: a snapshot (or its deletion) in order."""
        async with self._lock:
            if rel in self.files:
                await self._publish_full(rel, "snapshot")
            else:
                await self._send(self._change("deleted", rel), b"")

    async def edited(self, rel: str, hunk: Hunk) -> Change:
        """Publish an editor's edit of text file `rel` at once, before (or without) its save.

        For editor integrations (an IDE plugin knows what changed: nothing is
        read nor compared): `hunk` is applied to the content kept, so that
        the save, when it comes, is found unchanged and publishes nothing
        (or only what differs). ValueError if `rel` is not a plain text file
        the watcher keeps, or the hunk's removed lines are not there.
        """
        async with self._lock:
            state = self.files.get(rel)
            if state is None or state.text is None or format_of(rel, b"") != "text":
                raise ValueError(f"{rel!r} is not a text file watched here")
            if not _is_text(hunk.added):
                raise ValueError("an edit must keep the file UTF-8 text")
            before = state.hash
            state.text.apply(hunk)
            state.hash = state.text.hash
            return await self._modified(rel, "text", before, state, b"", hunk)

    async def _edits(self) -> None:
        """Edits editors publish on `<topic>/edits`: `{"path", "hunk"}` (a unified-diff hunk)."""
        async with self.client.subscribe(self.topics["edits"]) as sub:
            async for received in sub:
                data = received.event.data
                try:
                    path, text = data["path"], data["hunk"]
                    await self.edited(str(path), Hunk.parse(str(text).encode()))
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("edit %s refused: %s (the save is diffed)", received.event.id, exc)

    async def _requests(self) -> None:
        async with self.client.subscribe(self.topics["requests"]) as sub:
            async for received in sub:
                data = received.event.data
                if isinstance(data, dict) and isinstance(data.get("path"), str):
                    await self.answer(data["path"])

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start, then publish every coalesced batch of changes until `stop` is set."""
        import watchfiles

        await self.start()
        answering = asyncio.gather(
            asyncio.create_task(self._requests(), name="hybridbus-watch requests"),
            asyncio.create_task(self._edits(), name="hybridbus-watch edits"),
        )
        try:
            async for batch in watchfiles.awatch(
                self.root,
                debounce=self.config.debounce_ms,
                step=max(1, self.config.debounce_ms // 5),
                stop_event=stop,
                recursive=True,
            ):
                await self.batch({path for _, path in batch})
        finally:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
