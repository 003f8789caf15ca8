"""Every fenced code block of README.md and docs/*.md runs as written against `make serve`.

One real server is started as `make serve` starts it (`hybridbus serve --config
examples/dev.toml`), on a free port, in a temporary data directory. The blocks
run in document order (README.md, then docs/*.md by name) from a temporary
working directory that has the repository's `examples/` in it, with the
virtualenv's `hybridbus` first on PATH, `HYBRIDBUS_URL` pointed at the server,
no other `HYBRIDBUS_*` variable, and `127.0.0.1:8080` in the block rewritten to
the server's address. The addresses the scale-out pages name are real too: a
redis-server and an etcd (`tests/services`) stand at `127.0.0.1:6379` and
`127.0.0.1:2379`, and `127.0.0.1:8081` / `:8082` (`--port 8081`) are free
ports, all rewritten in the block like the server's. By language:

- `sh`, `bash`, `shell`, `console`: run by bash with `set -eo pipefail`, so a
  failing command fails its block (a line that is meant to fail says so:
  `... || echo refused`). curl fails on an HTTP error status (the test's
  `.curlrc` holds `fail-with-body`). Each block runs in its own process group,
  killed when the block ends: `&` jobs end with their block. `console` blocks
  with `$ ` prompts run only the prompted lines.
- `python`: run by the virtualenv's python; top-level `await` runs as the body
  of an async main (as `python -m asyncio` does).
- `toml`: server settings: `load_config` loads them, and the roles and API
  keys are built as `hybridbus serve` builds them.
- `json`: one JSON document, or one per line (what several requests printed).
- `text` (a transcript, a grammar, a directory tree, an output sample): not run.

Every other block needs a marker on the line before its fence (blank lines aside):

- `<!-- not run: <why> -->`: the block is skipped (pytest shows why);
- `<!-- runs until stopped -->`: a shell block whose last command streams
  (`curl -N`, `hybridbus subscribe`) is stopped a few seconds after that
  command started; it passes if nothing failed and it is still running then.

A failure names the block as `file:line` (of its opening fence); tracebacks and
bash's failing line use the Markdown file's line numbers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridbus.server.access import ApiKeys, policy_of
from hybridbus.server.config import ENV_PREFIX, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
VENV_BIN = Path(sys.executable).parent
DEV_CONFIG = ROOT / "examples" / "dev.toml"
DOCUMENTED_ADDRESS = "127.0.0.1:8080"

SHELL = frozenset({"sh", "bash", "shell", "console"})
PYTHON = frozenset({"python", "py"})
NOT_RUN = frozenset({"text"})
BLOCK_TIMEOUT = 60.0  # seconds a block may take (a CLI command starts in ~0.5 s)
STREAM_SECONDS = 3.0  # how long a block that runs until stopped is left running

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)")
_MARKER = re.compile(r"^<!--\s*(?P<kind>not run|runs until stopped)\s*(?::\s*(?P<why>.*?))?\s*-->$")
_RUNNER = """\
import ast, asyncio, sys
path, name = sys.argv[1], sys.argv[2]
with open(path) as file:
    code = compile(file.read(), name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
main = eval(code, {"__name__": "__main__"})  # a coroutine when the block awaits at top level
if main is not None:
    asyncio.run(main)
"""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its code and its marker."""

    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # "not run" or "runs until stopped"
    why: str | None

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks_of(document: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown document, in order."""
    lines = document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, start = opening["fence"], index + 1
        previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        marked = _MARKER.match(previous)
        body: list[str] = []
        index += 1
        while index < len(lines) and not (
            lines[index].strip().startswith(fence[0] * len(fence))
            and not lines[index].strip().strip(fence[0])
        ):
            body.append(lines[index])
            index += 1
        yield Block(
            document=document,
            line=start,
            lang=opening["lang"].lower(),
            code="\n".join(body) + "\n",
            marker=marked["kind"] if marked else None,
            why=marked["why"] if marked else None,
        )
        index += 1


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.lang not in NOT_RUN]


# -- the server, as `make serve` runs it ---------------------------------------------------


@dataclass(frozen=True)
class Served:
    port: int
    workdir: Path
    env: dict[str, str]
    # Other documented ports -> where they are here (Redis, etcd, more servers' ports).
    ports: dict[int, int]

    def rewrite(self, code: str) -> str:
        code = code.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{self.port}")
        for documented, actual in self.ports.items():
            code = code.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{actual}")
            code = code.replace(f"--port {documented}", f"--port {actual}")
        return code


@pytest.fixture(scope="module")
def documented_services() -> Iterator[dict[int, int]]:
    """A Redis for `127.0.0.1:6379`, an etcd for `:2379`, free ports for `:8081` and `:8082`."""
    from tests.services import EtcdServer, RedisServer
    from tests.services.base import free_port, which

    if not (which("redis-server") and which("etcd")):
        yield {}  # the blocks naming them skip (fail under HYBRIDBUS_REQUIRE_SERVICES=1)
        return
    redis, etcd = RedisServer(), EtcdServer()
    redis.start()
    try:
        etcd.start()
        try:
            yield {6379: redis.port, 2379: etcd.port, 8081: free_port(), 8082: free_port()}
        finally:
            etcd.stop()
    finally:
        redis.stop()


def _clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}


def _listening_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "listening":
            return int(record["addresses"][0][1])
    return None


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, documented_services: dict[int, int]
) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("docs")
    data, work = base / "server", base / "work"
    data.mkdir()
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (base / ".curlrc").write_text("fail-with-body\nshow-error\n")
    log = base / "server.log"
    env = {**_clean_environment(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    with log.open("ab") as stderr:
        # `make serve` is `hybridbus serve --config examples/dev.toml` in the checkout;
        # here in a data directory of its own (the engine is ./hybridbus-data there).
        server = subprocess.Popen(
            [VENV_BIN / "hybridbus", "serve", "--config", str(DEV_CONFIG), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=data,
        )
    try:
        deadline = time.monotonic() + 30
        while (port := _listening_port(log)) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        env.update(
            {
                f"{ENV_PREFIX}URL": f"ws://127.0.0.1:{port}/v1/ws",
                "CURL_HOME": str(base),
            }
        )
        yield Served(port, work, env, documented_services)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- running a block ---------------------------------------------------------------------


def _run(
    block: Block,
    served: Served,
    argv: list[str],
    script: str,
    suffix: str,
    streaming: Callable[[], bool] | None = None,
) -> None:
    """Run `argv` + the script file in a process group of its own; fail naming the block.

    `streaming` (for blocks that run until stopped) says whether the block's
    last command has started: the block is stopped `STREAM_SECONDS` after.
    """
    path = served.workdir / f"block-{block.document.stem}-{block.line}{suffix}"
    path.write_text(script)
    out = served.workdir / f"{path.name}.out"
    streams = streaming is not None
    streaming_since: float | None = None
    with out.open("wb") as output:
        process = subprocess.Popen(
            [*argv, str(path)] if suffix != ".py" else [*argv, str(path), block.where],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=served.workdir,
            env=served.env,
            start_new_session=True,  # its own process group: `&` jobs are ended with it
        )
    started = time.monotonic()
    problem = None
    try:
        while (code := process.poll()) is None:
            now = time.monotonic()
            if streaming is not None and streaming_since is None and streaming():
                streaming_since = now
            if streaming_since is not None and now - streaming_since > STREAM_SECONDS:
                break  # still streaming, as it should
            if now - started > BLOCK_TIMEOUT:
                problem = f"still running after {BLOCK_TIMEOUT:.0f} s" + (
                    " before its last command" if streams else ""
                )
                break
            time.sleep(0.05)
        else:
            if code != 0:
                problem = f"exited with {code}"
            elif streams:
                problem = "ended by itself, but is marked <!-- runs until stopped -->"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    if problem is not None:
        text = out.read_text(errors="replace")
        pytest.fail(f"{block.where}: the {block.lang} block {problem}:\n{text}", pytrace=False)


def run_shell(block: Block, served: Served) -> None:
    code = served.rewrite(block.code)
    if block.lang == "console" and any(line.startswith("$ ") for line in code.splitlines()):
        code = "".join(
            line[2:] + "\n" if line.startswith("$ ") else "\n" for line in code.splitlines()
        )
    # Line numbers are the document's; the DEBUG trap notes the line being run.
    progress = served.workdir / f"block-{block.document.stem}-{block.line}.line"
    progress.write_text("0")
    prelude = (
        "set -eo pipefail; "
        f"trap 'echo \"{block.document.name}:$LINENO: failed: $BASH_COMMAND\" >&2' ERR; "
        f"trap 'echo $LINENO > {progress}' DEBUG"
    )
    last = _last_command_line(block)

    def streaming() -> bool:
        return int(progress.read_text().strip() or 0) >= last

    script = prelude + "\n" * block.line + code
    streams = block.marker == "runs until stopped"
    _run(block, served, ["bash"], script, ".sh", streaming if streams else None)


def _last_command_line(block: Block) -> int:
    """The document line where the block's last command starts."""
    lines = block.code.splitlines()
    commands = [i for i, line in enumerate(lines) if line.strip() and line.lstrip()[0] != "#"]
    index = commands[-1]
    while index > 0 and lines[index - 1].rstrip().endswith("\\"):
        index -= 1
    return block.line + 1 + index


def run_python(block: Block, served: Served) -> None:
    code = "\n" * block.line + served.rewrite(block.code)
    _run(block, served, [str(VENV_BIN / "python"), "-c", _RUNNER], code, ".py")


def check_toml(block: Block, served: Served) -> None:
    path = served.workdir / f"block-{block.document.stem}-{block.line}.toml"
    path.write_text(block.code)
    problem = None
    try:
        tomllib.loads(block.code)
        config = load_config(path)
        policy_of(config)
        ApiKeys(config.api_keys)
    except Exception as exc:  # the block is what failed, however
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"{block.where}: not valid server settings: {problem}", pytrace=False)


def check_json(block: Block, served: Served) -> None:
    try:
        json.loads(block.code)
    except ValueError:
        problems = []
        for number, line in enumerate(block.code.splitlines(), block.line + 1):
            try:
                if line.strip():
                    json.loads(line)
            except ValueError as exc:
                problems.append(f"line {number} is not JSON: {exc}")
        if problems:
            pytest.fail(f"{block.where}: " + "; ".join(problems), pytrace=False)


RUNNERS = {
    **dict.fromkeys(SHELL, run_shell),
    **dict.fromkeys(PYTHON, run_python),
    "toml": check_toml,
    "json": check_json,
}


# -- the tests ----------------------------------------------------------------------------


def test_every_block_is_run_or_marked_as_not_run() -> None:
    assert len(ALL_BLOCKS) > 30 and {"sh", "python", "json", "toml"} <= {
        block.lang for block in ALL_BLOCKS
    }
    unrunnable = [
        f"{block.where} (```{block.lang})"
        for block in RUN_BLOCKS
        if block.lang not in RUNNERS and block.marker != "not run"
    ]
    assert not unrunnable, (
        "blocks that cannot be run: fence them as ```text, or put "
        "<!-- not run: why --> on the line before: " + ", ".join(unrunnable)
    )
    bad_markers = [
        block.where
        for block in ALL_BLOCKS
        if (block.marker == "not run" and not block.why)
        or (block.marker == "runs until stopped" and block.lang not in SHELL)
    ]
    assert not bad_markers, "a marker without its reason, or on a block that is not a shell's"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[block.where for block in RUN_BLOCKS])
def test_the_block_runs_as_written(block: Block, served: Served) -> None:
    if block.marker == "not run":
        pytest.skip(f"{block.where}: not run: {block.why}")
    if any(f"127.0.0.1:{port}" in block.code for port in (6379, 2379)) and not served.ports:
        from tests.services.base import require

        require("redis-server", "etcd")
    runner = RUNNERS.get(block.lang)
    if runner is None:
        pytest.fail(f"{block.where}: ```{block.lang} blocks cannot be run: mark it", pytrace=False)
    runner(block, served)
