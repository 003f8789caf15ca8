"""Awareness on one topic: ephemeral, latest-wins state per client and key, conflated.

Owns: the awareness states of the clients of ONE topic (`cursor`,
`selection`, `status`... any key: a JSON value per client and key), their
limits (keys per client, bytes per value), their Lamport stamps, and the
conflation schedule: the updates of one client go out at most `rate` times a
second, always with its newest state. Must not do I/O, read clocks (time
comes in as `now`), start timers or know connections: `server.awareness`
drives it, sends what it returns and calls `due(now)` at `next_deadline()`.

Rules (docs/collaboration.md, "Awareness and cursors"):

- A client's state is a JSON object of at most `max_keys` keys; `set` merges
  its `changes` into it (a key set to `None` is removed), latest wins. Each
  value, encoded as JSON, is at most `max_bytes` bytes. A refused `set`
  (AwarenessTooManyKeys 1643, AwarenessStateTooLarge 1644) changes nothing.
- Every accepted `set` gets a Lamport stamp from the topic's clock (`tick`,
  or `observe` of the client's own stamp): stamps grow strictly per topic, so
  a later `set` always wins and an update with a smaller stamp than one
  already seen for that client is older.
- Conflation: an update is the client's WHOLE state with the stamp of its
  last `set`. The first `set` after a quiet spell of at least 1/`rate` s goes
  out at once; later ones within that spacing only mark the client dirty, and
  its newest state goes out at `due(now)` once 1/`rate` s have passed since
  its last update. So in any one second a client's updates number at most
  `rate`, and its last state is always sent.
- `remove(client)` (its session ended) forgets its state and returns a
  `removed` update at once, whatever the schedule; a pending update is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hybridbus.core.clock import LamportClock
from hybridbus.errors import AwarenessStateTooLarge, AwarenessTooManyKeys, InvalidInput

__all__ = ["Awareness", "AwarenessLimits", "Update"]

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class AwarenessLimits:
    """The bounds of awareness on a topic (docs/configuration.md, `awareness_*`)."""

    rate: float = 20.0  # updates per second per client (to each subscriber), at most
    max_keys: int = 16  # keys in one client's state
    max_bytes: int = 4096  # bytes of one value, encoded as JSON

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"awareness rate must be > 0, not {self.rate}")
        if self.max_keys < 1 or self.max_bytes < 16:
            raise ValueError("awareness max_keys must be >= 1 and max_bytes >= 16")


@dataclass(frozen=True, slots=True)
class Update:
    """What watchers of the topic are told: `client`'s whole state now, or its removal."""

    client: str
    state: dict[str, Any]
    lamport: int
    removed: bool = False


@dataclass(slots=True)
class _Client:
    state: dict[str, Any] = field(default_factory=dict)
    lamport: int = 0
    sent: float = -math.inf  # when its last update went out
    due: float | None = None  # when its pending update goes out (None: nothing pending)


class Awareness:
    """The awareness states of one topic's clients (see the module docstring)."""

    __slots__ = ("_clients", "_clock", "_interval", "_pending", "limits")

    def __init__(self, limits: AwarenessLimits | None = None) -> None:
        self.limits = limits or AwarenessLimits()
        self._interval = 1.0 / self.limits.rate
        self._clients: dict[str, _Client] = {}
        self._clock = LamportClock()
        # Clients with an update pending: client -> when it is due.
        self._pending: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def lamport(self) -> int:
        """The topic's Lamport clock: the last stamp handed out or observed."""
        return self._clock.value

    def states(self) -> list[Update]:
        """Every client's current state (what a new watcher gets at once), oldest client first."""
        return [Update(name, dict(c.state), c.lamport) for name, c in self._clients.items()]

    def state(self, client: str) -> dict[str, Any] | None:
        """`client`'s current state, or None if it has none."""
        found = self._clients.get(client)
        return None if found is None else dict(found.state)

    def set(
        self, client: str, changes: Mapping[str, Any], now: float, lamport: int | None = None
    ) -> tuple[int, Update | None]:
        """Merge `changes` into `client`'s state: (its stamp, the update to send now or None).

        None: an update went out less than 1/rate s ago; the newest state goes
        out at `due` (`next_deadline()` says when). Raises (changing nothing)
        `AwarenessTooManyKeys`, `AwarenessStateTooLarge`, `InvalidInput`.
        """
        limits = self.limits
        found = self._clients.get(client)
        merged = dict(found.state) if found is not None else {}
        for key, value in changes.items():
            if not isinstance(key, str) or not key:
                raise InvalidInput("an awareness key is a non-empty string")
            if value is None:
                merged.pop(key, None)
                continue
            size = len(_encode(value))
            if size > limits.max_bytes:
                raise AwarenessStateTooLarge(
                    f"awareness value {key!r} is {size} bytes as JSON, over the limit of "
                    f"{limits.max_bytes}"
                )
            merged[key] = value
        if len(merged) > limits.max_keys:
            raise AwarenessTooManyKeys(
                f"an awareness state holds at most {limits.max_keys} keys, not {len(merged)}"
            )
        if lamport is not None and lamport < 0:
            raise InvalidInput(f"a Lamport stamp is 0 or more, not {lamport}")
        stamp = self._clock.tick() if lamport is None else self._clock.observe(lamport)
        if found is None:
            found = self._clients[client] = _Client()
        found.state = merged
        found.lamport = stamp
        if found.due is not None:
            return stamp, None  # already pending: it will carry this state
        if now - found.sent >= self._interval:
            found.sent = now
            return stamp, Update(client, dict(merged), stamp)
        found.due = found.sent + self._interval
        self._pending[client] = found.due
        return stamp, None

    def next_deadline(self) -> float | None:
        """When the earliest pending update is due (None: nothing pending)."""
        return min(self._pending.values()) if self._pending else None

    def due(self, now: float) -> list[Update]:
        """The pending updates due at `now`, each the client's newest state."""
        out: list[Update] = []
        if not self._pending:
            return out
        for client, at in list(self._pending.items()):
            if at > now:
                continue
            del self._pending[client]
            found = self._clients[client]
            found.due = None
            found.sent = now
            out.append(Update(client, dict(found.state), found.lamport))
        return out

    def remove(self, client: str) -> Update | None:
        """`client`'s session ended: forget it; the `removed` update (None if it had no state)."""
        found = self._clients.pop(client, None)
        if found is None:
            return None
        self._pending.pop(client, None)
        return Update(client, {}, self._clock.tick(), removed=True)
