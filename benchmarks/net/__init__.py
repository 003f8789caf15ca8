"""The server benchmark's machinery: real servers and load clients as subprocesses.

- `procs`: the server subprocesses (hybridbus, Centrifugo, bare aiohttp, python-socketio,
  nats-server, redis-server), pinned to a core, measured from /proc; the client subprocesses.
- `peers`: the hand-written peer servers (bare aiohttp, python-socketio).
- `kinds`: one client adapter per protocol (hybridbus, Centrifugo, bare, socket.io, NATS),
  speaking only the documented wire protocols.
- `load`: the client subprocess (`python -m benchmarks.net.load ROLE ...`): fan-out,
  open-loop latency, idle connections, catch-up, reconnect herd, soak.
- `durable`: durable acknowledged publishes (hybridbus over WebSocket and HTTP, Redis,
  NATS JetStream) from one client process.
- `cases`: one run of each case against one server, as the orchestrator calls them.
- `stats`: latency histograms and percentiles, mergeable across processes.
"""
