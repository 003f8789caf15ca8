"""Sessions: a client's presence that outlives a dropped connection, for a grace period.

Owns: the sessions of this node's clients — their ids and secrets (a digest
of each), who owns each one, their lifecycle ACTIVE → DEGRADED → TERMINATED
with the grace timer, resuming a session on a new connection (and refusing
another user's attempt), and the bound on degraded sessions; with nodes
sharing a Redis, what the `mirror` (`server.presence_redis`) copies of them
(`SessionRecord`), taking a session another node holds (`find`), adopting a
dead node's (`adopted`) and letting go of one taken (`taken`). Must not speak
the protocol or touch a socket (`server.admission` answers the connect, the
connection reports its end), nor keep deliveries: a degraded session holds
no queue at all — its client resubscribes from its resume tokens, and the
log has every event it missed (docs/protocol.md, "Sessions").

Lifecycle (docs/protocol.md "Sessions" has the exact timings):

    ACTIVE    --connection dropped (1006, any 1001/4000-4499 close:
                heartbeat missed, token expired, slow consumer, shutdown)-->  DEGRADED
    ACTIVE    --closed 1000, or a terminal close (4500-4999, revoked)-->      TERMINATED
    DEGRADED  --a connect presents the session within the grace-->            ACTIVE
    DEGRADED  --grace over, or more degraded sessions than the bound-->       TERMINATED

While DEGRADED the session's places in its topics are held (`presence.hold`),
shown with state "degraded"; a resumed session's subscriptions take them back
one by one as the client resubscribes (watchers see "active"); places it does
not take back by the end of the grace are let go (a `leave`).

The session token a client gets is `<id>.<secret>`: the id is public (it is
`ClientInfo.session`); the secret is 192 random bits the node keeps only as
SHA-256(owner, secret), where the owner is the token's tenant, user and admin
flag. A connect presenting it must prove the same owner with the same secret
(compared in constant time), or it is refused with `SessionRefused` (4502).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from hybridbus.core.identity import Identity
from hybridbus.errors import SessionRefused
from hybridbus.proto.codes import reconnect_allowed
from hybridbus.proto.frames import ClientInfo
from hybridbus.server.presence import PresenceRegistry

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection

__all__ = ["SessionMirror", "SessionRecord", "SessionSettings", "Sessions"]

log = logging.getLogger("hybridbus.server")

_ID_BYTES: Final = 12
_SECRET_BYTES: Final = 24


class SessionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How long a session waits for its client (seconds; 0: no sessions), and the bound."""

    grace: float = 30.0
    tenant_grace: Mapping[str, float] = msgspec.field(default_factory=dict)
    max_degraded: int = 10_000

    def grace_of(self, tenant: str) -> float:
        """The grace period of `tenant`'s sessions."""
        return self.tenant_grace.get(tenant, self.grace)


class SessionRecord(msgspec.Struct, array_like=True, frozen=True):
    """What the other nodes know of a session: its owner's digest, presence id, grace, deadline.

    `deadline` is the wall-clock time a degraded session ends (0 while it is active).
    """

    digest: bytes
    client: str
    grace: float
    deadline: float = 0.0


class SessionMirror(Protocol):
    """Where a node's sessions are copied for the other nodes (`server.presence_redis`)."""

    def saved(self, id: str, record: SessionRecord | None) -> None:
        """The session `id` is now `record` (None: it ended). Must not block."""
        ...

    def take(self, id: str, node: str) -> None:
        """This node took the session `id` from `node`: tell it (after the places adopted)."""
        ...

    async def lookup(self, id: str) -> tuple[str, SessionRecord | None]:
        """The other node holding the session `id` and its record, or ("", None)."""
        ...


def _digest(identity: Identity, secret: str) -> bytes:
    owner = f"{identity.tenant}\0{identity.user or ''}\0{int(identity.admin)}\0{secret}"
    return hashlib.sha256(owner.encode()).digest()


class _Session:
    __slots__ = ("connection", "deadline", "digest", "grace", "id", "identity", "info", "timer")

    def __init__(
        self, id: str, identity: Identity, digest: bytes, grace: float,
        connection: Connection | None,
    ) -> None:  # fmt: skip
        self.id = id
        self.identity = identity  # of its latest connection: a revocation ends it
        self.digest = digest
        self.grace = grace
        self.connection: Connection | None = connection
        self.info: ClientInfo | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # wall clock, while degraded


class Sessions:
    """The sessions of one node (see the module docstring)."""

    def __init__(self, presence: PresenceRegistry, settings: SessionSettings) -> None:
        self._presence = presence
        self.settings = settings
        self._sessions: dict[str, _Session] = {}
        # The degraded ones, oldest first: the first to go past the bound.
        self._degraded: dict[str, _Session] = {}
        self.terminated_early = 0  # degraded sessions ended by the bound
        self.mirror: SessionMirror | None = None  # set by `server.presence_redis`

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, id: object) -> bool:
        """True while the session `id` lives (active or degraded)."""
        return id in self._sessions

    @property
    def degraded(self) -> int:
        """How many sessions wait for their client."""
        return len(self._degraded)

    def check(self, identity: Identity, presented: str | None) -> _Session | None:
        """The live session `presented` names, if `identity` may continue it.

        None: no session presented, or it is over (or was another node's): the
        connect starts a new one. Raises `SessionRefused` if the session is
        live and `identity` is another owner or the secret is wrong.
        """
        if presented is None:
            return None
        id, _, secret = presented.partition(".")
        found = self._sessions.get(id)
        if found is None:
            return None
        if not hmac.compare_digest(found.digest, _digest(identity, secret)):
            raise SessionRefused("this session belongs to another client")
        return found

    async def find(self, identity: Identity, presented: str | None) -> _Session | None:
        """`check`, then the sessions the other nodes hold (or held: a node that died).

        A session found on another node whose owner `identity` proves is taken
        from it: its places are held here (degraded) until the client
        resubscribes, and that node is told to let it go.
        """
        found = self.check(identity, presented)
        if found is not None or presented is None or self.mirror is None:
            return found
        id, _, secret = presented.partition(".")
        node, record = await self.mirror.lookup(id)
        if record is None:
            return self.check(identity, presented)  # none: a new session
        if not hmac.compare_digest(record.digest, _digest(identity, secret)):
            raise SessionRefused("this session belongs to another client")
        if id in self._sessions:  # came here meanwhile
            return self.check(identity, presented)
        session = self._adopt(id, record, node, identity)
        self.mirror.take(id, node)
        log.info("session %s taken from node %s", id, node)
        return session

    def adopted(self, node: str, records: Mapping[str, SessionRecord]) -> None:
        """The sessions of `node` (it died) are this node's now, degraded until their clients
        come back or their grace is over (counted from their deadline, or from now)."""
        for id, record in records.items():
            if id not in self._sessions:
                self._adopt(id, record, node)
        if records:
            log.info("adopted %d sessions of the lapsed node %s", len(records), node)

    def taken(self, id: str) -> None:
        """Another node took the session `id`: let it go without a `leave` (it holds it now)."""
        session = self._sessions.pop(id, None)
        if session is None:
            return
        self._degraded.pop(id, None)
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        old, session.connection = session.connection, None
        if old is not None:  # its old connection is not dead to this node yet
            self._presence.hold(id, "active")
            old.close_moved(None)
        self._presence.release(id)

    def records(self) -> dict[str, SessionRecord]:
        """Every session of this node as the other nodes see it (to copy them whole)."""
        return {id: self._record(session) for id, session in self._sessions.items()}

    def _record(self, session: _Session) -> SessionRecord:
        client = session.info.client if session.info is not None else session.id
        return SessionRecord(session.digest, client, session.grace, session.deadline)

    def _save(self, session: _Session) -> None:
        if self.mirror is not None:
            self.mirror.saved(session.id, self._record(session))

    def _adopt(
        self, id: str, record: SessionRecord, node: str, identity: Identity | None = None
    ) -> _Session:
        # Unknown for a dead node's sessions: the next connect's identity replaces it.
        owner = identity or Identity(tenant="")
        session = _Session(id, owner, record.digest, record.grace, None)
        session.info = ClientInfo(client=record.client, session=id)
        self._sessions[id] = session
        self._presence.adopt({id}, node)
        left = record.grace if record.deadline <= 0 else record.deadline - time.time()
        self._degrade(session, max(0.0, left))
        return session

    def attach(
        self,
        connection: Connection,
        identity: Identity,
        info: ClientInfo,
        found: _Session | None,
        presented: str | None,
    ) -> tuple[ClientInfo, str | None, bool, float]:
        """Give `connection` its session: `found` (checked) resumed, else a new one.

        Returns the info presence shows for it, the session token for the
        connect reply (None: sessions are off for the tenant), whether it
        resumed, and the grace period.
        """
        grace = self.settings.grace_of(identity.tenant)
        if grace <= 0 or connection.session.closed:  # off, or it dropped while connecting
            return info, None, False, 0.0
        if found is not None and found.id in self._sessions and presented is not None:
            old = found.connection
            if old is not None and old is not connection:
                # Its old connection is not dead to the server yet: the session moves on.
                self._presence.hold(found.id, "active")
                old.close_moved(connection)
            self._degraded.pop(found.id, None)
            found.connection = connection
            found.identity = identity
            found.grace = grace
            base = found.info or info
            found.info = msgspec.structs.replace(info, client=base.client, session=found.id)
            found.deadline = 0.0
            self._save(found)
            return found.info, presented, True, grace
        id = secrets.token_urlsafe(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        session = _Session(id, identity, _digest(identity, secret), grace, connection)
        session.info = msgspec.structs.replace(info, session=id)
        self._sessions[id] = session
        self._save(session)
        return session.info, f"{id}.{secret}", False, grace

    def dropped(self, connection: Connection, code: int) -> None:
        """`connection` is closing with `code`: degrade its session, or end it.

        Called before its subscriptions leave their topics.
        """
        info = connection.info
        session = self._sessions.get(info.session or "") if info is not None else None
        if session is None or session.connection is not connection:
            return
        session.connection = None
        if not reconnect_allowed(code):
            self._end(session)
            return
        self._presence.hold(session.id, "degraded")
        self._degrade(session, session.grace)

    def _degrade(self, session: _Session, grace: float) -> None:
        if session.timer is not None:
            session.timer.cancel()
        session.timer = asyncio.get_running_loop().call_later(grace, self._expire, session)
        session.deadline = time.time() + grace
        self._degraded[session.id] = session
        self._save(session)
        while len(self._degraded) > self.settings.max_degraded:
            oldest = next(iter(self._degraded.values()))
            log.info("session %s ended early: over %d degraded sessions", oldest.id,
                     self.settings.max_degraded)  # fmt: skip
            self.terminated_early += 1
            self._end(oldest)

    def revoked(self, is_revoked: Callable[[Identity], bool]) -> None:
        """End every degraded session whose identity `is_revoked` (a revocation came in).

        Sessions with a connection end with it (the node closes it 4502).
        """
        for session in list(self._degraded.values()):
            if is_revoked(session.identity):
                self._end(session)

    def close(self) -> None:
        """The node stops: forget every session (their timers with them)."""
        for session in self._sessions.values():
            if session.timer is not None:
                session.timer.cancel()
        self._sessions.clear()
        self._degraded.clear()

    def _expire(self, session: _Session) -> None:
        session.timer = None
        if session.connection is None:
            self._end(session)
        else:  # resumed: the places it did not take back within the grace go
            self._presence.release(session.id)

    def _end(self, session: _Session) -> None:
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        self._sessions.pop(session.id, None)
        self._degraded.pop(session.id, None)
        self._presence.release(session.id)
        if self.mirror is not None:
            self.mirror.saved(session.id, None)
