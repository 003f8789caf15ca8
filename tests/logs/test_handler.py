"""The logging `Handler`, the `Shipper` under a server that is down, and the structlog processor."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.logs.support import TENANT, close, flush, free_port, history
from tests.servers import running_server

from hybridbus.core.logs import LogRecord, record_from_data
from hybridbus.logs import Handler, Shipper, transport
from hybridbus.logs.handler import from_logging

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"tests.logs.app{time.monotonic_ns()}")
    log.setLevel(1)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


async def test_handler_ships_python_log_records(logger: logging.Logger) -> None:
    async with running_server() as server:
        handler = Handler(f"ws://127.0.0.1:{server.port}", service="api", instance="web-1")
        logger.addHandler(handler)
        logger.debug("starting %s", "up")
        logger.warning("slow query", extra={"ms": 120, "table": "orders", "obj": object()})
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception("it failed")
        logger.info("traced", extra={"otelTraceID": TRACE, "otelSpanID": SPAN})
        logger.log(5, "a trace-level record")
        await asyncio.to_thread(handler.close)
        events = await history(server, f"{TENANT}/logs/api/web-1")
    got = [record_from_data(e["data"]) for e in events]
    assert [(r.level, r.message) for r in got[:4]] == [
        ("debug", "starting up"),
        ("warn", "slow query"),
        ("error", "it failed"),
        ("info", "traced"),
    ]
    assert {r.logger for r in got} == {logger.name}
    assert got[1].fields["ms"] == 120 and got[1].fields["table"] == "orders"
    assert got[1].fields["obj"].startswith("<object object")  # not JSON: its repr
    assert "ZeroDivisionError: division by zero" in got[2].fields["exception"]
    assert (got[3].trace_id, got[3].span_id) == (TRACE, SPAN)
    assert events[3]["traceparent"] == f"00-{TRACE}-{SPAN}-00"
    assert got[4].level == "trace"
    assert all(r.time.endswith("Z") for r in got)


def test_from_logging_takes_extra_trace_ids_and_ignores_otel_zero() -> None:
    record = logging.LogRecord("n", logging.ERROR, "p", 1, "m", None, None)
    record.trace_id, record.span_id = TRACE, SPAN
    assert (from_logging(record).trace_id, from_logging(record).span_id) == (TRACE, SPAN)
    other = logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)
    other.otelTraceID, other.otelSpanID = "0", "0"
    converted = from_logging(other)
    assert (converted.trace_id, converted.span_id, converted.fields) == ("", "", {})
    assert converted.level == "info"
    bad = logging.LogRecord("n", 0, "p", 1, "bad %d format", ("not a number",), None)
    converted = from_logging(bad)  # never raises into the app
    assert converted.message == "bad %d format ('not a number',)"
    assert converted.level == "trace"


async def test_records_the_shipper_thread_logs_are_not_fed_back(logger: logging.Logger) -> None:
    def noisy(record: LogRecord) -> LogRecord:
        logger.info("from inside the shipper")  # the sender thread logs
        return record

    async with running_server() as server:
        handler = Handler(
            f"ws://127.0.0.1:{server.port}", service="api", instance="w-2", processors=noisy
        )
        logger.addHandler(handler)
        logger.info("one")
        logger.info("two")
        await asyncio.to_thread(handler.close)
        events = await history(server, f"{TENANT}/logs/api/w-2")
    assert [e["data"]["message"] for e in events] == ["one", "two"]


async def test_the_app_is_never_blocked_while_the_server_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    shipper = Shipper(
        transport(f"ws://127.0.0.1:{port}"), service="api", instance="down", max_queue=5000
    )
    slowest = 0.0
    started = time.perf_counter()
    for n in range(100_000):
        before = time.perf_counter()
        shipper.submit(LogRecord(message=f"record {n}"))
        slowest = max(slowest, time.perf_counter() - before)
    took = time.perf_counter() - started
    # Generous bounds for a loaded machine: a blocked call would wait for a
    # connection (seconds), not microseconds.
    assert took < 20.0
    assert slowest < 1.0
    assert shipper.dropped >= 100_000 - 5000 - shipper.batch
    assert shipper.shipped == 0
    async with running_server(port=port, engine=f"sqlite://{tmp_path / 'data'}") as server:
        assert await flush(shipper, 60.0)
        events = await history(server, f"{TENANT}/logs/api/down")
    await close(shipper)
    warnings = [e["data"] for e in events if e["data"].get("logger") == "hybridbus.logs"]
    assert sum(w["fields"]["dropped"] for w in warnings) == shipper.dropped
    assert all(w["level"] == "warn" for w in warnings)
    numbers = [int(e["data"]["message"].split()[1]) for e in events if e["data"] not in warnings]
    assert numbers == sorted(numbers)  # in order, the newest kept
    assert numbers[-1] == 99_999
    assert len(numbers) + shipper.dropped == 100_000


async def test_records_sent_while_the_server_restarts_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    engine = f"sqlite://{tmp_path / 'data'}"
    port = free_port()
    async with running_server(port=port, engine=engine):
        shipper = Shipper(
            transport(f"ws://127.0.0.1:{port}"), service="api", instance="r", batch=20
        )
        for n in range(100):
            shipper.submit(LogRecord(message=f"m {n}"))
        assert await flush(shipper)
    for n in range(100, 200):  # the server is down
        shipper.submit(LogRecord(message=f"m {n}"))
    await asyncio.sleep(0.3)
    async with running_server(port=port, engine=engine) as server:
        for n in range(200, 300):
            shipper.submit(LogRecord(message=f"m {n}"))
        assert await flush(shipper, 60.0)
        await close(shipper)
        events = await history(server, f"{TENANT}/logs/api/r")
    assert [e["data"]["message"] for e in events] == [f"m {n}" for n in range(300)]


async def test_close_ships_what_is_queued_and_later_records_are_dropped() -> None:
    async with running_server() as server:
        shipper = Shipper(transport(f"ws://127.0.0.1:{server.port}"), service="api", instance="c")
        for n in range(50):
            shipper.submit(LogRecord(message=str(n)))
        assert await close(shipper)
        shipper.submit(LogRecord(message="late"))
        assert shipper.dropped == 1
        assert await close(shipper)  # again: nothing to do
        events = await history(server, f"{TENANT}/logs/api/c")
    assert [e["data"]["message"] for e in events] == [str(n) for n in range(50)]


async def test_close_gives_up_after_its_timeout_when_the_server_is_away() -> None:
    shipper = Shipper(
        transport(f"ws://127.0.0.1:{free_port()}"), service="api", instance="g", send_timeout=1.0
    )
    shipper.submit(LogRecord(message="never delivered"))
    started = time.monotonic()
    assert not await close(shipper, 1.0)
    assert time.monotonic() - started < 10.0
    assert not shipper._thread.is_alive()


def test_a_processor_that_raises_passes_the_record_and_one_returning_none_drops_it(
    tmp_path: Path,
) -> None:
    def processors(record: LogRecord) -> LogRecord | None:
        if record.message == "secret":
            return None
        if record.message == "boom":
            raise RuntimeError("processor bug")
        record.fields["seen"] = True
        return record

    path = tmp_path / "out.log"
    shipper = Shipper(
        transport(f"file://{path}"), service="api", instance="p", processors=processors
    )
    for message in ["a", "secret", "boom", "b"]:
        shipper.submit(LogRecord(message=message))
    assert shipper.close(10.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["message"] for line in lines] == ["a", "boom", "b"]
    assert [line.get("fields") for line in lines] == [{"seen": True}, None, {"seen": True}]
    assert (shipper.filtered, shipper.processor_errors) == (1, 1)


# -- structlog --------------------------------------------------------------------------------

structlog = pytest.importorskip("structlog")


def test_structlog_processor_ships_and_lets_the_renderer_print(tmp_path: Path) -> None:
    from hybridbus.logs.structlog_processor import ShipToBus

    path = tmp_path / "out.log"
    shipper = Shipper(transport(f"file://{path}"), service="api", instance="s")
    printed = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(printed),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            ShipToBus(shipper),
            structlog.processors.JSONRenderer(),
        ],
    )
    log = log.bind(request="r-1")
    log.warning("disk low", free=12, trace_id=TRACE, span_id=SPAN)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    assert shipper.close(10.0)
    shipped = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(s["level"], s["message"]) for s in shipped] == [
        ("warn", "disk low"),
        ("error", "failed"),
    ]
    assert shipped[0]["fields"] == {"request": "r-1", "free": 12}
    assert (shipped[0]["trace_id"], shipped[0]["span_id"]) == (TRACE, SPAN)
    assert shipped[0]["time"].endswith("Z")
    assert "ValueError: bad" in shipped[1]["fields"]["exception"]
    assert [json.loads(line)["event"] for line in printed.getvalue().splitlines()] == [
        "disk low",
        "failed",
    ]


def test_structlog_processor_with_drop_ships_only(tmp_path: Path) -> None:
    from hybridbus.logs.structlog_processor import ShipToBus

    path = tmp_path / "out.log"
    shipper = Shipper(transport(f"file://{path}"), service="api", instance="d")
    printed = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(printed), processors=[ShipToBus(shipper, drop=True)]
    )
    log.info("only shipped", k="v")
    assert shipper.close(10.0)
    assert printed.getvalue() == ""
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["message"] == "only shipped"
    assert json.loads(line)["fields"] == {"k": "v"}


EXITING = """
import logging, sys
from hybridbus.logs import Handler
logging.getLogger().addHandler(Handler(sys.argv[1], service="exit", instance="p"))
logging.getLogger().setLevel(logging.INFO)
for n in range(3):
    logging.info("line %d", n)
"""


@pytest.mark.parametrize("way", ["ws", "file"])
async def test_a_process_that_exits_without_closing_ships_everything(
    tmp_path: Path, way: str
) -> None:
    """`logging.shutdown()` at exit flushes the handler (no thread pool is needed then)."""
    path = tmp_path / "out.log"
    async with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}" if way == "ws" else f"file://{path}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", EXITING, url, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        if way == "ws":
            messages = [e["data"]["message"] for e in await history(server, "acme/logs/exit/p")]
        else:
            messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert messages == ["line 0", "line 1", "line 2"]
