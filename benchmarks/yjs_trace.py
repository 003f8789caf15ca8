"""The editing trace of the Yjs benchmark: the automerge-paper trace, or an equivalent one.

The automerge-paper trace (github.com/automerge/automerge-perf, CC-BY 4.0, by Martin
Kleppmann and Alastair R. Beresford) is the character-by-character history of a
LaTeX paper: 182,315 one-character inserts and 77,463 one-character deletes,
259,778 edits, ending in a 104,852-character document. Its index form
(`edit-by-index/editing-trace.js`) is not in the repository's stored snapshot (a
4.5 MB file kept outside git); its change log `edit-history/paper.json.gz`
(332,702 changes, every op naming the element it inserts after or deletes) is.
`convert` turns that log into index edits: it orders every inserted element as
RGA does (after its reference, before any sibling with a smaller op id), then
replays the log with a Fenwick tree over those final positions, so each edit's
index counts the visible characters before it, and checks the result against
the log's own final text. The result is written compactly to `TRACE_FILE`:

    python -m benchmarks.yjs_trace convert paper.json.gz   # -> benchmarks/data/...

A trace is a list of `(index, char)`: `char` is the inserted character, or ""
for a delete at `index`. When `TRACE_FILE` is absent, `load()` returns
`generated()`: an equivalent trace of the same length and insert/delete mix
(70.2% inserts), with the paper's locality — a cursor that types runs of
characters (mean ~12), mostly at the place it left off, backspaces runs
(mean ~3) and now and then jumps to a random place — from a fixed seed.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "PAPER_EDITS",
    "PAPER_INSERTS",
    "TRACE_FILE",
    "Edit",
    "convert",
    "final_text",
    "generated",
    "load",
    "read_trace",
    "write_trace",
]

Edit = tuple[int, str]  # (index, inserted char) or (index, "") for a delete

TRACE_FILE: Final = Path(__file__).resolve().parent / "data" / "automerge-paper.trace.gz"
PAPER_EDITS: Final = 259_778
PAPER_INSERTS: Final = 182_315


# -- the file format: a line per edit, "i<delta> <char as JSON>" or "d<delta>", where
# delta is the edit's index minus the previous edit's (mostly +1 or -1: ~110 KB gzipped).


def write_trace(path: Path, edits: Iterable[Edit]) -> None:
    lines, previous = [], 0
    for index, char in edits:
        delta, previous = index - previous, index
        lines.append(f"i{delta} {json.dumps(char)}" if char else f"d{delta}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("\n".join(lines).encode(), compresslevel=9, mtime=0))


def read_trace(path: Path) -> list[Edit]:
    edits: list[Edit] = []
    index = 0
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        if line[0] == "d":
            index += int(line[1:])
            edits.append((index, ""))
        else:
            delta, char = line[1:].split(" ", 1)
            index += int(delta)
            edits.append((index, json.loads(char)))
    return edits


def load(limit: int | None = None) -> tuple[list[Edit], str]:
    """The trace (its first `limit` edits) and where it comes from ("automerge-paper" or
    "generated")."""
    if TRACE_FILE.exists():
        edits, source = read_trace(TRACE_FILE), "automerge-paper"
    else:
        edits, source = generated(), "generated"
    return (edits[:limit] if limit else edits), source


def final_text(edits: Iterable[Edit]) -> str:
    """The document the trace leaves (a list of chars, for checking; O(n) per edit)."""
    text: list[str] = []
    for index, char in edits:
        if char:
            text.insert(index, char)
        else:
            del text[index]
    return "".join(text)


# -- a generated equivalent -----------------------------------------------------------------


def generated(
    n: int = PAPER_EDITS, inserts: int = PAPER_INSERTS, seed: int = 20160812
) -> list[Edit]:
    """`n` single-character edits, `inserts` of them inserts, with an editor's locality."""
    rng = random.Random(seed)
    alphabet = "etaoinshrdlcumwfgypbvkjxqz" * 3 + "ETAOINS" + "     \n,.\\{}$"
    deletes = n - inserts
    edits: list[Edit] = []
    length = cursor = 0
    ins_left, del_left = inserts, deletes
    while ins_left or del_left:
        # Type a run, or backspace one, in the paper's proportions (as runs go: the
        # remaining mix decides, so the totals come out exact).
        typing = (
            del_left == 0
            or (ins_left > 0 and length > 0 and rng.random() < ins_left / (ins_left + del_left * 4))
            or length == 0
        )
        if rng.random() < 0.04 and length:  # jump elsewhere (a click, an arrow key)
            cursor = rng.randint(0, length)
        if typing:
            run = min(ins_left, max(1, int(rng.expovariate(1 / 12))))
            for _ in range(run):
                edits.append((cursor, rng.choice(alphabet)))
                cursor += 1
                length += 1
            ins_left -= run
        else:
            run = min(del_left, max(1, int(rng.expovariate(1 / 3))), length)
            for _ in range(run):
                if cursor == 0:
                    cursor = 1
                cursor -= 1
                edits.append((cursor, ""))
                length -= 1
            del_left -= run
    return edits


# -- from the automerge change log -------------------------------------------------------------


def _op_id(text: str) -> tuple[int, str]:
    counter, actor = text.split("@", 1)
    return int(counter), actor


def convert(changes: Sequence[dict[str, object]]) -> tuple[list[Edit], str]:
    """The index edits of an automerge change log and its final text."""
    ops: list[tuple[str, tuple[int, str], tuple[int, str] | None, str]] = []
    for change in changes:
        start = int(change["startOp"])  # type: ignore[call-overload]
        actor = str(change["actor"])
        for k, op in enumerate(change["ops"]):  # type: ignore[arg-type]
            if op["action"] == "set" and op.get("insert"):
                ref = None if op["elemId"] == "_head" else _op_id(op["elemId"])
                ops.append(("i", (start + k, actor), ref, op["value"]))
            elif op["action"] == "del":
                ops.append(("d", _op_id(op["elemId"]), None, ""))
    # 1. The final order of every inserted element (RGA: after the reference, skipping
    # the siblings inserted after it with a greater op id, and their descendants, which
    # all have greater ids still).
    order: list[tuple[int, str]] = []
    hint = 0
    for kind, op_id, ref, _ in ops:
        if kind != "i":
            continue
        pos = 0 if ref is None else _find(order, ref, hint) + 1
        while pos < len(order) and order[pos] > op_id:
            pos += 1
        order.insert(pos, op_id)
        hint = pos
    rank = {op_id: r for r, op_id in enumerate(order)}
    # 2. Replay with a Fenwick tree of the visible elements by final rank.
    size = len(order)
    tree = [0] * (size + 1)

    def add(r: int, delta: int) -> None:
        r += 1
        while r <= size:
            tree[r] += delta
            r += r & -r

    def before(r: int) -> int:
        total = 0
        while r > 0:
            total += tree[r]
            r -= r & -r
        return total

    edits: list[Edit] = []
    chars = [""] * size
    for kind, op_id, _, value in ops:
        r = rank[op_id]
        if kind == "i":
            edits.append((before(r), value))
            add(r, 1)
            chars[r] = value
        else:
            edits.append((before(r), ""))
            add(r, -1)
            chars[r] = ""
    return edits, "".join(chars)


def _find(order: list[tuple[int, str]], op_id: tuple[int, str], hint: int) -> int:
    """Where `op_id` is in `order`: looked for near `hint` first (edits are local)."""
    lo, hi = max(0, hint - 2000), min(len(order), hint + 2000)
    try:
        return order.index(op_id, lo, hi)
    except ValueError:
        return order.index(op_id)


def _main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "convert":
        raise SystemExit("usage: python -m benchmarks.yjs_trace convert paper.json.gz")
    with gzip.open(argv[1], "rt") as f:
        changes = [json.loads(line) for line in f]
    edits, text = convert(changes)
    if final_text(edits) != text:
        raise SystemExit("the index edits do not end in the log's final text")
    write_trace(TRACE_FILE, edits)
    inserts = sum(1 for _, c in edits if c)
    print(
        f"{len(edits)} edits ({inserts} inserts, {len(edits) - inserts} deletes), "
        f"final text {len(text)} chars -> {TRACE_FILE} ({TRACE_FILE.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
