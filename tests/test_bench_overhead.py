"""The TLS and tracing overhead benchmark (benchmarks/overhead.py) runs, at a tiny size.

Nothing here is timed: the figures of a tiny run mean nothing. What is checked is that
`python -m benchmarks.run overhead --quick` runs every variant to its end against real
servers (plain, TLS with a throwaway CA, tracing off / unsampled / sampled, OTLP to a
Collector and Centrifugo when they are installed), that every subscriber got every
event, that the JSON holds every case with sane figures and every ratio, and that the
instruction count's tree "without the tracing hooks" is made from the right hunks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from benchmarks import overhead, overhead_count
from benchmarks.net.procs import centrifugo_binary
from benchmarks.run import DEFAULT_GROUPS, GROUPS, main


def test_bench_overhead_is_a_group_of_the_runner_run_only_when_named() -> None:
    assert GROUPS["overhead"] is overhead.run
    assert "overhead" not in DEFAULT_GROUPS


def _expected_variants() -> list[str]:
    names = ["plain", "off", "tls", "unsampled", "sampled"]
    if overhead._collector_binary() is not None:
        names.append("otlp")
    if centrifugo_binary() is not None:
        names += ["centrifugo", "centrifugo-tls"]
    return names


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_overhead_every_variant_runs_in_a_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    main(["overhead", "--quick", "--tmpdir", str(tmp_path), "--out", str(out)])
    payload = json.loads(out.read_text())
    results = {r["id"]: r for r in payload["results"]}
    names = _expected_variants()
    timed = [v.name for v in overhead.VARIANTS if v.latency and v.name in names]
    expected = {f"overhead.{case}.{name}" for case in ("fanout", "cpu") for name in names}
    expected |= {f"overhead.latency.{name}.{q}" for name in timed for q in ("p50", "p99")}
    assert set(results) == expected
    sizes = overhead.Sizes.quick()
    for id_, result in results.items():
        assert len(result["runs"]) == 1, id_
        details = result["details"][0]
        assert details["lost"] == 0, id_
        subscribers = sizes.subscribers if ".latency." not in id_ else sizes.latency_subscribers
        assert details["delivered"] == details["sent"] * subscribers, id_
        value = result["runs"][0]
        if result["unit"] == "deliveries/s":
            assert 100 < value < 1e8, id_
        elif result["unit"] == "µs/delivery":
            assert 0.01 < value < 100_000, id_
        else:  # latency, ms
            assert 0 < value < 10_000, id_
        name = id_.split(".")[2]
        if name in ("plain", "centrifugo"):
            assert result["is_peer"] and result["peer"] is None
        else:
            base = "centrifugo" if name == "centrifugo-tls" else "plain"
            assert result["peer"] == id_.replace(f".{name}", f".{base}", 1)
            assert 0 < result["ratio_to_peer"] < 1_000, id_
    # The sampled variants send fewer events (a span per delivery); the others all of them.
    fanout = {n: results[f"overhead.fanout.{n}"]["details"][0] for n in names}
    assert fanout["sampled"]["sent"] == max(20, sizes.fanout_events // 8)
    assert fanout["plain"]["sent"] == sizes.fanout_events
    # Only the variant exporting to the collector reads how many spans it accepted.
    for name, details in fanout.items():
        assert (details["exported_spans"] is not None) == (name == "otlp"), name
    extra = payload["overhead"]
    assert set(extra["variants"]) == set(names)
    for key in ("fanout", "cpu_per_delivery"):
        assert set(extra["ratios"][key]) == set(names) - {"plain", "centrifugo"}
        for spread in extra["ratios"][key].values():
            assert spread["min"] <= spread["median"] <= spread["max"]
    # What a client negotiated with each TLS server: TLS 1.3.
    servers = {"hybridbus"} | ({"centrifugo"} if "centrifugo" in names else set())
    assert set(extra["tls"]) == servers
    assert all(t["version"] == "TLSv1.3" for t in extra["tls"].values())
    assert extra["instructions"] is None  # not in a smoke run


_DIFF = """\
diff --git a/src/m.py b/src/m.py
index 1111111..2222222 100644
--- a/src/m.py
+++ b/src/m.py
@@ -1,3 +1,4 @@
 import a
+from hybridbus.hub.tracing import Tracer
 import b
 import c
@@ -10,3 +11,3 @@ def f():
     x = 1
-    y = 2
+    y = 3
     z = 4
@@ -20,2 +21,4 @@ def g(self):
     q = 1
+    if self.tracer is not None:
+        self.tracer.routed()
     r = 2
diff --git a/src/new.py b/src/new.py
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/src/new.py
@@ -0,0 +1 @@
+tracer = None
"""


def test_bench_overhead_takes_out_only_the_hunks_naming_the_tracer(tmp_path: Path) -> None:
    kept, hunks = overhead_count.tracing_hunks(_DIFF)
    assert hunks == 2
    assert "y = 3" not in kept  # an unrelated change stays
    assert "src/new.py" not in kept  # a file the change added is left alone
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed")
    # Reverse-applied to the new file, the hooks go and the unrelated change stays.
    before = ["import a", "import b", "import c", *["pad"] * 6]
    before += ["    x = 1", "    y = 3", "    z = 4", *["pad"] * 7, "    q = 1", "    r = 2"]
    with_hooks = list(before)
    with_hooks.insert(1, "from hybridbus.hub.tracing import Tracer")
    at = with_hooks.index("    r = 2")
    with_hooks[at:at] = ["    if self.tracer is not None:", "        self.tracer.routed()"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("\n".join(with_hooks) + "\n")
    subprocess.run(
        ["patch", "-R", "-p1", "-s", "-d", str(tmp_path)], input=kept, text=True, check=True
    )
    assert (tmp_path / "src" / "m.py").read_text() == "\n".join(before) + "\n"
