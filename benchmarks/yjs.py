"""Yjs documents (issue 15): hybridbus beside pycrdt-websocket and the Node y-websocket server.

    python -m benchmarks.run yjs              # ~6 minutes; -> benchmarks/results/yjs.json
    python -m benchmarks.run yjs --quick      # a smoke run: 3,000 edits, 5 editors

Three servers, in one run, each a subprocess pinned to core 0 (`taskset -c 0`),
started fresh for each round and killed by PID:

- `hybridbus`: `hybridbus serve` on `sqlite://` (synchronous=full), anonymous clients
  allowed everything (`net.procs.ServerProcess("hybridbus-sqlite")`), rooms at
  `/v1/yjs/<room>`: every update appended to the log before it is broadcast;
- `pycrdt-websocket`: pycrdt-websocket 0.16.5's `ASGIServer(WebsocketServer())` under
  uvicorn 0.54.0 (uvloop, httptools), no store (benchmarks/yjs_peer_pycrdt.py, run
  by the separate virtualenv .bench/yjs-venv);
- `y-websocket-server`: the Node server of `@y/websocket-server` 0.1.1 (yjs 13.6.33,
  what y-websocket 3.1 clients speak), `node .../src/server.js`, no persistence
  (benchmarks/js/, `npm ci --prefix benchmarks/js`).

Beside them, the **transport floor** (benchmarks/yjs_floor.py): a bare aiohttp
WebSocket server on uvloop, pinned and killed the same way, that only reads the
replay's messages (no Yjs, nothing stored or sent on): what any Python server on
aiohttp pays to take the trace off a socket, `yjs.replay.transport_floor`.

benchmarks/yjs_install.sh installs both peers; a peer that is not installed is
skipped (and said so). Against each server, the clients (benchmarks/yjs_client.py,
one subprocess pinned to the other core) run three phases; see that module:

1. the editing trace (benchmarks/yjs_trace.py: the automerge-paper trace, 259,778
   single-character edits, each a Yjs update made in advance by pycrdt, one
   message each) replayed through the server to an observer; the figure is the
   server's CPU seconds, and its ratio to **raw pycrdt**: the same updates applied
   to a fresh `pycrdt.Doc` in this process (`time.process_time`), the issue's
   target being at most 1.5 times that;
2. full sync: a joiner's time from the start of its connect to its document synced
   (sync step 2 received and applied) for the trace's final document (104,852
   characters with its history), target ≤ 100 ms;
3. keystrokes: 50 editors in one room, one types; p50 / p99 of the time until each
   of the 49 others receives a keystroke (target p99 ≤ 3 ms "at the server"), and
   the server's CPU time per keystroke, its own part (the server is otherwise idle
   between keystrokes, so this bounds what it adds to a delivery).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from pycrdt import Doc, Text

from benchmarks.harness import Result, Settings
from benchmarks.net.procs import (
    ROOT,
    Launched,
    ServerProcess,
    client_cores,
    free_port,
)
from benchmarks.yjs_client import frame_updates
from benchmarks.yjs_trace import Edit, final_text, load

__all__ = ["FLOOR", "SERVERS", "extra", "installed", "make_updates", "raw_pycrdt_cpu", "run"]

SERVERS: Final = ("hybridbus", "pycrdt-websocket", "y-websocket-server")
FLOOR: Final = "transport-floor"  # benchmarks/yjs_floor.py: aiohttp reading, no Yjs
PEER_VENV: Final = ROOT / ".bench" / "yjs-venv"
NODE_SERVER: Final = (
    ROOT / "benchmarks" / "js" / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
)
SMOKE_EDITS: Final = 3_000
EDITORS: Final = 50
KEYSTROKES: Final = 300
JOINS: Final = 20
TIME_LIMIT: Final = 240.0  # seconds a phase may take (smoke: 60)
RAW_TARGET: Final = 1.5  # server CPU / raw pycrdt CPU
P99_TARGET_MS: Final = 3.0
SYNC_TARGET_MS: Final = 100.0

_EXTRA: dict[str, Any] = {}


def installed(server: str) -> str | None:
    """None when `server` can run here, else why not."""
    if server == "pycrdt-websocket" and not (PEER_VENV / "bin" / "python").exists():
        return f"{PEER_VENV} is missing (benchmarks/yjs_install.sh)"
    if server == "y-websocket-server":
        if shutil.which("node") is None:
            return "node is not installed"
        if not NODE_SERVER.exists():
            return "benchmarks/js/node_modules is missing (npm ci --prefix benchmarks/js)"
    return None


class _PeerProcess(Launched):
    """A peer server subprocess: pinned to core 0, waited for on its port, killed by PID."""

    def __init__(self, server: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{server}-"))
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        if server == FLOOR:
            env["PYTHONPATH"] = str(ROOT)
            argv = [sys.executable, "-m", "benchmarks.yjs_floor", str(self.port)]
        elif server == "pycrdt-websocket":
            argv = [
                str(PEER_VENV / "bin" / "python"),
                str(ROOT / "benchmarks" / "yjs_peer_pycrdt.py"),
                str(self.port),
            ]
        else:
            argv = ["node", str(NODE_SERVER)]
        self._launch(server, argv, cwd=self.dir, env=env)


def make_updates(edits: Sequence[Edit]) -> list[bytes]:
    """The Yjs update of each edit, made by pycrdt (one transaction per edit, as typed)."""
    doc = Doc()
    doc["text"] = text = Text()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for index, char in edits:  # the trace is ASCII: pycrdt's byte offsets are indices
        if char:
            text.insert(index, char)
        else:
            del text[index]
    return updates


def raw_pycrdt_cpu(updates: Sequence[bytes]) -> float:
    """CPU seconds pycrdt takes to apply `updates` to a fresh document, in process."""
    doc = Doc()
    doc["text"] = Text()
    apply = doc.apply_update
    start = time.process_time()
    for update in updates:
        apply(update)
    return time.process_time() - start


def _client(server: str, url: str, pid: int, plan: dict[str, Any], work: Path) -> dict[str, Any]:
    path = work / "plan.json"
    path.write_text(json.dumps({**plan, "url": url, "pid": pid}))
    cores = client_cores()
    prefix = ["taskset", "-c", cores] if cores else []
    out = subprocess.run(
        [*prefix, sys.executable, "-m", "benchmarks.yjs_client", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * plan["time_limit"],
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the client against {server} failed:\n{out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def measure_floor(plan: dict[str, Any], work: Path) -> dict[str, Any]:
    """The transport floor: the replay's messages read by a bare aiohttp server."""
    peer = _PeerProcess(FLOOR)
    try:
        figures = _client(FLOOR, f"ws://127.0.0.1:{peer.port}/", peer.pid, plan, work)
        floor: dict[str, Any] = figures["floor"]
        return floor
    except Exception:
        sys.stderr.write(peer.log_tail())
        raise
    finally:
        peer.stop()


def measure(server: str, plan: dict[str, Any], work: Path) -> dict[str, Any]:
    """One round against `server`: a fresh server, the three phases, the server killed."""
    if server == "hybridbus":
        hub = ServerProcess("hybridbus-sqlite")
        try:
            return _client(server, f"ws://127.0.0.1:{hub.port}/v1/yjs/", hub.pid, plan, work)
        except Exception:
            sys.stderr.write(hub.log_tail())
            raise
        finally:
            hub.stop()
    peer = _PeerProcess(server)
    try:
        return _client(server, f"ws://127.0.0.1:{peer.port}/", peer.pid, plan, work)
    except Exception:
        sys.stderr.write(peer.log_tail())
        raise
    finally:
        peer.stop()


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    edits, source = load(SMOKE_EDITS if settings.smoke else None)
    log(f"  trace: {source}, {len(edits):,} edits; making the Yjs updates with pycrdt")
    updates = make_updates(edits)
    servers = [s for s in SERVERS if installed(s) is None]
    for server in SERVERS:
        if (why := installed(server)) is not None:
            log(f"  {server} skipped: {why}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    raw: list[float] = []
    floor: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-yjs-", dir=settings.tmpdir) as tmp:
        work = Path(tmp)
        (work / "updates.bin").write_bytes(frame_updates(updates))
        (work / "final.txt").write_text(final_text(edits))
        plan = {
            "updates": str(work / "updates.bin"),
            "final_text": str(work / "final.txt"),
            "joins": 3 if settings.smoke else JOINS,
            "editors": 5 if settings.smoke else EDITORS,
            "warmup": 5 if settings.smoke else 30,
            "keystrokes": 10 if settings.smoke else KEYSTROKES,
            "time_limit": 60.0 if settings.smoke else TIME_LIMIT,
        }
        for round_ in range(settings.runs):
            log(f"  round {round_ + 1} of {settings.runs}: raw pycrdt, {', '.join(servers)}")
            raw.append(raw_pycrdt_cpu(updates))
            log(f"    {'raw pycrdt':<20} {raw[-1]:7.2f} s CPU")
            floor.append(measure_floor({**plan, "floor": True}, work))
            cpu = floor[-1]["server_cpu_s"]
            log(f"    {FLOOR:<20} {cpu:7.2f} s CPU ({cpu / raw[-1]:.2f}x raw)")
            for server in servers:  # round-robin: a busy moment spoils one run of a few
                if server in failed:
                    continue
                try:
                    one = measure(server, plan, work)
                except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                    failed[server] = str(exc)[-2000:]
                    log(f"    {server} failed, left out: {str(exc)[-300:]}")
                    continue
                runs[server].append(one)
                r, f, k = one["replay"], one["full_sync"], one["keystrokes"]
                cpu = r["server_cpu_s"]
                log(
                    f"    {server:<20} {cpu:7.2f} s CPU ({cpu / raw[-1]:.2f}x raw), "
                    f"{r['edits'] / r['wall_s']:8,.0f} edits/s; sync "
                    f"{f['synced_p50_ms']:6.1f} ms; keys p50 {k['p50_ms']:.2f} p99 "
                    f"{k['p99_ms']:.2f} ms, {k['server_cpu_us_per_keystroke']:.0f} µs CPU"
                )
    _EXTRA.clear()
    _EXTRA.update(
        trace=source,
        edits=len(edits),
        final_chars=len(final_text(edits)),
        update_bytes=sum(map(len, updates)),
        servers=[s for s in servers if s not in failed],
        failed=failed,
        plan={k: v for k, v in plan.items() if k not in ("updates", "final_text")},
        versions=_versions(),
    )
    return _results([s for s in servers if s not in failed], runs, raw, floor)


def _results(
    servers: list[str],
    runs: dict[str, list[dict[str, Any]]],
    raw: list[float],
    floor: list[dict[str, Any]],
) -> list[Result]:
    results = [
        Result(
            "yjs.replay.raw_pycrdt",
            "yjs",
            "raw pycrdt: apply the trace's updates, CPU",
            "s",
            raw,
            is_peer=True,
        ),
        Result(
            f"yjs.replay.{FLOOR}",
            "yjs",
            "transport floor: a bare aiohttp server reading the replay's messages, CPU",
            "s",
            [f["server_cpu_s"] for f in floor],
            is_peer=True,
            details=floor,
        ),
        Result(
            f"yjs.replay_x_raw.{FLOOR}",
            "yjs",
            "transport floor CPU / raw pycrdt",
            "x",
            [f["server_cpu_s"] / x for f, x in zip(floor, raw, strict=True)],
            is_peer=True,
        ),
    ]
    for server in servers:
        got = runs[server]
        ours = server == "hybridbus"
        peer_of = (
            (lambda case: f"yjs.{case}.pycrdt-websocket")
            if ours and ("pycrdt-websocket" in servers)
            else (lambda case: None)
        )
        replay = [r["replay"] for r in got]
        full = [r["full_sync"] for r in got]
        keys = [r["keystrokes"] for r in got]
        results += [
            Result(
                f"yjs.replay.{server}",
                "yjs",
                f"{server}: replay, server CPU",
                "s",
                [r["server_cpu_s"] for r in replay],
                peer=peer_of("replay"),
                is_peer=not ours,
                details=replay,
            ),
            Result(
                f"yjs.replay_x_raw.{server}",
                "yjs",
                f"{server}: replay CPU / raw pycrdt",
                "x",
                [r["server_cpu_s"] / x for r, x in zip(replay, raw, strict=True)],
                target=RAW_TARGET if ours else None,
                is_peer=not ours,
            ),
            Result(
                f"yjs.full_sync.{server}",
                "yjs",
                f"{server}: full sync to a joiner",
                "ms",
                [f["synced_p50_ms"] for f in full],
                peer=peer_of("full_sync"),
                target=SYNC_TARGET_MS if ours else None,
                is_peer=not ours,
                details=full,
            ),
            Result(
                f"yjs.keys_p50.{server}",
                "yjs",
                f"{server}: keystroke to 49 others, p50",
                "ms",
                [k["p50_ms"] for k in keys],
                peer=peer_of("keys_p50"),
                is_peer=not ours,
                details=keys,
            ),
            Result(
                f"yjs.keys_p99.{server}",
                "yjs",
                f"{server}: keystroke to 49 others, p99",
                "ms",
                [k["p99_ms"] for k in keys],
                peer=peer_of("keys_p99"),
                is_peer=not ours,
            ),
            Result(
                f"yjs.keys_cpu.{server}",
                "yjs",
                f"{server}: server CPU per keystroke",
                "µs/op",
                [k["server_cpu_us_per_keystroke"] for k in keys],
                peer=peer_of("keys_cpu"),
                target=P99_TARGET_MS * 1e3 if ours else None,
                is_peer=not ours,
            ),
        ]
    return results


def _versions() -> dict[str, str | None]:
    def node_package(name: str) -> str | None:
        path = ROOT / "benchmarks" / "js" / "node_modules" / name / "package.json"
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads(path.read_text())["version"])
        return None

    peer = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        peer = subprocess.run(
            [
                str(PEER_VENV / "bin" / "python"),
                "-c",
                "from importlib.metadata import version as v; "
                "print(v('pycrdt-websocket'), v('pycrdt'), v('uvicorn'))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    node = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    from importlib.metadata import version

    return {
        "pycrdt": version("pycrdt"),
        "pycrdt-websocket": peer[0] if peer else None,
        "pycrdt (peer venv)": peer[1] if peer else None,
        "uvicorn": peer[2] if peer else None,
        "@y/websocket-server": node_package("@y/websocket-server"),
        "yjs (node)": node_package("yjs"),
        "node": node,
    }


def extra() -> dict[str, Any]:
    """Facts of the last run for the JSON: the trace, sizes, the plan, versions."""
    return dict(_EXTRA)


if __name__ == "__main__":
    from benchmarks.run import main as run_main

    run_main(["yjs", *sys.argv[1:]])
