"""Line diffs of big files in time proportional to the edit, and their content hash.

Owns: `Text`, a file's content cut into content-defined chunks of lines
(each with its line count, byte length and SHA-256), kept as one `bytes`
piece per chunk (a rope: an edit replaces the one or two pieces it touches,
nothing after them moves) or, for a caller that owns the bytes (a follower's
file mapped in memory), over that buffer; an edit is located by comparing
with the kept pieces from both ends inward (`memcmp`, no split), only the
changed lines are split, and the content hash (`tree_hash`: SHA-256 over
the chunks' digests) is updated by rehashing the chunks that changed;
`Hunk`, one unified-diff hunk, rendered and parsed as text
(`@@ -a,b +c,d @@`). A chunk ends after a line whose CRC-32 is 0 modulo
`CHUNK_LINES` (or after `MAX_CHUNK_LINES` lines), so the chunks, and the
hash, depend on the content only. Must not do I/O: callers read and write.
"""

from __future__ import annotations

import hashlib
import mmap
import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate, pairwise

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


def _chunks(data: Buffer) -> list[Chunk]:
    """The chunks of `data`, cut as `Text` keeps them."""
    out: list[Chunk] = []
    size = len(data)
    with memoryview(data) as view:
        start = pos = 0
        lines = 0
        while pos < size:
            nl = data.find(b"\n", pos)
            stop = size if nl < 0 else nl + 1
            lines += 1
            if (
                zlib.crc32(view[pos:stop]) % CHUNK_LINES == 0
                or lines >= MAX_CHUNK_LINES
                or stop == size
            ):
                out.append((lines, stop - start, hashlib.sha256(view[start:stop]).digest()))
                start, lines = stop, 0
            pos = stop
    return out


Chunk = tuple[int, int, bytes]  # lines, bytes, SHA-256
Buffer = bytes | bytearray | mmap.mmap


def tree_hash(data: Buffer) -> str:
    """The content hash of `data` as `Text` keeps it: `sha256:` + hex."""
    return _digest([c[2] for c in _chunks(data)])


def _digest(digests: list[bytes]) -> str:
    return "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest()


class Text:
    """A file's content and chunk table; `edit(new)` finds the change and updates both.

    `Text(content)` keeps the content as one `bytes` piece per chunk: `edit`
    (the watcher, given the saved file mapped in memory) and `apply` (a
    hunk) replace the pieces the change touches. `Text.mapped(buffer)`
    reads a buffer its caller owns and changes (a follower's file mapped in
    memory): `locate` a hunk, change the buffer, then `replaced`.
    """

    __slots__ = (
        "_buffer", "_counts", "_digests", "_lines", "_offsets", "_pieces", "_sizes", "hash",
    )  # fmt: skip

    def __init__(self, content: Buffer = b"") -> None:
        self._buffer: bytearray | mmap.mmap | None = None
        self._counts: list[int] = []
        self._sizes: list[int] = []
        self._digests: list[bytes] = []
        self._set(0, 0, _chunks(content))
        self._pieces: list[bytes] | None = [
            bytes(content[a:b]) for a, b in pairwise(self._offsets)
        ]

    @classmethod
    def mapped(cls, buffer: bytearray | mmap.mmap) -> Text:
        """A `Text` over `buffer`, which its caller changes (then calls `replaced`)."""
        text = cls.__new__(cls)
        text._pieces = None
        text._buffer = buffer
        text._counts, text._sizes, text._digests = [], [], []
        text._set(0, 0, _chunks(buffer))
        return text

    def _set(self, first: int, k: int, table: list[Chunk]) -> None:
        """Chunks `first`..`k - 1` become `table`: the offsets, line numbers and hash anew."""
        self._counts[first:k] = [c[0] for c in table]
        self._sizes[first:k] = [c[1] for c in table]
        self._digests[first:k] = [c[2] for c in table]
        self._offsets = [0, *accumulate(self._sizes)]
        self._lines = [0, *accumulate(self._counts)]
        self.hash = _digest(self._digests)

    @property
    def chunks(self) -> list[Chunk]:
        """The chunk table: (lines, bytes, SHA-256) of each chunk, in order."""
        return list(zip(self._counts, self._sizes, self._digests, strict=True))

    @property
    def buffer(self) -> bytearray | mmap.mmap | None:
        """The caller's buffer of a `mapped` text (None: the content is kept in pieces)."""
        return self._buffer

    @property
    def size(self) -> int:
        return self._offsets[-1]

    @property
    def line_count(self) -> int:
        return self._lines[-1]

    def content(self) -> bytes:
        """The whole content, as one `bytes` (a copy)."""
        if self._pieces is None:
            return bytes(self._buffer or b"")
        return b"".join(self._pieces)

    def _chunk(self, i: int) -> bytes:
        """Chunk `i`'s bytes."""
        if self._pieces is not None:
            return self._pieces[i]
        assert self._buffer is not None
        return bytes(self._buffer[self._offsets[i] : self._offsets[i + 1]])

    def _read(self, start: int, end: int) -> bytes:
        """Bytes `start`..`end` of the content."""
        if self._pieces is None:
            assert self._buffer is not None
            return bytes(self._buffer[start:end])
        offsets, pieces = self._offsets, self._pieces
        i = bisect_right(offsets, start) - 1
        out: list[bytes] = []
        while start < end and i < len(pieces):
            base = offsets[i]
            out.append(pieces[i][start - base : end - base])
            start, i = offsets[i + 1], i + 1
        return b"".join(out)

    def _at(self, offset: int) -> tuple[int, int]:
        """The chunk holding byte `offset` (the last one for the end) and where in it."""
        i = max(0, min(bisect_right(self._offsets, offset) - 1, len(self._sizes) - 1))
        return i, offset - self._offsets[i]

    def edit(self, new: Buffer) -> Hunk | None:
        """Make `new` the content; the hunk that turns the old content into it (None: same).

        `new` may be any buffer with slicing: bytes, or an `mmap` of the
        saved file, which is then read in place, never copied whole. Cost:
        comparing with the kept pieces (memcmp from both ends) plus splitting
        and hashing the chunks the edit touches, not the whole file; nothing
        after the change moves.
        """
        if self._pieces is None:
            raise TypeError("edit() compares with content kept in pieces, not a caller's buffer")
        size = self.size
        with memoryview(new) as view:
            prefix = self._prefix(view)
            if prefix == size == len(view):
                return None
            suffix = self._suffix(view, min(size, len(view)) - prefix)
        start = 0  # widened to whole lines
        if self._sizes:
            i, local = self._at(prefix)
            start = prefix - local + self._chunk(i).rfind(b"\n", 0, local) + 1
        old_end = size - suffix
        new_end = len(new) - suffix
        old_whole = old_end in (start, size) or self._read(old_end - 1, old_end) == b"\n"
        new_whole = new_end in (start, len(new)) or new[new_end - 1] == 0x0A
        if not (old_whole and new_whole):  # to the next line end in the common suffix
            i, local = self._at(old_end)
            piece = self._chunk(i)
            nl = piece.find(b"\n", local)
            grow = (len(piece) if nl < 0 else nl + 1) - local
            old_end += grow
            new_end += grow
        added = bytes(new[start:new_end])
        removed = self._read(start, old_end)
        hunk = Hunk(
            self.line_at(start),
            tuple(removed.splitlines(keepends=True)),
            tuple(added.splitlines(keepends=True)),
        )
        self._replace(start, old_end, added)
        return hunk

    def _prefix(self, view: memoryview) -> int:
        """The length of the common prefix of the content and `view` (memcmp piece by piece)."""
        pos = 0
        for piece in self._pieces or ():
            same = _common_prefix(view[pos : pos + len(piece)], piece)
            pos += same
            if same < len(piece):
                break
        return pos

    def _suffix(self, view: memoryview, limit: int) -> int:
        """The length of the common suffix of the content and `view`, at most `limit`."""
        got, end = 0, len(view)
        for piece in reversed(self._pieces or ()):
            most = min(len(piece), limit - got)
            if most <= 0:
                break
            same = _common_suffix(view[end - got - most : end - got], piece, most)
            got += same
            if same < len(piece):
                break
        return got

    def apply(self, hunk: Hunk) -> int:
        """Apply `hunk` to the kept pieces; the byte offset of the change.

        ValueError if the removed lines are not there (a wrong base).
        """
        if self._pieces is None:
            raise TypeError("apply() changes content kept in pieces: locate() and replaced()")
        start, end, added = self.locate(hunk)
        self._replace(start, end, added)
        return start

    def locate(self, hunk: Hunk) -> tuple[int, int, bytes]:
        """Where `hunk` applies: `(start, end, added)`, bytes `start`..`end` becoming `added`.

        ValueError if the removed lines are not there (a wrong base). With
        `replaced`, for a caller that changes its buffer itself (a follower's
        file mapped in memory, which must be resized around the change).
        """
        start = self.offset_of(hunk.start)
        removed = b"".join(hunk.removed)
        end = start + len(removed)
        if self._read(start, end) != removed:
            raise ValueError(f"the hunk at line {hunk.start + 1} does not match the file")
        added = b"".join(hunk.added)
        if end != self.size and any(p and not p.endswith(b"\n") for p in (removed, added)):
            raise ValueError("only the file's last line may end without a newline")
        return start, end, added

    def line_at(self, offset: int) -> int:
        """The 0-based line number of the line starting at byte `offset`."""
        i = bisect_right(self._offsets, offset) - 1
        if i >= len(self._sizes):
            return self._lines[-1]
        return self._lines[i] + self._chunk(i).count(b"\n", 0, offset - self._offsets[i])

    def offset_of(self, line: int) -> int:
        """The byte offset where 0-based `line` starts (the length at the end)."""
        i = bisect_right(self._lines, line) - 1
        if i >= len(self._sizes):
            return self.size
        piece = self._chunk(i)
        pos = 0
        for _ in range(line - self._lines[i]):
            pos = piece.find(b"\n", pos) + 1
        return self._offsets[i] + pos

    def _replace(self, start: int, end: int, added: bytes) -> None:
        """Bytes `start`..`end` (whole lines) of the kept pieces become `added`."""
        pieces = self._pieces
        assert pieces is not None
        first, k = self._span(start, end)
        begin = self._offsets[first]
        joined = b"".join(pieces[first:k])
        span = joined[: start - begin] + added + joined[end - begin :]
        self._mend(first, k, span, start - begin, start - begin + len(added), pieces.__getitem__)

    def replaced(self, start: int, end: int, length: int) -> None:
        """The buffer's old bytes `start`..`end` were replaced by `length` bytes: mend the table."""
        buffer = self._buffer
        if buffer is None:
            raise TypeError("replaced() is for a mapped text: apply() changes kept pieces")
        offsets = self._offsets
        delta = length - (end - start)
        first, k = self._span(start, end)
        begin = offsets[first]
        span = bytes(buffer[begin : offsets[k] + delta])

        def chunk(j: int) -> bytes:
            return bytes(buffer[offsets[j] + delta : offsets[j + 1] + delta])

        self._mend(first, k, span, start - begin, start - begin + length, chunk)

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """The chunks `first`..`k - 1` a change of old bytes `start`..`end` re-cuts."""
        offsets, count = self._offsets, len(self._sizes)
        if not count:
            return 0, 0
        first = min(bisect_right(offsets, start) - 1, count - 1)
        if start == offsets[count] and _ends_naturally(self._chunk(count - 1)):
            first = count  # an append at the end: the old last chunk ends by its content, and stays
        return first, min(bisect_right(offsets, end), count)

    def _mend(
        self, first: int, k: int, span: bytes, begin: int, end: int, chunk: Callable[[int], bytes]
    ) -> None:
        """Old chunks `first`..`k - 1` are now `span`, changed at `begin`..`end`: re-cut them.

        Chunks after them cut by the line limit are taken in too (where such
        a cut falls depends on where its chunk began), until one that ends by
        its content.
        """
        count = len(self._sizes)
        while k < count and span and not _ends_naturally(span):
            span += chunk(k)
            k += 1
        table, cuts = _cut(span, begin, end)
        if self._pieces is not None:
            self._pieces[first:k] = [span[a:b] for a, b in cuts]
        self._set(first, k, table)


def _cut(span: bytes, begin: int, end: int) -> tuple[list[Chunk], list[tuple[int, int]]]:
    """The chunks of `span`, whose lines outside `begin`..`end` end no chunk by their content.

    Just as `_chunks` would cut it (the hash depends on the content only), at
    the cost of the change: only the changed lines are split and their CRCs
    taken; the unchanged ones around them are counted (the line limit may
    cut them), and the last line of `span` ends the last chunk.
    """
    table: list[Chunk] = []
    cuts: list[tuple[int, int]] = []
    size = len(span)
    with memoryview(span) as view:
        chunk_start = pos = lines = 0

        def emit(stop: int, count: int) -> None:
            nonlocal chunk_start
            digest = hashlib.sha256(view[chunk_start:stop]).digest()
            table.append((count, stop - chunk_start, digest))
            cuts.append((chunk_start, stop))
            chunk_start = stop

        def counted(until: int, cut_at_limit: bool) -> None:
            """Lines `pos`..`until`, none ending a chunk by content: the line limit's cuts."""
            nonlocal pos, lines
            rest = _lines(span, pos, until)
            limit = MAX_CHUNK_LINES - cut_at_limit  # the tail's last line ends a chunk anyway
            while lines + rest > limit:
                taken = MAX_CHUNK_LINES - lines
                for _ in range(taken):
                    pos = span.find(b"\n", pos) + 1
                emit(pos, MAX_CHUNK_LINES)
                lines, rest = 0, rest - taken
            pos, lines = until, lines + rest

        counted(begin, cut_at_limit=True)
        while pos < end:
            nl = span.find(b"\n", pos, end)
            stop = end if nl < 0 else nl + 1
            lines += 1
            if lines >= MAX_CHUNK_LINES or zlib.crc32(view[pos:stop]) % CHUNK_LINES == 0:
                emit(stop, lines)
                lines = 0
            pos = stop
        counted(size, cut_at_limit=False)
        if size > chunk_start:
            emit(size, lines)
    return table, cuts


def _lines(data: bytes, begin: int, end: int) -> int:
    """How many lines `data[begin:end]` holds (a last one without newline counts)."""
    if end <= begin:
        return 0
    return data.count(b"\n", begin, end) + (data[end - 1] != 0x0A)


def _ends_naturally(data: bytes) -> bool:
    """Whether the last line of `data` ends a chunk by its content (its CRC)."""
    line_start = data.rfind(b"\n", 0, len(data) - 1) + 1
    with memoryview(data) as view:
        return zlib.crc32(view[line_start:]) % CHUNK_LINES == 0


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
