"""``autoprune ofa``: train an elastic supernet once, then extract sub-networks for any budget.

Mounted by ``autoprune.cli`` as a sub-command group; like the rest of the CLI, each command
builds settings and makes one API call, and heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autoprune.cli.checks import lut_file, output_file, output_folder, source_options
from autoprune.cli.common import BACKEND_HELP, DEVICE_HELP, fail, timing_device

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Once-for-all: train one elastic-width supernet, then extract a "
                       "sub-network for any budget in seconds, without retraining.")
err = Console(stderr=True)

TARGET_HELP = (
    "Budget of one sub-network, repeatable: each --target gives its own sub-network. "
    "latency=2ms (also us, s; measured on this machine), flops=50% (of the dense model; "
    "flops counts multiply-accumulates), flops=20M, params=0.1M, params=30%. Join budgets "
    "of one sub-network with commas: latency=2ms,params=50%."
)
LATENCY_OPTS = "Latency budgets refer to this device, batch, thread count and backend."


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoprune.errors import SearchError
    from autoprune.latency.device import BackendError

    return (ValueError, FileNotFoundError, BackendError, SearchError)


@app.command()
def train(
    model: Annotated[str, typer.Option(help=(
        "Zoo model (autoprune models lists them), or your own: path/to/file.py:factory or "
        "package.module:factory (a callable returning an nn.Module)."))] = "resnet20",
    data: Annotated[str, typer.Option(help=(
        "digits (scikit-learn, embedded), path/to/file.npz (x, y, optional x_test/y_test) or "
        "an image folder (one sub-folder per class; train/ val/ test/ if present)."))] = "digits",
    model_arg: Annotated[list[str] | None, typer.Option(
        "--model-arg", metavar="NAME=VALUE",
        help="Keyword argument of your factory, repeatable (values are Python literals).")] = None,
    weights: Annotated[Path | None, typer.Option(help=(
        "Trained weights of your model (a state dict, or a dict holding one under "
        "'state_dict' or 'model'); without, a baseline is trained here and cached."))] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Supernet folder (an unfinished one is resumed).")] = Path("supernet"),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of sandwich-rule training.")] = 10,
    random_widths: Annotated[int, typer.Option(min=0, help="Random widths per step, besides the largest and the smallest.")] = 2,
    lr: Annotated[float, typer.Option(min=1e-6, help="Peak learning rate (warm-up, then cosine).")] = 0.05,
    samples: Annotated[int, typer.Option(min=10, help="Sub-networks scored (BN recalibrated, validation split) to fit the accuracy predictor.")] = 100,
    calib_batches: Annotated[int, typer.Option(min=1, help="Training batches (of 64) for BatchNorm recalibration.")] = 8,
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution (digits: 32 upsamples, 8 is native).")] = 32,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier of the zoo model.")] = 1.0,
    round_to: Annotated[int, typer.Option(min=1, help="Channel counts are multiples of this.")] = 8,
    min_ratio: Annotated[float, typer.Option(min=0.01, max=1.0, help="Fewest channels a unit keeps, as a fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of widths, data order and samples.")] = 0,
    until_step: Annotated[int | None, typer.Option(min=1, help="Stop after this step (checkpointed); run again to resume.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache (default $AUTOPRUNE_CACHE or ~/.cache/autoprune).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars (stderr).")] = True,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Train an elastic-width supernet from a trained dense network (a zoo model's cached
    baseline, or your own model and data).

    Channels of every unit are sorted by importance, then each step trains the largest, the
    smallest and --random-widths random sub-networks (sandwich rule), the others distilled
    from the largest (in-place distillation). Checkpoints every 25 steps; re-running the same
    command resumes. Then --samples sub-networks are scored to fit the accuracy predictor.
    """
    from autoprune.ofa.train import SupernetSettings, train_supernet

    output_folder(output, "-o")
    output_folder(cache_dir, "--cache-dir")
    source_options(model, data)
    try:
        settings = SupernetSettings(model=model, data=data, model_args=tuple(model_arg or ()),
                                    weights=str(weights) if weights else None,
                                    image_size=image_size,
                                    width_mult=width_mult, round_to=round_to, min_ratio=min_ratio,
                                    epochs=epochs, lr=lr, random_widths=random_widths, seed=seed,
                                    calib_batches=calib_batches, samples=samples, output=output,
                                    cache_dir=cache_dir, progress=progress, device=device)
        summary = train_supernet(settings, until_step=until_step, console=err)
    except _user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    if not summary["done"]:
        err.print(f"stopped at step {summary['step']} of {summary['total_steps']} "
                  f"(checkpointed); resume with the same command", highlight=False)
        return
    q, s = summary["predictor"], summary["sampled"]
    err.print(f"supernet ready in {summary['path']}: {summary['units']} units, "
              f"{summary['total_steps']} steps in {summary['train_seconds']:.0f}s; sampled "
              f"sub-networks: largest {s['largest']:.4f}, smallest {s['smallest']:.4f} validation "
              f"accuracy (dense baseline {summary['baseline_val_accuracy']:.4f}); predictor on "
              f"{q['n_test']} held-out sub-networks: Spearman {q['spearman']:.3f}, Kendall "
              f"{q['kendall']:.3f}, MAE {q['mae']:.4f}", highlight=False)


@app.command()
def extract(
    supernet: Annotated[Path, typer.Argument(help="Supernet folder (autoprune ofa train -o ...).")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="BUDGET", help=TARGET_HELP)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help=(
        "With one --target: the .pt file to write (its .json is written next to it). With "
        "several: a folder. Default: <supernet>/subnets/<target>.pt."))] = None,
    generations: Annotated[int, typer.Option(min=1, help="Generations of the evolutionary search.")] = 12,
    population: Annotated[int, typer.Option(min=4, help="Population of the evolutionary search.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = 0,
    lut: Annotated[Path | None, typer.Option(help="Latency lookup table (autoprune profile); default: built once and cached.")] = None,
    batch: Annotated[int, typer.Option(min=1, help=LATENCY_OPTS)] = 1,
    threads: Annotated[int, typer.Option(min=1, help=LATENCY_OPTS)] = 1,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP + " " + LATENCY_OPTS)] = "torch",
    cache_dir: Annotated[Path | None, typer.Option(help="Where the latency table is cached.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Extract one sub-network per --target from a trained supernet (seconds, no retraining).

    An evolutionary search scored by the accuracy predictor finds the configuration; its
    leading channels are sliced into a standalone model, BatchNorm is recalibrated, a latency
    budget is checked by measuring the extracted model, and model + JSON are saved in the
    form autoprune.load_pruned reads.
    """
    from autoprune.ofa import Supernet
    from autoprune.ofa.search import (LatencySetup, check_channel_targets, extraction_table,
                                      save_subnetwork)
    from autoprune.settings import slug
    from autoprune.targets import parse_targets

    if output is not None and len(target) == 1 and output.suffix == ".pt":
        output_file(output, "-o", "subnet.pt")
    else:
        if output is not None and len(target) == 1 and output.suffix and not output.is_dir():
            fail(f"-o {output}: with one --target, name the .pt to write (its .json is written "
                 "beside it), e.g. -o subnet.pt, or a folder")
        output_folder(output, "-o")
    output_folder(cache_dir, "--cache-dir")
    lut_file(lut)
    try:
        if output is not None and len(target) > 1 and output.suffix == ".pt":
            raise ValueError(f"-o {output} names one file but {len(target)} targets were given; "
                             "pass a folder")
        check_channel_targets([parse_targets(t) for t in target])  # before the supernet loads
        sn = Supernet.load(supernet, device=device)
        extractions = sn.specialise(
            target, latency=LatencySetup(lut=lut, device=timing_device(
                batch=batch, threads=threads, backend=backend, clock="auto", device=device),
                                         cache_dir=cache_dir),
            generations=generations, population=population, seed=seed, console=err)
        paths = []
        for e in extractions:
            if output is None:
                path = Path(supernet) / "subnets" / f"{slug(e.target)}.pt"
            elif len(target) == 1 and output.suffix == ".pt":
                path = output
            else:
                path = output / f"{slug(e.target)}.pt"
            paths.append(save_subnetwork(e, path, sn))
    except _user_errors() as e:
        fail(str(e))
    err.print(extraction_table(extractions))
    for e, p in zip(extractions, paths):
        err.print(f"{e.target}: wrote {p} and {p.with_suffix('.json').name} (autoprune."
                  f"load_pruned({str(p.parent)!r}, choice={p.stem!r}))", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps([{**e.summary(), "path": str(p)}
                                     for e, p in zip(extractions, paths)], indent=2) + "\n")
    if not all(e.met for e in extractions):
        err.print("[bold red]a budget was missed when measured[/] (load on this machine slows "
                  "measurements; leave more room or rebuild the latency table when it is quiet)")
        raise typer.Exit(code=1)


@app.command()
def front(
    supernet: Annotated[Path, typer.Argument(help="Supernet folder (autoprune ofa train -o ...).")],
    metric: Annotated[str, typer.Option(help="Cost axis: latency (measured here), flops or params.")] = "latency",
    points: Annotated[int, typer.Option(min=2, help="Budgets from the thinnest to the dense network.")] = 8,
    lut: Annotated[Path | None, typer.Option(help="Latency lookup table; default: built once and cached.")] = None,
    batch: Annotated[int, typer.Option(min=1, help=LATENCY_OPTS)] = 1,
    threads: Annotated[int, typer.Option(min=1, help=LATENCY_OPTS)] = 1,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP + " " + LATENCY_OPTS)] = "torch",
    cache_dir: Annotated[Path | None, typer.Option(help="Where the latency table is cached.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the front as JSON on stdout.")] = False,
) -> None:
    """The accuracy-cost front of a supernet: the best sub-network at budgets over the whole
    range, each extracted and scored; a table, <supernet>/front.json and front.png."""
    from autoprune.ofa import Supernet
    from autoprune.ofa.search import LatencySetup, front as run, front_view

    output_folder(cache_dir, "--cache-dir")
    lut_file(lut)
    try:
        sn = Supernet.load(supernet, device=device)
        result = run(sn, metric=metric, points=points,
                     latency=LatencySetup(lut=lut, device=timing_device(
                         batch=batch, threads=threads, backend=backend, clock="auto",
                         device=device),
                                          cache_dir=cache_dir),
                     plot=Path(supernet) / "front.png", console=err)
    except _user_errors() as e:
        fail(str(e))
    (Path(supernet) / "front.json").write_text(json.dumps(result, indent=1) + "\n")
    err.print(front_view(result))
    err.print(f"wrote {Path(supernet) / 'front.json'} and {result['plot']}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
