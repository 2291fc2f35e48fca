"""Every model users bring: what the channel space makes of each foreign architecture.

For each architecture of ``autoprune.testing.architectures`` (our zoo, Hugging Face encoders,
decoders, encoder-decoders, vision and audio models, plain attention, awkward CNNs, recurrent
layers, free parameters, several inputs, dict outputs): the units by kind, the layers kept
dense (notes), the time ``ChannelSpace.from_model`` takes (median of ``--repeats``; it probes, builds the
rows and checks itself), and at ``--configs`` random configurations plus the thinnest the
relative error of the space's MACs and parameters against the reference counts
(``reference_macs``: flop_counter with grad and math attention plus recurrent gate matmuls;
``reference_params``), and whether the pruned network runs with the output's shape.

    python benchmarks/architectures.py                 # all 55, 3 configurations each
    python benchmarks/architectures.py --only hf-vit hf-gpt2 --configs 10
    python benchmarks/architectures.py --repeats 1 --configs 1   # quicker: one timing, 2 configs

Writes benchmarks/results/architectures.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.tracing import call_model, output_tensor
from autoprune.testing.architectures import ARCHITECTURES

RESULTS = Path(__file__).parent / "results"


def _shape(model: torch.nn.Module, inputs: tuple, output: Any) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(output_tensor(call_model(model.eval(), inputs), output).shape)


def measure(name: str, *, configs: int, repeats: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    model.eval()
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        space = ChannelSpace.from_model(model, inputs, **options)
        seconds.append(time.perf_counter() - t)
    rng = np.random.default_rng(seed)
    points = [space.min_config()] + [space.decode(rng.random(space.dim)) for _ in range(configs)]
    want = _shape(model, inputs, options.get("output"))
    macs_err, params_err, runs = [], [], 0
    for config in points:
        pruned = space.apply(model, config)
        runs += _shape(pruned, inputs, options.get("output")) == want
        table = space.layer_table(config)
        macs, params = reference_macs(pruned, inputs), reference_params(pruned)
        macs_err.append(abs(sum(r.macs for r in table) - macs) / macs)
        params_err.append(abs(sum(r.params for r in table) - params) / params)
    kinds: dict[str, int] = {}
    for u in space.units:
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    dense = space.layer_table({})
    return {"architecture": name, "units": kinds, "kept_dense": list(space.notes),
            "from_model_s": statistics.median(seconds), "configs": len(points),
            "runs_with_output_shape": runs, "max_macs_error": max(macs_err),
            "max_params_error": max(params_err),
            "dense_macs": sum(r.macs for r in dense), "dense_params": sum(r.params for r in dense),
            "thinnest_macs_fraction": sum(r.macs for r in space.layer_table(points[0]))
            / max(1, sum(r.macs for r in dense))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="architectures to run")
    parser.add_argument("--configs", type=int, default=3, help="random configurations each")
    parser.add_argument("--repeats", type=int, default=3, help="from_model timings (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or sorted(ARCHITECTURES)
    unknown = set(names) - set(ARCHITECTURES)
    if unknown:
        parser.error(f"unknown architectures {sorted(unknown)}; known: {', '.join(sorted(ARCHITECTURES))}")
    console = Console(width=150)
    rows = []
    for name in names:
        console.print(f"[dim]{name}...[/]")
        rows.append(measure(name, configs=args.configs, repeats=args.repeats, seed=args.seed))
    table = Table(title="The channel space on foreign architectures")
    for col in ("architecture", "units", "kept dense", "from_model s", "runs", "MACs err",
                "params err", "thinnest MACs"):
        table.add_column(col, justify="left" if col in ("architecture", "units") else "right")
    for r in rows:
        table.add_row(r["architecture"], ", ".join(f"{v} {k}" for k, v in r["units"].items()),
                      str(len(r["kept_dense"])), f"{r['from_model_s']:.2f}",
                      f"{r['runs_with_output_shape']}/{r['configs']}",
                      f"{r['max_macs_error']:.1e}", f"{r['max_params_error']:.1e}",
                      f"{r['thinnest_macs_fraction']:.0%}")
    console.print(table)
    out = {"host": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": args.threads, "configs": args.configs, "repeats": args.repeats,
           "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "architectures.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
