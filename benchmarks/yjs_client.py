"""The clients of the Yjs benchmark, in one subprocess: replay, full sync, keystrokes.

    python -m benchmarks.yjs_client PLAN.json     # prints the figures as one JSON line

Run by benchmarks/yjs.py pinned to the cores the server is not on, against one
server (hybridbus, pycrdt-websocket or the Node y-websocket server) whose PID it is
given: it reads that process's CPU time itself (/proc, `net.procs.cpu_seconds`)
around each phase. The clients are light ones, not `WebsocketProvider`s: aiohttp
WebSockets sending and reading y-protocols messages directly (sync step 1 / 2 and
updates: what a provider sends for the same edits), so that 50 of them and the
259,778 edits of the trace fit on one core without the client being the bottleneck.

1. Replay (room `trace`): an observer and a sender join and sync; the sender sends
   every edit of the trace as its own update message (a Yjs update made in advance
   by pycrdt, one edit per transaction, as an editor sends a keystroke), then a sync
   step 1 whose reply says the server has taken them all; the observer applies what
   it receives to its own document. The phase ends when the observer's text is the
   trace's final text (checked). Figures: the server's CPU seconds, the wall time.
2. Full sync (room `trace`, now the whole document with its history; the sender
   stays connected so that no server drops the room): `joins` joiners one after
   the other connect, send sync step 1 with an empty state vector and wait for the
   sync step 2 (`received`), apply it (`synced`, the provider's `synced` event) and
   check the text's length. Figures: ms from the start of the connect.
3. Keystrokes (room `keys`): `editors` clients join; the first types one character
   at a time (`warmup` untimed, then `keystrokes` timed, 5 ms apart, each after every
   other editor received the previous one); each other editor timestamps the
   message that brings it. Figures: the delivery latencies (ms; p50 / p99 over
   every delivery), the server's CPU time per keystroke.
Every phase is bounded by `time_limit` seconds.

With `floor` in the plan, only the replay's sending half runs, against the bare
aiohttp server of benchmarks/yjs_floor.py (the transport floor): every message
sent, then a sync step 1 whose reply says the server read them all.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
from pycrdt import Doc, Text, create_update_message

from benchmarks.net.procs import cpu_seconds

__all__ = ["frame_updates", "main", "read_updates"]

SYNC: Final = 0
STEP1: Final = 0
STEP2: Final = 1
UPDATE: Final = 2
EMPTY_STEP1: Final = b"\x00\x00\x01\x00"  # sync step 1 with an empty state vector
KEY_GAP: Final = 0.005  # seconds between two keystrokes
STALL: Final = 20.0  # seconds the observer may go without a message before it resyncs


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _write_varuint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def frame_updates(updates: list[bytes]) -> bytes:
    """The update messages of `updates`, length-prefixed one after the other (a file)."""
    out = bytearray()
    for update in updates:
        message = create_update_message(update)
        out += _write_varuint(len(message)) + message
    return bytes(out)


def read_updates(data: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos < len(data):
        size, pos = _varuint(data, pos)
        messages.append(data[pos : pos + size])
        pos += size
    return messages


def _sync_payload(data: bytes) -> tuple[int, bytes] | None:
    """(subtype, payload) of a sync message, else None (awareness, auth, ...)."""
    if len(data) < 3 or data[0] != SYNC:
        return None
    size, pos = _varuint(data, 2)
    return data[1], data[pos : pos + size]


def _step1(doc: Doc) -> bytes:
    vector = doc.get_state()
    return bytes([SYNC, STEP1]) + _write_varuint(len(vector)) + vector


class _Peer:
    """One client connection: reads in a task of its own, applies or timestamps."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, doc: Doc | None) -> None:
        self.ws = ws
        self.doc = doc
        self.synced = asyncio.Event()
        self.step2 = asyncio.Event()  # set at each sync step 2 received
        self.arrivals: list[int] = []  # perf_counter_ns of each update message
        self.wake: asyncio.Event | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        ws = self.ws
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.BINARY:
                continue
            now = time.perf_counter_ns()
            data: bytes = message.data
            parsed = _sync_payload(data)
            if parsed is None:
                continue
            kind, payload = parsed
            if kind == STEP1:  # the server asks what we have: answer as a provider does
                await ws.send_bytes(bytes([SYNC, STEP2]) + _write_varuint(2) + b"\x00\x00")
                continue
            if self.doc is not None:
                self.doc.apply_update(payload)
            if kind == STEP2:
                self.synced.set()
                self.step2.set()
            else:
                self.arrivals.append(now)
                if self.wake is not None:
                    self.wake.set()

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


async def _join(session: aiohttp.ClientSession, url: str, doc: Doc | None) -> _Peer:
    ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
    peer = _Peer(ws, doc)
    await ws.send_bytes(_step1(doc) if doc is not None else EMPTY_STEP1)
    await peer.synced.wait()
    return peer


async def _replay(
    session: aiohttp.ClientSession, base: str, pid: int, plan: dict[str, Any]
) -> tuple[dict[str, Any], _Peer]:
    messages = read_updates(Path(plan["updates"]).read_bytes())
    expected = Path(plan["final_text"]).read_text()
    observed_doc = Doc()
    observed_doc["text"] = text = Text()
    observer = await _join(session, base + "trace", observed_doc)
    sender = await _join(session, base + "trace", None)
    done = asyncio.Event()
    observer.wake = done
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for message in messages:
        await sender.ws.send_bytes(message)
    sender.step2.clear()
    await sender.ws.send_bytes(EMPTY_STEP1)  # answered after every update before it
    await sender.step2.wait()
    taken = time.perf_counter() - t0

    resynced = False
    try:
        while not (len(text) == len(expected) and str(text) == expected):
            done.clear()
            await asyncio.wait_for(done.wait(), STALL)  # at least one message per STALL s
    except TimeoutError:  # the server lost updates on the way to the observer: ask for them
        resynced = True
        observer.step2.clear()
        await observer.ws.send_bytes(_step1(observed_doc))
        await observer.step2.wait()
        while not (len(text) == len(expected) and str(text) == expected):
            done.clear()  # the server's document was itself behind: wait (phase-bounded)
            await done.wait()
    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
    if str(text) != expected:
        raise RuntimeError("the observer's text is not the trace's final text")
    await observer.close()
    figures = {
        "edits": len(messages),
        "server_cpu_s": cpu1 - cpu0,
        "wall_s": t1 - t0,
        "taken_s": taken,
        "observer_messages": len(observer.arrivals),
        # The observer went STALL s without a message and its text was not the final
        # one: it got the rest by a sync step 1 of its own (wall_s includes the wait).
        "observer_resynced": resynced,
        "final_chars": len(expected),
    }
    return figures, sender


async def _full_sync(
    session: aiohttp.ClientSession, base: str, plan: dict[str, Any]
) -> dict[str, Any]:
    chars = len(Path(plan["final_text"]).read_text())
    received: list[float] = []
    synced: list[float] = []
    size = 0
    for _ in range(plan["joins"]):
        doc = Doc()
        doc["text"] = text = Text()
        t0 = time.perf_counter()
        ws = await session.ws_connect(base + "trace", max_msg_size=0)
        await ws.send_bytes(EMPTY_STEP1)
        async for message in ws:
            parsed = (
                _sync_payload(message.data) if message.type is aiohttp.WSMsgType.BINARY else None
            )
            if parsed is not None and parsed[0] == STEP2:
                t1 = time.perf_counter()
                doc.apply_update(parsed[1])
                t2 = time.perf_counter()
                size = len(parsed[1])
                break
        else:
            raise RuntimeError("the server closed before sync step 2")
        if len(text) != chars:
            raise RuntimeError(f"a joiner synced {len(text)} chars, not {chars}")
        received.append((t1 - t0) * 1e3)
        synced.append((t2 - t0) * 1e3)
        await ws.close()
    return {
        "joins": len(synced),
        "chars": chars,
        "update_bytes": size,
        "received_ms": received,
        "synced_ms": synced,
        "received_p50_ms": statistics.median(received),
        "synced_p50_ms": statistics.median(synced),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _keystrokes(
    session: aiohttp.ClientSession, base: str, pid: int, plan: dict[str, Any]
) -> dict[str, Any]:
    editors = plan["editors"]
    doc = Doc()
    doc["text"] = text = Text()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    typist = await _join(session, base + "keys", None)
    others = [await _join(session, base + "keys", None) for _ in range(editors - 1)]
    wake = asyncio.Event()
    for peer in others:
        peer.wake = wake
    latencies: list[float] = []
    cpu = 0.0
    total = plan["warmup"] + plan["keystrokes"]
    for k in range(total):
        text.insert(len(text), "abcdefghij"[k % 10])
        message = create_update_message(updates.pop())
        counts = [len(peer.arrivals) for peer in others]
        timed = k >= plan["warmup"]
        cpu0 = cpu_seconds(pid) if timed else 0.0
        sent = time.perf_counter_ns()
        await typist.ws.send_bytes(message)
        while any(len(p.arrivals) == n for p, n in zip(others, counts, strict=True)):
            wake.clear()
            await wake.wait()
        if timed:
            cpu += cpu_seconds(pid) - cpu0
            latencies += [(p.arrivals[n] - sent) / 1e6 for p, n in zip(others, counts, strict=True)]
        await asyncio.sleep(KEY_GAP)
    for peer in [typist, *others]:
        await peer.close()
    firsts = [min(latencies[i : i + editors - 1]) for i in range(0, len(latencies), editors - 1)]
    return {
        "editors": editors,
        "keystrokes": plan["keystrokes"],
        "deliveries": len(latencies),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "first_p50_ms": _percentile(firsts, 0.50),
        "server_cpu_us_per_keystroke": cpu / plan["keystrokes"] * 1e6,
    }


async def _floor(
    session: aiohttp.ClientSession, base: str, pid: int, plan: dict[str, Any]
) -> dict[str, Any]:
    """The replay's sending half alone, against the transport floor (benchmarks/yjs_floor.py)."""
    messages = read_updates(Path(plan["updates"]).read_bytes())
    ws = await session.ws_connect(base + "trace", max_msg_size=0, autoping=True)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for message in messages:
        await ws.send_bytes(message)
    await ws.send_bytes(EMPTY_STEP1)  # answered after every message before it
    reply = await ws.receive()
    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
    await ws.close()
    if reply.type is not aiohttp.WSMsgType.BINARY or _sync_payload(reply.data) is None:
        raise RuntimeError(f"the floor server answered {reply!r}")
    return {"edits": len(messages), "server_cpu_s": cpu1 - cpu0, "wall_s": t1 - t0}


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    base, pid, limit = plan["url"], plan["pid"], plan["time_limit"]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    if plan.get("floor"):
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with asyncio.timeout(limit):
                return {"floor": await _floor(session, base, pid, plan)}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with asyncio.timeout(limit):
            replay, sender = await _replay(session, base, pid, plan)
        async with asyncio.timeout(limit):
            full = await _full_sync(session, base, plan)
        await sender.close()
        async with asyncio.timeout(limit):
            keys = await _keystrokes(session, base, pid, plan)
    return {"replay": replay, "full_sync": full, "keystrokes": keys}


def main(argv: list[str]) -> None:
    plan = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(run(plan))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
