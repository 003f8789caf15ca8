"""Every log line the server writes, kept for a test to search (imported as `tests.logscan`).

`server_logs()` installs the server's own logging for a block —
`configure_logging("debug", "json")`, the very handler, formatter and filters
`hybridbus serve` uses — with its stream swapped for memory, and gives back a
`Logs` to search. The handlers that were there before (pytest's capture) keep
receiving every record too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from hybridbus.server.logs import configure_logging

# What a credential looks like when no one told us its value: a JWT or an API key of this
# server, at least 20 characters of it.
_SHAPES: Final = re.compile(r"eyJ[A-Za-z0-9_-]{17}|\bhb_[A-Za-z0-9_-]{17}")


@dataclass
class Logs:
    """The log lines written so far, exactly as the server would write them."""

    stream: io.StringIO = field(default_factory=io.StringIO)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def leaks(self, secrets: Iterable[str] = ()) -> list[str]:
        """The lines holding one of `secrets` (or its first 20 characters), a JWT or an API key."""
        needles = {secret[:20] for secret in secrets if secret}
        return [
            line
            for line in self.lines
            if _SHAPES.search(line) or any(needle in line for needle in needles)
        ]


@contextlib.contextmanager
def server_logs() -> Iterator[Logs]:
    """The server's logging, every level, written to a `Logs` for the block."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs = Logs()
    configure_logging("debug", "json")
    (installed,) = root.handlers
    assert isinstance(installed, logging.StreamHandler)
    installed.setStream(logs.stream)
    root.handlers.extend(handlers)
    try:
        yield logs
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
