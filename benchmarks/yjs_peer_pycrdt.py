"""The pycrdt-websocket peer of the Yjs benchmark: its ASGI server under uvicorn.

    .bench/yjs-venv/bin/python benchmarks/yjs_peer_pycrdt.py PORT

Run by benchmarks/yjs.py with the interpreter of the separate virtualenv that
benchmarks/yjs_install.sh makes (pycrdt-websocket 0.16.5, uvicorn[standard]
0.54.0: uvloop, httptools, websockets), so that its pins never touch the
project's environment. It is the documented way to serve pycrdt-websocket
from an ASGI server (`ASGIServer(WebsocketServer())` under uvicorn), with the
defaults: rooms ready at once, a room dropped when its last client leaves, no
store (the Node server keeps none either; hybridbus appends to its log).
A room is the URL path (`ws://127.0.0.1:PORT/<room>`). Binds 127.0.0.1 only.
"""

import asyncio
import sys

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer


async def main(port: int) -> None:
    websocket_server = WebsocketServer()
    app = ASGIServer(websocket_server)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop", lifespan="off"
    )
    server = uvicorn.Server(config)
    async with websocket_server:
        await server.serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
