"""`Tailer`: follow a growing file like `tail -F`, across rotation, from a saved position.

Owns: reading the complete lines appended to one path, each with the position
right after it (device, inode, offset); the three ways a log file goes away
and comes back — renamed (`app.log` -> `app.log.1`, a new `app.log`: the old
file's remaining lines first, then the new file from its start), truncated in
place (copytruncate: the size shrinks, reading restarts at 0) and missing for
a while (the last file is kept open and read; the path's next file is read
from its start); a partial last line (kept until its newline comes, flushed
as a line after `partial_timeout` seconds, or when its file is rotated away);
and the state file (`TailState`) that lets a restarted tailer go on right
after the last line its caller saved. Must not parse or ship lines.

It polls: `poll()` does one step (a stat of the path, an fstat and reads of the
open file) and `follow()` repeats it every `poll_interval` seconds (default
0.05) while there is nothing new, so a line is read within 50 ms of being
written. Polling, not watchfiles: it sees a rename, a truncation and a file
that is not there yet the same way on every filesystem (inotify misses NFS
and bind mounts) and costs two system calls per interval.

Limits, as `tail -F`'s: a file truncated and written past the old offset
between two polls is not seen as truncated; lines written to the old file
after its rename and after the poll that switched to the new one are not
read (loggers reopen before they write again: logrotate's `create`, Python's
`RotatingFileHandler`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hybridbus.errors import InvalidInput

__all__ = ["Line", "Position", "TailConfig", "TailState", "Tailer"]

_CHUNK: Final = 1 << 16
HEAD: Final = 256  # bytes of a file's start that identify it with its inode
_KEEP_CLOSED: Final = 64  # closed files whose positions can still be saved


def _digest(head: bytes, offset: int) -> str:
    return hashlib.sha256(head[: min(offset, HEAD)]).hexdigest()


@dataclass(frozen=True, slots=True)
class Position:
    """A place in one file: its device and inode, and a byte offset in it."""

    device: int
    inode: int
    offset: int


@dataclass(frozen=True, slots=True)
class Line:
    """One line (without its line ending) and the position right after it."""

    text: str
    position: Position


@dataclass(frozen=True, slots=True)
class TailConfig:
    """How a `Tailer` reads."""

    from_start: bool = False  # the file there at start: from its start, not its end
    poll_interval: float = 0.05  # seconds between polls while nothing is new
    partial_timeout: float = 2.0  # a line without its newline this long is flushed
    max_line: int = 1 << 20  # bytes: a longer line is cut here (the rest is another line)
    max_read: int = 1 << 20  # bytes read by one poll at most (a big file: several polls)


class TailState:
    """The state file: the position after the last line saved, as JSON, replaced atomically.

    With the position goes `head`, the SHA-256 (hex) of the file's first
    `min(offset, HEAD)` bytes: a new file that got the inode of a deleted one
    is not taken for it after a restart.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> tuple[Position, str] | None:
        """The saved position and head; None if there is no state file yet."""
        try:
            data = json.loads(self.path.read_text())
            position = Position(int(data["device"]), int(data["inode"]), int(data["offset"]))
            return position, str(data["head"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"state file {self.path} cannot be read: {exc}") from None

    def save(self, position: Position, head: str, path: Path | str) -> None:
        """Save `position` (of the file at `path`) so that a restart goes on right after it."""
        data = {
            "path": str(path),
            "device": position.device,
            "inode": position.inode,
            "offset": position.offset,
            "head": head,
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(data) + "\n")
        os.replace(temporary, self.path)


class _Open:
    """One open file: where its next read starts, and the partial line read so far."""

    __slots__ = ("device", "fd", "head", "inode", "offset", "partial", "partial_since")

    def __init__(self, fd: int, offset: int) -> None:
        stat = os.fstat(fd)
        self.fd = fd
        self.device = stat.st_dev
        self.inode = stat.st_ino
        self.offset = offset  # the next byte to read; the partial line ends here
        self.partial = b""
        self.partial_since = 0.0
        self.head = os.pread(fd, HEAD, 0)

    def position(self, offset: int) -> Position:
        return Position(self.device, self.inode, offset)

    def digest(self, offset: int) -> str:
        """The `head` of a position at `offset` in this file."""
        if len(self.head) < min(offset, HEAD):  # the file was shorter when last looked at
            self.head = os.pread(self.fd, HEAD, 0)
        return _digest(self.head, offset)

    def same(self, stat: os.stat_result) -> bool:
        return (stat.st_dev, stat.st_ino) == (self.device, self.inode)


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class Tailer:
    """Follows `path`; `poll()` returns the lines that are complete now.

    With `state`, the first file opened is the one the state names, right
    after its saved position: the path itself if it is still that file,
    else a sibling it was renamed to (`app.log.1`), read to its end before
    the path; if neither is found, the path from its start. The caller
    saves positions (`save`) once it is done with their lines.
    """

    def __init__(
        self, path: Path | str, config: TailConfig | None = None, state: TailState | None = None
    ) -> None:
        self.path = Path(path)
        self.config = config or TailConfig()
        self.state = state
        self._file: _Open | None = None
        self._started = False
        self._saved = state.load() if state is not None else None
        # The heads of the files rotated away lately: their lines may be saved after they
        # are closed (a batch of lines can span several rotations).
        self._closed: dict[tuple[int, int], bytes] = {}

    @property
    def position(self) -> Position | None:
        """The position after the last byte read (partial line included); None if none open."""
        return None if self._file is None else self._file.position(self._file.offset)

    def save(self, position: Position) -> None:
        """Record in the state file that the lines up to `position` are done with."""
        if self.state is None:
            return
        file, key = self._file, (position.device, position.inode)
        if file is not None and (file.device, file.inode) == key:
            head = file.digest(position.offset)
        elif key in self._closed:
            head = _digest(self._closed[key], position.offset)
        else:
            raise InvalidInput(f"{position} is not in a file this tailer read lately")
        self.state.save(position, head, self.path)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.digest(HEAD)  # the head of a file saved after it is closed
            self._closed[file.device, file.inode] = file.head
            while len(self._closed) > _KEEP_CLOSED:
                del self._closed[next(iter(self._closed))]
            os.close(file.fd)

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one step ------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> list[Line]:
        """The lines complete now, in order, after following any rotation."""
        now = time.monotonic() if now is None else now
        lines: list[Line] = []
        if self._file is None:
            self._file = self._first() if not self._started else self._reopen()
            self._started = True
            if self._file is None:
                return lines
        current = self._file
        at_path = _stat(self.path)  # before the last read of the old file: nothing is lost
        if os.fstat(current.fd).st_size < current.offset:  # copytruncate
            lines += self._flush(current)
            current.offset = 0
        budget = self.config.max_read
        done, budget = self._drain(current, now, budget, lines)
        if not done:  # more to read: the next poll goes on from here
            return lines
        if at_path is not None and not current.same(at_path):
            # Renamed away (or deleted) and a new file at the path: the old one is read to
            # its end (after the stat above: its last writes too), then the new one.
            lines += self._flush(current)
            self.close()
            self._file = self._reopen()
            if self._file is not None:
                self._drain(self._file, now, budget, lines)
        elif current.partial and now - current.partial_since >= self.config.partial_timeout:
            lines += self._flush(current)
        return lines

    def follow(self, stop: threading.Event) -> Iterator[list[Line]]:
        """Batches of lines as they come, until `stop` is set."""
        while not stop.is_set():
            lines = self.poll()
            if lines:
                yield lines
            else:
                stop.wait(self.config.poll_interval)

    # -- opening -------------------------------------------------------------------------

    def _first(self) -> _Open | None:
        """The file to start with, where to start in it (the state, --from-start, the end)."""
        if self._saved is not None:
            saved, head = self._saved
            found = self._find(saved, head)
            if found is not None:
                fd, size = found
                return _Open(fd, saved.offset if size >= saved.offset else 0)
            return self._reopen()  # the saved file is gone: all of the path is new
        opened = _open(self.path)
        if opened is None:
            return None
        return _Open(opened, 0 if self.config.from_start else os.fstat(opened).st_size)

    def _reopen(self) -> _Open | None:
        """The file at the path now, from its start."""
        fd = _open(self.path)
        return None if fd is None else _Open(fd, 0)

    def _find(self, saved: Position, head: str) -> tuple[int, int] | None:
        """(fd, size) of the saved file: at the path, or renamed beside it (`<name>*`)."""
        candidates = [self.path]
        with contextlib.suppress(OSError):
            candidates += sorted(
                p for p in self.path.parent.glob(f"{self.path.name}*") if p != self.path
            )
        for candidate in candidates:
            stat = _stat(candidate)
            if stat is None or (stat.st_dev, stat.st_ino) != (saved.device, saved.inode):
                continue
            fd = _open(candidate)
            if fd is None:
                continue
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) == (saved.device, saved.inode) and (
                _digest(os.pread(fd, HEAD, 0), saved.offset) == head
            ):
                return fd, opened.st_size
            os.close(fd)  # another file (its inode reused), or it changed at its start
        return None

    # -- reading -------------------------------------------------------------------------

    def _drain(
        self, file: _Open, now: float, budget: int, lines: list[Line]
    ) -> tuple[bool, int]:
        """Read `file` to its end or `budget` bytes; its complete lines (and any line past
        `max_line`) to `lines`. (whether its end was reached, the budget left)."""
        while True:
            if budget <= 0:
                return False, budget
            chunk = os.pread(file.fd, min(_CHUNK, budget), file.offset)
            if not chunk:
                return True, budget
            budget -= len(chunk)
            start = file.offset - len(file.partial)  # where the pending bytes began
            data = file.partial + chunk
            file.offset += len(chunk)
            begin = 0
            limit = self.config.max_line
            while (end := data.find(b"\n", begin)) >= 0:
                while end - begin > limit:
                    lines.append(Line(_text(data[begin : begin + limit]),
                                      file.position(start + begin + limit)))
                    begin += limit
                lines.append(Line(_text(data[begin:end]), file.position(start + end + 1)))
                begin = end + 1
            rest = data[begin:]
            while len(rest) >= limit:
                lines.append(Line(_text(rest[:limit]), file.position(start + begin + limit)))
                begin += limit
                rest = rest[limit:]
            if rest and (begin > 0 or not file.partial):
                file.partial_since = now  # a new partial line starts waiting
            file.partial = rest

    def _flush(self, file: _Open) -> list[Line]:
        """The partial line of `file` as a line of its own."""
        if not file.partial:
            return []
        line = Line(_text(file.partial), file.position(file.offset))
        file.partial = b""
        return [line]


def _text(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")
