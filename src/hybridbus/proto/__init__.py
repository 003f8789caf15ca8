"""The client wire protocol, sans-I/O: frames, codes, codecs and session state machines.

Specified in docs/protocol.md; used by the server, the Python client and the
benchmarks alike. Imports only `core` and `errors`: no asyncio, no sockets, no
threads (import-linter checks it).

    frames    the messages (msgspec tagged unions) and the result of each command
    codes     CloseCode and what a client does after each close / error code
    codec     WireCodec for hybridbus.v1.json and hybridbus.v1.msgpack
    session   ServerSession (the server's side of a connection), SessionConfig
    client    ClientSession (the client's side), and what it hands out
"""

from hybridbus.proto.client import ClientSession
from hybridbus.proto.codec import JSON, MSGPACK, SUBPROTOCOLS, WireCodec, codec_for
from hybridbus.proto.codes import CloseCode, reconnect_allowed
from hybridbus.proto.session import ServerSession, SessionConfig, State

__all__ = [
    "JSON",
    "MSGPACK",
    "SUBPROTOCOLS",
    "ClientSession",
    "CloseCode",
    "ServerSession",
    "SessionConfig",
    "State",
    "WireCodec",
    "codec_for",
    "reconnect_allowed",
]
