"""Who a connection is: its `connect` and its `refresh`, decided by the node's authenticator.

Owns: running a connection's `connect` (authenticate the token within the
connect timeout, admit the identity through the guard and the node's
per-user count, continue the client's session or start one (`server.sessions`:
another user's session is refused), then accept the session or refuse it with
the close code the refusal calls for) and its `refresh` (a fresh token for the same tenant and
user: decisions are made afresh for it; another tenant or user closes the
connection). Must not write to the transport or know the socket library: it
answers through the connection's session, and the connection flushes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hybridbus.core.topics import scope_topic
from hybridbus.errors import AccessError
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import ClientInfo, Connect, ConnectResult, Refresh, RefreshResult
from hybridbus.server.auth import close_code

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection

__all__ = ["connect", "refresh"]

log = logging.getLogger("hybridbus.server")


async def connect(connection: Connection, command: Connect) -> None:
    """Authenticate and admit the connection, then answer its `connect` (or close it)."""
    session = connection.session
    node = connection.node
    try:
        async with asyncio.timeout(node.session_config.connect_timeout):
            identity = await node.authenticator.authenticate(command.token, command.device)
        scope_topic(identity.tenant, "x")  # an authenticator must name a real tenant
        principal = node.guard.admit(identity)
        # Here or on another node; another's: refused (4502).
        found = await node.sessions.find(identity, command.session)
        node.admit(connection, identity)
    except AccessError as exc:
        session.reject(close_code(exc), str(exc))
        return
    except Exception:  # TimeoutError included: the client may try again
        log.exception("authenticating %s failed", connection.id)
        session.reject(CloseCode.SERVER_ERROR, "internal error")
        return
    connection.identity = identity
    connection.principal = principal
    info = ClientInfo(
        client=connection.id, user=identity.user, device=identity.device, name=command.name
    )
    # A session resumed keeps its presence id (`client`); docs/protocol.md, "Sessions".
    info, token, resumed, grace = node.sessions.attach(
        connection, identity, info, found, command.session
    )
    connection.info = info
    if identity.device is not None:
        connection.device_key = (identity.tenant, identity.user, identity.device)
    session.accept(
        ConnectResult(
            client=info.client,
            version=node.version,
            tenant=identity.tenant,
            expires=identity.expires,
            session=token,
            resumed=resumed,
            grace=grace if token is not None else None,
        )
    )


async def refresh(connection: Connection, command: Refresh) -> None:
    """Take a fresh token for the open connection (same tenant and user), or close it."""
    session = connection.session
    current = connection.identity
    node = connection.node
    try:
        async with asyncio.timeout(node.session_config.connect_timeout):
            identity = await node.authenticator.authenticate(
                command.token, None if current is None else current.device
            )
        principal = node.guard.admit(identity)
    except AccessError as exc:
        session.close(close_code(exc), str(exc))
    except Exception as exc:
        log.exception("refresh of %s failed", connection.id)
        session.error(command.id, exc)
    else:
        same = current is None or (identity.tenant, identity.user, identity.admin) == (
            current.tenant,
            current.user,
            current.admin,
        )
        if same:
            connection.identity = identity
            connection.principal = principal  # decisions are made afresh for the new token
            session.reply(command.id, RefreshResult(expires=identity.expires))
        else:
            session.close(CloseCode.FORBIDDEN, "a refresh may not change the tenant or user")
    connection.flush()
