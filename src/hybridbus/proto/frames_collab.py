"""The awareness and state-topic messages of the client protocol (docs/protocol.md §5.11-5.12).

Owns: the commands `awareness_set` / `awareness_watch` / `awareness_unwatch`
and `state_subscribe` / `state_unsubscribe` / `state_patch`, the pushes
`awareness` and `state`, and their results. `proto.frames` puts them in its
unions (`Command`, `ServerMessage`, `Result`) and re-exports them; their bases
carry the same struct settings as the others there (commands refuse unknown
fields, server messages and results allow them). Must not do I/O.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = [
    "AwarenessCommand",
    "AwarenessPush",
    "AwarenessResult",
    "AwarenessSet",
    "AwarenessSetResult",
    "AwarenessState",
    "AwarenessUnwatch",
    "AwarenessWatch",
    "StateCommand",
    "StatePatch",
    "StatePatchResult",
    "StatePush",
    "StateResult",
    "StateSubscribe",
    "StateUnsubscribe",
]

# As in proto.frames: command ids fit a JavaScript number; the server checks topics.
CommandId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
TopicText = str


class _CollabCommand(
    msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=True
):
    id: CommandId


class _CollabServer(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class _CollabResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


# Lamport values fit a JavaScript number exactly.
Lamport = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class AwarenessSet(_CollabCommand, tag="awareness_set"):
    """Merge `state` into this connection's awareness state on `topic` (a key set to null: removed).

    Latest wins; `lamport` is the client's Lamport value, if it keeps one
    (docs/collaboration.md, "Awareness and cursors").
    """

    topic: TopicText
    state: dict[str, Any]
    lamport: Lamport | None = None


class AwarenessWatch(_CollabCommand, tag="awareness_watch"):
    """Every current awareness state of `topic` in the reply, then `awareness` pushes."""

    topic: TopicText


class AwarenessUnwatch(_CollabCommand, tag="awareness_unwatch"):
    """No more `awareness` pushes of `topic`."""

    topic: TopicText


AwarenessCommand = AwarenessSet | AwarenessWatch | AwarenessUnwatch


class StateSubscribe(_CollabCommand, tag="state_subscribe"):
    """The state document of `topic` (a snapshot, or the patches after version `since`), then
    `state` pushes of every change, in order (docs/collaboration.md, "State topics")."""

    topic: TopicText
    since: Version | None = None


class StateUnsubscribe(_CollabCommand, tag="state_unsubscribe"):
    """No more `state` pushes of `topic`."""

    topic: TopicText


class StatePatch(_CollabCommand, tag="state_patch"):
    """Merge `patch` (RFC 7396) into the state document of `topic`.

    `if_version`: only if the document is at that version (compare-and-set,
    else 1640); `lamport`: its place in Lamport order (1641 if too old).
    """

    topic: TopicText
    patch: Any
    if_version: Version | None = None
    lamport: Lamport | None = None


StateCommand = StateSubscribe | StateUnsubscribe | StatePatch


# -- server → client


class AwarenessPush(_CollabServer, tag="awareness"):
    """`client`'s whole awareness state on a watched `topic` now (or, `removed`, its end).

    At most the server's rate per second per client, always the newest;
    `lamport` grows with every change of the topic's states.
    """

    topic: str
    client: str
    state: dict[str, Any]
    lamport: int
    user: str | None = None
    removed: bool = False


class StatePush(_CollabServer, tag="state"):
    """A change of a subscribed state document: now at `version` (one more than before).

    `patch` is the merge patch that makes the previous version this one; when
    `snapshot` is true there is no patch and `document` is the whole document.
    """

    topic: str
    version: int
    patch: Any = None
    snapshot: bool = False
    document: Any = None


# -- results


class AwarenessState(_CollabResult):
    """One client's awareness state, as `awareness_watch` answers it."""

    client: str
    state: dict[str, Any]
    lamport: int
    user: str | None = None


class AwarenessResult(_CollabResult):
    """Every current awareness state of the topic (`awareness_watch`; empty for an unwatch)."""

    clients: list[AwarenessState] = []


class AwarenessSetResult(_CollabResult):
    """The Lamport stamp the server gave the change."""

    lamport: int


class StateResult(_CollabResult):
    """Where a state subscription starts: the document at `version`.

    With `snapshot` true, `document` is the whole document; else (a `since`
    the server could continue) `patches` are the changes after `since`, in
    order, as [version, patch] pairs. An unsubscribe's result is empty.
    """

    version: int = 0
    snapshot: bool = False
    document: Any = None
    patches: list[tuple[int, Any]] = []


class StatePatchResult(_CollabResult):
    """The document's version with the patch applied."""

    version: int
