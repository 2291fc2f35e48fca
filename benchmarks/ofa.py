"""Once-for-all against the regular search, for five FLOPs budgets.

One elastic supernet (``autoprune.ofa.train``) is trained once from the cached ResNet-20
baseline; then, for each budget, a sub-network is *extracted* (predictor-guided evolution,
slicing, BN recalibration; no training) and timed. Against it, for the same budget, the
regular path: ``autoprune.allocate`` searches the dense model (random agent, adaptive-BN
validation accuracy), prunes it, and fine-tunes the pruned network.

Fine-tune budget (the "steps the extraction saved"): the supernet's training compute shared
out over the budgets. Supernet training ran ``S`` optimizer steps with ``k`` sub-networks each
(sandwich rule: largest, smallest, random), i.e. ``S * k`` sub-network forward/backward passes
on a batch of 64; each of the ``B`` budgets' searched networks gets ``S * k / B`` fine-tune
steps on batches of 64 — the same number of passes in total as the supernet, so both sides
spend equal training compute over the whole set of budgets (the search's own evaluations
come on top, for the regular path only).

Columns: MACs as % of dense, test accuracy (test split touched only here), seconds. Both
networks are BN-recalibrated on the same number of training batches before testing.

    python benchmarks/ofa.py --quick     # 3 epochs, 40 samples, 8 trials: a few minutes
    python benchmarks/ofa.py             # 10 epochs, 100 samples, 20 trials: ~10 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

__all__ = ["BenchSettings", "main", "run"]


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    model: str = "resnet20"
    data: str = "digits"
    image_size: int = 16
    budgets: tuple[str, ...] = ("flops=30%", "flops=40%", "flops=50%", "flops=60%", "flops=70%")
    epochs: int = 10
    samples: int = 100
    agent: str = "random"
    trials: int = 20
    calib_batches: int = 8
    finetune_lr: float = 0.01
    seed: int = 0


QUICK = BenchSettings(epochs=3, samples=40, trials=8)


def run(settings: BenchSettings, *, supernet_dir: Path | None, console: Console
        ) -> dict[str, Any]:
    import autoprune
    from autoprune.zoo.evaluate import ClassificationEvaluator, finetune
    from autoprune.ofa import Supernet
    from autoprune.ofa.train import SupernetSettings, train_supernet
    from autoprune.zoo.train import evaluate_accuracy, load_or_train_baseline

    torch.set_num_threads(1)
    out = supernet_dir or Path(tempfile.mkdtemp(prefix="ofa-bench-")) / "supernet"
    started = time.perf_counter()
    train_supernet(SupernetSettings(
        model=settings.model, data=settings.data, image_size=settings.image_size,
        epochs=settings.epochs, samples=settings.samples, calib_batches=settings.calib_batches,
        seed=settings.seed, output=out, progress=True), console=console)
    supernet_seconds = time.perf_counter() - started
    sn = Supernet.load(out)
    meta = sn.meta
    passes = meta["training"]["total_steps"] * meta["training"]["subnets_per_step"]
    ft_steps = passes // len(settings.budgets)
    console.print(f"supernet: {meta['training']['total_steps']} steps x "
                  f"{meta['training']['subnets_per_step']} sub-networks = {passes} passes; "
                  f"fine-tune steps per searched network: {ft_steps}")

    dense, data, _ = load_or_train_baseline(settings.model, settings.data,
                                            image_size=settings.image_size, progress=False)
    evaluator = ClassificationEvaluator(data, calib_batches=settings.calib_batches,
                                        seed=settings.seed)
    rows = []
    for budget in settings.budgets:
        t0 = time.perf_counter()
        (e,) = sn.specialise([budget], seed=settings.seed)
        ofa_seconds = time.perf_counter() - t0
        ofa_test = evaluate_accuracy(e.model, data.test_x, data.test_y)[0]

        t0 = time.perf_counter()
        alloc = autoprune.allocate(dense, example_inputs=data.example_inputs(1), target=budget,
                                   evaluate=evaluator, agent=settings.agent,
                                   trials=settings.trials, seed=settings.seed)
        search_seconds = time.perf_counter() - t0
        pruned = alloc.apply(dense)
        evaluator.prepare(pruned)
        searched_test = evaluator.test(pruned)["accuracy"]
        t0 = time.perf_counter()
        finetune(pruned, data, steps=ft_steps, lr=settings.finetune_lr, batch_size=64,
                 seed=settings.seed)
        ft_seconds = time.perf_counter() - t0
        evaluator.prepare(pruned)
        tuned_val = evaluator(pruned)["accuracy"]
        tuned_test = evaluator.test(pruned)["accuracy"]
        row = {"budget": budget,
               "ofa": {"macs_fraction": e.costs["macs"] / e.dense_costs["macs"],
                       "val_accuracy": e.val_accuracy, "test_accuracy": ofa_test,
                       "predicted_accuracy": e.predicted_accuracy,
                       "extraction_seconds": ofa_seconds, "met": e.met},
               "search": {"macs_fraction": alloc.costs["macs"] / alloc.dense_costs["macs"],
                          "val_accuracy_no_finetune": alloc.metrics["accuracy"],
                          "test_accuracy_no_finetune": searched_test,
                          "val_accuracy": tuned_val, "test_accuracy": tuned_test,
                          "search_seconds": search_seconds, "finetune_seconds": ft_seconds,
                          "finetune_steps": ft_steps}}
        rows.append(row)
        console.print(f"{budget}: OFA test {ofa_test:.4f} in {ofa_seconds:.1f}s; search + "
                      f"fine-tune test {tuned_test:.4f} in {search_seconds + ft_seconds:.1f}s")
    return {"settings": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in asdict(settings).items()},
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1,
                        "load_average": list(os.getloadavg()), "torch": torch.__version__},
            "supernet": {"seconds_this_run": supernet_seconds,
                         "train_seconds": meta["training"]["seconds"],
                         "sampling_seconds": meta.get("sampling_seconds"),
                         "steps": meta["training"]["total_steps"],
                         "subnets_per_step": meta["training"]["subnets_per_step"],
                         "baseline_val_accuracy": meta["baseline"]["val_accuracy"],
                         "baseline_test_accuracy": meta["baseline"]["test_accuracy"],
                         "sampled": meta.get("sampled"), "predictor": meta.get("predictor"),
                         "path": str(out)},
            "finetune_steps_per_budget": ft_steps,
            "finetune_rule": "supernet steps x sub-networks per step / number of budgets",
            "rows": rows}


def table(result: dict[str, Any]) -> Table:
    sn = result["supernet"]
    t = Table(title=f"once-for-all vs search + fine-tune ({result['settings']['model']}, "
                    f"{result['settings']['image_size']}px digits, test accuracy)")
    for col in ("budget", "OFA MACs %", "OFA test", "OFA extract s", "search MACs %",
                "search test (no FT)", f"search + {result['finetune_steps_per_budget']} FT test",
                "search s", "FT s", "OFA - search+FT"):
        t.add_column(col, justify="left" if col == "budget" else "right")
    for r in result["rows"]:
        o, s = r["ofa"], r["search"]
        t.add_row(r["budget"], f"{100 * o['macs_fraction']:.1f}", f"{o['test_accuracy']:.4f}",
                  f"{o['extraction_seconds']:.1f}", f"{100 * s['macs_fraction']:.1f}",
                  f"{s['test_accuracy_no_finetune']:.4f}", f"{s['test_accuracy']:.4f}",
                  f"{s['search_seconds']:.1f}", f"{s['finetune_seconds']:.1f}",
                  f"{o['test_accuracy'] - s['test_accuracy']:+.4f}")
    q = sn["predictor"]
    t.caption = (f"supernet once: {sn['steps']} steps x {sn['subnets_per_step']} sub-networks, "
                 f"{sn['train_seconds']:.0f}s training + {sn['sampling_seconds']:.0f}s scoring "
                 f"{sn['sampled']['n']} sub-networks; dense baseline test "
                 f"{sn['baseline_test_accuracy']:.4f}; predictor on {q['n_test']} held-out "
                 f"sub-networks: Spearman {q['spearman']:.3f}, Kendall {q['kendall']:.3f}")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="fewer epochs, samples and trials")
    parser.add_argument("--supernet", type=Path, default=None,
                        help="supernet folder to train into or reuse (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default benchmarks/results/ofa[-quick].json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = QUICK if args.quick else BenchSettings()
    console = Console(stderr=True)
    result = run(replace(settings), supernet_dir=args.supernet, console=console)
    path = args.output or Path(__file__).parent / "results" / (
        "ofa-quick.json" if args.quick else "ofa.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    Console(width=170).print(table(result))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
