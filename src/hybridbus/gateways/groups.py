"""Consumer groups over HTTP: pull deliveries, settle them, manage groups and their dead letters.

Owns: the routes under `/v1/groups` (docs/http.md §10), their JSON bodies
and answers, and how a pull works over plain requests. Must not decide who
may do what (`hub.group_guard.GroupGuard` does, for the principal the
`principal` hook finds: `HttpAccess.principal` in `hybridbus serve`, with
its expiry and revocation checks) nor hold any group logic (`hub.groups`).

    GET    /v1/groups                                  the groups the caller may see
    PUT    /v1/groups/{group}                          create, or change settings (manage)
    GET    /v1/groups/{group}?pending=N                a group and its pending entries
    DELETE /v1/groups/{group}                          delete (manage)
    POST   /v1/groups/{group}/seek                     move to a position or time (manage)
    POST   /v1/groups/{group}/fetch                    up to `max` deliveries (consume)
    POST   /v1/groups/{group}/ack | nack | extend | term    settle them (consume)
    GET    /v1/groups/{group}/dead-letters             list (manage)
    GET    /v1/groups/{group}/dead-letters/{id}        one, with its event (manage)
    POST   /v1/groups/{group}/dead-letters/replay      to the topic or the group (manage)
    POST   /v1/groups/{group}/dead-letters/purge       remove from the list (manage)

Names and topics. `{group}` is the group's name in the caller's tenant
(`billing`); an admin names it `<tenant>/<name>`, percent-encoded
(`acme%2Fbilling`). Patterns and topics are absolute, as everywhere in the
HTTP API.

A fetch joins the group as a member for the length of the request: it waits
up to `wait` seconds for the first delivery, answers with up to `max`, and
leaves. Deliveries the member got but did not answer with go back to the
group at once (`Member.close`), and so do those it answered with when the
answer cannot be written (the client left): only deliveries that reached
the connection are leased, and those come back after `ack_wait` unless
settled. A fetch waiting for deliveries is held like an SSE stream (`hold`):
it counts as one of the caller's connections, and ends at the caller's
revocation or token expiry with that problem. It notices a client that
leaves within `_SWEEP` seconds (at once with aiohttp's `handler_cancellation`).

Many nodes. A route naming a group that another node coordinates
(`NotCoordinator`, docs/groups.md "Many nodes") answers 307 with `Location`
on that node (the same path and query; 307 keeps the method and body) and
the problem as its body; 503 (retriable) when no node is known to hold it
now. The listing answers on any node: the groups other nodes coordinate
with their stored, approximate figures (`Groups.listing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from aiohttp import web

from hybridbus.core.codecs import encode_json
from hybridbus.core.topics import tenant_of, validate_pattern
from hybridbus.errors import AccessError, Forbidden, NotCoordinator, UnknownGroup
from hybridbus.gateways.httputil import (
    BadParameter,
    Handler,
    guarded,
    json_response,
    problem,
    query_int,
    query_text,
    read_body,
)
from hybridbus.gateways.sse import Hold, hold_nothing
from hybridbus.gateways.sse_stream import gone
from hybridbus.hub.group import DeadLetter
from hybridbus.hub.group_guard import GroupGuard
from hybridbus.hub.groups import GroupInfo, PendingInfo
from hybridbus.hub.guard import Principal
from hybridbus.hub.member import GroupDelivery, Member
from hybridbus.server.metrics import group_lag

__all__ = ["GroupsConfig", "GroupsGateway", "PrincipalOf"]

# Who a request is (raises `Unauthorized`, `Revoked`): `HttpAccess.principal`.
PrincipalOf = Callable[[web.Request], Awaitable[Principal]]

_SWEEP: Final = 0.25  # seconds between a waiting fetch's looks at its connection
# A fetch waits at least this long for the group to read its log (a group
# without members reads nothing): `wait: 0` still gets what is there.
_GRACE: Final = 0.1
_MAX_LIST: Final = 1000
_TEXT: Final = 1000  # characters of a nack's error or a term's reason
_Body = TypeVar("_Body")


class GroupsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the consumer-group routes (sizes in bytes, durations in seconds)."""

    max_body_size: int = 1 << 20  # a request body (1000 delivery ids fit many times)
    body_timeout: float = 30.0  # to receive a request body
    max_fetch: int = 1000  # deliveries one fetch may ask for; ids one settle may name
    max_wait: float = 30.0  # how long a fetch may wait


_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
_Reason = Annotated[str, msgspec.Meta(max_length=_TEXT)]


class _PutBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pattern: str
    settings: dict[str, Any] | None = None


class _SeekBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    position: str | None = None
    time: Annotated[float, msgspec.Meta(ge=0)] | None = None


class _FetchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max: Annotated[int, msgspec.Meta(ge=1)] = 1
    wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    member: _Name | None = None


class _IdsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(min_length=1)]


class _NackBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    delay: Annotated[float, msgspec.Meta(ge=0)] | None = None
    error: _Reason = ""


class _TermBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    reason: _Reason = ""


class _ChooseBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ids: list[str] | None = None
    all: bool = False


class _ReplayBody(_ChooseBody, frozen=True, forbid_unknown_fields=True):
    to: Literal["topic", "group"] = "topic"


class _DeliveryJson(msgspec.Struct, frozen=True):
    """A delivery as a fetch answers it (docs/http.md §10)."""

    id: str
    attempt: int
    dedupe: str
    topic: str
    offset: int
    shard: int
    position: int
    event: msgspec.Raw


def _delivery_json(d: GroupDelivery) -> _DeliveryJson:
    delivery = d.delivery
    return _DeliveryJson(
        id=d.id,
        attempt=d.attempt,
        dedupe=d.dedupe_key,
        topic=delivery.topic,
        offset=delivery.offset,
        shard=delivery.shard,
        position=delivery.position,
        event=msgspec.Raw(encode_json(delivery.event)),
    )


class GroupsGateway:
    """The consumer-group routes over one `GroupGuard` (see the module docstring)."""

    def __init__(
        self,
        groups: GroupGuard,
        principal: PrincipalOf,
        *,
        config: GroupsConfig | None = None,
        hold: Hold = hold_nothing,
    ) -> None:
        self._guard = groups
        self._groups = groups.groups
        self._principal = principal
        self._config = config or GroupsConfig()
        self._hold = hold
        self._fetching: set[Member] = set()
        self._closed = False

    def routes(self) -> list[web.RouteDef]:
        """Every consumer-group route; each answers errors as problem+json."""
        group = "/v1/groups/{group}"
        dead = f"{group}/dead-letters"
        at = _redirected  # to the node that coordinates the group
        return [
            web.get("/v1/groups", guarded(self.groups), allow_head=False),
            web.put(group, guarded(at(self.put))),
            web.get(group, guarded(at(self.get)), allow_head=False),
            web.delete(group, guarded(at(self.delete))),
            web.post(f"{group}/seek", guarded(at(self.seek))),
            web.post(f"{group}/fetch", guarded(at(self.fetch))),
            web.post(f"{group}/ack", guarded(at(self.ack))),
            web.post(f"{group}/nack", guarded(at(self.nack))),
            web.post(f"{group}/extend", guarded(at(self.extend))),
            web.post(f"{group}/term", guarded(at(self.term))),
            web.get(dead, guarded(at(self.dead_letters)), allow_head=False),
            web.post(f"{dead}/replay", guarded(at(self.replay))),
            web.post(f"{dead}/purge", guarded(at(self.purge))),
            web.get(f"{dead}/{{id}}", guarded(at(self.dead_letter)), allow_head=False),
        ]

    def close(self) -> None:
        """End the waiting fetches (they answer an empty list) and answer new ones so."""
        self._closed = True
        for member in tuple(self._fetching):
            member.close()

    # -- helpers -----------------------------------------------------------------

    async def _body(self, request: web.Request, kind: type[_Body]) -> _Body:
        """The request's JSON body as `kind` (an empty body is `{}`); 400 naming `body` if bad."""
        config = self._config
        raw = await read_body(request, config.max_body_size, config.body_timeout)
        try:
            return msgspec.json.decode(raw.strip() or b"{}", type=kind)
        except msgspec.ValidationError as exc:
            raise BadParameter(f"bad body: {exc}", "body") from None
        except (msgspec.DecodeError, RecursionError):
            raise BadParameter("the body must be a JSON object", "body") from None

    def _ids(self, ids: Sequence[str]) -> Sequence[str]:
        if len(ids) > self._config.max_fetch:
            raise BadParameter(f"at most {self._config.max_fetch} ids, not {len(ids)}", "body")
        return ids

    def _group_json(self, principal: Principal, info: GroupInfo, lag: int) -> dict[str, Any]:
        settings = msgspec.to_builtins(info.settings)
        pattern = settings.pop("pattern")
        return {
            "name": self._guard.name(principal, info.id),
            "tenant": info.tenant,
            "pattern": pattern,
            "settings": settings,
            "position": info.position,
            "created": info.created,
            "members": info.members,
            "pending": info.pending,
            "leased": info.leased,
            "lag": lag,
            "dead_letters": info.dead_letters,
            "redelivered": info.redelivered,
            "acked": info.acked,
            "dead": info.dead,
            "expired": info.expired,
        }

    async def _seen(self, principal: Principal, name: str) -> GroupInfo:
        """The principal's group `name` if it may consume from or manage it (else 403 / 404)."""
        gid = self._guard.gid(principal, name)
        try:
            await self._groups.acquire(gid)  # UnknownGroup
        except NotCoordinator:
            # Redirected only if the caller may see it (else 403, as here).
            if any(info.id == gid for info in await self._guard.visible(principal)):
                raise
            raise Forbidden(f"no rule allows consume or manage on group {name!r:.140}") from None
        for info in self._groups.all(gid):
            if info.id == gid and self._guard.may_see(principal, info):
                return info
        raise Forbidden(f"no rule allows consume or manage on group {name!r:.140}")

    # -- groups ------------------------------------------------------------------

    async def groups(self, request: web.Request) -> web.Response:
        """The groups the caller may consume from or manage, by id, with their counts."""
        principal = await self._principal(request)
        infos = await self._guard.visible(principal)
        head = await self._groups.engine.head()
        epoch = self._groups.engine.epoch
        groups = [self._group_json(principal, i, group_lag(i, head, epoch)) for i in infos]
        return json_response({"groups": groups})

    async def get(self, request: web.Request) -> web.Response:
        """A group, and up to `?pending=` (default 100) of its pending entries, oldest first."""
        limit = query_int(request, "pending", 100, 0, _MAX_LIST)
        principal = await self._principal(request)
        info = await self._seen(principal, request.match_info["group"])
        head = await self._groups.engine.head()
        body = self._group_json(principal, info, group_lag(info, head, self._groups.engine.epoch))
        entries: list[PendingInfo] = self._groups.pending(info.id, limit) if limit else []
        body["entries"] = entries
        return json_response(body)

    async def put(self, request: web.Request) -> web.Response:
        """Create the group over `pattern` (201), or change its settings (200). Needs `manage`."""
        principal = await self._principal(request)
        name = request.match_info["group"]
        asked = await self._body(request, _PutBody)
        gid = self._guard.gid(principal, name)
        pattern = validate_pattern(asked.pattern)
        if principal.identity.admin:
            if tenant_of(pattern) != gid.partition("/")[0]:
                raise BadParameter(
                    f"group {gid!r} cannot consume {pattern!r}: another tenant's pattern", "body"
                )
        elif not pattern.startswith(principal.prefix):
            raise Forbidden(f"{pattern!r} is outside tenant {principal.tenant!r}")
        try:
            await self._groups.acquire(gid)
            created = False
        except UnknownGroup:
            created = True
        info = await self._guard.create(
            principal, name, principal.relative(pattern), asked.settings
        )
        head = await self._groups.engine.head()
        body = self._group_json(principal, info, group_lag(info, head, self._groups.engine.epoch))
        response = json_response(body, 201 if created else 200)
        if created:
            response.headers["Location"] = request.rel_url.raw_path  # %2F kept
        return response

    async def delete(self, request: web.Request) -> web.Response:
        """Delete the group (its members end; its events stay in the log). 204."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        await self._groups.delete(group.id)
        return web.Response(status=204)

    async def seek(self, request: web.Request) -> web.Response:
        """Move the group to `position` (a resume token) or `time` (Unix seconds)."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        asked = await self._body(request, _SeekBody)
        position = await self._groups.seek(group.id, position=asked.position, time=asked.time)
        return json_response({"position": position})

    # -- pulling and settling -------------------------------------------------------

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        """Up to `max` deliveries, waiting up to `wait` seconds for the first (module docstring)."""
        principal = await self._principal(request)
        name = request.match_info["group"]
        asked = await self._body(request, _FetchBody)
        config = self._config
        if asked.max > config.max_fetch:
            raise BadParameter(f"max is 1 to {config.max_fetch}, not {asked.max}", "body")
        if asked.wait > config.max_wait:
            raise BadParameter(f"wait is 0 to {config.max_wait:g} s, not {asked.wait:g}", "body")
        if self._closed:
            return json_response({"deliveries": []})
        member: Member | None = None
        waiting = True
        ended: list[AccessError] = []

        def end(error: AccessError) -> None:  # revoked, expired: stop waiting
            ended.append(error)
            if waiting and member is not None:
                member.close()

        release = await self._hold(request, end)
        got: list[GroupDelivery] = []
        try:
            member = await self._guard.join(principal, name, None, None, asked.member)
            if not ended:
                self._fetching.add(member)  # `close` ends the wait
                try:
                    got = await self._collect(request, member, asked)
                finally:
                    self._fetching.discard(member)
            waiting = False
            if ended:
                raise ended[0]
            if gone(request):
                return json_response({"deliveries": []})  # nobody reads it; `got` goes back
            answer = {"deliveries": [_delivery_json(d) for d in got]}
            response = json_response(answer)
            await response.prepare(request)
            await response.write_eof()
            got = []  # written: leased until acked or `ack_wait`
            return response
        finally:
            if member is not None:
                for delivery in got:  # not written: back into the queue, released by close
                    member.give(delivery)
                member.close()
            release()

    async def _collect(
        self, request: web.Request, member: Member, asked: _FetchBody
    ) -> list[GroupDelivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(asked.wait, _GRACE)
        while True:
            left = deadline - loop.time()
            got = await member.fetch(asked.max, max(0.0, min(left, _SWEEP)))
            if got or member.closed or left <= 0 or gone(request):
                return got

    async def ack(self, request: web.Request) -> web.Response:
        """Settle deliveries by id (`ids`); durable on the answer. Unknown or settled ids: no-op."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "consume")
        asked = await self._body(request, _IdsBody)
        await group.ack(self._ids(asked.ids))
        return web.Response(status=204)

    async def nack(self, request: web.Request) -> web.Response:
        """Delivery `id` failed: it comes back after `delay` s (default: the backoff), or dies."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "consume")
        asked = await self._body(request, _NackBody)
        await group.nack(asked.id, asked.delay, asked.error)
        return web.Response(status=204)

    async def extend(self, request: web.Request) -> web.Response:
        """Start the leases of `ids` over (`ack_wait` from now); 409 at the first not held."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "consume")
        asked = await self._body(request, _IdsBody)
        for delivery_id in self._ids(asked.ids):
            group.extend(delivery_id)
        return web.Response(status=204)

    async def term(self, request: web.Request) -> web.Response:
        """Give up on delivery `id`: it is a dead letter when this answers."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "consume")
        asked = await self._body(request, _TermBody)
        await group.term(asked.id, asked.reason)
        return web.Response(status=204)

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(self, request: web.Request) -> web.Response:
        """Up to `limit` dead letters, oldest first, after the one of id `after`."""
        after = query_text(request, "after") or ""
        limit = query_int(request, "limit", 100, 1, _MAX_LIST)
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        letters = self._groups.dead_letters(group.id, after, limit + 1)
        return json_response({"dead_letters": letters[:limit], "more": len(letters) > limit})

    async def dead_letter(self, request: web.Request) -> web.Response:
        """One dead letter and its event as on `$dlq/...` (null once retention removed it)."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        dead, copy = await self._groups.dead_letter(group.id, request.match_info["id"])
        event = None if copy is None else msgspec.Raw(encode_json(copy.event))
        answer: dict[str, DeadLetter | msgspec.Raw | None] = {"dead_letter": dead, "event": event}
        return json_response(answer)

    async def replay(self, request: web.Request) -> web.Response:
        """Replay dead letters (`ids`, or `all`) to their topic or into the group."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        asked = await self._body(request, _ReplayBody)
        count = await self._groups.replay(group.id, self._chosen(asked), asked.to)
        return json_response({"replayed": count})

    async def purge(self, request: web.Request) -> web.Response:
        """Remove dead letters (`ids`, or `all`) from the list."""
        principal = await self._principal(request)
        group = await self._guard.reach(principal, request.match_info["group"], "manage")
        asked = await self._body(request, _ChooseBody)
        count = await self._groups.purge(group.id, self._chosen(asked))
        return json_response({"purged": count})

    def _chosen(self, asked: _ChooseBody) -> Sequence[str] | None:
        """The ids asked for, or None for all; exactly one of the two must be given."""
        if asked.all == (asked.ids is not None):
            raise BadParameter("give either ids (a list) or all: true", "body")
        if asked.ids is None:
            return None
        if not asked.ids:
            raise BadParameter("ids is empty: give at least one, or all: true", "body")
        return self._ids(asked.ids)


def _redirected(handler: Handler) -> Handler:
    """`handler`, answering `NotCoordinator` with 307 to the coordinating node when known."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotCoordinator as exc:
            if not exc.url:
                raise  # nobody known: 503, retriable
            response = problem(exc, status=307, node=exc.node)
            response.set_status(307)
            response.headers.pop("Retry-After", None)
            response.headers["Location"] = exc.url + request.rel_url.raw_path_qs
            return response

    return redirect
