"""An OpenTelemetry Collector: a real OTLP receiver (gRPC and HTTP) writing what it gets to a file.

The binary is tests/services/otelcol/ (the collector's own `otelcol` packages with the OTLP
receiver and the contrib file exporter), built by scripts/install-services.sh from the Go
module proxy into $HYBRIDBUS_SERVICES_DIR/bin/otelcol. The file exporter writes one OTLP/JSON
`ExportTraceServiceRequest` per line to `spans.json` in the service's directory; `spans()`
reads them back flat (name, ids in hex, parent, attributes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from tests.services.base import SERVICES_DIR, Service, free_port, port_open

__all__ = ["OTELCOL_BIN", "OtelCollector"]

OTELCOL_BIN = SERVICES_DIR / "bin" / "otelcol"


class OtelCollector(Service):
    """The collector: OTLP over gRPC on `port`, over HTTP on `http_port`, spans to a file."""

    name = "otelcol"
    binaries: ClassVar[tuple[str | Path, ...]] = (OTELCOL_BIN,)
    start_timeout = 30.0

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.http_port = free_port()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def file(self) -> Path:
        return self.dir / "spans.json"

    def prepare(self) -> None:
        # JSON is YAML: no YAML writer needed. No telemetry of its own (no port 8888).
        config = {
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{self.port}"},
                        "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
                    }
                }
            },
            "exporters": {"file": {"path": str(self.file), "flush_interval": "100ms"}},
            "service": {
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
            },
        }
        (self.dir / "config.yaml").write_text(json.dumps(config, indent=1))

    def argv(self) -> list[str]:
        return [str(OTELCOL_BIN), "--config", f"file:{self.dir / 'config.yaml'}"]

    def ready(self) -> bool:
        return port_open(self.port) and port_open(self.http_port)

    def spans(self) -> list[dict[str, Any]]:
        """Every span the collector wrote so far, with its service name (flattened)."""
        found: list[dict[str, Any]] = []
        if not self.file.exists():
            return found
        for line in self.file.read_text().splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
                for scope in resource_spans.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        found.append(
                            {
                                "name": span["name"],
                                "trace_id": span["traceId"],
                                "span_id": span["spanId"],
                                "parent_id": span.get("parentSpanId", ""),
                                "kind": span.get("kind"),
                                "attributes": _attributes(span.get("attributes", [])),
                                "service": resource.get("service.name"),
                            }
                        )
        return found


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP/JSON key-values as a dict (`{"stringValue": ...}` -> the value)."""
    out: dict[str, Any] = {}
    for item in items:
        value = item.get("value", {})
        for kind in ("stringValue", "boolValue", "intValue", "doubleValue"):
            if kind in value:
                out[item["key"]] = int(value[kind]) if kind == "intValue" else value[kind]
    return out
