"""The cost of TLS and tracing on WebSocket fan-out (issue 16): each variant's ratio to plain.

Every server is a real subprocess (`hybridbus serve` on `memory://`, or Centrifugo), a
fresh one per variant and round (its fan-out, then its latency case), pinned to core 0 as
`net/procs.py` pins servers; the load clients are the server benchmark's (`net/load.py`'s
`subscribe` and `publish` roles in `ClientProcess`es on the other cores; over TLS with the
option `"ca"`, see `net/kinds.py`).
Rounds are interleaved (round 1 of every variant, then round 2 ...; the order rotates
each round) and every ratio is per round, variant / plain of that round: its median and
its spread (min-max) are reported.

Variants:
- `plain`: ws://, no `[tracing]` table; `off`: the same with `[tracing] enabled = false`
  written out — the same code, so off / plain is this run's A/A noise;
- `tls`: wss:// (TLS 1.3 with the client's and server's default cipher, recorded), the
  certificate and CA of `hybridbus.server.dev_tls` (ECDSA P-256);
- `unsampled`: tracing on, `sample_ratio = 0` (one non-recording span per publish);
  `sampled`: every event sampled, `protocol = "none"` (spans made and ended, exported
  nowhere); `otlp`: every event sampled and exported over OTLP/gRPC to an OpenTelemetry
  Collector on loopback (tests/services/otelcol, built by `make services`; skipped if absent;
  the spans it accepted are counted: the SDK drops what overflows its queue);
- `centrifugo`, `centrifugo-tls`: the peer a user would pick instead, plain and with its
  `http_server.tls` (same certificate); skipped unless benchmarks/peers/install.sh built it.

Cases:
- fan-out: `subscribers` WebSocket subscribers of topic `t`, one publisher open-loop (far
  faster than deliveries go); deliveries/s from its first event until every subscriber has
  every event; the server's CPU time per delivery (`procs.cpu_seconds`: all its threads, the
  span exporter's too). Sampled variants send an eighth of the events (a span per delivery).
- latency: `latency_subscribers` subscribers, events at a fixed moderate rate, each in a frame
  of its own: p50 / p99 of receive time - send time (plain, tls, unsampled, sampled, otlp).
- instructions (benchmarks/overhead_count.py): callgrind's count of in-process publishes with
  tracing off, beside the same tree without the tracing hooks (and tracing on, unsampled and
  sampled). Repeatable to ~0.05%, unlike the timings; not in a smoke run.

    python -m benchmarks.run overhead           # ~6 min -> benchmarks/results/overhead.json
    python -m benchmarks.run overhead --quick   # a smoke run (~20 s): figures are not results
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from benchmarks import overhead_count
from benchmarks.harness import Result, Settings
from benchmarks.net import stats
from benchmarks.net.procs import (
    ClientProcess,
    ServerProcess,
    centrifugo_binary,
    client_cores,
    core_busy_seconds,
    free_port,
)
from hybridbus.server.dev_tls import DevCertificates, dev_certificates

__all__ = ["VARIANTS", "Sizes", "Variant", "extra", "run"]

_extra: dict[str, Any] = {}


@dataclass(frozen=True)
class Variant:
    """One server set-up: which server, TLS or not, its `[tracing]` table."""

    name: str
    label: str
    server: str = "hybridbus"  # or "centrifugo"
    tls: bool = False
    tracing: str = ""  # the [tracing] table; {endpoint}: the collector's OTLP/gRPC URL
    sampled: bool = False  # a span per delivery: fewer events in the fan-out
    latency: bool = True  # measured in the latency case too


_TRACING: Final = '[tracing]\nenabled = true\nprotocol = "none"\nsample_ratio = {ratio}\n'
VARIANTS: Final = (
    Variant("plain", "ws://, no [tracing] table"),
    Variant("off", "ws://, [tracing] enabled = false", tracing="[tracing]\nenabled = false\n",
            latency=False),
    Variant("tls", "wss:// (TLS 1.3)", tls=True),
    Variant("unsampled", "tracing on, sample_ratio 0", tracing=_TRACING.format(ratio=0.0)),
    Variant("sampled", "tracing on, every event sampled, exported nowhere",
            tracing=_TRACING.format(ratio=1.0), sampled=True),
    Variant("otlp", "tracing on, every event sampled, OTLP/gRPC to a Collector",
            tracing='[tracing]\nenabled = true\nprotocol = "grpc"\nsample_ratio = 1.0\n'
            'otlp_endpoint = "{endpoint}"\n', sampled=True),
    Variant("centrifugo", "Centrifugo, ws://", server="centrifugo", latency=False),
    Variant("centrifugo-tls", "Centrifugo, wss:// (TLS 1.3)", server="centrifugo", tls=True,
            latency=False),
)  # fmt: skip
_BASELINE: Final = {"centrifugo-tls": "centrifugo"}  # else: plain


@dataclass(frozen=True)
class Sizes:
    """The sizes of each case; `quick()` for a smoke run."""

    subscribers: int = 1_000
    fanout_events: int = 1_000
    latency_subscribers: int = 100
    # events/s: 5,000 deliveries/s to 100 subscribers, which every variant keeps up with
    # (sampled and exported, ~50 µs of CPU per delivery: a quarter of a core)
    latency_rate: int = 50
    latency_seconds: float = 5.0
    warmup_s: float = 0.5  # latency: events sent first, not counted
    client_procs: int = max(1, min(4, (os.cpu_count() or 2) - 1))
    count_events: tuple[int, int] = (100, 1_100)  # the instruction count's N1, N2
    count_subscribers: int = 10
    count_modes: tuple[str, ...] = ("base", "off", "unsampled", "sampled")

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            subscribers=100,
            fanout_events=80,
            latency_subscribers=10,
            latency_rate=50,
            latency_seconds=0.6,
            warmup_s=0.1,
            client_procs=1,
            count_modes=(),  # ~1 min under valgrind: not in a smoke run
        )


def extra() -> dict[str, Any]:
    """What the last `run` recorded besides results: rounds, ratios, TLS, instruction counts."""
    return dict(_extra)


# -- processes ---------------------------------------------------------------------------


class _Server(ServerProcess):
    """A `ServerProcess` of `variant`: TLS settings and the [tracing] table added."""

    def __init__(self, variant: Variant, certs: DevCertificates, otlp: str) -> None:
        self._variant, self._certs, self._otlp = variant, certs, otlp
        options: dict[str, Any] = {}
        if variant.server == "hybridbus":
            options["max_in_flight"] = 100_000  # the open-loop publisher never waits
            if variant.tls:
                options.update(tls_cert=str(certs.cert), tls_key=str(certs.key))
        super().__init__(variant.server, **options)

    def _argv(self, kind: str, options: dict[str, Any]) -> list[str]:
        argv = super()._argv(kind, options)
        if kind == "centrifugo" and self._variant.tls:
            path = self.dir / "config.json"
            config = json.loads(path.read_text())
            config["http_server"]["tls"] = {
                "enabled": True,
                "cert_pem": str(self._certs.cert),
                "key_pem": str(self._certs.key),
            }
            path.write_text(json.dumps(config, indent=2))
        elif self._variant.tracing:
            with (self.dir / "hybridbus.toml").open("a") as config_file:
                config_file.write(self._variant.tracing.replace("{endpoint}", self._otlp))
        return argv


def _collector_binary() -> Path | None:
    """tests/services' collector ($HYBRIDBUS_SERVICES_DIR/bin/otelcol), if built."""
    services = os.environ.get("HYBRIDBUS_SERVICES_DIR") or Path.home() / ".cache/hybridbus/services"
    binary = Path(services) / "bin" / "otelcol"
    return binary if binary.exists() else None


class _Collector:
    """An OpenTelemetry Collector: OTLP/gRPC in, the file exporter to /dev/null (protobuf).

    Pinned with the load clients (it stands for a collector on another machine), killed by PID.
    Its own metrics (Prometheus, on `metrics_port`) count the spans it accepted.
    """

    def __init__(self, binary: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-otelcol-"))
        prometheus = {"host": "127.0.0.1", "port": self.metrics_port}
        reader = {"pull": {"exporter": {"prometheus": prometheus}}}
        metrics = {"level": "basic", "readers": [reader]}
        config = {
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{self.port}"}}}},
            "exporters": {"file": {"path": "/dev/null", "format": "proto"}},
            "service": {
                "telemetry": {"metrics": metrics, "logs": {"level": "warn"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
            },
        }
        (self.dir / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        cores = client_cores()
        self._log: IO[bytes] = (self.dir / "otelcol.log").open("wb")
        self.proc = subprocess.Popen(
            [*(["taskset", "-c", cores] if cores else []), str(binary),
             "--config", f"file:{self.dir / 'config.yaml'}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (_port_open(self.port) and _port_open(self.metrics_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "otelcol.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the collector did not start:\n{log}")
            time.sleep(0.05)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted_spans(self) -> int:
        """Spans the collector's OTLP receiver accepted so far (its own counter)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = re.findall(r"(?m)^otelcol_receiver_accepted_spans\S*\s+(\S+)$", text)
        return int(sum(float(value) for value in found))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _tls_of(port: int, ca: Path) -> dict[str, Any]:
    """What a client with the default context negotiates with the server on `port`."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        return {
            "version": tls.version(),
            "cipher": cipher[0] if cipher else None,
            "bits": cipher[2] if cipher else None,
            "openssl": ssl.OPENSSL_VERSION,
        }


# -- one measurement ---------------------------------------------------------------------


def _deliver(
    server: _Server,
    ca: str,
    subscribers: int,
    procs: int,
    publish: dict[str, Any],
    collector: _Collector | None = None,
) -> dict[str, Any]:
    """`subscribers` of topic `t` over `procs` client processes, then the open-loop publisher
    (`publish`: rate, seconds, warmup_s); every subscriber must get every event (over TLS
    trusting `ca` when given). Deliveries/s from the first event sent to the last received,
    latencies, the server's CPU; with `collector`, the spans it accepted meanwhile."""
    tls = {"ca": ca} if ca else {}
    kind = server.kind
    subs: list[ClientProcess] = []
    try:
        first = 0
        for p in range(procs):
            n = subscribers // procs + (1 if p < subscribers % procs else 0)
            subs.append(ClientProcess("subscribe", kind, server.port, subscribers=n,
                                      offset=first, grace=120.0, **tls))  # fmt: skip
            first += n
        for sub in subs:
            sub.ready(timeout=300)
        spans = collector.accepted_spans() if collector else 0
        cpu, busy, window = server.cpu_s(), core_busy_seconds(0), time.perf_counter()
        publisher = ClientProcess("publish", kind, server.port, **publish, **tls)
        subs.append(publisher)
        sent = publisher.ready(timeout=publish["seconds"] + 120)
        began = time.perf_counter() - sent["seconds"]
        for sub in subs[:-1]:
            sub.go(f"stop {sent['sent']}")
        results = [sub.result() for sub in subs[:-1]]
        elapsed = time.perf_counter() - began
        server_cpu = server.cpu_s() - cpu
        other = (core_busy_seconds(0) or 0.0) - (busy or 0.0) - server_cpu
        window = time.perf_counter() - window
        spans = collector.accepted_spans() - spans if collector else None
        publisher.go()
        publisher.result()
    finally:
        for sub in subs:
            sub.close()
    received = sum(r["received"] for r in results)
    summary = stats.summary(stats.merge(r["hist"] for r in results))
    return {
        "deliveries_per_s": received / elapsed,
        "seconds": elapsed,
        "sent": sent["sent"],
        "delivered": received,
        "lost": sum(r["lost"] for r in results),
        "p50_ms": summary.get("p50_ms"),
        "p99_ms": summary.get("p99_ms"),
        "max_ms": summary.get("max_ms"),
        "server_cpu_us_per_delivery": server_cpu / received * 1e6 if received else None,
        "server_cpu_pct": 100.0 * server_cpu / elapsed,
        # CPU time other processes took on the server's core meanwhile (in clock ticks:
        # coarse on a short run): this run's noise.
        "others_on_server_core_pct": max(0.0, 100.0 * other / window),
        "client_cpu_pct": max(r["client_cpu_pct"] for r in results),
        "publisher_max_lag_ms": sent["max_lag_ms"],
        # The spans a collector accepted by the last delivery (the SDK exports in batches and
        # drops what overflows its queue of 2,048: a sampled event makes 3 + subscribers).
        "exported_spans": spans,
    }


_FLOOD: Final = 50_000  # events/s asked of the open-loop publisher: as fast as it can


def _variant(
    variant: Variant, sizes: Sizes, certs: DevCertificates, collector: _Collector | None
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """A fresh server of `variant`: its fan-out, then its latency case (when it has one), and
    what a TLS client negotiated with it."""
    ca = str(certs.ca) if variant.tls else ""
    events = max(20, sizes.fanout_events // 8) if variant.sampled else sizes.fanout_events
    flood = {"rate": _FLOOD, "seconds": events / _FLOOD, "warmup_s": 0}
    steady = {
        "rate": sizes.latency_rate,
        "seconds": sizes.latency_seconds,
        "warmup_s": sizes.warmup_s,
    }
    exporting = collector if collector and "{endpoint}" in variant.tracing else None
    with _Server(variant, certs, exporting.endpoint if exporting else "") as server:
        negotiated = _tls_of(server.port, certs.ca) if variant.tls else None
        fanout = _deliver(server, ca, sizes.subscribers, sizes.client_procs, flood, exporting)
        latency = None
        if variant.latency:
            latency = _deliver(server, ca, sizes.latency_subscribers, 1, steady, exporting)
    return fanout, latency, negotiated


def _round(
    index: int,
    variants: Sequence[Variant],
    sizes: Sizes,
    certs: DevCertificates,
    collector: _Collector | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    shift = index % len(variants)
    order = [*variants[shift:], *variants[:shift]]  # a variant is not always first
    got: dict[str, Any] = {"fanout": {}, "latency": {}, "tls": {}}
    for variant in order:
        fanout, latency, negotiated = _variant(variant, sizes, certs, collector)
        got["fanout"][variant.name] = fanout
        log(
            f"    {variant.name:<15} fan-out {fanout['deliveries_per_s']:>9,.0f} deliveries/s, "
            f"{fanout['server_cpu_us_per_delivery']:6.2f} µs CPU/delivery, lost {fanout['lost']}"
            f", others on the server's core {fanout['others_on_server_core_pct']:.0f}%"
        )
        if latency is not None:
            got["latency"][variant.name] = latency
            log(
                f"    {'':<15} latency p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, "
                f"lost {latency['lost']}"
            )
        if negotiated is not None:
            got["tls"][variant.server] = negotiated
    return got


# -- the group ---------------------------------------------------------------------------


def _available(variant: Variant, collector: Path | None) -> bool:
    if variant.server == "centrifugo":
        return centrifugo_binary() is not None
    return variant.name != "otlp" or collector is not None


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def _ratios(rounds: list[dict[str, Any]], case: str, key: str) -> dict[str, Any]:
    """Per variant: variant / its baseline (plain; centrifugo for centrifugo-tls), per round."""
    out: dict[str, Any] = {}
    for name in rounds[0][case]:
        base = _BASELINE.get(name, "plain")
        if name in ("plain", "centrifugo") or base not in rounds[0][case]:
            continue
        values = [r[case][name][key] / r[case][base][key] for r in rounds
                  if r[case][name][key] and r[case][base][key]]  # fmt: skip
        if values:
            out[name] = _spread(values)
    return out


def _rows(rounds: list[dict[str, Any]], variants: Sequence[Variant], n: int) -> list[Result]:
    results: list[Result] = []

    def add(id_: str, label: str, unit: str, case: str, name: str, key: str) -> None:
        base = _BASELINE.get(name, "plain")
        peer = None if name in ("plain", "centrifugo") else id_.replace(f".{name}", f".{base}", 1)
        results.append(
            Result(
                id_, "overhead", label, unit,  # type: ignore[arg-type]
                [float(r[case][name][key] or 0.0) for r in rounds],
                peer=peer, is_peer=peer is None, details=[r[case][name] for r in rounds],
            )
        )  # fmt: skip

    for v in variants:
        add(f"overhead.fanout.{v.name}", f"fan-out to {n:,}: {v.label}", "deliveries/s",
            "fanout", v.name, "deliveries_per_s")  # fmt: skip
    for v in variants:
        add(f"overhead.cpu.{v.name}", f"server CPU per delivery, fan-out: {v.label}",
            "µs/delivery", "fanout", v.name, "server_cpu_us_per_delivery")  # fmt: skip
    for v in variants:
        if v.latency:
            for q in ("p50", "p99"):
                add(f"overhead.latency.{v.name}.{q}", f"publish -> deliver {q}: {v.label}",
                    "ms", "latency", v.name, f"{q}_ms")  # fmt: skip
    return results


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    sizes = Sizes.quick() if settings.smoke else Sizes()
    collector_binary = _collector_binary()
    variants = [v for v in VARIANTS if _available(v, collector_binary)]
    if collector_binary is None:
        log("  (no OpenTelemetry Collector (make services): the otlp variant is skipped)")
    if centrifugo_binary() is None:
        log("  (Centrifugo is not built (benchmarks/peers/install.sh): its variants are skipped)")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        certs = dev_certificates(Path(tmp) / "tls")
        collector = _Collector(collector_binary) if collector_binary else None
        try:
            for n in range(settings.runs):
                log(f"  round {n + 1} of {settings.runs}")
                rounds.append(_round(n, variants, sizes, certs, collector, log))
        finally:
            if collector is not None:
                collector.stop()
    instructions = overhead_count.instructions(
        sizes.count_events, sizes.count_subscribers, sizes.count_modes, log
    )
    ratios = {
        "fanout": _ratios(rounds, "fanout", "deliveries_per_s"),
        "cpu_per_delivery": _ratios(rounds, "fanout", "server_cpu_us_per_delivery"),
        "latency_p50": _ratios(rounds, "latency", "p50_ms"),
        "latency_p99": _ratios(rounds, "latency", "p99_ms"),
    }
    for name, spread in ratios["fanout"].items():
        cpu = ratios["cpu_per_delivery"].get(name, {}).get("median", 0.0)
        log(
            f"  {name:<15} deliveries/s {spread['median']:.3f}x of its baseline "
            f"(rounds {spread['min']:.3f}-{spread['max']:.3f}); CPU/delivery {cpu:.3f}x"
        )
    _extra.clear()
    _extra.update(
        sizes=asdict(sizes),
        variants={v.name: v.label for v in variants},
        baselines={v.name: _BASELINE.get(v.name, "plain") for v in variants},
        tls=rounds[0]["tls"] if rounds else {},
        centrifugo=_centrifugo_version(),
        collector=str(collector_binary) if collector_binary else None,
        ratios=ratios,
        instructions=instructions,
        rounds=rounds,
    )
    results = _rows(rounds, variants, sizes.subscribers)
    if instructions:
        per_event = instructions["per_event"]
        for mode in per_event:
            if mode != "base":
                results.append(
                    Result(
                        f"overhead.instructions.{mode}",
                        "overhead",
                        f"instructions per in-process publish to {sizes.count_subscribers}, "
                        f"tracing {mode}, over the tree without the tracing hooks",
                        "x",
                        [per_event[mode] / per_event["base"]],
                        details=[{"per_event": per_event[mode], "base": per_event["base"]}],
                    )
                )
    return results


def _centrifugo_version() -> str | None:
    binary = centrifugo_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or None


if __name__ == "__main__":
    from benchmarks.run import main

    main(["overhead"])
