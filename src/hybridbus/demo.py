"""A tour of the in-process bus on the embedded durable engine: `python -m hybridbus.demo`.

Owns nothing but the tour. Each run publishes a few events to
`./hybridbus-demo-data` (or the directory given as its argument), then
resumes a wildcard subscription from the token the previous run saved, so
running it twice shows durable offsets and exact recovery.

The bus here lives in this process; the network server is `make serve`
(`hybridbus serve`), which keeps its log in `./hybridbus-data`. A data
directory belongs to one process at a time, so the tour keeps its own and
runs beside a server (given the server's directory while it runs, it stops
at once with `EngineLocked`, naming the server's pid).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import hybridbus

__all__ = ["main"]


async def tour(data: Path, since: str | None) -> str:
    """Publish two edits, then deliver everything since `since`; return the next token."""
    async with hybridbus.open(f"sqlite://{data}") as bus:
        for doc in ("42", "43"):
            ack = await bus.publish(
                f"acme/docs/{doc}",
                {
                    "id": str(uuid.uuid4()),
                    "source": "/demo",
                    "type": "com.acme.doc.edited",
                    "data": {"doc": doc},
                },
            )
            print(f"published to {ack.topic}: offset {ack.offset}, position {ack.position}")
        # The first run reads from the start of the log; later ones resume.
        start = since or hybridbus.Position(bus.engine.epoch, (0,) * bus.engine.shards)
        async with bus.subscribe("acme/docs/+", since=start) as sub:
            print(f"subscribed to acme/docs/+ since {start}; recovered={sub.recovered}")
            while True:
                try:
                    delivery = await asyncio.wait_for(anext(sub), 0.2)
                except TimeoutError:
                    break
                print(f"  delivered {delivery.topic} #{delivery.offset}: {delivery.event.data}")
            return str(sub.position)


def main() -> None:
    data = (Path(sys.argv[1]) if len(sys.argv) > 1 else Path("hybridbus-demo-data")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    token_file = data / "demo.token"
    since = token_file.read_text().strip() if token_file.exists() else None
    token = asyncio.run(tour(data, since))
    token_file.write_text(token)
    print(f"saved resume token {token} to {token_file}; run me again")


if __name__ == "__main__":
    main()
