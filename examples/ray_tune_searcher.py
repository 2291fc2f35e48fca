"""An autoprune agent as the searcher of your own Ray Tune ``Tuner``.

    python examples/ray_tune_searcher.py            # ~1 minute (most of it Ray's start)
    python examples/ray_tune_searcher.py --quick    # what the tests run

``autoprune.AgentSearcher`` turns any agent (here TPE) into a Tune ``Searcher``: each
suggestion is a configuration already repaired to the budget (``config["channels"]``: unit ->
channels kept), and every reported result is told back to the agent. Your trainable does the
pruning and scoring however it likes; two trials run at once.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import autoprune
from autoprune.zoo.evaluate import adaptive_bn


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                 nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mid(self.stem(x)).mean(dim=(2, 3)))


def trainable(config: dict, space: autoprune.ChannelSpace, model: nn.Module,
              calib: list[torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> None:
    from ray import tune

    torch.set_num_threads(1)  # one core per trial: several torch thread pools would fight
    pruned = adaptive_bn(space.apply(model, config["channels"]), calib)
    with torch.no_grad():
        acc = (pruned(val[0]).argmax(1) == val[1]).float().mean().item()
    tune.report({"accuracy": acc})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny training and search")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    torch.manual_seed(0)
    data = autoprune.load_data("digits", image_size=8)
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2 if args.quick else 15):
        for x, y in data.loader("train", batch_size=64, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    calib = [x for x, _ in data.loader("train", batch_size=64, shuffle=True)][:4]

    space = autoprune.ChannelSpace.from_model(model, data.example_inputs(1))
    problem = autoprune.build_problem(space, autoprune.parse_targets("flops=50%"))
    searcher = autoprune.AgentSearcher("tpe", problem, metric="accuracy", mode="max", seed=0)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tuner = tune.Tuner(
                # the model, space and data go to Ray's object store once, not per trial
                tune.with_parameters(trainable, space=space, model=model, calib=calib,
                                     val=(data.val_x, data.val_y)),
                tune_config=tune.TuneConfig(search_alg=searcher,
                                            num_samples=4 if args.quick else 30,
                                            max_concurrent_trials=2, reuse_actors=True),
                run_config=tune.RunConfig(storage_path=tmp, verbose=0))
            tuner.fit()
    finally:
        ray.shutdown()

    best = searcher.best
    assert best is not None, "no trial finished"
    dense = problem.dense_costs["macs"]
    print(f"best of {len(searcher.records)} trials: {best.objective:.3f} val accuracy, "
          f"{best.costs['macs'] / 1e6:.3f}M MACs ({100 * best.costs['macs'] / dense:.0f}% of "
          f"dense)")
    for name, kept in best.config.items():
        print(f"  {name:10s} keeps {kept} channels")


if __name__ == "__main__":
    main()
