"""The server: asyncio orchestration of the bus behind the client protocol.

Owns the node (bus + connections), the per-connection outbox and write
coalescing, heartbeats, metrics and configuration. Gateways (WebSocket, HTTP,
SSE) sit on top and turn bytes into calls on it.
"""
