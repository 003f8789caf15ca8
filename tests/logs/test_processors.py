"""`Processors`: real files in a directory, loaded in order, watched and reloaded.

The watcher tests write, break, fix and delete real files under a real
watchfiles watcher and poll (generous timeouts) until the chain shows the
change: nothing asserts a fixed delay.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hybridbus.core.logs import LogRecord
from hybridbus.errors import InvalidInput
from hybridbus.logs.processors import Processors

TIMEOUT = 20.0


def until(check: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def tag(value: str) -> str:
    """A processor that sets fields['tag'] = value."""
    return f"def process(record):\n    record.fields['tag'] = {value!r}\n    return record\n"


def tagged(processors: Processors, message: str = "hello") -> object:
    result = processors.apply(LogRecord(message=message))
    return None if result is None else result.fields.get("tag")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Processors]:
    processors = Processors(tmp_path)
    processors.start()
    try:
        yield processors
    finally:
        processors.close()


def test_the_chain_runs_in_file_name_order_and_none_drops(tmp_path: Path) -> None:
    (tmp_path / "20_upper.py").write_text(
        "def process(record):\n"
        "    record.message = record.message.upper()\n"
        "    return record\n"
    )
    (tmp_path / "10_suffix.py").write_text(
        "def process(record):\n"
        "    record.message += ' (seen)'\n"
        "    return record\n"
    )
    (tmp_path / "30_drop.py").write_text(
        "def process(record):\n"
        "    return None if 'SECRET' in record.message else record\n"
    )
    (tmp_path / "_helper.py").write_text("raise RuntimeError('never loaded')\n")
    (tmp_path / "notes.txt").write_text("not a processor\n")
    processors = Processors(tmp_path)
    assert processors.names == ["10_suffix.py", "20_upper.py", "30_drop.py"]
    out = processors.apply(LogRecord(message="hello", level="warn"))
    assert out is not None
    assert out.message == "HELLO (SEEN)"
    assert out.level == "warn"
    assert processors.apply(LogRecord(message="a secret")) is None
    assert processors.errors == {}


def test_a_directory_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a directory"):
        Processors(tmp_path / "missing")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def process(record)\n    return record\n", "line 1: SyntaxError"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
        ("x = 1\n", "defines no process"),
        ("process = 42\n", "not callable"),
        ("raise SystemExit(3)\n", "SystemExit"),
    ],
)
def test_a_broken_file_is_refused_with_its_error(
    tmp_path: Path, source: str, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.py").write_text(tag("a"))
    (tmp_path / "b.py").write_text(source)
    with caplog.at_level(logging.ERROR, "hybridbus.logs.processors"):
        processors = Processors(tmp_path)
    assert processors.names == ["a.py"]
    assert error in processors.errors["b.py"]
    assert processors.errors["b.py"].startswith("b.py: ")
    assert processors.status()["errors"] == {"b.py": processors.errors["b.py"]}
    assert any(error in r.getMessage() for r in caplog.records)
    assert tagged(processors) == "a"


def test_a_failing_processor_passes_the_record_on_unchanged_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 10 changes the record, then fails on it: the change must not leak on.
    (tmp_path / "10_fails.py").write_text(
        "def process(record):\n"
        "    record.message = 'changed'\n"
        "    record.fields['half'] = True\n"
        "    if record.fields.get('n', 0) % 2:\n"
        "        raise ValueError('odd')\n"
        "    return record\n"
    )
    (tmp_path / "20_wrong_type.py").write_text("def process(record):\n    return 'text'\n")
    (tmp_path / "30_tag.py").write_text(tag("after"))
    processors = Processors(tmp_path)
    with caplog.at_level(logging.WARNING, "hybridbus.logs.processors"):
        outs = [processors.apply(LogRecord(message="m", fields={"n": n})) for n in range(6)]
    for n, out in enumerate(outs):
        assert out is not None
        assert out.fields["tag"] == "after"  # the chain went on
        if n % 2:
            assert out.message == "m"
            assert "half" not in out.fields
        else:
            assert out.message == "changed"
    assert processors.status()["failures"] == {"10_fails.py": 3, "20_wrong_type.py": 6}
    # Logged once per processor per minute, not once per record.
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(getattr(r, "processor", "") for r in warned) == [
        "10_fails.py",
        "20_wrong_type.py",
    ]
    assert any("ValueError: odd" in r.getMessage() for r in warned)
    assert any("returned str" in r.getMessage() for r in warned)


def test_modules_do_not_stay_in_sys_modules_and_dataclasses_work(tmp_path: Path) -> None:
    (tmp_path / "dc.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\n"
        "class Tag:\n"
        "    value: str\n"
        "TAG = Tag('dc')\n"
        "def process(record):\n"
        "    record.fields['tag'] = TAG.value\n"
        "    return record\n"
    )
    before = set(sys.modules)
    processors = Processors(tmp_path)
    assert tagged(processors) == "dc"
    assert {m for m in set(sys.modules) - before if "processor" in m} == set()


def test_a_file_added_changed_broken_fixed_and_deleted_under_the_watcher(
    tmp_path: Path, watched: Processors
) -> None:
    assert watched.names == []
    path = tmp_path / "redact.py"
    path.write_text(tag("v1"))
    until(lambda: tagged(watched) == "v1", "the new file to be loaded")

    path.write_text(tag("v2"))
    until(lambda: tagged(watched) == "v2", "the changed file to be reloaded")

    # A broken edit is refused with its error; v2 stays in use.
    path.write_text("def process(record:\n")
    until(lambda: "redact.py" in watched.errors, "the broken edit to be refused")
    assert "SyntaxError" in watched.errors["redact.py"]
    assert watched.names == ["redact.py"]
    assert tagged(watched) == "v2"

    # Another kind of broken: it imports fine but has no process(); still v2.
    path.write_text("def handle(record):\n    return record\n")
    until(
        lambda: "defines no process" in watched.errors.get("redact.py", ""),
        "the second broken edit to be refused",
    )
    assert tagged(watched) == "v2"

    path.write_text(tag("v3"))
    until(lambda: tagged(watched) == "v3", "the fixed edit to be taken")
    assert watched.errors == {}

    path.unlink()
    until(lambda: watched.names == [], "the deleted file to be removed")
    assert tagged(watched) is None  # no processor: no tag


def test_a_new_broken_file_is_refused_and_a_deleted_broken_one_forgotten(
    tmp_path: Path, watched: Processors
) -> None:
    (tmp_path / "ok.py").write_text(tag("ok"))
    until(lambda: tagged(watched) == "ok", "ok.py to be loaded")
    broken = tmp_path / "zz_broken.py"
    broken.write_text("import no_such_module_here\n")
    until(lambda: "zz_broken.py" in watched.errors, "the broken file to be refused")
    assert watched.names == ["ok.py"]
    broken.unlink()
    until(lambda: watched.errors == {}, "the deleted broken file's error to go")
    assert watched.names == ["ok.py"]


def test_apply_from_other_threads_sees_whole_chains_while_files_change(
    tmp_path: Path, watched: Processors
) -> None:
    # Two processors always written with the same version: a record sees both of the
    # same version, or a mix only between two swaps, never a failure or a missing one.
    seen: list[tuple[object, object]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def write(version: int) -> None:
        for name in ("a.py", "b.py"):
            (tmp_path / name).write_text(
                f"def process(record):\n"
                f"    record.fields[{name[0]!r}] = {version}\n"
                f"    return record\n"
            )

    def apply() -> None:
        while not stop.is_set():
            try:
                out = watched.apply(LogRecord(message="x"))
                assert out is not None
                seen.append((out.fields.get("a"), out.fields.get("b")))
            except BaseException as exc:
                failures.append(exc)
                return

    write(0)
    until(lambda: tagged_pair(watched) == (0, 0), "version 0")
    thread = threading.Thread(target=apply)
    thread.start()
    try:
        for version in range(1, 4):
            write(version)
            until(lambda v=version: tagged_pair(watched) == (v, v), f"version {version}")
    finally:
        stop.set()
        thread.join(10)
    assert failures == []
    assert seen
    assert all(a is not None and b is not None for a, b in seen)
    assert watched.status()["failures"] == {}


def tagged_pair(processors: Processors) -> tuple[object, object]:
    out = processors.apply(LogRecord(message="x"))
    assert out is not None
    return out.fields.get("a"), out.fields.get("b")
