"""``time_on_device.py`` times more rounds while the device disagrees with itself.

The script runs on the device with numpy and onnxruntime only; here its sessions and clock are
replaced by a simulated device whose speed alternates between rounds (a noisy one) or holds (a
quiet one), so what is checked is the script's own rounds, not this host's speed."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest

from autoprune.latency import correction

SCRIPT = Path(correction.__file__).with_name("time_on_device.py")


def _script(monkeypatch: pytest.MonkeyPatch, slow_odd_rounds: float):
    spec = importlib.util.spec_from_file_location("time_on_device_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = [0]
    items = 4  # one block, three networks: one visit each per round

    def clocked(np_, run, warmup, repeats, clock):
        round_ = calls[0] // items
        calls[0] += 1
        return [1.0 * (slow_odd_rounds if round_ % 2 else 1.0)] * repeats

    monkeypatch.setattr(mod, "_modules", lambda: (np, types.SimpleNamespace(__version__="sim")))
    monkeypatch.setattr(mod, "session", lambda *a, **k: object())
    monkeypatch.setattr(mod, "feed_for", lambda *a, **k: {})
    monkeypatch.setattr(mod, "clocked", clocked)
    monkeypatch.setattr(mod, "describe", lambda *a, **k: {"backend": "onnxruntime"})
    return mod


def _export(folder: Path, rounds: int) -> Path:
    item = {"file": "x.onnx", "warmup": 0, "repeats": 3}
    items = [{"id": "b0-0", "kind": "block", **item}] + [
        {"id": f"h{i}", "kind": "network", "role": "holdout", **item} for i in range(3)]
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "format": "autoprune-device-export", "version": 1, "export_id": "e1", "threads": 1,
        "rounds": rounds, "items": items, "networks": []}))
    return folder


@pytest.mark.parametrize("slow, extra", [(1.0, []), (1.3, []), (1.3, ["--max-rounds", "4"])])
def test_a_noisy_device_is_timed_more_rounds(tmp_path, monkeypatch, slow, extra):
    mod = _script(monkeypatch, slow)
    folder = _export(tmp_path / "export", rounds=4)
    mod.main(["--dir", str(folder), *extra])
    timed = json.loads((folder / "timings.json").read_text())
    noisy = slow != 1.0 and not extra
    assert timed["rounds"] == (8 if noisy else 4)  # twice the export's rounds at most
    assert all(len(s) == timed["rounds"] * 3 for s in timed["samples_ms"].values())
    assert timed["noise"] == pytest.approx(abs(1.0 / slow - 1.0), abs=1e-6)  # even vs odd


def test_the_device_script_calls_noisy_what_autoprune_rebuilds():
    spec = importlib.util.spec_from_file_location("time_on_device_limits", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.NOISY == correction.NOISY_BUILD
