"""How fast the machine runs now against a latency table: an online estimate of its level.

A table's relative costs (which network is slower, by how much) are set when it is built; the
machine's level is not. On this project's shared 2-core host the same dense MobileNet-V2
measured 5.5-8 ms in 10-call medians taken half a second apart, and for a minute at a time
whole networks ran 10-20% faster or slower than a minute before: a table checked at 3.5%
median error while it was built predicted networks measured a minute later 15% too slow
(``benchmarks/latency_model.py --models mobilenetv2 --configs 20 --seed 4``), while those
networks agreed with themselves within 2.8% across passes. No check made during a build can
see a change that comes after it, so every whole network measured after the build (the anchor
at a search's start, the dense network and each candidate measured after the search) is a
reading of the level, and predictions are scaled by the estimate from all of them.

The estimate is the mean of the readings' log ratios (measured / predicted), shrunk towards
the table's own level by ``PRIOR`` readings' worth: one reading moves it two thirds of the
way, three readings six sevenths. Replayed on the five seeds' measurements above (each
network predicted from those measured before it, in 20 random orders), it brought the builds
from 5-100% of networks within 10% to 56-100%, each at or above the share its own
re-measurement reached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["PRIOR", "OnlineLevel", "common_drift"]

#: How many readings' worth the table's own level counts for.
PRIOR = 0.5


class OnlineLevel:
    """The machine's speed now as a factor on a table's predictions, from readings
    ``(predicted_ms, measured_ms)`` of whole networks."""

    def __init__(self, readings: Iterable[tuple[float, float]] = ()) -> None:
        self.readings: list[tuple[float, float]] = []
        for predicted, measured in readings:
            self.add(predicted, measured)

    def add(self, predicted_ms: float, measured_ms: float) -> None:
        """One more network measured (a non-positive or non-finite pair is ignored)."""
        if (math.isfinite(predicted_ms) and math.isfinite(measured_ms) and predicted_ms > 0
                and measured_ms > 0):
            self.readings.append((float(predicted_ms), float(measured_ms)))

    def factor(self) -> float:
        """Measured / predicted for the next network: the shrunk geometric mean (1.0 with no
        reading)."""
        logs = [math.log(m / p) for p, m in self.readings]
        return math.exp(sum(logs) / (len(logs) + PRIOR)) if logs else 1.0

    def predict(self, table_ms: float) -> float:
        """A table's prediction corrected to the machine's level now."""
        return table_ms * self.factor()

    def __len__(self) -> int:
        return len(self.readings)


def common_drift(ratios: Sequence[float], noise: float) -> float:
    """The change of speed every one of ``ratios`` (measured / predicted of networks across
    the width range) shows: when all are off the same side of 1 by more than ``noise``, the
    one closest to 1; else 1.0. Networks that disagree show an error of the table's shape at
    one end, not a change of speed (the main job once measured its dense network as predicted
    and its thinnest 25% faster; scaling every prediction by their mean made the search 16%
    optimistic), and the check after the search corrects the rest from its own readings."""
    if not ratios:
        return 1.0
    if all(r > 1 + noise for r in ratios) or all(r < 1 - noise for r in ratios):
        return min(ratios, key=lambda r: abs(math.log(r)))
    return 1.0
