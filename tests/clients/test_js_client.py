"""The JavaScript client (clients/js) in Node, against a real server: `node --test`.

The server runs in this process (tests/clients/harness.py: sqlite, JWT tokens, a
TCP proxy the JavaScript tests cut, a control endpoint that mints tokens and
restarts the server); `node --test` runs clients/js/test/*.test.mjs with their
addresses in the environment. Every JavaScript test shows in the failure message
with its diagnostics. A second test type-checks, with TypeScript, index.d.ts
against a typed usage file and the sources' JSDoc types (`checkJs`); TypeScript
is in clients/js/node_modules (`npm ci --prefix clients/js`, which
scripts/install-services.sh runs).

Without node the tests skip, unless HYBRIDBUS_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.clients.harness import CLIENT, js_harness, parse_tap, require_node, run_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODE_TIMEOUT = 240.0  # every JavaScript test, one after the other, on a loaded 2-core machine


def report(tests: list[object], out: str, err: str) -> str:
    return "\n".join([*map(str, tests), "--- stdout", out[-6000:], "--- stderr", err[-3000:]])


async def test_the_javascript_client_passes_its_node_tests(tmp_path: Path) -> None:
    require_node()
    async with js_harness(tmp_path / "data") as harness:
        code, out, err = await run_node(
            "--experimental-websocket",
            "--test",
            "--test-reporter=tap",
            "--test-concurrency=1",
            *sorted(str(p.relative_to(CLIENT)) for p in (CLIENT / "test").glob("*.test.mjs")),
            env=harness.env(),
            timeout=NODE_TIMEOUT,
        )
    tests = parse_tap(out)
    failed = [f"FAILED {t.name}\n{t.details}" for t in tests if not t.ok]
    skipped = [t.name for t in tests if t.skipped]
    assert code == 0 and not failed, report(failed or tests, out, err)
    assert len(tests) >= 20, report(tests, out, err)  # every file ran
    assert not skipped or os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") != "1", skipped


async def test_the_types_check_the_declarations_and_the_sources() -> None:
    require_node()
    tsc = CLIENT / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        reason = "clients/js/node_modules is missing: npm ci --prefix clients/js"
        if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (HYBRIDBUS_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    # The declarations against a typed usage file, then the sources' JSDoc types (checkJs).
    for project in ("test/tsconfig.json", "test/tsconfig.src.json"):
        code, out, err = await run_node(str(tsc), "-p", project, env={}, timeout=120.0)
        assert code == 0, f"tsc -p {project}\n{out}{err}"
