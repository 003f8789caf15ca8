"""Who a connection or API caller is, and what operations there are to allow.

Owns: `Identity` (the subject every permission decision is about, as an
authenticator vouches for it: tenant, user, device, session, roles, the
token's own topic grants, its app), `Grant`, and the `Operation` names.
Must not verify credentials (that is `server.tokens` / `server.auth`) nor
decide anything (that is `core.permissions`).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = ["OPERATIONS", "Grant", "Identity", "Operation"]

Operation = Literal["subscribe", "publish", "history", "presence", "consume", "manage"]
OPERATIONS: Final[frozenset[str]] = frozenset(
    {"subscribe", "publish", "history", "presence", "consume", "manage"}
)


class Grant(msgspec.Struct, frozen=True):
    """A token's own grant: `operations` on the topics `pattern` matches (tenant-relative)."""

    pattern: str
    operations: frozenset[str] = frozenset({"subscribe", "history", "presence"})


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who a connection is, as an authenticator vouches.

    `tenant` is the first segment of every topic the connection reaches (its
    topics are relative to it) unless `admin`, whose topics are absolute.
    `user` is the token's `sub` (None: anonymous); `device` groups a user's
    connections for `exclude_self="device"`; `session` is the token's `sid`
    and `token_id` its `jti`; `roles` select the configured rules; `grants`
    are the token's `topics` claim; `app` its `appid`. `issued` and
    `expires` are Unix times (None: unknown / never).
    """

    tenant: str
    user: str | None = None
    device: str | None = None
    session: str | None = None
    token_id: str | None = None
    roles: tuple[str, ...] = ()
    grants: tuple[Grant, ...] = ()
    app: str | None = None
    admin: bool = False
    anonymous: bool = False
    issued: float | None = None
    expires: float | None = None
