"""The live-logs benchmark (benchmarks/logs.py) runs, at a tiny size, and checks itself.

Nothing here is timed: the figures of a tiny run mean nothing. What is checked is
that `python -m benchmarks.run logs --quick` runs every case to its end on this
machine (a server, a tail and the producers as they would be run for real), that
its results and JSON are complete, and that its own check of what the tail
printed (every line once, in order per producer) catches what it must.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import logs
from benchmarks.run import DEFAULT_GROUPS, GROUPS, main


def test_bench_logs_is_a_group_of_the_runner_run_only_when_named() -> None:
    assert GROUPS["logs"] is logs.run
    assert "logs" not in DEFAULT_GROUPS


def test_bench_logs_records_are_of_a_realistic_size() -> None:
    sizes = logs.sizes()
    assert 180 <= sizes["message_chars"] <= 220
    # The same record on every way in: a few hundred bytes, none twice another's size.
    others = [v for k, v in sizes.items() if k != "message_chars"]
    assert all(250 < size < 700 for size in others)
    assert max(others) < 2 * min(others)


def _printed(seqs: list[tuple[int, int]]) -> bytes:
    lines = [b'{"message":"warm-up","fields":{}}']
    lines += [
        json.dumps({"message": "m", "fields": {"producer": p, "seq": s}}).encode()
        for p, s in seqs
    ]
    return b"\n".join(lines) + b"\n"


def test_bench_logs_check_takes_every_line_once_in_order_per_producer() -> None:
    interleaved = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (1, 2)]
    logs._check("case", _printed(interleaved), producers=2, share=3)


@pytest.mark.parametrize(
    "seqs",
    [
        [(0, 0), (0, 1)],  # one missing
        [(0, 0), (0, 1), (0, 1), (0, 2)],  # one twice
        [(0, 0), (0, 2), (0, 1)],  # out of order
    ],
    ids=["missing", "twice", "reordered"],
)
def test_bench_logs_check_refuses_a_tail_that_lost_repeated_or_reordered_lines(
    seqs: list[tuple[int, int]],
) -> None:
    with pytest.raises(RuntimeError, match="producer 0"):
        logs._check("case", _printed(seqs), producers=1, share=3)


def test_bench_logs_every_case_runs_in_a_smoke_run(tmp_path: Path) -> None:
    """`python -m benchmarks.run logs --quick`: one run of every case, a few hundred lines."""
    out = tmp_path / "logs.json"
    main(["logs", "--quick", "--tmpdir", str(tmp_path), "--out", str(out)])
    payload = json.loads(out.read_text())
    results = {r["id"]: r for r in payload["results"]}
    figures = ("ingested", "delivered", "server_cpu")
    expected = {f"{case}.{figure}" for case in logs.CASES for figure in figures}
    assert set(results) == expected
    for id_, result in results.items():
        assert len(result["runs"]) == 1
        assert result["runs"][0] > 0, id_
        details = result["details"][0]
        assert details["lines"] > 0
        assert details["server_cpu_s"] > 0
        assert details["deliver_s"] > 0
        assert details["ingest_s"] > 0
        if id_.startswith("logs.ceiling."):
            assert result["is_peer"] and result["ratio_to_peer"] is None
        else:
            assert result["peer"] == "logs.ceiling." + id_.rsplit(".", 1)[1]
            assert result["ratio_to_peer"] > 0
    # Lines/s is lines over seconds; CPU per line is CPU seconds over lines.
    ws = results["logs.ws.client.delivered"]
    assert ws["runs"][0] == pytest.approx(
        ws["details"][0]["lines"] / ws["details"][0]["deliver_s"]
    )
    cpu = results["logs.ws.client.server_cpu"]
    assert cpu["runs"][0] == pytest.approx(
        cpu["details"][0]["server_cpu_s"] / cpu["details"][0]["lines"] * 1e6
    )
    assert payload["logs"]["lines"] == logs.SMOKE_LINES
    assert payload["logs"]["sizes"] == logs.sizes()
