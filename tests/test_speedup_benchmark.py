"""The searched-network speed-up benchmark (benchmarks/speedup.py) runs end to end on a tiny
task, and its table's rows say what they claim: speed-up is dense measured over pruned
measured, every pick meets its budget, the equal-latency comparison reads the runs it names."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("speedup_bench",
                                                  ROOT / "benchmarks" / "speedup.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["speedup_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_secant_steers_towards_the_target(bench):
    # Slower than the target at half the MACs: the next budget is below half.
    assert bench._next_fraction([(1.0, 2.0), (0.5, 1.5)], 1.2) < 0.5
    # Faster than the target: the next budget is above; bracketed: between the two.
    assert bench._next_fraction([(1.0, 2.0), (0.3, 0.9)], 1.2) > 0.3
    assert 0.3 < bench._next_fraction([(1.0, 2.0), (0.5, 1.5), (0.3, 0.9)], 1.2) < 0.5
    # Never beyond the dense network or below the thinnest budget it asks for.
    assert bench._next_fraction([(1.0, 2.0), (0.9, 1.99)], 0.01) == bench.MIN_FLOPS_FRACTION
    assert bench._next_fraction([(1.0, 2.0), (0.5, 1.0)], 5.0) == 1.0


def test_tiny_run_rows_are_consistent(bench, tmp_path):
    s = bench.Settings(models=("resnet20",), image_size=16, latency=90.0, trials=4,
                       flops_steps=2, calib_batches=2, steer_repeats=3, passes=2, repeats=3)
    out = tmp_path / "speedup.json"
    console = Console(record=True, width=200)
    payload = bench.run_benchmark(s, console=console, out=out)
    bench.show(payload, console)
    saved = json.loads(out.read_text())
    assert [g["model"] for g in saved["groups"]] == ["resnet20"]
    g = saved["groups"][0]
    dense_ms = g["dense_measured"]["median_ms"]
    kinds = [r["search"] for r in g["runs"]]
    assert kinds[0] == "latency" and 1 <= kinds.count("flops") <= 2
    for r in g["runs"]:
        m = r["measured"]
        assert len(m["pass_medians_ms"]) == 2 and min(m["pass_medians_ms"]) <= m["median_ms"]
        assert r["speedup"] == pytest.approx(dense_ms / m["median_ms"])
        assert r["macs_reduction"] == pytest.approx(g["dense_macs"] / r["macs"])
        assert r["cut_share"] == pytest.approx(r["speedup"] / r["macs_reduction"])
        assert r["records"]["trials"] == len(r["records"]["trials_list"]) <= 4
        if r["search"] == "flops":  # the pick is within its FLOPs budget
            assert r["macs_fraction"] <= r["flops_fraction"] + 1e-9
        else:  # costed by the table inside its latency budget
            assert r["predicted_ms"] <= r["limit"] + 1e-9
            assert r["limit"] == pytest.approx(0.9 * g["dense_predicted_ms"], rel=1e-6)
    e = g["equal_latency"]
    lat = g["runs"][0]
    assert e["latency_ms"] == lat["measured"]["median_ms"]
    assert e["val_acc_gain"] == pytest.approx(e["latency_val_acc"] - e["flops_val_acc"])
    flops_val = [r["val_acc"] for r in g["runs"] if r["search"] == "flops"]
    assert min(flops_val) - 1e-9 <= e["flops_val_acc"] <= max(flops_val) + 1e-9
    text = console.export_text()
    assert "share of cut" in text and "at equal measured latency" in text
