"""The instruction count of the overhead group: does tracing off cost nothing?

Owns: counting, with `valgrind --tool=callgrind`, the instructions (Ir) of N in-process
publishes (`memory://`, `subscribers` subscriptions of one topic, each event delivered
before the next is published) in four trees/modes — `base`: a copy of src/ with the
tracing hooks taken out (the hunks of `git diff` since the revision before
server/tracing.py was added whose changed lines name the tracer or tracing,
reverse-applied with `patch`); `off`: this tree, tracing off (the default); `unsampled`
and `sampled`: this tree with the OpenTelemetry tracer on, sample_ratio 0 and 1, exported
nowhere. Per event: the difference of a run of N2 and one of N1 publishes, over N2 - N1
(interpreter start-up and imports cancel out). Repeatable to ~100 instructions per event
of ~277,000 at N1 = 100, N2 = 1,100 (PYTHONHASHSEED=0; the garbage collector's timing
still varies a little), where the timings of benchmarks/overhead.py vary by tens of percent.
Must not: measure anything over the network (benchmarks/overhead.py does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from benchmarks.net.procs import PYTHON, ROOT

__all__ = ["instructions", "tracing_hunks"]

# Run as `python -c _COUNT MODE EVENTS SUBSCRIBERS`, PYTHONPATH = the src/ to measure.
_COUNT: Final = """
import asyncio, contextlib, sys
from datetime import UTC, datetime
import hybridbus
from hybridbus import Event

async def main(mode, events, subscribers):
    async with hybridbus.open("memory://") as bus, contextlib.AsyncExitStack() as stack:
        if mode in ("unsampled", "sampled"):
            from hybridbus.server.config import TracingConfig
            from hybridbus.server.tracing import start_tracing
            ratio = 0.0 if mode == "unsampled" else 1.0
            config = TracingConfig(enabled=True, sample_ratio=ratio, protocol="none")
            bus.tracer = start_tracing(config, node="count", engine="memory")
        subs = [await stack.enter_async_context(bus.subscribe("acme/t"))
                for _ in range(subscribers)]
        async def consume(sub):
            n = 0
            async for _ in sub:
                n += 1
                if n == events:
                    return
        tasks = [asyncio.create_task(consume(sub)) for sub in subs]
        when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
        for seq in range(events):
            event = Event(id=f"e-{seq:09d}", source="/bench/publisher", type="com.acme.doc.edited",
                          time=when, data={"doc": 0, "seq": seq, "text": "hello, world"})
            await bus.publish("acme/t", event)
            await asyncio.sleep(0)  # each event delivered before the next
        await asyncio.gather(*tasks)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""
_TRACING_FILE: Final = "src/hybridbus/server/tracing.py"
_HOOK: Final = re.compile(r"trac(er|ing)", re.IGNORECASE)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def tracing_hunks(diff: str) -> tuple[str, int]:
    """The hunks of `diff` (unified, per file) whose changed lines name the tracer or tracing.

    Files the diff adds or deletes are left out (reverse-applied they would vanish or appear).
    Returns the filtered diff and its number of hunks.
    """
    out: list[str] = []
    count = 0
    for part in re.split(r"(?m)^(?=diff --git )", diff):
        header, _, body = part.partition("\n@@")
        if not body or "\nnew file mode" in header or "\ndeleted file mode" in header:
            continue
        kept = []
        for hunk in ("@@" + body).split("\n@@"):
            hunk = hunk if hunk.startswith("@@") else "@@" + hunk
            changed = [line for line in hunk.splitlines()[1:] if line.startswith(("+", "-"))]
            if any(_HOOK.search(line) for line in changed):
                kept.append(hunk.rstrip("\n") + "\n")
        if kept:
            out.append(header + "\n" + "".join(kept))
            count += len(kept)
    return "".join(out), count


def _without_tracing(directory: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of src/ without the tracing hooks: their hunks since the revision before
    server/tracing.py was added (HEAD while it is not committed) reverse-applied."""
    added = _git("log", "--diff-filter=A", "--format=%H", "-1", "--", _TRACING_FILE).strip()
    base = f"{added}^" if added else "HEAD"
    diff, hunks = tracing_hunks(_git("diff", "--no-color", "--no-ext-diff", base, "--", "src"))
    shutil.copytree(ROOT / "src", directory / "src", ignore=shutil.ignore_patterns("__pycache__"))
    files = re.findall(r"(?m)^\+\+\+ b/(\S+)", diff)
    subprocess.run(
        ["patch", "-R", "-p1", "-s", "--no-backup-if-mismatch", "-d", str(directory)],
        input=diff, text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return directory / "src", {"base": _git("rev-parse", "--short", base).strip(),
                               "hunks": hunks, "files": files}  # fmt: skip


def _callgrind(src: Path, mode: str, events: int, subscribers: int, cwd: Path) -> int:
    """Instructions (callgrind's Ir) of a whole `_COUNT` run."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         PYTHON, "-c", _COUNT, "off" if mode == "base" else mode, str(events), str(subscribers)],
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"},
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind {mode} {events}: {done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(
    events: tuple[int, int],
    subscribers: int,
    modes: Sequence[str],
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Instructions per publish in each of `modes` (module docstring); None if not counted.

    The runs go on in parallel, one per core: a count does not depend on the load.
    """
    if not modes:
        log("  (the instruction count is not part of a smoke run)")
        return None
    if shutil.which("valgrind") is None or shutil.which("patch") is None:
        log("  (valgrind or patch missing: the instruction count is skipped)")
        return None
    n1, n2 = events
    with tempfile.TemporaryDirectory(prefix="bench-overhead-count-") as tmp:
        try:
            base_src, base = _without_tracing(Path(tmp))
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            log(f"  (the tree without the tracing hooks could not be made: {detail})")
            return None
        runs = [(mode, n) for mode in modes for n in (n1, n2)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counts = dict(
                zip(
                    runs,
                    pool.map(
                        lambda run: _callgrind(
                            base_src if run[0] == "base" else ROOT / "src",
                            run[0],
                            run[1],
                            subscribers,
                            Path(tmp),
                        ),
                        runs,
                    ),
                    strict=True,
                )
            )
    per_event: dict[str, float] = {}
    for mode in modes:
        per_event[mode] = (counts[mode, n2] - counts[mode, n1]) / (n2 - n1)
        log(f"    instructions per publish, {mode:<9} {per_event[mode]:>12,.0f}")
    return {
        "per_event": per_event,
        "counts": {f"{mode} {n}": count for (mode, n), count in counts.items()},
        "events": [n1, n2],
        "subscribers": subscribers,
        "without_tracing": base,
    }
