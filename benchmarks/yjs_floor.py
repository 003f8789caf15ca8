"""The transport floor of the Yjs replay: a bare aiohttp WebSocket server, no Yjs at all.

    python -m benchmarks.yjs_floor PORT

What any Python server on aiohttp pays to take the trace's 259,778 messages off
one WebSocket (benchmarks/yjs.py, the row `yjs.replay.transport_floor`): the same
uvloop, the same `WebSocketResponse.receive` loop as the hybridbus endpoint, and
nothing done with a message but to answer a sync step 1 (the client's "you have
them all?") with an empty sync step 2. Not a Yjs server: it keeps no document,
stores and broadcasts nothing.
"""

from __future__ import annotations

import sys
from typing import Final

from aiohttp import WSMsgType, web

__all__ = ["EMPTY_STEP2", "app"]

EMPTY_STEP2: Final = b"\x00\x01\x02\x00\x00"  # sync step 2 carrying an empty update
_STEP1: Final = b"\x00\x00"


async def _socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0, autoping=True, compress=False)
    await ws.prepare(request)
    receive = ws.receive
    while True:
        message = await receive()
        if message.type is not WSMsgType.BINARY:
            break
        if message.data[:2] == _STEP1:
            await ws.send_bytes(EMPTY_STEP2)
    return ws


def app() -> web.Application:
    """The floor server's application: every path is a WebSocket."""
    application = web.Application()
    application.router.add_get("/{room}", _socket)
    return application


def main(argv: list[str]) -> None:
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(app(), host="127.0.0.1", port=int(argv[0]), loop=loop, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
