"""Line diffs of big files in time proportional to the edit, and their content hash.

Owns: `Text`, a file's content kept as bytes with a table of content-defined
chunks of lines (each with its line count, byte length and SHA-256), so that
an edit is located by comparing with the kept bytes from both ends inward
(`memcmp`, no split), only the changed lines are split, and the content hash
(`tree_hash`: SHA-256 over the chunks' digests) is updated by rehashing the
one or two chunks that changed; `Hunk`, one unified-diff hunk, rendered and
parsed as text (`@@ -a,b +c,d @@`). A chunk ends after a line whose CRC-32 is
0 modulo `CHUNK_LINES` (or after `MAX_CHUNK_LINES` lines), so the chunks, and
the hash, depend on the content only. Must not do I/O: callers read and write.
"""

from __future__ import annotations

import hashlib
import mmap
import zlib
from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["CHUNK_LINES", "Hunk", "Text", "tree_hash"]

CHUNK_LINES = 1024  # lines per chunk on average
MAX_CHUNK_LINES = 8 * CHUNK_LINES


@dataclass(frozen=True, slots=True)
class Hunk:
    """Lines `start`..`start + len(removed)` (0-based) of the old text become `added`."""

    start: int
    removed: tuple[bytes, ...]
    added: tuple[bytes, ...]

    def render(self) -> bytes:
        """The hunk as unified-diff text (a line without newline gets the usual marker)."""
        old, new = len(self.removed), len(self.added)
        head = b"@@ -%d,%d +%d,%d @@\n" % (self.start + (old > 0), old, self.start + (new > 0), new)
        body = [head]
        for sign, lines in ((b"-", self.removed), (b"+", self.added)):
            for line in lines:
                body.append(sign + line)
                if not line.endswith(b"\n"):
                    body.append(b"\n\\ No newline at end of file\n")
        return b"".join(body)

    @classmethod
    def parse(cls, text: bytes) -> Hunk:
        """The inverse of `render`; ValueError if `text` is not one such hunk."""
        head, _, body = text.partition(b"\n")
        try:
            minus, plus = head.split(b" ")[1:3]
            old_start, old = (int(x) for x in minus[1:].split(b","))
        except (ValueError, IndexError) as exc:
            raise ValueError(f"not a hunk header: {head[:80]!r}") from exc
        del plus
        removed: list[bytes] = []
        added: list[bytes] = []
        for line in body.splitlines(keepends=True):
            if line.startswith(b"\\"):
                target = added if added else removed
                target[-1] = target[-1].removesuffix(b"\n")
            elif line[:1] == b"-":
                removed.append(line[1:])
            elif line[:1] == b"+":
                added.append(line[1:])
            else:
                raise ValueError(f"not a hunk line: {line[:80]!r}")
        if len(removed) != old:
            raise ValueError("hunk header and body disagree")
        return cls(old_start - (old > 0), tuple(removed), tuple(added))


def _chunks(data: bytes | bytearray, begin: int = 0, end: int | None = None) -> list[Chunk]:
    """The chunks of `data[begin:end]` (`begin` is a chunk boundary)."""
    out: list[Chunk] = []
    stop_at = len(data) if end is None else end
    with memoryview(data) as view:
        start = pos = begin
        lines = 0
        while pos < stop_at:
            nl = data.find(b"\n", pos, stop_at)
            stop = stop_at if nl < 0 else nl + 1
            lines += 1
            if (
                zlib.crc32(view[pos:stop]) % CHUNK_LINES == 0
                or lines >= MAX_CHUNK_LINES
                or stop == stop_at
            ):
                out.append((lines, stop - start, hashlib.sha256(view[start:stop]).digest()))
                start, lines = stop, 0
            pos = stop
    return out


Chunk = tuple[int, int, bytes]  # lines, bytes, SHA-256
Buffer = bytes | bytearray | mmap.mmap


def tree_hash(data: bytes | bytearray) -> str:
    """The content hash of `data` as `Text` keeps it: `sha256:` + hex."""
    return _digest([c[2] for c in _chunks(data)])


def _digest(digests: list[bytes]) -> str:
    return "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest()


class Text:
    """A file's bytes and chunk table; `edit(new)` finds the change and updates both.

    Both the watcher and a follower keep a `bytearray`: `edit` (the watcher,
    given the saved file mapped in memory) and `apply` (a follower, given a
    hunk) change it in place, a memmove of the tail.
    """

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self._table = _chunks(data)
        self._reindex()

    def _reindex(self) -> None:
        offsets = [0]
        lines = [0]
        for n, size, _ in self._table:
            offsets.append(offsets[-1] + size)
            lines.append(lines[-1] + n)
        self._offsets = offsets
        self._lines = lines
        self.hash = _digest([c[2] for c in self._table])

    @property
    def line_count(self) -> int:
        return self._lines[-1]

    def edit(self, new: Buffer) -> Hunk | None:
        """Make `new` the content; the hunk that turns the old content into it (None: same).

        `new` may be any buffer with `find` and slicing: bytes, or an `mmap`
        of the saved file, which is then read in place, never copied whole.
        Cost: comparing with the kept bytes (memcmp from both ends) plus
        splitting and hashing the chunks the edit touches, not the whole
        file. Kept as a `bytearray`, the content is spliced in place (a
        memmove of the tail); kept as `bytes`, it becomes a copy of `new`.
        """
        old = self.data
        with memoryview(new) as view:
            if len(view) == len(old) and old.startswith(view):  # memcmp, whatever the buffer
                return None
            prefix = _common_prefix(view, old)
            suffix = _common_suffix(view, old, min(len(old), len(view)) - prefix)
        start = old.rfind(b"\n", 0, prefix) + 1  # widen to whole lines
        old_end = len(old) - suffix
        new_end = len(new) - suffix
        if 0 < old_end < len(old) and old[old_end - 1] != 0x0A:
            nl = old.find(b"\n", old_end)
            grow = (len(old) if nl < 0 else nl + 1) - old_end
            old_end += grow  # inside the common suffix: the same bytes in `new`
            new_end += grow
        added = bytes(new[start:new_end])
        hunk = Hunk(
            self.line_at(start),
            tuple(bytes(line) for line in old[start:old_end].splitlines(keepends=True)),
            tuple(added.splitlines(keepends=True)),
        )
        delta = len(new) - len(old)
        if isinstance(old, bytearray):
            old[start:old_end] = added
        else:
            self.data = bytes(new)
        self._rechunk(start, old_end, delta)
        return hunk

    def apply(self, hunk: Hunk) -> int:
        """Apply `hunk` in place (`data` must be a bytearray); the byte offset of the change.

        ValueError if the removed lines are not there (a wrong base).
        """
        data = self.data
        if not isinstance(data, bytearray):
            data = self.data = bytearray(data)
        start = self.offset_of(hunk.start)
        removed = b"".join(hunk.removed)
        end = start + len(removed)
        if data[start:end] != removed:
            raise ValueError(f"the hunk at line {hunk.start + 1} does not match the file")
        added = b"".join(hunk.added)
        data[start:end] = added
        self._rechunk(start, end, len(added) - len(removed))
        return start

    def line_at(self, offset: int) -> int:
        """The 0-based line number of the line starting at byte `offset`."""
        i = bisect_right(self._offsets, offset) - 1
        if i >= len(self._table):
            return self._lines[-1]
        return self._lines[i] + self.data.count(b"\n", self._offsets[i], offset)

    def offset_of(self, line: int) -> int:
        """The byte offset where 0-based `line` starts (the length at the end)."""
        i = bisect_right(self._lines, line) - 1
        if i >= len(self._table):
            return len(self.data)
        pos = self._offsets[i]
        for _ in range(line - self._lines[i]):
            pos = self.data.index(b"\n", pos) + 1
        return pos

    def _rechunk(self, start: int, old_end: int, delta: int) -> None:
        """Old bytes `start`..`old_end` changed (`delta` longer): rechunk the chunks they touch.

        Boundaries before the first touched chunk depend on unchanged bytes
        only; the region is widened to end on a natural boundary (a line
        whose CRC ends a chunk whatever came before), after which the old
        chunks hold again.
        """
        table = self._table
        if not table:
            self._table = _chunks(self.data)
            self._reindex()
            return
        first = min(bisect_right(self._offsets, start) - 1, len(table) - 1)
        last = min(bisect_right(self._offsets, max(old_end - 1, start)) - 1, len(table) - 1)
        while last + 1 < len(table) and table[last][0] >= MAX_CHUNK_LINES:
            last += 1
        begin, end = self._offsets[first], self._offsets[last + 1] + delta
        if last == len(table) - 1:
            end = len(self.data)
        table[first : last + 1] = _chunks(self.data, begin, end)
        self._reindex()


_BLOCK = 1 << 18  # bytes compared per step before bisecting inside the block that differs


def _common_prefix(a: Buffer | memoryview, b: bytes | bytearray) -> int:
    """The length of the longest common prefix: memcmp block by block, no copies."""
    size = min(len(a), len(b))
    lo = 0
    with memoryview(a) as view:
        while lo < size:
            hi = min(lo + _BLOCK, size)
            if not b.startswith(view[lo:hi], lo):
                break
            lo = hi
        else:
            return size
        while lo < hi:  # the first difference is in lo..hi
            mid = (lo + hi + 1) // 2
            if b.startswith(view[lo:mid], lo):
                lo = mid
            else:
                hi = mid - 1
    return lo


def _common_suffix(a: Buffer | memoryview, b: bytes | bytearray, limit: int) -> int:
    """The length of the longest common suffix, at most `limit`."""
    la, lb = len(a), len(b)
    lo = 0
    with memoryview(a) as view:
        while lo < limit:
            hi = min(lo + _BLOCK, limit)
            if not b.startswith(view[la - hi : la - lo], lb - hi):
                break
            lo = hi
        else:
            return limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if b.startswith(view[la - mid : la - lo], lb - mid):
                lo = mid
            else:
                hi = mid - 1
    return lo
