"""Gateways: byte pipes in front of the node — WebSocket, HTTP, SSE, health.

Each gateway turns requests and frames into calls on the server layer (a
`Node`, a `Bus`) and back; none holds bus logic, none imports a concrete
engine (import-linter checks it). The app factory (`hybridbus.serve`) mounts
their `routes()`.
"""
