"""JSON Merge Patch (RFC 7396): apply a patch, and make the patch between two documents.

Owns: `apply(target, patch)`, exactly the algorithm of RFC 7396 §2 (its
appendix A examples are tests/changes/test_merge_patch.py), and
`make(before, after)`, the smallest merge patch that turns `before` into
`after` — or `None` when no merge patch can: RFC 7396 cannot set a member to
`null` (null means "remove") nor edit inside an array (arrays are replaced
whole, which `make` does). Must not do I/O: documents are parsed values.
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply", "make"]


def apply(target: Any, patch: Any) -> Any:
    """`target` with `patch` merged in (RFC 7396 §2); neither argument is changed."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply(result.get(name), value)
    return result


def make(before: Any, after: Any) -> tuple[bool, Any]:
    """`(True, patch)` with `apply(before, patch) == after`, or `(False, None)` if none exists.

    An object member whose value is `null` in `after` cannot be written by a
    merge patch (null removes), so a document with one where it changed needs
    its full content instead. Arrays are replaced whole (nulls inside them are
    kept as they are).
    """
    if not isinstance(after, dict):
        return True, after
    base: dict[str, Any] = before if isinstance(before, dict) else {}
    patch: dict[str, Any] = {}
    for name in base.keys() - after.keys():
        patch[name] = None
    for name, value in after.items():
        if name in base and _same(base[name], value):
            continue
        if value is None:
            return False, None
        ok, sub = make(base.get(name), value)
        if not ok:
            return False, None
        patch[name] = sub
    return True, patch


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (`1`, `1.0` and `true` differ in JSON text)."""
    return type(a) is type(b) and a == b
