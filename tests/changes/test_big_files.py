"""Big text files: the watcher compares a save mapped in memory, a follower splices its mapping.

In process (a real server on a loopback port, a `Watcher` and a `Follower`
on their own client connections): a 3 MiB text file is edited many times —
lines replaced by longer and shorter ones, inserted, deleted, at the start,
the middle and the end — and the mirror stays byte-identical after each
change, with the content hash a from-scratch hash of the file gives; a local
edit of the mirrored file (the mapping's file) is a conflict, never
overwritten; an edit to empty the file is applied too (a mapping cannot be
emptied: written whole).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from tests.servers import running_server

import hybridbus.client
from hybridbus.changes import FollowConfig, Follower, WatchConfig, Watcher
from hybridbus.changes.follower import KEEP_TEXT
from hybridbus.core.textdiff import Hunk, tree_hash

pytestmark = pytest.mark.timeout(120)


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    del what


async def test_a_big_file_edited_many_times_stays_identical_and_conflicts_are_kept(
    tmp_path: Path,
) -> None:
    src, mirror = tmp_path / "src", tmp_path / "mirror"
    src.mkdir()
    rows = [b"row %07d of a big file, with some text\n" % i for i in range(80_000)]
    assert len(b"".join(rows)) > 3 * KEEP_TEXT
    (src / "big.txt").write_bytes(b"".join(rows))
    applied: list[str] = []
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url) as wc,
        hybridbus.client.connect(server.url) as fc,
    ):
        watcher = Watcher(wc, src, WatchConfig(topic="changes/big"))
        await watcher.start()
        answering = asyncio.create_task(watcher._requests())  # as `run` does, without watchfiles
        follower = Follower(
            fc, mirror, FollowConfig(topic="changes/big", instance="m", heartbeat=0.2),
            lambda change, path: applied.append(change.kind),
        )  # fmt: skip
        ready = asyncio.Event()
        task = asyncio.create_task(follower.run(ready))
        await ready.wait()
        await until(lambda: (mirror / "big.txt").exists(), "the snapshot")
        rng = random.Random(11)
        for n in range(40):
            i = rng.choice([0, len(rows) - 1, rng.randrange(len(rows))])
            kind = n % 4
            if kind == 0:
                rows[i] = b"row %07d is now much, much longer than it was (%d)\n" % (i, n)
            elif kind == 1:
                rows[i] = b"short %d\n" % n
            elif kind == 2:
                rows[i:i] = [b"inserted %d\n" % n, b"and another\n"]
            else:
                del rows[i]
            (src / "big.txt").write_bytes(b"".join(rows))
            before = len(applied)
            await watcher.batch({str(src / "big.txt")})
            await until(lambda b=before: len(applied) > b, "the change applied")
            mirrored = (mirror / "big.txt").read_bytes()
            assert mirrored == b"".join(rows), n
        assert "big.txt" in follower.texts  # it was kept, mapped
        assert follower.known["big.txt"][0] == tree_hash(mirrored)
        # A local edit of the mirrored file: a conflict, the local file kept.
        (mirror / "big.txt").write_bytes(b"mine now\n" + mirrored)
        rows[5] = b"the watcher's edit\n"
        (src / "big.txt").write_bytes(b"".join(rows))
        await watcher.batch({str(src / "big.txt")})
        await until(lambda: "big.txt" in follower.conflicts, "the conflict")
        assert (mirror / "big.txt").read_bytes() == b"mine now\n" + mirrored
        # Resolved by deleting the local file: a full copy comes (at the next heartbeat).
        (mirror / "big.txt").unlink()
        await until(
            lambda: (mirror / "big.txt").exists()
            and (mirror / "big.txt").read_bytes() == b"".join(rows),
            "the full copy",
        )
        for running in (task, answering):
            running.cancel()
        await asyncio.gather(task, answering, return_exceptions=True)


async def test_an_editors_edits_are_published_before_the_save_which_then_publishes_nothing(
    tmp_path: Path,
) -> None:
    src, mirror = tmp_path / "src", tmp_path / "mirror"
    src.mkdir()
    rows = [b"line %d\n" % i for i in range(60_000)]
    (src / "big.txt").write_bytes(b"".join(rows))
    applied: list[str] = []
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url) as wc,
        hybridbus.client.connect(server.url) as fc,
        hybridbus.client.connect(server.url) as editor,
    ):
        watcher = Watcher(wc, src, WatchConfig(topic="changes/ed"))
        await watcher.start()
        edits = asyncio.create_task(watcher._edits())  # as `run` does, without watchfiles
        follower = Follower(
            fc, mirror, FollowConfig(topic="changes/ed", instance="m"),
            lambda change, path: applied.append(change.id),
        )  # fmt: skip
        ready = asyncio.Event()
        task = asyncio.create_task(follower.run(ready))
        await ready.wait()
        await until(lambda: (mirror / "big.txt").exists(), "the snapshot")
        # In process: the editor's own call.
        change = await watcher.edited("big.txt", Hunk(7, (rows[7],), (b"seven\n", b"and more\n")))
        rows[7:8] = [b"seven\n", b"and more\n"]
        await until(lambda: change.id in applied, "the edit applied")
        assert (mirror / "big.txt").read_bytes() == b"".join(rows)
        # Over the bus: a plugin publishes the hunk on <topic>/edits.
        hunk = Hunk(59_000, (rows[59_000],), ())
        await editor.publish(
            "changes/ed/edits",
            {"id": "e1", "source": "/ide", "type": "dev.hybridbus.change.edit",
             "data": {"path": "big.txt", "hunk": hunk.render().decode()}},
        )  # fmt: skip
        del rows[59_000]
        await until(lambda: len(applied) == 3, "the plugin's edit (after the snapshot and one)")
        assert (mirror / "big.txt").read_bytes() == b"".join(rows)
        # The saves come: found unchanged, nothing more published.
        published = len(watcher.published)
        (src / "big.txt").write_bytes(b"".join(rows))
        assert await watcher.batch({str(src / "big.txt")}) == []
        assert len(watcher.published) == published
        # An edit whose removed lines are not there is refused; the save is diffed instead.
        with pytest.raises(ValueError, match="does not match"):
            await watcher.edited("big.txt", Hunk(3, (b"not line 3\n",), ()))
        for running in (task, edits):
            running.cancel()
        await asyncio.gather(task, edits, return_exceptions=True)
