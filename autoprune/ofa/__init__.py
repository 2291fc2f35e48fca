"""Once-for-all over the channel space: train one elastic-width supernet
(``autoprune.ofa.train``), then extract sub-networks for new budgets without retraining
(``autoprune.ofa.search``). ``Supernet`` is the handle users hold."""

from __future__ import annotations

from autoprune.ofa.elastic import SUPERNET_FORMAT, ElasticNet, SupernetError
from autoprune.ofa.search import Extraction, LatencySetup
from autoprune.ofa.supernet import Supernet
from autoprune.ofa.train import SupernetSettings, train_supernet

__all__ = ["SUPERNET_FORMAT", "ElasticNet", "Extraction", "LatencySetup", "Supernet",
           "SupernetError", "SupernetSettings", "train_supernet"]
