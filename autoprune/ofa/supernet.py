"""``Supernet``: the user's handle on once-for-all -- train one elastic-width supernet, then
extract a standalone sub-network for any budget without retraining."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from autoprune.ofa.elastic import ElasticNet, SupernetError
from autoprune.ofa.search import Extraction, front, specialise
from autoprune.ofa.train import SupernetSettings, train_supernet
from autoprune.zoo.data import DataSplits

__all__ = ["Supernet"]


class Supernet(ElasticNet):
    """A trained elastic-width supernet: the sorted model, its channel space and its folder.

    ``Supernet.load(path)`` reads a folder written by ``Supernet.train`` / ``autoprune ofa
    train``; ``extract(target=...)`` returns a standalone sub-network meeting the budget, BN
    recalibrated; ``specialise`` does the same for several targets with every figure;
    ``front()`` the accuracy-cost front over the whole range.
    """

    @classmethod
    def train(cls, settings: SupernetSettings, *, model: nn.Module | None = None,
              data: DataSplits | None = None, until_step: int | None = None,
              console: Any = None) -> Supernet:
        """Train (or resume) a supernet as ``settings`` says and return it loaded. ``model``
        (a trained module of the user's) and ``data`` (``DataSplits``, e.g.
        ``autoprune.zoo.data.load_data("path/to/folder")``) replace the settings' zoo model
        and data source; see :func:`autoprune.ofa.train.train_supernet`."""
        summary = train_supernet(settings, model=model, data=data, until_step=until_step,
                                 console=console)
        return cls.load(summary["path"], model=model, data=data,  # type: ignore[return-value]
                        device=settings.device)

    def specialise(self, targets: str | Sequence[str], **options: Any) -> list[Extraction]:
        """One sub-network per target (each may join budgets with commas: ``"latency=2ms,
        params=50%"``); see :func:`autoprune.ofa.search.specialise` for the options."""
        return specialise(self, [targets] if isinstance(targets, str) else list(targets),
                          **options)

    def extract(self, target: str | None = None, *, config: Mapping[str, int] | None = None,
                **options: Any) -> nn.Module:
        """A standalone, physically smaller ``nn.Module`` meeting ``target`` (or with the
        channels of ``config``), its BatchNorm statistics recalibrated; no retraining."""
        if (target is None) == (config is None):
            raise SupernetError("pass exactly one of target='flops=50%' (or latency=..., "
                                "params=...) and config={unit: channels}")
        if config is not None:
            return self.subnetwork(config)
        return self.specialise(target, **options)[0].model

    def front(self, **options: Any) -> dict[str, Any]:
        """The predicted-best sub-network at budgets over the whole range, each extracted and
        scored; see :func:`autoprune.ofa.search.front`."""
        return front(self, **options)
