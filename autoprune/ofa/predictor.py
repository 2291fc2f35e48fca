"""The accuracy predictor of once-for-all extraction: validation accuracy of a sub-network from
its kept ratio per unit (OFA fits an MLP on 1k-4k sampled sub-networks; with ~100 samples
gradient-boosted shallow trees rank better), and its quality on held-out samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autoprune.ofa.elastic import SupernetError
from autoprune.search_spaces import ChannelSpace

__all__ = ["AccuracyPredictor", "predictor_quality"]


# ---------------------------------------------------------------------- accuracy predictor
class AccuracyPredictor:
    """Validation accuracy of a configuration from its kept ratio per unit."""

    def __init__(self, space: ChannelSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self._model: Any = None

    def features(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        return np.array([[c[u.name] / u.full for u in self.space.units] for c in configs])

    def fit(self, configs: Sequence[Mapping[str, int]], accuracy: Sequence[float]
            ) -> AccuracyPredictor:
        from sklearn.ensemble import GradientBoostingRegressor

        if len(configs) < 5:
            raise SupernetError(f"the predictor needs at least 5 scored sub-networks, got "
                                f"{len(configs)}. Fix: train with --samples 50 or more.")
        # Shallow trees with shrinkage and subsampling: ~100 samples in 10-60 dimensions.
        self._model = GradientBoostingRegressor(n_estimators=300, learning_rate=0.05,
                                                max_depth=2, subsample=0.8,
                                                random_state=self.seed)
        self._model.fit(self.features(configs), np.asarray(accuracy, dtype=float))
        return self

    def predict(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit the predictor first")
        return self._model.predict(self.features(configs))


def predictor_quality(space: ChannelSpace, samples: Sequence[Mapping[str, Any]], *,
                      holdout: float = 0.25, seed: int = 0) -> dict[str, float]:
    """Rank correlation (Spearman, Kendall) and mean absolute error of the predictor on
    sub-networks it was not fitted on (a seeded ``holdout`` share; the largest and smallest
    networks always stay in training)."""
    from scipy.stats import kendalltau, spearmanr

    n = len(samples)
    rng = np.random.default_rng(seed)
    order = 2 + rng.permutation(max(0, n - 2))
    n_test = max(3, int(round(holdout * n)))
    test, train = order[:n_test], np.concatenate([[0, 1], order[n_test:]]).astype(int)
    configs = [samples[i]["config"] for i in range(n)]
    acc = np.array([samples[i]["val_accuracy"] for i in range(n)])
    pred = AccuracyPredictor(space, seed=seed).fit([configs[i] for i in train], acc[train])
    got = pred.predict([configs[i] for i in test])
    return {"spearman": float(spearmanr(got, acc[test]).statistic),
            "kendall": float(kendalltau(got, acc[test]).statistic),
            "mae": float(np.mean(np.abs(got - acc[test]))),
            "n_train": int(len(train)), "n_test": int(len(test))}
