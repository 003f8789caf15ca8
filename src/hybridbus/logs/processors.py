"""`Processors`: a watched directory of log processors, reloaded without a restart.

Owns: loading each `*.py` file of one directory (not recursive; names starting
with `_` or `.` are skipped) by path as its own module, checking that it
defines a callable `process(record) -> LogRecord | None`, running the chain
in file-name order (`apply`), refusing a broken file with its error while
the previous version of that processor stays in use, and watching the
directory (watchfiles, in a daemon thread) so an added, changed or removed
file takes effect at once. Must not ship, format or filter records itself.

A processor's failure on one record never loses the record and never reaches
the application: the record goes on unchanged to the next processor (each
processor gets a shallow copy, with its own `fields` dict), the
failure is counted (`status()["failures"]`) and logged at most once per
processor per minute. The chain is an immutable tuple swapped in one
assignment, so `apply` (any thread) never sees a half-reloaded chain and
takes no lock.

Modules are loaded with `importlib.util.spec_from_file_location` under a
unique name (`hybridbus_processor_<stem>_<n>`): a module is in
`sys.modules` only while its code runs (so `dataclasses` and `typing` can
find it), never after, and a reload never sees the old version's globals.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from hybridbus.core.logs import LogRecord
from hybridbus.errors import InvalidInput

__all__ = ["Processor", "Processors"]

log = logging.getLogger(__name__)

# What a file defines: `process(record) -> LogRecord | None`; anything else it returns is a
# failure on that record (checked, not trusted).
ProcessFunction = Callable[[LogRecord], object]
# A processor failing on many records is logged once per this many seconds.
REPORT_EVERY: Final = 60.0
# Without any file event the directory is still rescanned this often: an event missed
# (a file written while the watcher started) is taken within this time.
RESCAN_MS: Final = 2000
_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Processor:
    """One loaded processor: its file name and its `process` function."""

    name: str  # the file name, e.g. "10_redact.py"
    process: ProcessFunction
    digest: str  # SHA-256 of the source it was loaded from


class _Failures:
    """A processor's failures on records: counted, reported at most once per minute."""

    __slots__ = ("count", "reported_at", "unreported")

    def __init__(self) -> None:
        self.count = 0
        self.unreported = 0
        self.reported_at = float("-inf")


def _load(path: Path, source: bytes) -> ProcessFunction:
    """The `process` function of the module in `source`; `InvalidInput` naming what is wrong."""
    name = f"hybridbus_processor_{path.stem.replace('-', '_')}_{next(_names)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path.name}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise InvalidInput(
            f"{path.name}: line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
        ) from None
    sys.modules[name] = module  # only while it runs: dataclasses look their module up
    try:
        exec(code, module.__dict__)
    except BaseException as exc:  # a processor's top level may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1].lineno
        raise InvalidInput(f"{path.name}: line {where}: {type(exc).__name__}: {exc}") from None
    finally:
        sys.modules.pop(name, None)
    process = getattr(module, "process", None)
    if process is None:
        raise InvalidInput(f"{path.name}: defines no process(record) function")
    if not callable(process):
        raise InvalidInput(f"{path.name}: process is not callable")
    function: ProcessFunction = process
    return function


class Processors:
    """The processors of `directory`, applied in file-name order; watched once `start()`ed.

    `reload()` rescans the directory now (the watcher calls it on each change).
    `errors` maps the file name of each refused file to its error; `status()`
    says what is loaded, refused and failing.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InvalidInput(f"processor directory {self.directory} is not a directory")
        self._chain: tuple[Processor, ...] = ()
        self._errors: dict[str, str] = {}
        self._tried: dict[str, str] = {}  # file name -> digest of the last source tried
        self._failures: dict[str, _Failures] = {}
        self._failures_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0  # rescans that changed the chain or the errors
        self.reload()

    # -- the chain ---------------------------------------------------------------------

    @property
    def chain(self) -> tuple[Processor, ...]:
        """The processors in use, in order."""
        return self._chain

    @property
    def names(self) -> list[str]:
        """The file names of the processors in use, in order."""
        return [p.name for p in self._chain]

    @property
    def errors(self) -> Mapping[str, str]:
        """Each refused file's error (its previous version, if any, stays in use)."""
        return dict(self._errors)

    def apply(self, record: LogRecord) -> LogRecord | None:
        """`record` through the chain; None if a processor dropped it."""
        for processor in self._chain:  # one read of the attribute: one consistent chain
            # A copy (with its own `fields`): a processor that changes the record and then
            # raises leaves the record as it was.
            candidate = msgspec.structs.replace(record, fields=dict(record.fields))
            try:
                result = processor.process(candidate)
            except Exception as exc:  # noqa: BLE001 - a processor's bug stays in the chain
                self._failed(processor.name, f"{type(exc).__name__}: {exc}")
                continue
            if result is None:
                return None
            if not isinstance(result, LogRecord):
                self._failed(
                    processor.name, f"returned {type(result).__name__}, not a LogRecord or None"
                )
                continue
            record = result
        return record

    def _failed(self, name: str, error: str) -> None:
        now = time.monotonic()
        with self._failures_lock:
            failures = self._failures.setdefault(name, _Failures())
            failures.count += 1
            failures.unreported += 1
            if now - failures.reported_at < REPORT_EVERY:
                return
            count, failures.unreported, failures.reported_at = failures.unreported, 0, now
        log.warning(
            "log processor %s failed on %d record(s), passed on unchanged: %s",
            name, count, error,
            extra={"processor": name, "failures": count},
        )

    def status(self) -> dict[str, Any]:
        """What is loaded, what was refused (with the error), how often each failed."""
        with self._failures_lock:
            failures = {name: f.count for name, f in self._failures.items()}
        return {
            "directory": str(self.directory),
            "loaded": self.names,
            "errors": self.errors,
            "failures": failures,
        }

    # -- loading -----------------------------------------------------------------------

    def _files(self) -> dict[str, Path]:
        try:
            paths = sorted(self.directory.glob("*.py"))
        except OSError:
            return {}
        return {p.name: p for p in paths if not p.name.startswith(("_", ".")) and p.is_file()}

    def reload(self) -> bool:
        """Rescan the directory; True if the chain or the errors changed."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> bool:
        current = {p.name: p for p in self._chain}
        errors = dict(self._errors)
        chain: list[Processor] = []
        files = self._files()
        for name, path in files.items():
            try:
                source = path.read_bytes()
            except OSError as exc:  # removed between the listing and now: gone
                if name in current:
                    log.info("log processor %s removed (%s)", name, exc.strerror)
                errors.pop(name, None)
                self._tried.pop(name, None)
                continue
            digest = hashlib.sha256(source).hexdigest()
            if self._tried.get(name) == digest:  # nothing new since the last try
                if name in current:
                    chain.append(current[name])
                continue
            self._tried[name] = digest
            try:
                process = _load(path, source)
            except InvalidInput as exc:
                errors[name] = str(exc)
                kept = "; the previous version stays in use" if name in current else ""
                log.error(  # noqa: TRY400 - the error says it all; no traceback of ours
                    "log processor refused: %s%s", exc, kept, extra={"processor": name}
                )
                if name in current:
                    chain.append(current[name])
                continue
            errors.pop(name, None)
            log.info(
                "log processor %s %s", name, "reloaded" if name in current else "loaded",
                extra={"processor": name},
            )
            chain.append(Processor(name, process, digest))
        for name in current.keys() - files.keys():
            log.info("log processor %s removed", name, extra={"processor": name})
        for name in set(errors) - files.keys():
            del errors[name]
        for name in set(self._tried) - files.keys():
            del self._tried[name]
        new_chain = tuple(chain)
        changed = new_chain != self._chain or errors != self._errors
        self._errors = errors
        self._chain = new_chain  # the one swap `apply` sees
        if changed:
            self.reloads += 1
        return changed

    # -- watching ----------------------------------------------------------------------

    def start(self) -> None:
        """Watch the directory in a daemon thread (idempotent); `close()` stops it."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, name=f"log-processors:{self.directory}", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching (the chain stays usable)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> Processors:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _watch(self) -> None:
        import watchfiles

        def python_file(change: watchfiles.Change, path: str) -> bool:
            return path.endswith(".py")

        while not self._stop.is_set():
            try:
                changes = watchfiles.watch(
                    self.directory,
                    watch_filter=python_file,
                    debounce=200,
                    step=20,
                    stop_event=self._stop,
                    rust_timeout=RESCAN_MS,
                    yield_on_timeout=True,
                    recursive=False,
                    raise_interrupt=False,
                )
                self.reload()  # whatever changed before the watcher started
                for _ in changes:
                    self.reload()
            except Exception:  # the directory went away, inotify ran out: retry, never die
                log.exception("watching the log processors in %s failed", self.directory)
                self._stop.wait(1.0)
                with contextlib.suppress(Exception):
                    self.reload()
