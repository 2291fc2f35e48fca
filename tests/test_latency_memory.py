"""The whole-network correction's weight term: a network whose weights outgrow the cache pays
for every further megabyte on every call, which isolated blocks (their weights cached between
calls) never show. The fit is fed made-up measurements, so nothing depends on this host's cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.latency.build import weight_mb
from autoprune.latency.correction import MEMORY_KNEES_MB, fit_correction
from autoprune.latency.table import LatencyTable
from autoprune.search_spaces import ChannelSpace
from test_latency import QUICK, ConvNet


def _networks(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Block sums (ms) and weight megabytes of ``n`` networks from thin to dense: weights grow
    faster than time, as they do when channels are cut from both sides of a layer."""
    rng = np.random.default_rng(seed)
    width = np.sort(rng.uniform(0.15, 1.0, n))
    width[0], width[-1] = 0.15, 1.0
    return 0.2 + 4.0 * width ** 2, 36.0 * width ** 2


def _samples(ms: np.ndarray, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [m * (1 + rng.normal(0, 0.005, 12)) for m in ms]


def test_a_network_outgrowing_the_cache_gets_the_weight_term_and_predicts_held_out_nets() -> None:
    sums, mb = _networks()
    truth = lambda s, w: 0.05 + 0.9 * s + 0.06 * np.maximum(0, w - 8.0)  # noqa: E731
    configs = [{"u": i} for i in range(len(sums))]
    fit = fit_correction(sums, configs, _samples(truth(sums, mb)), mb)
    assert fit["memory"]["knee_mb"] == 8.0 and fit["memory"]["knee_mb"] in MEMORY_KNEES_MB
    assert fit["memory"]["ms_per_mb"] == pytest.approx(0.06, rel=0.15)
    assert fit["loo_median_abs_rel"] < 0.01
    assert all(p["weights_mb"] == pytest.approx(w, abs=1e-5) for p, w in zip(fit["points"], mb))
    # the line alone, on the same networks, is clearly worse where it is not fitted
    line = fit_correction(sums, configs, _samples(truth(sums, mb)))
    assert "memory" not in line and line["loo_median_abs_rel"] > 3 * fit["loo_median_abs_rel"]
    held_sums, held_mb = _networks(8, seed=5)
    coef = fit["offset_ms"], fit["scale"], fit["memory"]["ms_per_mb"]
    pred = coef[0] + coef[1] * held_sums + coef[2] * np.maximum(0, held_mb - 8.0)
    assert np.max(np.abs(pred / truth(held_sums, held_mb) - 1)) < 0.02


def test_no_weight_term_where_time_follows_the_blocks() -> None:
    sums, mb = _networks()
    configs = [{"u": i} for i in range(len(sums))]
    fit = fit_correction(sums, configs, _samples(0.1 + 1.1 * sums), mb)
    assert "memory" not in fit
    assert fit["scale"] == pytest.approx(1.1, rel=0.02)
    # weights that do not vary cannot be fitted either
    assert "memory" not in fit_correction(sums, configs, _samples(0.1 + 1.1 * sums),
                                          np.full(len(sums), 20.0))


def test_the_table_counts_the_weights_it_costs_and_predicts_with_the_term_both_ways() -> None:
    torch.manual_seed(0)
    net, x = ConvNet().eval(), torch.randn(1, 3, 16, 16)
    space = ChannelSpace.from_model(net, x, round_to=8)
    table = LatencyTable.build(net, x, space=space, plan=QUICK, refuse=False)
    dense = space.dense_config()
    weights = sum(m.weight.numel() for m in net.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    ms, mb = table.sums(space.layer_table(dense))
    assert mb == pytest.approx(4e-6 * weights, rel=1e-6)
    thin = space.decode(np.zeros(space.dim))
    assert table.sums(space.layer_table(thin))[1] < mb
    raw = table.to_json()
    raw["correction"]["memory"] = {"knee_mb": mb / 2, "ms_per_mb": 2.0}
    with_term = LatencyTable._from_json(raw)
    extra = 2.0 * (mb - mb / 2)
    assert with_term.predict(dense) == pytest.approx(table.predict(dense) + extra, rel=1e-6)
    for config in (dense, thin, space.decode(np.full(space.dim, 0.5))):
        assert with_term.predict(config) == pytest.approx(
            with_term.estimate(space.layer_table(config)), rel=1e-6)
    again = LatencyTable._from_json(with_term.to_json())
    assert again.predict(dense) == pytest.approx(with_term.predict(dense), rel=1e-9)


def test_weight_megabytes_of_each_kind_of_layer() -> None:
    conv = {"type": "Conv2d", "kernel": [3, 3], "groups": 1}
    assert weight_mb(conv, 16, 32) == pytest.approx(4e-6 * 16 * 32 * 9)
    assert weight_mb({**conv, "groups": 4}, 16, 32) == pytest.approx(4e-6 * 16 * 32 * 9 / 4)
    assert weight_mb({**conv, "groups": "depthwise"}, 32, 32) == pytest.approx(4e-6 * 32 * 9)
    assert weight_mb({"type": "Linear"}, 64, 10) == pytest.approx(4e-6 * 640)
    assert weight_mb({"type": "attention"}, 64, 128) == 0.0
