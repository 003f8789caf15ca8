"""`core.textdiff`: an edit found from the kept bytes, applied elsewhere, hashes alike.

Property-based (hypothesis): for any text and any edit, `Text.edit` gives a
hunk that, rendered, parsed and applied by another `Text` (a follower's),
turns the old content into the new one, and both keep the content hash that
`tree_hash` gives the new content from scratch — with the new content given
as bytes or as an `mmap` of a file (the watcher's way: read in place).
"""

from __future__ import annotations

import mmap
import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridbus.core.textdiff import CHUNK_LINES, MAX_CHUNK_LINES, Hunk, Text, tree_hash


def natural(count: int) -> list[bytes]:
    """`count` lines that end a chunk by their content (CRC-32 ≡ 0 mod CHUNK_LINES)."""
    found, n = [], 0
    while len(found) < count:
        line = b"end %d\n" % n
        if zlib.crc32(line) % CHUNK_LINES == 0:
            found.append(line)
        n += 1
    return found


ENDS = natural(4)
PLAIN = [b"x\n"] + [b"plain %d\n" % i for i in range(20)]
assert not any(zlib.crc32(line) % CHUNK_LINES == 0 for line in PLAIN)
# Random bytes, and lines that end chunks: edits at, next to and across chunk ends.
LINE = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    st.sampled_from(ENDS),
    st.sampled_from(PLAIN),
)
LINES = st.lists(LINE, max_size=60)


def edited(lines: list[bytes], at: int, cut: int, put: list[bytes], tail: bool) -> bytes:
    at = min(at, len(lines))
    out = b"".join(lines[:at] + put + lines[at + cut :])
    return out[:-1] if tail and out.endswith(b"\n") else out


@settings(max_examples=300, deadline=None)
@given(LINES, st.integers(0, 60), st.integers(0, 5), st.lists(LINE, max_size=5), st.booleans())
def test_an_edit_found_and_applied_elsewhere_gives_the_new_content_and_its_hash(
    lines: list[bytes], at: int, cut: int, put: list[bytes], tail: bool
) -> None:
    old = b"".join(lines)
    new = edited(lines, at, cut, put, tail)
    watcher, follower = Text(old), Text(old)
    mapped = Text.mapped(bytearray(old))
    hunk = watcher.edit(new)
    assert watcher.content() == new
    assert watcher.hash == tree_hash(new)
    assert watcher.chunks == Text(new).chunks
    if hunk is None:
        assert new == old
        return
    follower.apply(Hunk.parse(hunk.render()))
    assert follower.content() == new
    assert follower.hash == watcher.hash
    replace_in_buffer(mapped, Hunk.parse(hunk.render()))
    assert mapped.content() == new and mapped.hash == watcher.hash
    assert mapped.chunks == watcher.chunks


def replace_in_buffer(text: Text, hunk: Hunk) -> None:
    """What a follower does with its file mapped in memory: change the buffer, then say so."""
    start, end, added = text.locate(hunk)
    buffer = text.buffer
    assert isinstance(buffer, bytearray)
    buffer[start:end] = added
    text.replaced(start, end, len(added))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ENDS + PLAIN), min_size=1, max_size=40), st.data())
def test_edits_of_chunk_ends_keep_the_hash_the_content_gives(
    lines: list[bytes], data: st.DataObject
) -> None:
    """Several edits in a row, each at, before or after lines that end chunks."""
    watcher, follower = Text(b"".join(lines)), Text(b"".join(lines))
    mapped = Text.mapped(bytearray(b"".join(lines)))
    for _ in range(4):
        at = data.draw(st.integers(0, len(lines)))
        cut = data.draw(st.integers(0, 3))
        put = data.draw(st.lists(st.sampled_from(ENDS + PLAIN), max_size=3))
        lines = lines[:at] + put + lines[at + cut :]
        new = b"".join(lines)
        hunk = watcher.edit(new)
        assert watcher.hash == tree_hash(new)
        if hunk is not None:
            follower.apply(Hunk.parse(hunk.render()))
            replace_in_buffer(mapped, hunk)
        assert follower.content() == new and follower.hash == watcher.hash
        assert mapped.content() == new and mapped.chunks == Text(new).chunks


def test_an_edited_line_that_ended_a_chunk_no_longer_ends_it() -> None:
    """Found by the test above: the table kept a chunk end the content no longer had."""
    rows = [b"line %d\n" % i for i in range(2000)] + [ENDS[0]]
    rows += [b"after %d\n" % i for i in range(900)]
    text = Text(b"".join(rows))
    rows[2000] = b"no longer an end\n"
    text.edit(b"".join(rows))
    assert text.hash == tree_hash(b"".join(rows))


def test_chunks_cut_by_the_line_limit_are_mended_too() -> None:
    """8,192 lines without a natural end make a chunk: edits there shift the cuts after them."""
    rows = [b"x\n"] * (3 * MAX_CHUNK_LINES + 5)
    text = Text(b"".join(rows))
    for i, change in ((5, [b"y\n"]), (MAX_CHUNK_LINES + 3, []), (40, [b"x\n", b"x\n"])):
        rows[i : i + 1] = change
        new = b"".join(rows)
        text.edit(new)
        assert text.hash == tree_hash(new)


def test_the_saved_file_is_read_in_place_from_a_mapping(tmp_path: Path) -> None:
    rows = [b"line %06d\n" % i for i in range(5 * CHUNK_LINES)]
    text = Text(b"".join(rows))
    for i, row in ((3, b"first\n"), (4000, b"a longer line than before\n"), (5119, b"")):
        rows[i] = row
        path = tmp_path / "f.txt"
        path.write_bytes(b"".join(rows))
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            hunk = text.edit(mm)
        assert hunk is not None and hunk.start == i
        assert text.content() == path.read_bytes()
        assert text.hash == tree_hash(path.read_bytes())
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert text.edit(mm) is None


def test_a_hunk_on_the_wrong_base_is_refused() -> None:
    text = Text(b"a\nb\nc\n")
    with pytest.raises(ValueError, match="does not match"):
        text.apply(Hunk(1, (b"x\n",), (b"y\n",)))
    assert text.content() == b"a\nb\nc\n"
    for partial in (Hunk(1, (b"b",), (b"y",)), Hunk(1, (b"b\n",), (b"y",)), Hunk(1, (), (b"y",))):
        with pytest.raises(ValueError, match="last line"):
            text.apply(partial)  # a line without its newline, not at the end: not whole lines
    assert text.content() == b"a\nb\nc\n"
    text.apply(Hunk(2, (b"c\n",), (b"c",)))
    assert text.content() == b"a\nb\nc" and text.hash == tree_hash(b"a\nb\nc")


@pytest.mark.parametrize("seed", range(6))
def test_long_runs_without_a_natural_end_are_cut_by_counting_alike(seed: int) -> None:
    """Runs of up to 2.5x MAX_CHUNK_LINES plain lines between lines that end chunks, edited
    anywhere (the run's line-limit cuts move): the same table as cutting the content anew."""
    rng = random.Random(seed)
    rows: list[bytes] = []
    for _ in range(4):
        rows += [rng.choice(PLAIN) for _ in range(rng.randrange(int(2.5 * MAX_CHUNK_LINES)))]
        rows.append(rng.choice(ENDS))
    text = Text(b"".join(rows))
    for _ in range(12):
        at = rng.randrange(len(rows) + 1)
        cut = rng.choice([0, 1, 1, 2, 50, 9000])
        put = [rng.choice(ENDS + PLAIN) for _ in range(rng.choice([0, 1, 1, 3, 9000]))]
        rows[at : at + cut] = put
        new = b"".join(rows)
        text.edit(new)
        assert text.hash == tree_hash(new)
        assert text.chunks == Text(new).chunks
        assert text.content() == new
