"""The client wire protocol, sans-I/O: frames, codes, codecs and session state machines.

Specified in docs/protocol.md; used by the server, the Python client and the
benchmarks alike. Imports only `core` and `errors`.
"""
