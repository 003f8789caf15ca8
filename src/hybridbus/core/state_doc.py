"""A state document: one JSON document per topic, changed by RFC 7396 merge patches.

Owns: the document, its version, the conflict rules of a patch (compare-and-
set with `if_version`, or a place in Lamport order), the change each accepted
patch makes (what subscribers are sent), and the document's snapshot. Must
not do I/O: `hub.states` folds the log's patch events through `apply` and
keeps the snapshots on the log. `core.merge_patch` applies the patches.

The exact rules (docs/collaboration.md, "State topics"):

- The document starts as `{}` at version 0. Every ACCEPTED patch adds one to
  the version; a refused one changes nothing (and is not counted).
- `if_version=v`: accepted only if the version is `v` now, else refused with
  StateConflict (1640, `version` is the current one). Compare-and-set: of
  patches sent concurrently with the same `if_version`, exactly one wins.
- Every accepted patch has a stamp (lamport, origin, version): `lamport` is
  the client's Lamport value if it gave one, else the document's clock + 1
  (so a patch without one sorts after every patch accepted so far). The
  document's clock is the largest `lamport` seen.
- The document is ALWAYS the merge of the accepted patches in stamp order.
  A patch whose stamp is the largest (the usual case) is merged on top; one
  with a smaller stamp (a Lamport-ordered patch that arrived late) is put in
  its place among the last `window` accepted patches and those are merged
  again from there. A stamp below all of the window (below a patch already
  merged for good) is refused with PatchTooOld (1641).
- A patch whose result would be over `max_bytes` (as JSON) is refused with
  StateTooLarge (1642).
- The change of an accepted patch is the patch itself when it was merged on
  top, else the merge patch from the document before to the document after
  (`merge_patch.make`), or None when no merge patch can say it (a `null`
  inside the document): subscribers then get the whole document.

A fold of the same patches in the same order gives the same document,
version and refusals: the log is the truth, `fold` replays it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from hybridbus.core import merge_patch
from hybridbus.errors import BusError, InvalidInput, PatchTooOld, StateConflict, StateTooLarge

__all__ = ["Applied", "StateDoc", "fold"]

_encode = msgspec.json.encode
MAX_LAMPORT = 2**53 - 1

# A stamp: (lamport, origin, version); the version makes it unique.
Stamp = tuple[int, str, int]


@dataclass(frozen=True, slots=True)
class Applied:
    """An accepted patch: the document's new `version`, and the `change` subscribers get.

    `change` None: no merge patch expresses it, send the whole document.
    """

    version: int
    change: Any
    stamp: Stamp


class StateDoc:
    """One topic's state document (see the module docstring)."""

    __slots__ = (
        "_base",
        "_base_stamp",
        "_entries",
        "clock",
        "max_bytes",
        "value",
        "version",
        "window",
    )

    def __init__(self, *, window: int = 64, max_bytes: int = 1 << 20) -> None:
        if window < 0 or max_bytes < 2:
            raise ValueError("window must be >= 0 and max_bytes >= 2")
        self.window = window
        self.max_bytes = max_bytes
        self.value: Any = {}
        self.version = 0
        self.clock = 0
        # The last `window` accepted patches in stamp order, and the document before them.
        self._entries: list[tuple[Stamp, Any]] = []
        self._base: Any = {}
        self._base_stamp: Stamp | None = None

    def apply(
        self,
        patch: Any,
        *,
        if_version: int | None = None,
        lamport: int | None = None,
        origin: str = "",
    ) -> Applied:
        """Apply `patch` by the rules; raises StateConflict, PatchTooOld, StateTooLarge."""
        if if_version is not None and if_version != self.version:
            raise StateConflict(
                f"the document is at version {self.version}, not {if_version}", self.version
            )
        if lamport is None:
            lamport = self.clock + 1
        elif not 0 <= lamport <= MAX_LAMPORT:
            raise InvalidInput(f"a Lamport value is 0 to 2**53-1, not {lamport}")
        stamp: Stamp = (lamport, origin, self.version + 1)
        if self._base_stamp is not None and stamp < self._base_stamp:
            raise PatchTooOld(
                f"Lamport {lamport} sorts before the last {self.window} patches of the "
                "document: read it again and patch from there"
            )
        entries = self._entries
        at = bisect.bisect(entries, stamp, key=lambda entry: entry[0])
        if at == len(entries):
            after = merge_patch.apply(self.value, patch)
            change: Any = patch
        else:
            after = self._base
            for _, earlier in entries[:at]:
                after = merge_patch.apply(after, earlier)
            after = merge_patch.apply(after, patch)
            for _, later in entries[at:]:
                after = merge_patch.apply(after, later)
            ok, change = merge_patch.make(self.value, after)
            if not ok:
                change = None
        size = len(_encode(after))
        if size > self.max_bytes:
            raise StateTooLarge(
                f"the document would be {size} bytes as JSON, over the limit of {self.max_bytes}"
            )
        entries.insert(at, (stamp, patch))
        self.value = after
        self.version += 1
        self.clock = max(self.clock, lamport)
        while len(entries) > self.window:
            first_stamp, first = entries.pop(0)
            self._base = merge_patch.apply(self._base, first)
            self._base_stamp = first_stamp
        return Applied(self.version, change, stamp)

    # -- snapshots -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to go on from here: the document, version, clock and window."""
        return {
            "value": self.value,
            "version": self.version,
            "clock": self.clock,
            "base": self._base,
            "base_stamp": list(self._base_stamp) if self._base_stamp is not None else None,
            "entries": [[list(stamp), patch] for stamp, patch in self._entries],
        }

    @classmethod
    def restore(
        cls, snapshot: Mapping[str, Any], *, window: int = 64, max_bytes: int = 1 << 20
    ) -> StateDoc:
        """The document `snapshot()` described; raises InvalidInput on a malformed one."""
        doc = cls(window=window, max_bytes=max_bytes)
        try:
            doc.value = snapshot["value"]
            doc.version = int(snapshot["version"])
            doc.clock = int(snapshot["clock"])
            doc._base = snapshot["base"]
            base_stamp = snapshot["base_stamp"]
            doc._base_stamp = _stamp(base_stamp) if base_stamp is not None else None
            doc._entries = [(_stamp(stamp), patch) for stamp, patch in snapshot["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a state document snapshot: {exc}") from exc
        while len(doc._entries) > window:  # restored with a smaller window
            first_stamp, first = doc._entries.pop(0)
            doc._base = merge_patch.apply(doc._base, first)
            doc._base_stamp = first_stamp
        return doc


def _stamp(value: Any) -> Stamp:
    lamport, origin, version = value
    return int(lamport), str(origin), int(version)


def fold(
    patches: Iterable[Mapping[str, Any]], doc: StateDoc | None = None
) -> tuple[StateDoc, list[Applied | BusError]]:
    """Replay `patches` ({patch, if_version?, lamport?, origin?}) in order onto `doc`.

    Returns the document and each patch's outcome (refusals are skipped, as
    live): the log's patch events folded this way give the live document.
    """
    doc = doc if doc is not None else StateDoc()
    outcomes: list[Applied | BusError] = []
    for entry in patches:
        try:
            outcomes.append(
                doc.apply(
                    entry.get("patch"),
                    if_version=entry.get("if_version"),
                    lamport=entry.get("lamport"),
                    origin=str(entry.get("origin", "")),
                )
            )
        except BusError as exc:
            outcomes.append(exc)
    return doc, outcomes
