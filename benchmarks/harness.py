"""Shared helpers: results, medians, timing loops, the event loop, machine facts, reporting."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

__all__ = [
    "RESULTS_DIR",
    "Case",
    "Result",
    "Settings",
    "Unit",
    "format_table",
    "load_average",
    "machine_info",
    "median",
    "per_op_seconds",
    "run_async",
    "run_cases",
    "scratch_dir",
    "write_json",
]

T = TypeVar("T")

# Higher is better for rates (ops/s, deliveries/s, events/s); lower for the others.
Unit = Literal[
    "ops/s",
    "deliveries/s",
    "events/s",
    "µs/op",
    "µs/delivery",
    "µs/event",
    "ms",
    "s",
    "KiB/conn",
    "MiB",
    "x",
    "%",
]

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure; `quick()` is for smoke runs."""

    runs: int = 3  # medians of this many runs
    publish_seconds: float = 3.0  # length of one publish run
    fanout_events: int = 2_000  # events per fan-out run (x subscribers deliveries)
    codec_seconds: float = 0.25  # length of one codec run
    tmpdir: str | None = None  # where sqlite files go (default: the system temp dir)
    smoke: bool = False  # a smoke run (`quick()`): small sizes, figures are not results
    # The server group (benchmarks/server.py):
    cases: tuple[str, ...] = ()  # only these server cases (default: all)
    profile: str | None = None  # record the hybridbus server of this case with py-spy
    soak_minutes: float | None = None  # the soak's length (default 1 minute; quick: 10 s)

    @classmethod
    def quick(cls, tmpdir: str | None = None, **server: Any) -> Settings:
        return cls(
            runs=1,
            publish_seconds=0.5,
            fanout_events=200,
            codec_seconds=0.05,
            tmpdir=tmpdir,
            smoke=True,
            **server,
        )


@dataclass
class Result:
    """One measured case: every run's figure and what it is compared with.

    `peer` names the case this one is compared with (a result id); `target`
    is the figure the issue asks for, reported and never asserted.
    """

    id: str
    group: str
    label: str
    unit: Unit
    runs: list[float]
    peer: str | None = None
    target: float | None = None
    is_peer: bool = False
    # Per run: the other figures of that run (CPU, load, noise ...), for the JSON.
    details: list[dict[str, Any]] | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.unit in ("ops/s", "deliveries/s", "events/s")

    @property
    def value(self) -> float:
        return median(self.runs)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    def speedup(self, other: Result) -> float:
        """How many times better this is than `other` (>1: this is faster)."""
        if self.higher_is_better:
            return self.value / other.value
        return other.value / self.value

    def as_dict(self, by_id: dict[str, Result]) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = self.value
        out["met"] = self.met
        peer = by_id.get(self.peer) if self.peer else None
        out["peer_value"] = peer.value if peer else None
        out["ratio_to_peer"] = self.speedup(peer) if peer else None
        # Per-round ratios (rounds are interleaved: run i of both was measured close together).
        out["round_ratios"] = (
            [
                (a / b if self.higher_is_better else b / a) if a and b else None
                for a, b in zip(self.runs, peer.runs, strict=False)
            ]
            if peer
            else None
        )
        return out


@dataclass(frozen=True)
class Case:
    """A benchmark case: `measure()` returns one run's figure."""

    id: str
    label: str
    unit: Unit
    measure: Callable[[], float]
    peer: str | None = None
    target: float | None = None
    is_peer: bool = False
    warmup: bool = False  # one untimed run first (cheap cases whose first run is slow)

    def once(self) -> float:
        gc.collect()  # start clean: no garbage of an earlier run to collect
        return self.measure()

    def result(self, runs: list[float]) -> Result:
        return Result(
            self.id,
            self.id.split(".", 1)[0],
            self.label,
            self.unit,
            runs,
            peer=self.peer,
            target=self.target,
            is_peer=self.is_peer,
        )

    def run(self, settings: Settings, log: Callable[[str], None]) -> Result:
        """Measure this case alone (see `run_cases` for a group)."""
        return run_cases([self], settings, log)[0]


def run_cases(
    cases: Sequence[Case], settings: Settings, log: Callable[[str], None]
) -> list[Result]:
    """Measure `cases` round-robin: run 1 of every case, then run 2, ...

    Something else briefly busy on the machine then spoils one run of a few
    cases, which the median drops, rather than every run of one case.
    """
    for case in cases:
        if case.warmup and settings.runs > 1:
            case.once()
    runs: list[list[float]] = [[] for _ in cases]
    for round_ in range(settings.runs):
        log(f"  round {round_ + 1} of {settings.runs}: {len(cases)} cases")
        for case, figures in zip(cases, runs, strict=True):
            figures.append(case.once())
    results = [case.result(figures) for case, figures in zip(cases, runs, strict=True)]
    for result in results:
        log(
            f"  {result.id:<34} {_fmt(result.value, result.unit):>14}  runs: "
            + ", ".join(_fmt(r, result.unit) for r in result.runs)
        )
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def per_op_seconds(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call of `fn`, timed over about `seconds` (after a short warm-up)."""
    for _ in range(100):
        fn()
    # Calibrate a batch size that takes ~1/20 of the budget, then time whole batches.
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        spent = time.perf_counter() - start
        if spent >= seconds / 20:
            break
        batch *= 2
    calls = 0
    spent = 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        spent += time.perf_counter() - start
        calls += batch
    return spent / calls


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh event loop: uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return f"uvloop {_version('uvloop')}"


@contextlib.contextmanager
def scratch_dir(settings: Settings) -> Iterator[Path]:
    """A fresh directory for one run's sqlite files, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="hybridbus-bench-", dir=settings.tmpdir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- machine facts -----------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    facts = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def _cpuinfo_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _disk(path: Path) -> dict[str, Any]:
    """The filesystem and block device under `path`, and what one fsync costs there."""
    info: dict[str, Any] = {"path": str(path)}
    with contextlib.suppress(OSError):
        best: tuple[str, str, str] | None = None
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and (best is None or len(mount) > len(best[1])):
                best = (device, mount, fstype)
        if best:
            device, mount, fstype = best
            info.update(device=device, mount=mount, fs=fstype)
            name = re.sub(r"^/dev/", "", device)
            block = Path("/sys/class/block") / name
            rotational = block / "queue" / "rotational"
            if not rotational.exists():  # a partition: ask its parent disk
                rotational = block.resolve().parent / "queue" / "rotational"
            if rotational.exists():
                info["rotational"] = rotational.read_text().strip() == "1"
    info["fsync_us"] = round(_fsync_us(path), 1)
    return info


def _fsync_us(directory: Path, count: int = 100) -> float:
    """Median µs of write(4 KiB) + fsync in `directory`: the floor of a durable commit."""
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        times = []
        block = b"x" * 4096
        for _ in range(count):
            os.write(fd, block)
            start = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - start)
        return median(times) * 1e6
    finally:
        os.close(fd)
        os.unlink(name)


def machine_info(settings: Settings) -> dict[str, Any]:
    cpu = _lscpu()
    with scratch_dir(settings) as scratch:
        disk = _disk(scratch)
    disk["path"] = settings.tmpdir or tempfile.gettempdir()
    return {
        "cpu_model": cpu.get("Model name") or _cpuinfo_model() or platform.processor() or None,
        "cpuinfo_model_name": _cpuinfo_model(),
        "cpu_family_model": f"{cpu.get('CPU family', '?')}/{cpu.get('Model', '?')}",
        "cpus": os.cpu_count(),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "ram_gib": _mem_total_gib(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "event_loop": loop_name(),
        "msgspec": _version("msgspec"),
        "uvloop": _version("uvloop"),
        "cloudevents": _version("cloudevents"),
        "hybridbus": _version("hybridbus"),
        "sqlite": sqlite3.sqlite_version,
        "disk": disk,
    }


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: other work on the machine skews results."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- reporting -----------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit == "µs/op":
        return f"{value:.2f} µs"
    if unit in ("µs/delivery", "µs/event"):
        return f"{value:.2f} {unit}"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "KiB/conn":
        return f"{value:.1f} KiB"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M/s"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k/s"
    return f"{value:.0f} /s"


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table: case, median, runs, target, ratio to the peer."""
    by_id = {r.id: r for r in results}
    header = "| case | median | target | vs peer | peer |"
    rows = [header, "|---|---:|---|---:|---|"]
    for r in results:
        if r.target is None:
            target = ""
        else:
            sign = ">=" if r.higher_is_better else "<="
            verdict = "met" if r.met else "NOT met"
            target = f"{sign} {_fmt(r.target, r.unit)} ({verdict})"
        peer = by_id.get(r.peer) if r.peer else None
        ratio = f"{r.speedup(peer):.2f}x" if peer else ""
        label = f"*{r.label}*" if r.is_peer else r.label
        rows.append(
            f"| {label} | {_fmt(r.value, r.unit)} | {target} | {ratio} | "
            f"{peer.label if peer else ''} |"
        )
    return "\n".join(rows)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (via a .tmp file next to it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
