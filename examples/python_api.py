"""Budget allocation from Python on your own model and your own evaluator.

    python examples/python_api.py            # ~1 minute
    python examples/python_api.py --quick    # a few seconds (what the tests run)

The model below is defined here, not taken from the zoo: a small CNN with a residual add and a
depthwise conv. The evaluator is ours too: it re-estimates BatchNorm statistics on a few
training batches (pruned networks need it) and returns validation accuracy.
"""

from __future__ import annotations

import argparse
import copy
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
        self.branch = nn.Sequential(
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = F.relu(y + self.branch(y))
        return self.fc(self.head(y).mean(dim=(2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny training and search")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = autoprune.load_data("digits", image_size=8)  # native 8x8 images: fast on a CPU
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2 if args.quick else 15):
        for x, y in data.loader("train", batch_size=64, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    calib = [x for x, _ in data.loader("train", batch_size=64, shuffle=True)][:8]

    def my_eval(pruned: nn.Module) -> dict[str, float]:
        adaptive_bn(pruned, calib)
        with torch.no_grad():
            acc = (pruned(data.val_x).argmax(1) == data.val_y).float().mean().item()
        return {"accuracy": acc}

    alloc = autoprune.allocate(model, example_inputs=data.example_inputs(1), target="flops=50%",
                               evaluate=my_eval, agent="random", trials=4 if args.quick else 30)
    print(f"dense: {my_eval(copy.deepcopy(model))['accuracy']:.3f} val accuracy, "
          f"{alloc.dense_costs['macs'] / 1e6:.2f}M MACs")
    print(f"best of {len(alloc.trials)} trials: {alloc.metrics['accuracy']:.3f} val accuracy, "
          f"{alloc.costs['macs'] / 1e6:.2f}M MACs ({100 * alloc.costs['macs'] / alloc.dense_costs['macs']:.0f}%)")
    for name, unit in alloc.units.items():
        print(f"  {name:10s} keeps {unit['channels']:3d} of {unit['of']:3d} channels")
    pruned = alloc.apply(model)
    n = sum(p.numel() for p in pruned.parameters())
    print(f"pruned model: {n} parameters (dense {sum(p.numel() for p in model.parameters())})")
    # Saved as a run folder (best.json, pruned.pt, pruned.pt2, summary.json) and loaded back:
    # a model of your own is not in the folder, so load_pruned takes the dense one.
    with tempfile.TemporaryDirectory() as folder:
        alloc.save(folder)
        again = autoprune.load_pruned(folder, model=model)
        with torch.no_grad():
            same = torch.equal(again(data.val_x[:8]), pruned.eval()(data.val_x[:8]))
        print(f"saved to a run folder and loaded back: {'same outputs' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
