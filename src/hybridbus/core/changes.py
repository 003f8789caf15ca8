"""Code-change broadcast, the pure part: a change, its chunks, formats, clocks and targets.

Owns: `Change` (what one file change carries: kind, path, format, encoding
of its payload, content hashes before / after, Lamport clock, target),
`split` / `Assembler` (a change as events of at most `CHUNK_BYTES` of data,
and back), `encode_change` (choosing a line diff, an RFC 7396 merge patch or
the full content for a file's old and new bytes) and `decode_change` (the
inverse, given the old bytes), `Lamport`, `Target` (service + version range,
PEP 440 specifiers) and `status` (applied / failed / missing from acks).
Must not do I/O: the watcher and follower (`hybridbus.changes`) do.
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from hybridbus.core import merge_patch
from hybridbus.core.textdiff import Hunk, tree_hash

__all__ = [
    "CHUNK_BYTES",
    "EVENT_TYPE",
    "MAX_BINARY",
    "Ack",
    "Assembler",
    "Change",
    "Lamport",
    "Target",
    "decode_change",
    "encode_change",
    "format_of",
    "split",
    "status",
]

CHUNK_BYTES = 16 * 1024  # the largest `data` of one chunk event (base64 text)
_RAW_PER_CHUNK = CHUNK_BYTES // 4 * 3  # raw bytes that encode to CHUNK_BYTES of base64
MAX_BINARY = 1024 * 1024  # a binary file larger than this is announced without content
EVENT_TYPE = "dev.hybridbus.change"
ACK_TYPE = "dev.hybridbus.change.ack"

Kind = Literal["created", "modified", "deleted", "moved", "snapshot"]
Format = Literal["text", "json", "yaml", "toml", "binary"]
Encoding = Literal["diff", "merge-patch", "full", "none", "too-large"]


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Which instances a change is for: a service, and PEP 440 version specifiers."""

    service: str
    versions: str = ""  # e.g. ">=1.2,<2"; empty: any version

    def matches(self, service: str, version: str) -> bool:
        if service != self.service:
            return False
        if not self.versions:
            return True
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion

        try:
            return SpecifierSet(self.versions).contains(version, prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            return False


class Change(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One change of one file, as the first chunk's `change` carries it."""

    id: str
    kind: Kind
    path: str  # relative, `/`-separated
    clock: int  # Lamport
    format: Format = "text"
    encoding: Encoding = "none"
    before: str | None = None  # content hash (`tree_hash`) the payload applies to
    after: str | None = None  # content hash once applied (None: deleted)
    from_path: str | None = None  # moved: the old path
    style: str | None = None  # merge-patch: how the document is written back
    target: Target | None = None
    targets: tuple[str, ...] = ()  # the instances online and compatible when it was sent
    parts: int = 1


class Ack(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An applier's answer to a change, published on the acks topic."""

    change: str
    instance: str
    status: Literal["applied", "failed", "conflict", "skipped"]
    clock: int
    service: str | None = None
    version: str | None = None
    error: str | None = None


class Lamport:
    """A Lamport clock: `tick()` before sending, `see(t)` on receiving."""

    def __init__(self, time: int = 0) -> None:
        self.time = time

    def tick(self) -> int:
        self.time += 1
        return self.time

    def see(self, time: int) -> int:
        self.time = max(self.time, time) + 1
        return self.time


def format_of(path: str, data: bytes) -> Format:
    """The format by extension, `binary` for bytes that are not UTF-8 text (or hold NUL)."""
    if b"\0" in data[:8192]:
        return "binary"
    try:
        data.decode()
    except UnicodeDecodeError:
        return "binary"
    lower = path.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".toml"):
        return "toml"
    return "text"


# -- structured documents: parse, and write back in a style that reproduces the file ----

_STYLES: dict[str, tuple[str, ...]] = {
    "json": ("json-2", "json-4", "json-compact", "json-2-sorted"),
    "yaml": ("yaml-block",),
    "toml": ("toml",),
}


def _parse(fmt: Format, data: bytes) -> Any:
    text = data.decode()
    if fmt == "json":
        return json.loads(text)
    if fmt == "yaml":
        import yaml

        return yaml.safe_load(text)
    return tomllib.loads(text)


def _render(style: str, doc: Any) -> bytes:
    if style.startswith("json"):
        indent = {"json-2": 2, "json-4": 4, "json-compact": None, "json-2-sorted": 2}[style]
        text = json.dumps(doc, indent=indent, ensure_ascii=False, sort_keys=style.endswith("ed"))
        return (text + "\n").encode()
    if style == "yaml-block":
        import yaml

        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
    import tomli_w

    return tomli_w.dumps(doc).encode()


def _style_of(fmt: Format, data: bytes, doc: Any) -> str | None:
    """The style that writes `doc` back as exactly `data`, if any."""
    for style in _STYLES.get(fmt, ()):
        try:
            if _render(style, doc) == data:
                return style
        except (TypeError, ValueError):
            continue
    return None


def encode_change(
    fmt: Format, old: bytes | None, new: bytes, hunk: Hunk | None
) -> tuple[Encoding, str | None, bytes]:
    """`(encoding, style, payload)` for a file that was `old` (None: new) and is `new`.

    A JSON / YAML / TOML document whose old and new bytes are both exactly
    what one style writes gets an RFC 7396 merge patch (with that style);
    other text gets `hunk` (a unified diff); binaries up to `MAX_BINARY`, new
    files and documents no merge patch can express get their full content.
    """
    if fmt == "binary":
        if len(new) > MAX_BINARY:
            return "too-large", None, b""
        return "full", None, new
    if old is not None and fmt in _STYLES:
        try:
            before, after = _parse(fmt, old), _parse(fmt, new)
        except (ValueError, UnicodeDecodeError, ImportError):
            before = after = None
        else:
            style = _style_of(fmt, old, before)
            if style is not None and _render(style, after) == new:
                ok, patch = merge_patch.make(before, after)
                if ok:
                    return "merge-patch", style, json.dumps(patch, ensure_ascii=False).encode()
    if old is not None and hunk is not None:
        return "diff", None, hunk.render()
    return "full", None, new


def decode_change(change: Change, old: bytes | None, payload: bytes) -> bytes:
    """The new content, given the old one; ValueError if the payload does not fit it."""
    if change.encoding == "full":
        return payload
    if old is None:
        raise ValueError("no old content to apply the change to")
    if change.encoding == "merge-patch":
        if change.style is None:
            raise ValueError("a merge patch without a style")
        doc = merge_patch.apply(_parse(change.format, old), json.loads(payload))
        return _render(change.style, doc)
    if change.encoding == "diff":
        from hybridbus.core.textdiff import Text

        text = Text(old)
        text.apply(Hunk.parse(payload))
        return text.content()
    raise ValueError(f"no content in a change encoded {change.encoding!r}")


def content_hash(data: bytes | bytearray) -> str:
    """The content hash changes carry (`textdiff.tree_hash`)."""
    return tree_hash(data)


# -- chunks -------------------------------------------------------------------------


def split(change: Change, payload: bytes) -> list[dict[str, Any]]:
    """The events' `data` for `change`: `{"change", "part", "data"}`, data ≤ `CHUNK_BYTES`."""
    pieces = [payload[i : i + _RAW_PER_CHUNK] for i in range(0, len(payload), _RAW_PER_CHUNK)]
    pieces = pieces or [b""]
    header = msgspec.to_builtins(msgspec.structs.replace(change, parts=len(pieces)))
    return [
        {"change": header if i == 0 else {"id": change.id}, "part": i,
         "data": base64.b64encode(piece).decode()}
        for i, piece in enumerate(pieces)
    ]


class Assembler:
    """Collects chunk events of changes; `add` returns a change once all its parts are in."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Change, list[bytes]]] = {}

    def add(self, data: Mapping[str, Any]) -> tuple[Change, bytes] | None:
        """Add one chunk event's data; ValueError if it is not one."""
        try:
            head = data["change"]
            part = int(data["part"])
            piece = base64.b64decode(data["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a change chunk: {exc}") from exc
        if part == 0:
            change = msgspec.convert(head, Change)
            self._open[change.id] = (change, [])
        found = self._open.get(str(head.get("id")))
        if found is None:
            raise ValueError("a chunk of a change whose first part was not seen")
        found[1].append(piece)
        if len(found[1]) < found[0].parts:
            return None
        del self._open[found[0].id]
        return found[0], b"".join(found[1])


def status(
    change: Change, acks: Iterable[Ack]
) -> dict[str, list[dict[str, Any]]]:
    """Who applied `change`, who failed (with the error) and who is missing (never acked)."""
    last: dict[str, Ack] = {}
    for ack in acks:
        if ack.change == change.id:
            last[ack.instance] = ack
    applied = [
        msgspec.to_builtins(a) for a in last.values() if a.status in ("applied", "skipped")
    ]
    failed = [msgspec.to_builtins(a) for a in last.values() if a.status in ("failed", "conflict")]
    missing = [{"instance": i} for i in change.targets if i not in last]
    return {"applied": applied, "failed": failed, "missing": missing}
