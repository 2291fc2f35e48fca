from __future__ import annotations

import pytest

from autoprune.targets import TargetError, parse_target, parse_targets, resolve_budgets


@pytest.mark.parametrize("text, metric, value, relative", [
    ("flops=50%", "macs", 0.5, True),
    ("macs=50%", "macs", 0.5, True),
    ("flops=20M", "macs", 20e6, False),
    ("FLOPS=0.2G", "macs", 0.2e9, False),
    ("params=0.1M", "params", 1e5, False),
    ("params=30%", "params", 0.3, True),
    ("flops=1234", "macs", 1234.0, False),
])
def test_parse_target(text: str, metric: str, value: float, relative: bool) -> None:
    t = parse_target(text)
    assert (t.metric, t.relative) == (metric, relative)
    assert t.value == pytest.approx(value)


def test_several_targets_at_once() -> None:
    assert [t.metric for t in parse_targets(["flops=50%", "params=0.1M"])] == ["macs", "params"]
    assert [t.metric for t in parse_targets("flops=50%,params=40%")] == ["macs", "params"]


@pytest.mark.parametrize("text, hint", [
    ("flops", "name=value"),
    ("flops=abc", "positive number"),
    ("flops=-3%", "positive number"),
    ("flops=0%", "positive"),
    ("flops=150%", "more than the dense"),
    ("speed=3", "unknown budget"),
    ("latency=fast", "cannot read the latency"),
])
def test_bad_targets_get_one_clear_error(text: str, hint: str) -> None:
    with pytest.raises(TargetError, match=hint):
        parse_target(text)


def test_duplicate_metric_refused() -> None:
    with pytest.raises(TargetError, match="two budgets"):
        parse_targets(["flops=50%", "macs=20M"])


def test_impossible_budget_names_the_smallest_reachable() -> None:
    targets = parse_targets("flops=1%")
    with pytest.raises(TargetError, match=r"smallest configuration .* costs 10,000 macs \(10.0%"):
        resolve_budgets(targets, {"macs": 100_000.0}, {"macs": 10_000.0})
    budgets = resolve_budgets(parse_targets("flops=50%"), {"macs": 100_000.0}, {"macs": 10_000.0})
    assert budgets[0].limit == 50_000.0
