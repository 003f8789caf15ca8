"""The Yjs benchmark (benchmarks/yjs.py) runs, at a tiny size, and its trace is the paper's.

Nothing here is timed: the figures of a tiny run mean nothing. What is checked is
that the trace (benchmarks/yjs_trace.py) has the automerge-paper trace's shape,
that its conversion from an automerge change log orders concurrent inserts as
RGA does, and that `python -m benchmarks.run yjs --quick` runs every phase
against hybridbus and every installed peer and writes complete results.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from benchmarks import yjs, yjs_trace
from benchmarks.run import DEFAULT_GROUPS, GROUPS, main


def _check_shape(edits: list[yjs_trace.Edit]) -> int:
    """Every index within the document of its moment; returns the final length."""
    length = 0
    for index, char in edits:
        if char:
            assert 0 <= index <= length and len(char) == 1
            length += 1
        else:
            assert 0 <= index < length
            length -= 1
    return length


def test_bench_yjs_is_a_group_of_the_runner_run_only_when_named() -> None:
    assert GROUPS["yjs"] is yjs.run
    assert "yjs" not in DEFAULT_GROUPS


@pytest.mark.skipif(not yjs_trace.TRACE_FILE.exists(), reason="the trace file is not shipped")
def test_bench_yjs_trace_is_the_automerge_paper_trace() -> None:
    edits, source = yjs_trace.load()
    assert source == "automerge-paper"
    assert len(edits) == 259_778
    assert sum(1 for _, char in edits if char) == 182_315
    assert _check_shape(edits) == 104_852


def test_bench_yjs_generated_trace_has_the_papers_size_and_mix() -> None:
    edits = yjs_trace.generated()
    assert len(edits) == yjs_trace.PAPER_EDITS
    assert sum(1 for _, char in edits if char) == yjs_trace.PAPER_INSERTS
    assert _check_shape(edits) == 104_852
    # Locality: most edits are next to the one before (typing or backspacing on).
    near = sum(1 for (a, _), (b, _) in itertools.pairwise(edits) if abs(b - a) <= 1)
    assert near > 0.9 * len(edits)


def test_bench_yjs_trace_file_round_trips(tmp_path: Path) -> None:
    edits = [(0, "a"), (1, "\n"), (2, " "), (1, ""), (0, '"'), (2, "\\")]
    yjs_trace.write_trace(tmp_path / "t.gz", edits)
    assert yjs_trace.read_trace(tmp_path / "t.gz") == edits
    assert yjs_trace.final_text(edits) == '"a\\ '


def _change(actor: str, op: int, **fields: object) -> dict[str, object]:
    return {"actor": actor, "startOp": op, "ops": [{"obj": "1@a", **fields}]}


def test_bench_yjs_convert_orders_concurrent_inserts_as_rga() -> None:
    """Two actors insert after the same character: the greater op id comes first."""
    changes = [
        _change("a", 2, action="set", insert=True, elemId="_head", value="x"),
        _change("a", 3, action="set", insert=True, elemId="2@a", value="y"),
        # Concurrent with "y" (after "x" too): 3@b > 3@a, so "z" sits before "y".
        _change("b", 3, action="set", insert=True, elemId="2@a", value="z"),
        _change("a", 4, action="del", elemId="2@a"),
    ]
    edits, text = yjs_trace.convert(changes)
    assert text == "zy"
    assert edits == [(0, "x"), (1, "y"), (1, "z"), (0, "")]
    assert yjs_trace.final_text(edits) == text


def test_bench_yjs_every_phase_runs_in_a_smoke_run(tmp_path: Path) -> None:
    """`python -m benchmarks.run yjs --quick`: 3,000 edits, 3 joins, 5 editors per server."""
    out = tmp_path / "yjs.json"
    main(["yjs", "--quick", "--tmpdir", str(tmp_path), "--out", str(out)])
    payload = json.loads(out.read_text())
    facts = payload["yjs"]
    servers = facts["servers"]
    assert servers[0] == "hybridbus"
    assert set(servers) == {s for s in yjs.SERVERS if yjs.installed(s) is None}
    assert facts["edits"] == yjs.SMOKE_EDITS
    results = {r["id"]: r for r in payload["results"]}
    cases = ("replay", "replay_x_raw", "full_sync", "keys_p50", "keys_p99", "keys_cpu")
    expected = {f"yjs.{case}.{server}" for case in cases for server in servers}
    floor = {f"yjs.replay.{yjs.FLOOR}", f"yjs.replay_x_raw.{yjs.FLOOR}"}
    assert set(results) == expected | {"yjs.replay.raw_pycrdt"} | floor
    assert results[f"yjs.replay.{yjs.FLOOR}"]["details"][0]["edits"] == yjs.SMOKE_EDITS
    for id_, result in results.items():
        assert len(result["runs"]) == 1
        assert result["runs"][0] > 0, id_
    for server in servers:
        replay = results[f"yjs.replay.{server}"]["details"][0]
        assert replay["edits"] == yjs.SMOKE_EDITS
        assert replay["final_chars"] == facts["final_chars"]
        full = results[f"yjs.full_sync.{server}"]["details"][0]
        assert full["joins"] == 3 and full["chars"] == facts["final_chars"]
        keys = results[f"yjs.keys_p50.{server}"]["details"][0]
        assert keys["deliveries"] == 10 * (5 - 1)  # every keystroke reached every other editor
    if "pycrdt-websocket" in servers:
        ratio = results["yjs.replay.hybridbus"]["ratio_to_peer"]
        assert ratio is not None and ratio > 0
