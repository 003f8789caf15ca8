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
from itertools import accumulate

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


def _chunks(data: Buffer, begin: int = 0, end: int | None = None) -> list[Chunk]:
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

    def __init__(self, data: Buffer) -> None:
        self.data = data
        self._table = _chunks(data)
        self._reindex()

    def _reindex(self) -> None:
        table = self._table
        self._offsets = [0, *accumulate(c[1] for c in table)]
        self._lines = [0, *accumulate(c[0] for c in table)]
        self.hash = _digest([c[2] for c in table])

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
        if isinstance(old, mmap.mmap):
            raise TypeError("edit() compares with content kept in memory, not a mapped file")
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
        """Apply `hunk` in place (`data` a bytearray: made one); the byte offset of the change.

        ValueError if the removed lines are not there (a wrong base).
        """
        if not isinstance(self.data, bytearray):
            self.data = bytearray(self.data)
        start, end, added = self.locate(hunk)
        self.data[start:end] = added
        self.replaced(start, end, len(added))
        return start

    def locate(self, hunk: Hunk) -> tuple[int, int, bytes]:
        """Where `hunk` applies: `(start, end, added)`, bytes `start`..`end` becoming `added`.

        ValueError if the removed lines are not there (a wrong base). With
        `replaced`, for a caller that changes `data` itself (a follower's file
        mapped in memory, which must be resized around the change).
        """
        start = self.offset_of(hunk.start)
        removed = b"".join(hunk.removed)
        end = start + len(removed)
        if self.data[start:end] != removed:
            raise ValueError(f"the hunk at line {hunk.start + 1} does not match the file")
        return start, end, b"".join(hunk.added)

    def replaced(self, start: int, end: int, length: int) -> None:
        """`data`'s old bytes `start`..`end` were replaced by `length` bytes: mend the table."""
        self._rechunk(start, end, length - (end - start))

    def line_at(self, offset: int) -> int:
        """The 0-based line number of the line starting at byte `offset`."""
        i = bisect_right(self._offsets, offset) - 1
        if i >= len(self._table):
            return self._lines[-1]
        return self._lines[i] + _newlines(self.data, self._offsets[i], offset)

    def offset_of(self, line: int) -> int:
        """The byte offset where 0-based `line` starts (the length at the end)."""
        i = bisect_right(self._lines, line) - 1
        if i >= len(self._table):
            return len(self.data)
        data = self.data
        pos = self._offsets[i]
        for _ in range(line - self._lines[i]):
            pos = data.find(b"\n", pos) + 1
        return pos

    def _rechunk(self, start: int, old_end: int, delta: int) -> None:
        """Old bytes `start`..`old_end` (whole lines) became `delta` longer: mend the table.

        Just as `_chunks` would cut the whole content (the hash depends on the
        content only), at the cost of the change: the unchanged lines around
        it end no chunk by their content (a chunk ends at the first line that
        does), so only the changed lines are split and their CRCs taken, up to
        the first chunk end past the change that a line's content makes;
        chunks cut by `MAX_CHUNK_LINES` in between are cut again by counting
        lines (where such a cut falls depends on where its chunk began).
        """
        table = self._table
        data = self.data
        offsets = self._offsets  # still the old content's
        count = len(table)
        if not count:
            return self._remake()
        first = min(bisect_right(offsets, start) - 1, count - 1)
        if start == offsets[first + 1] and _ends_naturally(data, start):
            first += 1  # an append at the end: the old last chunk ends by its content, and stays
        begin = offsets[first] if first < count else start
        k = bisect_right(offsets, old_end)  # chunks first..k-1 are replaced
        while k < count and not _ends_naturally(data, offsets[k] + delta):
            k += 1  # chunk k-1 was cut by the line limit: so may the next one be
        stop = len(data) if k >= count else offsets[k] + delta
        new_stop = old_end + delta  # the end of the changed lines in the new content
        lines = _lines(data, begin, start)
        out: list[Chunk] = []
        chunk_start, pos = begin, start
        with memoryview(data) as view:
            while pos < new_stop:
                nl = data.find(b"\n", pos, new_stop)
                end = new_stop if nl < 0 else nl + 1
                lines += 1
                if lines >= MAX_CHUNK_LINES or zlib.crc32(view[pos:end]) % CHUNK_LINES == 0:
                    digest = hashlib.sha256(view[chunk_start:end]).digest()
                    out.append((lines, end - chunk_start, digest))
                    chunk_start, lines = end, 0
                pos = end
            # The unchanged lines up to `stop` end no chunk by content; the line limit may.
            rest = _lines(data, new_stop, stop)
            while lines + rest > MAX_CHUNK_LINES:
                taken = MAX_CHUNK_LINES - lines
                for _ in range(taken):
                    pos = data.find(b"\n", pos) + 1
                digest = hashlib.sha256(view[chunk_start:pos]).digest()
                out.append((MAX_CHUNK_LINES, pos - chunk_start, digest))
                chunk_start, lines, rest = pos, 0, rest - taken
            if stop > chunk_start:
                digest = hashlib.sha256(view[chunk_start:stop]).digest()
                out.append((lines + rest, stop - chunk_start, digest))
        table[first:k] = out
        self._reindex()
        return None

    def _remake(self) -> None:
        """Cut the whole content into chunks anew."""
        self._table = _chunks(self.data)
        self._reindex()


def _lines(data: Buffer, begin: int, end: int) -> int:
    """How many lines `data[begin:end]` holds (a last one without newline counts)."""
    if end <= begin:
        return 0
    return _newlines(data, begin, end) + (data[end - 1] != 0x0A)


def _newlines(data: Buffer, begin: int, end: int) -> int:
    """How many newlines `data[begin:end]` holds (an `mmap` has no `count`: a copy of the span)."""
    if isinstance(data, mmap.mmap):
        return data[begin:end].count(b"\n")
    return data.count(b"\n", begin, end)


def _ends_naturally(data: Buffer, end: int) -> bool:
    """Whether the line ending at `end` ends a chunk by its content (its CRC)."""
    line_start = data.rfind(b"\n", 0, end - 1) + 1
    with memoryview(data) as view:
        return zlib.crc32(view[line_start:end]) % CHUNK_LINES == 0


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
