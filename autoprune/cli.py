"""``autoprune`` on the command line. Each command builds settings and makes one API call.

Heavy imports (torch and everything that needs it) happen inside the commands, so ``--help``
is fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app", "main"]

TARGET_HELP = (
    "Budget, repeatable: flops=50% (of the dense model), flops=20M, macs=0.2G, params=0.1M, "
    "params=30%. 'flops' counts multiply-accumulates (MACs) as the pruning literature does "
    "(CIFAR ResNet-56 = 125M); 'macs' is a synonym."
)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search how much to prune in each layer of a network to meet a budget.")
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoprune.api import SearchError

    return (ValueError, SearchError, FileNotFoundError)


@app.command()
def search(
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="BUDGET", help=TARGET_HELP)] = ["flops=50%"],  # noqa: B006
    model: Annotated[str, typer.Option(help="Zoo model (autoprune models lists them).")] = "resnet20",
    data: Annotated[str, typer.Option(help="Dataset: 'digits' (scikit-learn, embedded).")] = "digits",
    agent: Annotated[str, typer.Option(help="Search agent (autoprune agents lists them).")] = "random",
    objective: Annotated[str, typer.Option(
        help="accuracy: the best network within the budgets. pareto: the front of accuracy "
             "against the first --target's cost, from the thinnest network up to that budget, "
             "with its hypervolume (front.json); needs an agent that handles several "
             "objectives (nsga2, tpe, gp, random); autoprune pick then chooses from it.")] = "accuracy",
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study, counting resumed ones.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the agent and data order.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(
        help="Run folder (default runs/<model>-<data>-<targets>-<agent>-s<seed>); an existing "
             "one is resumed.")] = None,
    round_to: Annotated[int, typer.Option(min=1, help="Channel counts are multiples of this.")] = 8,
    min_ratio: Annotated[float, typer.Option(min=0.01, max=1.0,
                                             help="Fewest channels a unit keeps, as a fraction.")] = 0.2,
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution (digits: 32 upsamples, 8 is native).")] = 32,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier of the zoo model.")] = 1.0,
    calib_batches: Annotated[int, typer.Option(min=0, help="Training batches for adaptive BatchNorm.")] = 16,
    finetune_steps: Annotated[int, typer.Option(min=0, help="SGD steps per candidate before scoring.")] = 0,
    executor: Annotated[str, typer.Option(help="Where trials run: local.")] = "local",
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache (default $AUTOPRUNE_CACHE or ~/.cache/autoprune).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars (stderr).")] = True,
) -> None:
    """Search per-unit channel counts that meet every --target at the best validation accuracy.

    Trains (and caches) the dense baseline if needed, scores each candidate after adaptive
    BatchNorm on a validation split carved from the training data, and writes the run folder:
    study.db (optuna), best.json, pruned.pt, pareto.png, summary.json.
    """
    from autoprune.api import SearchSettings, search as run

    settings = SearchSettings(model=model, data=data, image_size=image_size, width_mult=width_mult,
                              targets=tuple(target), agent=agent, objective=objective,
                              seed=seed, round_to=round_to,
                              min_ratio=min_ratio, calib_batches=calib_batches,
                              finetune_steps=finetune_steps, trials=trials, executor=executor,
                              run_dir=run_dir, cache_dir=cache_dir, progress=progress)
    try:
        summary = run(settings, console=err)
    except _user_errors() as e:
        _fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")


@app.command()
def pick(
    run: Annotated[Path, typer.Option("--run", help="A finished run folder (autoprune search "
                                                    "--run-dir).")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="BUDGET", help=TARGET_HELP)],
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Choose from a finished run (e.g. a Pareto front) the best network meeting --target.

    No new search: the run's trials are filtered by the new budgets, the best is pruned,
    scored (validation and test) and written as pick-<target>.json / .pt in the run folder.
    """
    from autoprune.api import pick as pick_from_run

    try:
        summary = pick_from_run(run, tuple(target), cache_dir=cache_dir, console=err)
    except _user_errors() as e:
        _fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Zoo model (autoprune models lists them).")] = "resnet20",
    data: Annotated[str, typer.Option(help="Dataset: 'digits'.")] = "digits",
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution.")] = 32,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier.")] = 1.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: per model).")] = None,
    retrain: Annotated[bool, typer.Option(help="Train again even if a cached baseline exists.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the baseline record as JSON.")] = False,
) -> None:
    """Train (or load from the cache) the dense baseline that searches start from."""
    from autoprune.train import load_or_train_baseline

    try:
        _, _, record = load_or_train_baseline(model, data, image_size=image_size,
                                              width_mult=width_mult, epochs=epochs,
                                              cache_dir=cache_dir, retrain=retrain)
    except _user_errors() as e:
        _fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
    else:
        metrics = record.get("metrics", record)
        err.print(f"{model} on {data}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            + f"  ({'cached' if record.get('cached') else 'trained'}: {record.get('weights_path')})")


@app.command("models")
def list_models() -> None:
    """List the zoo models."""
    from autoprune.models import available_models

    for name in available_models():
        typer.echo(name)


@app.command("agents")
def list_agents() -> None:
    """List the search agents, one line each."""
    from autoprune.agents import agent_descriptions

    for name, text in agent_descriptions().items():
        typer.echo(f"{name:12s} {text}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
