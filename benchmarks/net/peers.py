"""The hand-written peer servers: `python -m benchmarks.net.peers {bare,socketio} PORT`.

- bare aiohttp (the ceiling of the socket library hybridbus uses): a WebSocket at `/ws`;
  a client sends `sub` to subscribe (answered `ok`); a publisher sends `C<lines>` (the
  whole burst sent to every subscriber as one frame: "coalesced") or `M<lines>` (each
  line its own frame to every subscriber: "per message"), answered `ack`.
- python-socketio 5.x, `AsyncServer(async_mode="aiohttp")`: `sub` joins room `r`, `pub`
  emits each line to the room; both acknowledged.

Both on uvloop, as hybridbus.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["serve_bare", "serve_socketio"]


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def serve_bare(port: int) -> None:
    from aiohttp import WSMsgType, web

    subscribers: set[web.WebSocketResponse] = set()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data: str = msg.data
            if data == "sub":
                subscribers.add(ws)
                await ws.send_str("ok")
            elif data[0] == "C":  # one frame per burst
                frame = data[1:]
                for sub in list(subscribers):
                    await sub.send_str(frame)
                await ws.send_str("ack")
            elif data[0] == "M":  # one frame per message
                for line in data[1:].split("\n"):
                    for sub in list(subscribers):
                        await sub.send_str(line)
                await ws.send_str("ack")
        subscribers.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=_new_loop())


def serve_socketio(port: int) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])

    @sio.on("sub")  # type: ignore[untyped-decorator]
    async def sub(sid: str) -> str:
        await sio.enter_room(sid, "r")
        return "ok"

    @sio.on("pub")  # type: ignore[untyped-decorator]
    async def pub(sid: str, lines: list[str]) -> str:
        for line in lines:
            await sio.emit("event", line, room="r")
        return "ack"

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=_new_loop())


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    (serve_bare if kind == "bare" else serve_socketio)(port)
