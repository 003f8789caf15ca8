"""Outbound webhooks: the registry of subscriptions, their groups and senders, what is stored.

Owns: every subscription of the server by `<tenant>/<name>` — those of the
settings file (`[[outbound_webhooks]]`: the API shows them, enables and
disables them, never changes or deletes them) and those made over the API,
stored in the engine's group store under the reserved name `$outbound/<tenant>`
(one entry per subscription, secrets included; durable when a change
returns; announced to the other nodes, which reload it: `hub.changes`) —
the consumer group each one runs as (`webhook.<name>` in its tenant, made
or updated by `Groups.ensure`), one `Sender` per enabled one, the HTTP
client they share, their attempts logs, and the
`$system/webhooks/<tenant>/exhausted` event appended when the group buries
an event (the group's `on_dead` hook). Must not know HTTP routes or
principals (`gateways.webhooks_out` does) nor hold retry state (the group
does).

Enabling. A disabled subscription has no member in its group: its events
wait there (its lag grows) and go out, in order, once it is enabled again.
Disabling lets the requests in flight finish. A `410 Gone` disables it the
same way (stored, with the reason). For a subscription of the settings file,
`enabled` as last set over the API (or by a 410) is stored and wins over the
file until the file's entry is removed.

Attempts logs are in memory (the last `ATTEMPTS_KEPT` per subscription):
they start empty at each start of the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import msgspec

from hybridbus.core.event import Event
from hybridbus.core.webhooks_out import (
    AttemptLog,
    Subscription,
    check_url,
    group_name,
    group_settings,
    signing_keys,
)
from hybridbus.engine.base import GroupWrite
from hybridbus.errors import (
    BusError,
    Forbidden,
    InvalidInput,
    InvalidSettings,
    NotCoordinator,
    UnknownGroup,
)
from hybridbus.hub.changes import named
from hybridbus.hub.group import DeadLetter, Group
from hybridbus.server.webhook_sender import GuardedResolver, Lookup, OnAttempt, Sender

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["EXHAUSTED_TYPE", "STORE_PREFIX", "Outbound", "Registered", "exhausted_topic"]

log = logging.getLogger("hybridbus.webhooks")

STORE_PREFIX: Final = "$outbound/"  # + tenant (engine/base.py: `$` names are registries)
EXHAUSTED_TYPE: Final = "hybridbus.webhook.exhausted"
_STATE: Final = b"outbound 1"
_ENABLED: Final = "!enabled:"  # + name: `enabled` of a subscription of the settings file
_MAX_PER_TENANT: Final = 1000

Origin = Literal["config", "api"]


def exhausted_topic(tenant: str) -> str:
    """Where a tenant's exhausted deliveries are announced (admins subscribe to it)."""
    return f"$system/webhooks/{tenant}/exhausted"


class Registered:
    """A subscription as the server runs it: where it came from, its attempts, its sender."""

    __slots__ = ("attempts", "disabled_reason", "origin", "sender", "sub")

    def __init__(self, sub: Subscription, origin: Origin, attempts: AttemptLog) -> None:
        self.sub = sub
        self.origin: Origin = origin
        self.attempts = attempts
        self.sender: Sender | None = None
        self.disabled_reason = ""


class Outbound:
    """Every outbound webhook subscription of a server (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        configured: Sequence[Subscription] = (),
        *,
        allow_private: bool = False,
        lookup: Lookup | None = None,
        on_attempt: OnAttempt | None = None,
    ) -> None:
        self.bus = bus
        self._on_attempt = on_attempt
        self.allow_private = allow_private
        self._lookup = lookup
        self._subs: dict[str, Registered] = {}
        self._configured = list(configured)
        self._session: aiohttp.ClientSession | None = None
        self._draining: set[Sender] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        bus.changes.on(STORE_PREFIX, self.reload)

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored subscriptions, make or update their groups, start the senders."""
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allow_private, self._lookup), limit=0
        )
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        stored, enabled = await self._read(STORE_PREFIX)
        for sub in self._configured:
            if sub.full_name in self._subs:
                raise InvalidInput(f"outbound webhook {sub.full_name!r} is set twice")
            check_url(sub.url, allow_private=self.allow_private)
            if sub.full_name in enabled:
                sub = msgspec.structs.replace(sub, enabled=enabled[sub.full_name])
            self._subs[sub.full_name] = Registered(sub, "config", AttemptLog())
        for sub in stored:
            if sub.full_name in self._subs:
                log.warning(
                    "outbound webhook %s is in the settings file and stored: the file wins",
                    sub.full_name,
                )
                continue
            self._subs[sub.full_name] = Registered(sub, "api", AttemptLog())
        for registered in self._subs.values():
            await self._activate(registered)

    async def _read(self, name: str) -> tuple[list[Subscription], dict[str, bool]]:
        """The subscriptions stored under `name` (`hub.changes.named`), and the `enabled`
        stored for those of the settings file, by `<tenant>/<name>`."""
        enabled: dict[str, bool] = {}
        stored: list[Subscription] = []
        for found in await self.bus.engine.groups():
            if not named(found.group, name):
                continue
            tenant = found.group[len(STORE_PREFIX) :]
            for key, raw in found.entries.items():
                if key.startswith(_ENABLED):
                    enabled[f"{tenant}/{key[len(_ENABLED) :]}"] = raw == b"true"
                    continue
                try:
                    stored.append(msgspec.msgpack.decode(raw, type=Subscription))
                except (msgspec.DecodeError, msgspec.ValidationError, InvalidSettings) as exc:
                    log.warning(
                        "outbound webhook %s/%s cannot be read, skipped: %s", tenant, key, exc
                    )
        return stored, enabled

    async def reload(self, name: str) -> None:
        """Load the store `name` (or every one under it) again: another node changed it.

        Subscriptions made, replaced or deleted there are made, replaced or
        retired here (their senders run where their group is coordinated);
        the `enabled` of one of the settings file follows what was stored.
        """
        if self._session is None or self._closed:
            return  # not started (`start` loads everything) or closing
        stored, enabled = await self._read(name)
        tenant = name[len(STORE_PREFIX) :]
        async with self._lock:
            mine = {
                key: r for key, r in self._subs.items() if not tenant or r.sub.tenant == tenant
            }
            wanted: dict[str, tuple[Subscription, Origin]] = {}
            for sub in stored:
                old = mine.get(sub.full_name)
                if old is None or old.origin == "api":  # (a name in the settings file: it wins)
                    wanted[sub.full_name] = (sub, "api")
            for key, old in mine.items():
                flag = enabled.get(key)
                if old.origin == "config":
                    if flag is not None and flag != old.sub.enabled:
                        wanted[key] = (msgspec.structs.replace(old.sub, enabled=flag), "config")
                elif key not in wanted:  # deleted there
                    self._retire(old)
                    del self._subs[key]
            for key, (sub, origin) in wanted.items():
                old = mine.get(key)
                if old is not None:
                    if old.sub == sub:
                        continue
                    self._retire(old)
                registered = Registered(sub, origin, old.attempts if old else AttemptLog())
                self._subs[key] = registered
                await self._activate(registered)

    async def close(self) -> None:
        """Stop every sender (requests in flight are cancelled: their leases run out)."""
        self._closed = True
        senders = [r.sender for r in self._subs.values() if r.sender is not None]
        senders.extend(self._draining)
        for sender in senders:
            sender.stop()
        await asyncio.gather(*(s.drained(cancel=True) for s in senders))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- reading ---------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> Registered:
        """The subscription `name` of `tenant`; `UnknownGroup` if there is none."""
        found = self._subs.get(f"{tenant}/{name}")
        if found is None:
            raise UnknownGroup(f"no outbound webhook {name!r:.140} in tenant {tenant!r:.140}")
        return found

    def all(self, tenant: str | None = None) -> list[Registered]:
        """Every subscription (of `tenant`), by `<tenant>/<name>`."""
        return [
            r for key, r in sorted(self._subs.items()) if tenant is None or r.sub.tenant == tenant
        ]

    def group(self, registered: Registered) -> Group:
        """The group a subscription runs as."""
        sub = registered.sub
        return self.bus.groups.get(f"{sub.tenant}/{group_name(sub.name)}")

    # -- changing --------------------------------------------------------------------

    async def put(self, sub: Subscription) -> tuple[Registered, bool]:
        """Create or replace a subscription made over the API: (it, whether it is new). Durable.

        Raises `Forbidden` for one of the settings file, `InvalidSettings`
        (an address refused, `ordered` changed: delete it and create it again).
        """
        check_url(sub.url, allow_private=self.allow_private)
        signing_keys(sub.secrets)
        async with self._lock:
            old = self._subs.get(sub.full_name)
            if old is not None and old.origin == "config":
                raise Forbidden(f"outbound webhook {sub.full_name!r} is set in the settings file")
            if old is None and len(self.all(sub.tenant)) >= _MAX_PER_TENANT:
                raise InvalidInput(f"tenant {sub.tenant!r} has {_MAX_PER_TENANT} outbound webhooks")
            if old is not None and old.sub.ordered != sub.ordered:
                raise InvalidSettings(
                    "ordered cannot change: delete the outbound webhook and create it again"
                )
            await self.bus.groups.ensure(group_name(sub.name), group_settings(sub))
            await self._store(sub.tenant, put=[(sub.name, msgspec.msgpack.encode(sub))])
            registered = Registered(sub, "api", old.attempts if old is not None else AttemptLog())
            if old is not None:
                self._retire(old)
            self._subs[sub.full_name] = registered
            await self._activate(registered)
            return registered, old is None

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a subscription made over the API and its group (its pending events go)."""
        async with self._lock:
            found = self.get(tenant, name)
            if found.origin == "config":
                raise Forbidden(f"outbound webhook {tenant}/{name} is set in the settings file")
            self._retire(found)
            await self._store(tenant, delete=[name])
            del self._subs[found.sub.full_name]
            try:
                await self.bus.groups.delete(f"{tenant}/{group_name(name)}")
            except UnknownGroup:
                pass

    async def set_enabled(
        self, tenant: str, name: str, enabled: bool, reason: str = ""
    ) -> Registered:
        """Enable or disable a subscription (stored); a disabled one keeps its events."""
        async with self._lock:
            found = self.get(tenant, name)
            sub = msgspec.structs.replace(found.sub, enabled=enabled)
            if found.origin == "config":
                flag = b"true" if enabled else b"false"
                await self._store(tenant, put=[(_ENABLED + name, flag)])
            else:
                await self._store(tenant, put=[(name, msgspec.msgpack.encode(sub))])
            self._retire(found)
            registered = Registered(sub, found.origin, found.attempts)
            registered.disabled_reason = "" if enabled else reason
            self._subs[sub.full_name] = registered
            await self._activate(registered)
            return registered

    async def replay(
        self, tenant: str, name: str, position: str | None = None, time: float | None = None
    ) -> str:
        """Deliver again from a position or a Unix time (the group's seek); the new position."""
        self.get(tenant, name)
        return await self.bus.groups.seek(
            f"{tenant}/{group_name(name)}", position=position, time=time
        )

    # -- inside ----------------------------------------------------------------------

    async def _store(
        self, tenant: str, put: Sequence[tuple[str, bytes]] = (), delete: Sequence[str] = ()
    ) -> None:
        write = GroupWrite(group=STORE_PREFIX + tenant, state=_STATE, put=put, delete=delete)
        await self.bus.engine.write_groups([write])
        await self.bus.changes.announce(STORE_PREFIX + tenant)  # other nodes reload it

    async def _activate(self, registered: Registered) -> None:
        """Make or update the group; start a sender if the subscription is enabled.

        With many nodes (docs/groups.md "Many nodes") the sender runs on the
        node coordinating the group; the others try to claim it every ttl/2.
        """
        try:
            await self._run_here(registered)
        except NotCoordinator:
            pass  # another node runs it
        if self.bus.groups.coordination.enabled and not self._closed:
            self._spawn(self._claim_forever(registered))

    async def _claim_forever(self, registered: Registered) -> None:
        """While `registered` is current: run its sender here when no other node runs it."""
        every = self.bus.groups.coordination.ttl / 2
        sub = registered.sub
        while not self._closed and self._subs.get(sub.full_name) is registered:
            await asyncio.sleep(every)
            try:
                self.group(registered)  # loaded here: this node runs it
                continue
            except UnknownGroup:
                pass
            self._retire(registered)  # a sender of a group this node lost
            try:
                await self._run_here(registered)
            except NotCoordinator:
                pass
            except BusError as exc:
                log.warning("outbound webhook %s: cannot claim its group (%s)", sub.full_name, exc)

    async def _run_here(self, registered: Registered) -> None:
        sub = registered.sub
        group = await self.bus.groups.ensure(group_name(sub.name), group_settings(sub))
        group.on_dead = lambda dead: self._exhausted(sub, dead)
        if sub.enabled and not self._closed:
            assert self._session is not None
            sender = Sender(
                sub,
                signing_keys(sub.secrets),
                group,
                self._session,
                registered.attempts,
                allow_private=self.allow_private,
                on_gone=self._gone,
                on_attempt=self._on_attempt,
                tracer=self.bus.tracer,
            )
            registered.sender = sender
            sender.start()

    def _retire(self, registered: Registered) -> None:
        """Stop its sender; its requests in flight finish in the background."""
        sender, registered.sender = registered.sender, None
        if sender is None:
            return
        sender.stop()
        if sender.busy:
            self._draining.add(sender)
            self._spawn(self._drain(sender))

    async def _drain(self, sender: Sender) -> None:
        try:
            await sender.drained()
        finally:
            self._draining.discard(sender)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gone(self, sub: Subscription) -> None:
        """A receiver answered 410 Gone: disable the subscription (in the background)."""
        self._spawn(self._disable_gone(sub))

    async def _disable_gone(self, sub: Subscription) -> None:
        current = self._subs.get(sub.full_name)
        if current is None or current.sub is not sub or not sub.enabled:
            return  # changed since the request was sent
        log.warning("outbound webhook %s: the receiver answered 410 Gone; disabled", sub.full_name)
        try:
            await self.set_enabled(
                sub.tenant, sub.name, False, reason="the receiver answered 410 Gone"
            )
        except BusError as exc:
            log.warning("outbound webhook %s: could not be disabled (%s)", sub.full_name, exc)

    def _exhausted(self, sub: Subscription, dead: DeadLetter) -> None:
        """The group buried an event: announce it on `$system/webhooks/<tenant>/exhausted`."""
        event = Event(
            id=f"{sub.name}/{dead.id}",
            source=f"/hybridbus/webhooks/outbound/{sub.tenant}/{sub.name}",
            type=EXHAUSTED_TYPE,
            subject=sub.name,
            data={
                "subscription": sub.name,
                "url": sub.url,
                "topic": dead.topic.partition("/")[2],
                "offset": dead.offset,
                "attempts": dead.attempts,
                "reason": dead.reason,
                "error": dead.error,
                "dead_letter": dead.id,
                "dlq_topic": dead.dlq_topic,
                "first": dead.first,
                "last": dead.last,
            },
        )
        self._spawn(self._announce(sub.tenant, event))

    async def _announce(self, tenant: str, event: Event) -> None:
        try:
            await self.bus.publish(exhausted_topic(tenant), event)
        except BusError as exc:
            log.warning("outbound webhook %s: exhausted event not appended (%s)", event.id, exc)
