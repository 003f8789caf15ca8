"""Who may do what with consumer groups: the guard's part for `hub.groups`.

Owns: turning a principal's group name into the group's id (a tenant's
callers name groups inside their tenant, `billing` → `acme/billing`; an
admin names them absolutely, `acme/billing`), and the two operations groups
add to the rules: `consume` (join a group, fetch, ack / nack / extend /
term, on the group's pattern) and `manage` (change a group's settings, seek,
delete, and list / show / replay / purge its dead letters). Creating a group
by joining it needs `consume` on its pattern; changing an existing group's
settings needs `manage` (joining with the settings it has is no change).
Listing shows the groups whose pattern the caller may `consume` or `manage`.
Must not know sockets or HTTP.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hybridbus.core.groups import GroupSettings
from hybridbus.core.identity import Operation
from hybridbus.errors import InvalidSettings, NotCoordinator, UnknownGroup
from hybridbus.hub.group import Group
from hybridbus.hub.groups import GroupInfo, Groups, check_group_name, settings_from
from hybridbus.hub.guard import Guard, Principal
from hybridbus.hub.member import Listener, Member

__all__ = ["GroupGuard"]


class GroupGuard:
    """Consumer groups as a principal may reach them (see the module docstring)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.groups: Groups = guard.bus.groups

    def gid(self, principal: Principal, name: str) -> str:
        """The group id of the principal's `name`."""
        if principal.identity.admin:
            tenant, sep, rest = name.partition("/") if isinstance(name, str) else ("", "", "")
            if not sep or not tenant:
                raise InvalidSettings(
                    f"an admin names a group '<tenant>/<name>', not {name!r:.140}"
                )
            check_group_name(rest)
            return name
        return f"{principal.tenant}/{check_group_name(name)}"

    def name(self, principal: Principal, gid: str) -> str:
        """What the principal calls group `gid`."""
        return principal.relative(gid)

    def get(self, principal: Principal, name: str, operation: Operation) -> Group:
        """The principal's group `name`, once it may do `operation` on its pattern.

        A group the principal may not see at all answers `UnknownGroup`, as a
        missing one does (its existence is not disclosed to other tenants).
        """
        gid = self.gid(principal, name)
        group = self.groups.get(gid)
        self.guard.check(principal, operation, principal.relative(group.settings.pattern))
        return group

    async def reach(self, principal: Principal, name: str, operation: Operation) -> Group:
        """`get`, claiming and loading the group here if no other node coordinates it.

        `NotCoordinator` (naming the node) if another does: only once the
        principal may do `operation` on the group's stored pattern, so that
        another tenant learns nothing of it.
        """
        gid = self.gid(principal, name)
        try:
            group = await self.groups.acquire(gid)
        except NotCoordinator:
            self._check_stored(principal, gid, operation, await self.groups.listing(gid))
            raise
        self.guard.check(principal, operation, principal.relative(group.settings.pattern))
        return group

    def _check_stored(
        self, principal: Principal, gid: str, operation: Operation, found: list[GroupInfo]
    ) -> None:
        for info in found:
            if info.id == gid:
                self.guard.check(principal, operation, principal.relative(info.settings.pattern))
                return
        raise UnknownGroup(f"no group {gid!r}")

    async def join(
        self,
        principal: Principal,
        name: str,
        pattern: str | None,
        settings: dict[str, Any] | None,
        member: str | None = None,
        listener: Listener | None = None,
    ) -> Member:
        """Join the principal's group `name` (created over `pattern` if it does not exist)."""
        gid = self.gid(principal, name)
        try:
            group: Group | None = await self.groups.acquire(gid)
        except UnknownGroup:
            group = None
        except NotCoordinator:
            self._check_stored(principal, gid, "consume", await self.groups.listing(gid))
            raise
        if group is None:
            if pattern is None:
                raise UnknownGroup(f"no group {name!r}; give a pattern to create it")
            absolute = self._in_tenant(gid, principal.pattern(pattern))
            self.guard.check(principal, "consume", pattern)
            group = await self.groups.ensure(
                gid.rpartition("/")[2], settings_from(absolute, settings)
            )
        else:
            relative = principal.relative(group.settings.pattern)
            self.guard.check(principal, "consume", relative)
            if pattern is not None and principal.pattern(pattern) != group.settings.pattern:
                await self.groups.ensure(
                    group.name, settings_from(principal.pattern(pattern), settings)
                )  # raises GroupConflict
            if settings:
                wanted = settings_from(group.settings.pattern, settings)
                if msgspec.structs.replace(wanted, start=group.settings.start) != group.settings:
                    # A change: `manage`. The same settings again (a member rejoining as
                    # it created the group) change nothing and need `consume` only.
                    self.guard.check(principal, "manage", relative)
                    await self.groups.ensure(group.name, wanted)
        return group.join(member, listener)

    async def create(
        self, principal: Principal, name: str, pattern: str, settings: dict[str, Any] | None
    ) -> GroupInfo:
        """Create the principal's group `name` over `pattern`, or update its settings (`manage`)."""
        gid = self.gid(principal, name)
        absolute = self._in_tenant(gid, principal.pattern(pattern))
        self.guard.check(principal, "manage", pattern)
        parsed: GroupSettings = settings_from(absolute, settings)
        await self.groups.ensure(gid.rpartition("/")[2], parsed)
        return await self.groups.info(gid)

    @staticmethod
    def _in_tenant(gid: str, absolute: str) -> str:
        """`absolute` if it lies in the tenant of group `gid` (an admin could name another)."""
        tenant = gid.partition("/")[0]
        if absolute.partition("/")[0] != tenant:
            raise InvalidSettings(
                f"group {gid!r} lives in tenant {tenant!r}: its pattern must start with "
                f"'{tenant}/', not {absolute!r:.140}"
            )
        return absolute

    async def visible(self, principal: Principal) -> list[GroupInfo]:
        """The groups the principal may consume from or manage, by id (`Groups.listing`)."""
        prefix = "" if principal.identity.admin else principal.tenant + "/"
        out = []
        for info in await self.groups.listing(prefix):
            if self.may_see(principal, info):
                out.append(info)
        return out

    def may_see(self, principal: Principal, info: GroupInfo) -> bool:
        """True if the principal may consume from or manage the group of `info`."""
        relative = principal.relative(info.settings.pattern)
        return self.guard.may(principal, "consume", relative) or self.guard.may(
            principal, "manage", relative
        )
