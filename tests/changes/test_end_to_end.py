"""A watched directory and two followers, as real processes on real files, end byte-identical.

`hybridbus watch` and two `hybridbus follow` run as subprocesses against a
real server: one follower is killed mid-way (its connection dropped) and
restarted, resuming from its saved token; the other starts late and replays
the history. The edits include a rename, a delete, a JSON merge patch with
`null` removals, an ignored file and a conflict with a local edit (reported,
not overwritten, then resolved by deleting the local copy); `hybridbus
changes status` names who applied and who did not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.servers import running_server

import hybridbus.client
from hybridbus.changes.registry import read_all

pytestmark = pytest.mark.slow
HYBRIDBUS = str(Path(sys.executable).parent / "hybridbus")
TOPIC = "changes/repo"


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".hybridbus") and rel not in skip:
            out[rel] = path.read_bytes()
    return out


async def until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def spawn(url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [HYBRIDBUS, *args, "--url", url], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode()


async def test_two_followers_end_identical(tmp_path: Path) -> None:
    src, m1, m2 = tmp_path / "src", tmp_path / "m1", tmp_path / "m2"
    src.mkdir()
    (src / ".gitignore").write_text("*.log\n")
    (src / "a.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    (src / "conf.json").write_text(json.dumps({"a": 1, "b": {"c": 2, "d": 3}}, indent=2) + "\n")
    (src / "logo.bin").write_bytes(bytes(range(256)) * 4)
    (src / "debug.log").write_text("ignored\n")
    procs: list[subprocess.Popen[bytes]] = []
    async with running_server() as server, hybridbus.client.connect(server.url) as c:
        watcher = spawn(server.url, "watch", str(src), "--topic", TOPIC, "--debounce", "30")
        procs.append(watcher)
        try:
            await until_events(c, 4)
            follow = ("follow", TOPIC)
            f1_args = (*follow, str(m1), "--instance", "f1", "--service", "api",
                       "--version", "1.2", "--heartbeat", "0.3")
            f1 = spawn(server.url, *f1_args)
            procs.append(f1)
            expected = lambda: tree(src, skip=("debug.log",))  # noqa: E731
            await until(lambda: tree(m1) == expected(), "f1's first copy")
            assert "debug.log" not in tree(m1)

            # An edit and a merge patch with null removals.
            with (src / "a.txt").open("a") as f:
                f.write("one more\n")
            (src / "conf.json").write_text(
                json.dumps({"b": {"c": 2}, "e": [1, 2]}, indent=2) + "\n"
            )
            await until(lambda: tree(m1) == expected(), "f1 after the edits")

            # f1 drops mid-way; a rename, a delete and another patch happen meanwhile.
            stop(f1, signal.SIGKILL)
            (src / "a.txt").rename(src / "b.txt")
            await asyncio.sleep(0.3)
            (src / "logo.bin").unlink()
            (src / "conf.json").write_text(json.dumps({"e": [1, 2, 3]}, indent=2) + "\n")
            await asyncio.sleep(0.5)
            f1 = spawn(server.url, *f1_args)
            procs.append(f1)
            await until(lambda: tree(m1) == expected(), "f1 resumed")

            # f2 starts late: it replays the history.
            f2 = spawn(server.url, *follow, str(m2), "--instance", "f2", "--service",
                       "api", "--version", "1.3", "--heartbeat", "0.3")
            procs.append(f2)
            await until(lambda: tree(m2) == expected(), "f2's late copy")

            # A local edit in f2's mirror: the next change of that file is a conflict.
            (m2 / "b.txt").write_text("my local edit\n")
            with (src / "b.txt").open("a") as f:
                f.write("after the conflict\n")
            await until(lambda: tree(m1) == expected(), "f1 after the conflict")
            await asyncio.sleep(0.5)
            assert (m2 / "b.txt").read_text() == "my local edit\n"  # not overwritten
            changes = await changes_of(c)
            last = changes[-1]
            assert last["path"] == "b.txt"
            assert last["kind"] == "modified"
            await until_acked(c, last["id"], 2)
            status = await asyncio.create_subprocess_exec(  # the server runs in this loop
                HYBRIDBUS, "changes", "status", last["id"], "--topic", TOPIC,
                "--url", server.url, "--json", stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(status.communicate(), 30)
            assert status.returncode == 0
            found = json.loads(out)
            assert [a["instance"] for a in found["applied"]] == ["f1"]
            assert [(a["instance"], a["status"]) for a in found["failed"]] == [
                ("f2", "conflict")
            ]
            # Resolved by deleting the local copy: f2 fetches a full copy.
            (m2 / "b.txt").unlink()
            await until(lambda: tree(m2) == expected(), "f2 after the conflict")

            # The JSON changes went as merge patches, one with null removals.
            patches = [ch for ch in changes if ch.get("encoding") == "merge-patch"]
            assert patches
            assert any(b"null" in ch["payload"] for ch in patches)
            assert {ch["kind"] for ch in changes} >= {"moved", "deleted", "modified"}
        finally:
            errors = [stop(p) for p in procs]
            for e in errors:
                print(e[-3000:])
    assert tree(m1) == tree(m2) == tree(src, skip=("debug.log",))
    assert "conflict on b.txt" in errors[-1]


async def until_events(c: hybridbus.client.Client, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(await read_all(c, f"{TOPIC}/files")) < count:
        assert time.monotonic() < deadline, "the watcher published nothing"
        await asyncio.sleep(0.1)


async def until_acked(c: hybridbus.client.Client, change: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        acks = [r for r in await read_all(c, f"{TOPIC}/acks") if r.event.data["change"] == change]
        if len(acks) >= count:
            return
        assert time.monotonic() < deadline, f"acks of {change}: {acks}"
        await asyncio.sleep(0.1)


async def changes_of(c: hybridbus.client.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in await read_all(c, f"{TOPIC}/files"):
        data = item.event.data
        if "kind" in data["change"]:
            out.append({**data["change"], "payload": base64.b64decode(data["data"])})
        else:
            out[-1]["payload"] += base64.b64decode(data["data"])
    return out


del os
