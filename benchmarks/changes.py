"""Code-change broadcast: a one-line edit in a 1,000,000-line file, to the follower's mirror.

End to end on one machine: a server (in-process, memory engine), a
`Watcher` and a `Follower` (both `hybridbus.changes`, each on its own client
connection), on uvloop (as the server and the CLIs run when it is
installed); each round edits one random line of the watched file (a longer
or shorter line: the mirror's tail moves) and waits for the follower's
callback, which runs once the mirror file is written (the time is taken
there, not when the benchmark's own coroutine next runs: the follower's
state file and ack come after it). Three ways the edit reaches the watcher,
each measured:

- `editor`: the editor says what changed, in the watcher's process
  (`Watcher.edited`), then saves; the save, compared, publishes nothing.
  Timed from the edit to the mirror written.
- `edits`: the same from an editor that is a client of its own (an IDE
  plugin): it publishes the hunk on `<topic>/edits` over a third connection
  and the watcher, subscribed there, applies and publishes it — one hop more.
  Timed from the editor's publish to the mirror written.
- `save`: the editor saves; the watcher is called for the path (as
  watchfiles would after its debounce, which is not counted) and compares the
  file, mapped in memory, with what it kept. Timed from that call.

Reported: p50 and p99 of each (target p50 ≤ 4 ms, p99 ≤ 10 ms), and the
watcher's memory per watched file (bytes its own allocations hold, over the file's size;
not the in-process server's copies of what it published). The peer of the
save: what a user would run without hybridbus (lsyncd's way: inotify, then
rsync): `rsync --inplace --no-whole-file -I` of the saved file to the mirror,
rsync's rolling-checksum delta transfer, timed from its start to its exit
(skipped, with a line in the log, where no `rsync` is installed).
`--quick`: 100,000 lines, 20 edits.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Result, Settings, run_async

__all__ = ["run"]

# Where the watcher's own allocations are made: its modules and the core's text and change code.
_WATCHER_FILES = (
    "*/hybridbus/changes/*",
    "*/hybridbus/core/textdiff.py",
    "*/hybridbus/core/changes.py",
)


def _watchers_own(snapshot: tracemalloc.Snapshot) -> int:
    """The bytes held by allocations made in the watcher's code (the frame that allocated).

    The in-process server shares the process: `start` publishes the file's
    content, and the server's copies of those events (its memory engine,
    the pushes: allocated in `core/codecs.py`, `engine/`, `proto/`) are not
    counted.
    """
    mine = [tracemalloc.Filter(True, pattern) for pattern in _WATCHER_FILES]
    return sum(stat.size for stat in snapshot.filter_traces(mine).statistics("filename"))


async def _measure(
    lines: int, edits: int, tmp: Path, way: str = "save"
) -> tuple[list[float], float]:
    from tests.servers import running_server

    import hybridbus.client
    from hybridbus.changes import FollowConfig, Follower, WatchConfig, Watcher
    from hybridbus.core.textdiff import Hunk

    src, mirror = tmp / "src", tmp / "mirror"
    src.mkdir()
    rows = [b"    value_%07d = compute(%d)  # some code\n" % (i, i) for i in range(lines)]
    data = b"".join(rows)
    (src / "big.py").write_bytes(data)
    rng = random.Random(7)
    latencies: list[float] = []
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url) as wc,
        hybridbus.client.connect(server.url) as fc,
        hybridbus.client.connect(server.url) as ec,
    ):
        tracemalloc.start()
        watcher = Watcher(wc, src, WatchConfig(topic="changes/bench"))
        await watcher.start()
        kept = _watchers_own(tracemalloc.take_snapshot())
        tracemalloc.stop()
        done = asyncio.Event()
        written = [0.0]  # when the callback ran: the mirror file written

        def applied(change: object, path: Path) -> None:
            written[0] = time.perf_counter()
            done.set()

        follower = Follower(
            fc, mirror, FollowConfig(topic="changes/bench", instance="b"), applied
        )
        ready = asyncio.Event()
        task = asyncio.create_task(follower.run(ready))
        await ready.wait()
        while not (mirror / "big.py").exists():
            await asyncio.sleep(0.05)
        done.clear()
        editing = asyncio.create_task(watcher._edits())  # what `Watcher.run` starts
        await asyncio.sleep(0.2)  # subscribed
        # One untimed edit loads the follower's kept text.
        for n in range(edits + 1):
            i = rng.randrange(lines)
            old = rows[i]
            rows[i] = b"    value_%07d = compute(%d)  # edited, round %d\n" % (i, i, n * 7 % 1000)
            data = b"".join(rows)
            if way in ("editor", "edits"):
                clock = time.perf_counter()
                if way == "editor":
                    await watcher.edited("big.py", Hunk(i, (old,), (rows[i],)))
                else:
                    hunk = Hunk(i, (old,), (rows[i],)).render().decode()
                    await ec.publish(
                        "changes/bench/edits",
                        {"id": f"edit-{n}", "source": "/bench/editor",
                         "type": "dev.hybridbus.change.edit",
                         "data": {"path": "big.py", "hunk": hunk}},
                    )
                await asyncio.wait_for(done.wait(), 30)
                elapsed = written[0] - clock
                (src / "big.py").write_bytes(data)  # the save: compared, nothing published
                assert await watcher.batch({str(src / "big.py")}) == []
            else:
                (src / "big.py").write_bytes(data)  # the editor's save: not counted
                clock = time.perf_counter()
                await watcher.batch({str(src / "big.py")})
                await asyncio.wait_for(done.wait(), 30)
                elapsed = written[0] - clock
            if n:
                latencies.append(elapsed * 1000)
            done.clear()
        assert (mirror / "big.py").read_bytes() == data
        task.cancel()
        editing.cancel()
        await asyncio.gather(task, editing, return_exceptions=True)
    return latencies, kept / len(data)


def _rsync(lines: int, edits: int, tmp: Path) -> list[float]:
    """The peer: the same edits, each saved and then sent to the mirror by rsync's delta."""
    src, mirror = tmp / "src", tmp / "mirror"
    src.mkdir()
    mirror.mkdir()
    rows = [b"    value_%07d = compute(%d)  # some code\n" % (i, i) for i in range(lines)]
    (src / "big.py").write_bytes(b"".join(rows))
    shutil.copyfile(src / "big.py", mirror / "big.py")
    argv = ["rsync", "--inplace", "--no-whole-file", "-I", str(src / "big.py"), str(mirror)]
    rng = random.Random(7)
    latencies: list[float] = []
    for n in range(edits + 1):
        i = rng.randrange(lines)
        rows[i] = b"    value_%07d = compute(%d)  # edited, round %d\n" % (i, i, n * 7 % 1000)
        data = b"".join(rows)
        (src / "big.py").write_bytes(data)  # the editor's save: not counted
        clock = time.perf_counter()
        subprocess.run(argv, check=True, timeout=60)
        if n:
            latencies.append((time.perf_counter() - clock) * 1000)
    assert (mirror / "big.py").read_bytes() == data
    return latencies


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(settings: Settings, log: Callable[[str], None]) -> list[Result]:
    lines, edits = (100_000, 20) if settings.smoke else (1_000_000, 200)
    results: list[Result] = []
    memory: list[float] = []
    rsync = shutil.which("rsync") is not None
    if not rsync:
        log("  changes: no rsync installed here: the save's peer is not measured")
    for way in ("editor", "edits", "save", "rsync"):
        if way == "rsync" and not rsync:
            continue
        p50s, p99s = [], []
        for _ in range(settings.runs):
            with tempfile.TemporaryDirectory(dir=settings.tmpdir) as tmp:
                if way == "rsync":
                    latencies = _rsync(lines, edits, Path(tmp))
                else:
                    latencies, per_byte = run_async(_measure(lines, edits, Path(tmp), way))
                    memory.append(per_byte)
            p50, p99 = _percentiles(latencies)
            p50s.append(p50)
            p99s.append(p99)
            log(f"  changes ({way}): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        what = {
            "editor": "by the editor (in process)",
            "edits": "by the editor (a client: <topic>/edits)",
            "save": "by the save",
            "rsync": "rsync's delta after the save (the peer)",
        }[way]
        peer = rsync and way == "save"
        results += [
            Result(f"changes.{way}_p50", "changes",
                   f"one-line edit, {lines:,} lines, {what}: p50", "ms", p50s,
                   target=None if way == "rsync" else 4.0, is_peer=way == "rsync",
                   peer="changes.rsync_p50" if peer else None),
            Result(f"changes.{way}_p99", "changes",
                   f"one-line edit, {lines:,} lines, {what}: p99", "ms", p99s,
                   target=None if way == "rsync" else 10.0, is_peer=way == "rsync",
                   peer="changes.rsync_p99" if peer else None),
        ]
    results.append(
        Result("changes.watcher_memory", "changes",
               "watcher memory per watched byte (bytes kept / file size)", "x", memory)
    )
    return results
