"""The code-change benchmark (benchmarks/changes.py) runs, at a tiny size, both ways.

Nothing here is timed. What is checked is that each way an edit reaches the
watcher (the editor's edit, the save) runs every round to its end — the
benchmark itself asserts the mirror is byte-identical at the end and that a
save after an editor's edit publishes nothing — and so does the peer, rsync
(installed by `make services`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmarks import changes


@pytest.mark.parametrize("way", ["editor", "edits", "save"])
async def test_bench_changes_runs_every_round_to_an_identical_mirror(
    tmp_path: Path, way: str
) -> None:
    latencies, per_byte = await changes._measure(3_000, 5, tmp_path, way)
    assert len(latencies) == 5
    assert all(ms > 0 for ms in latencies)
    assert per_byte > 1  # the watcher keeps at least the file


@pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync (make services installs it)")
def test_bench_changes_peer_rsync_runs_every_round_to_an_identical_mirror(tmp_path: Path) -> None:
    latencies = changes._rsync(3_000, 5, tmp_path)
    assert len(latencies) == 5
    assert all(ms > 0 for ms in latencies)
