"""`Tailer`: real files appended to, renamed, truncated, removed and recreated.

Each test drives `poll()` step by step (time passed in explicitly for the
partial-line timeout), so nothing depends on the machine's speed; one test
runs `follow()` in a thread as `hybridbus log --file` does.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from hybridbus.errors import InvalidInput
from hybridbus.logs.tailing import Line, Position, TailConfig, Tailer, TailState


def texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


def append(path: Path, text: str) -> None:
    with path.open("a", newline="") as f:
        f.write(text)


def test_starts_at_the_end_and_reads_appended_lines_with_positions(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old 1\nold 2\n")
    with Tailer(log) as tailer:
        assert tailer.poll() == []
        append(log, "new 1\nnew 2\n")
        lines = tailer.poll()
        assert texts(lines) == ["new 1", "new 2"]
        stat = log.stat()
        assert lines[0].position == Position(stat.st_dev, stat.st_ino, 18)
        assert lines[1].position.offset == 24 == stat.st_size
        assert tailer.poll() == []


def test_from_start_reads_what_is_there(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\r\ntwo\n\xff\n")  # CRLF, and a byte that is not UTF-8
    with Tailer(log, TailConfig(from_start=True)) as tailer:
        assert texts(tailer.poll()) == ["one", "two", "\ufffd"]


def test_a_file_not_there_yet_is_read_from_its_start_when_it_comes(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    with Tailer(log) as tailer:
        assert tailer.poll() == []
        assert tailer.position is None
        log.write_text("first\n")
        assert texts(tailer.poll()) == ["first"]


def test_a_partial_line_waits_for_its_newline_then_for_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    with Tailer(log, TailConfig(partial_timeout=2.0)) as tailer:
        assert tailer.poll(now=100.0) == []
        append(log, "hel")
        assert tailer.poll(now=100.0) == []
        append(log, "lo")
        assert tailer.poll(now=101.5) == []  # 1.5 s since the partial line began
        append(log, " world\nnext")
        assert texts(tailer.poll(now=101.9)) == ["hello world"]
        assert tailer.poll(now=103.8) == []  # "next" began waiting at 101.9
        flushed = tailer.poll(now=104.0)
        assert texts(flushed) == ["next"]
        assert flushed[0].position.offset == log.stat().st_size
        append(log, " part\n")  # the rest of a flushed line is a line of its own
        assert texts(tailer.poll(now=104.1)) == [" part"]


def test_a_line_longer_than_max_line_is_cut(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    with Tailer(log, TailConfig(max_line=4)) as tailer:
        tailer.poll()
        append(log, "abcdefghij\nxy\n")
        assert texts(tailer.poll()) == ["abcd", "efgh", "ij", "xy"]


def test_rotation_by_rename_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    with Tailer(log) as tailer:
        tailer.poll()
        append(log, "a1\na2\n")
        assert texts(tailer.poll()) == ["a1", "a2"]
        append(log, "a3\na4 without newline")  # written, not read yet
        log.rename(tmp_path / "app.log.1")
        log.write_text("b1\nb2\n")
        assert texts(tailer.poll()) == ["a3", "a4 without newline", "b1", "b2"]
        append(log, "b3\n")
        lines = tailer.poll()
        assert texts(lines) == ["b3"]
        assert lines[0].position.inode == log.stat().st_ino


def test_copytruncate_restarts_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    with Tailer(log) as tailer:
        tailer.poll()
        append(log, "a1\na2\na3\n")
        assert texts(tailer.poll()) == ["a1", "a2", "a3"]
        shutil.copyfile(log, tmp_path / "app.log.1")
        with log.open("r+") as f:
            f.truncate(0)
        append(log, "b1\n")
        assert texts(tailer.poll()) == ["b1"]
        append(log, "b2\n")
        assert texts(tailer.poll()) == ["b2"]


def test_a_file_missing_for_a_while(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    with Tailer(log) as tailer:
        tailer.poll()
        append(log, "a1\n")
        log.rename(tmp_path / "elsewhere.log")
        assert texts(tailer.poll()) == ["a1"]
        for _ in range(3):
            assert tailer.poll() == []
        log.write_text("b1\n")
        assert texts(tailer.poll()) == ["b1"]


def test_a_restart_with_state_goes_on_right_after_the_saved_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    state = TailState(tmp_path / "state.json")
    log.write_text("")
    with Tailer(log, state=state) as tailer:
        tailer.poll()
        append(log, "1\n2\n3\n")
        lines = tailer.poll()
        tailer.save(lines[1].position)  # "3" was read, not done with
    append(log, "4\n")
    with Tailer(log, state=state) as tailer:
        assert texts(tailer.poll()) == ["3", "4"]


def test_a_restart_after_a_rotation_while_down_reads_the_rest_of_the_rotated_file(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    state = TailState(tmp_path / "state.json")
    log.write_text("")
    with Tailer(log, state=state) as tailer:
        tailer.poll()
        append(log, "a1\na2\n")
        tailer.save(tailer.poll()[0].position)
    append(log, "a3\n")
    log.rename(tmp_path / "app.log.1")
    log.write_text("b1\n")
    with Tailer(log, state=state) as tailer:
        assert texts(tailer.poll()) == ["a2", "a3", "b1"]


def test_a_restart_whose_saved_file_is_gone_reads_the_path_from_its_start(
    tmp_path: Path,
) -> None:
    # The new file often gets the deleted one's inode (it does on tmpfs and ext4): the
    # state's head (a hash of the file's start) tells them apart.
    log = tmp_path / "app.log"
    state = TailState(tmp_path / "state.json")
    log.write_text("a1\n")
    with Tailer(log, TailConfig(from_start=True), state=state) as tailer:
        tailer.save(tailer.poll()[0].position)
    log.unlink()
    log.write_text("b1\n")
    with Tailer(log, state=state) as tailer:
        assert texts(tailer.poll()) == ["b1"]


def test_a_restart_after_a_truncation_while_down_starts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    state = TailState(tmp_path / "state.json")
    log.write_text("a1\na2\n")
    with Tailer(log, TailConfig(from_start=True), state=state) as tailer:
        tailer.save(tailer.poll()[-1].position)
    with log.open("r+") as f:
        f.truncate(0)
    append(log, "b\n")
    with Tailer(log, state=state) as tailer:
        assert texts(tailer.poll()) == ["b"]


def test_a_state_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match="state file"):
        Tailer(tmp_path / "app.log", state=TailState(bad))


def test_the_state_file_is_replaced_whole(tmp_path: Path) -> None:
    state = TailState(tmp_path / "state.json")
    state.save(Position(1, 2, 3), "abc", tmp_path / "app.log")
    assert state.load() == (Position(1, 2, 3), "abc")
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_line_of_a_rotated_file_is_saved_after_the_switch(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    state = TailState(tmp_path / "state.json")
    log.write_text("")
    with Tailer(log, state=state) as tailer:
        tailer.poll()
        append(log, "a1\na2\n")
        log.rename(tmp_path / "app.log.1")
        log.write_text("b1\n")
        lines = tailer.poll()
        assert texts(lines) == ["a1", "a2", "b1"]
        tailer.save(lines[0].position)  # in app.log.1, closed by now
    with Tailer(log, state=state) as tailer:
        assert texts(tailer.poll()) == ["a2", "b1"]


def test_follow_in_a_thread_sees_lines_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    seen: list[str] = []
    stop = threading.Event()
    tailer = Tailer(log, TailConfig(poll_interval=0.01))
    tailer.poll()

    def run() -> None:
        for lines in tailer.follow(stop):
            seen.extend(texts(lines))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        append(log, "a1\n")
        log.rename(tmp_path / "app.log.1")
        log.write_text("b1\n")
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
        tailer.close()
    assert seen == ["a1", "b1"]


def test_a_big_file_is_read_over_several_polls_before_a_rotation_is_followed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"a{i:03}\n" for i in range(100)))  # 5 bytes a line
    with Tailer(log, TailConfig(from_start=True, max_read=64)) as tailer:
        first = tailer.poll()
        assert len(first) == 12  # 64 bytes: 12 lines and the start of the 13th
        log.rename(tmp_path / "app.log.1")
        log.write_text("b\n")
        seen = texts(first)
        for _ in range(20):
            seen += texts(tailer.poll())
    assert seen == [f"a{i:03}" for i in range(100)] + ["b"]
