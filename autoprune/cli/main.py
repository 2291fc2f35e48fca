"""``autoprune`` on the command line. Each command builds settings and makes one API call.

Heavy imports (torch and everything that needs it) happen inside the commands, so ``--help``
is fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from autoprune.cli.common import (MIN_RATIO_HELP, BACKEND_HELP, BATCH_HELP, CLOCK_HELP, CRITERION_HELP, DATA_HELP,
                                  DEVICE_HELP, DTYPE_HELP, GRANULARITY_HELP, MODEL_ARG_HELP, MODEL_HELP,
                                  SEARCH, TARGET_HELP, THREADS_HELP, WEIGHTS_HELP, absolute, err,
                                  timing_device,
                                  fail, source, space, user_errors)
from autoprune.agents import AUTO
from autoprune.cli.checks import (chosen_network, export_format, lut_file, output_file,
                                  output_folder, pick_targets, recover_options, search_options,
                                  source_options, space_options, train_options)
from autoprune.cli.device import latency, profile
from autoprune.cli.ofa import app as ofa_app
from autoprune.cli.space import space_command
from autoprune.settings import ExecutorSettings, ScoringSettings, SearchSettings

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search how much to prune in each layer of a network to meet a budget.")


@app.command()
def search(
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="BUDGET", help=TARGET_HELP)] = list(SEARCH.targets),  # noqa: B006
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = SEARCH.source.model,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE", help=MODEL_ARG_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = SEARCH.source.dtype,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = SEARCH.source.data,
    agent: Annotated[str, typer.Option(
        help="Search agent (autoprune agents lists them). auto (the default): "
             f"{AUTO[1]}, which measures each unit's sensitivity curve (the unit alone "
             "thinned, scored outside the budget), allocates the budget from the curves and "
             f"refines the allocation; {AUTO[2]} for --objective pareto. 'a+b' chains two, e.g. erk+tpe: ERK's "
             "allocations first, then TPE starting from them.")] = SEARCH.agent,
    objective: Annotated[str, typer.Option(
        help="accuracy: the best network within the budgets. pareto: the front of accuracy "
             "against the first --target's cost, from the thinnest network up to that budget, "
             "with its hypervolume (front.json); needs an agent that handles several "
             "objectives (nsga2, tpe, gp, random); autoprune pick then chooses from it.")] = SEARCH.objective,
    reward: Annotated[str, typer.Option(
        help="Reward of the RL agents (ddpg, td3), AMC's two: acc (-error; the budget is kept by "
             "bounding each action) or acc-flops (-error * log FLOPs, AMC's accuracy-guaranteed "
             "reward).")] = SEARCH.reward,
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study, counting resumed ones.")] = SEARCH.trials,
    seed: Annotated[int, typer.Option(help="Seed of the agent and data order.")] = SEARCH.seed,
    run_dir: Annotated[Path | None, typer.Option(
        help="Run folder (default runs/<model>-<data>-<targets>-<agent>-s<seed>); an existing "
             "one is resumed.")] = None,
    storage: Annotated[str | None, typer.Option(
        metavar="URL",
        help="Keep the study in a shared database instead of the run folder's study.db: an "
             "optuna RDB URL, e.g. postgresql+psycopg://user:password@host:5432/db (pip "
             "install 'autoprune[postgres]') or mysql+pymysql://... Many runs share one "
             "database, each under a study name of its own; run.json records it, so a "
             "resume (without --storage) and autoprune pick need only the folder.")] = None,
    round_to: Annotated[int, typer.Option(min=1, help="Channel counts are multiples of this.")] = SEARCH.space.round_to,
    min_ratio: Annotated[float | None, typer.Option(min=0.01, max=1.0, help=MIN_RATIO_HELP)] = SEARCH.space.min_ratio,
    criterion: Annotated[str | None, typer.Option(help=CRITERION_HELP)] = None,
    granularity: Annotated[str, typer.Option(help=GRANULARITY_HELP)] = SEARCH.space.space,
    levels: Annotated[str, typer.Option(
        help="Sparsity levels (percent) a weight tensor may take, with --granularity "
             "unstructured.")] = ",".join(f"{100 * v:g}" for v in SEARCH.space.levels),
    nm: Annotated[str, typer.Option(
        "--nm", help="N:M patterns a layer may follow besides dense, with --granularity nm "
                     "(2:4 keeps half, 1:4 a quarter; 4:8 and others where asked).")] = ",".join(SEARCH.space.nm),
    include_ends: Annotated[bool, typer.Option(
        "--include-ends", help="Prune the first and last layers too (weight granularity).")] = False,
    storage_format: Annotated[str, typer.Option(
        help="How a sparse weight is stored, for size= budgets and the saved pruned.sparse.pt: "
             "dense, bitmap (a bit per weight plus the non-zero values) or csr (values, "
             "column indices and row pointers, index bits packed).")] = SEARCH.space.storage_format,
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution (digits are 8x8, upsampled to this).")] = SEARCH.source.image_size,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier of the zoo model.")] = SEARCH.source.width_mult,
    output: Annotated[str | None, typer.Option(
        help="The model output pruning must keep when it returns several (a ModelOutput field "
             "such as logits, a dict key or a tuple position; default: the first tensor).")] = SEARCH.source.output,
    evaluator: Annotated[str | None, typer.Option(
        help="Your own metric: file.py:fn or package.module:fn, called as fn(model, batches) "
             "with the validation split's (inputs, targets) batches; it returns a dict with "
             "accuracy (higher is better) or loss (lower is better). Adaptive BN and "
             "--finetune-steps run first.")] = None,
    calib_batches: Annotated[int, typer.Option(min=0, help="Training batches for adaptive BatchNorm.")] = SEARCH.scoring.calib_batches,
    finetune_steps: Annotated[int, typer.Option(min=0, help="Fine-tune steps per candidate before scoring (SGD for images, AdamW for text).")] = SEARCH.scoring.finetune_steps,
    executor: Annotated[str, typer.Option(
        help="Where trials run: local (this process, one at a time) or ray (Ray Tune: a local "
             "Ray, or the cluster of --ray-address; needs pip install 'ray[tune]').")] = SEARCH.executor.executor,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Trials in flight at once (--executor ray; default: as many as the Ray "
                    "cluster's CPUs hold at --cpus-per-trial each).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Join a running Ray cluster: auto, or host:port of its head (ray start --head "
             "prints it, e.g. 127.0.0.1:6379). Default: start a local Ray for this search.")] = None,
    cpus_per_trial: Annotated[float, typer.Option(
        min=0.01, help="CPUs Ray reserves per trial; torch in a trial uses that many threads "
                       "(at least 1).")] = SEARCH.executor.cpus_per_trial,
    gpus_per_trial: Annotated[float, typer.Option(
        min=0.0, help="GPUs each Ray trial reserves (--executor ray): 0 (default) runs trials on "
                      "their CPUs; a fraction such as 0.5 puts two trials on one GPU. Inside a "
                      "trial its GPU is cuda:0.")] = SEARCH.executor.gpus_per_trial,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = SEARCH.executor.device,
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache (default $AUTOPRUNE_CACHE or ~/.cache/autoprune).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars (stderr).")] = True,
    lut: Annotated[Path | None, typer.Option(
        help="Latency lookup table (autoprune profile -o ...); default: built on first use and "
             "cached next to the baselines.")] = None,
    batch: Annotated[int, typer.Option(min=1, help=BATCH_HELP)] = SEARCH.device.batch,
    threads: Annotated[int, typer.Option(min=1, help=THREADS_HELP)] = SEARCH.device.threads,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = SEARCH.device.backend,
    clock: Annotated[str, typer.Option(help=CLOCK_HELP)] = "auto",
    recover_steps: Annotated[int | None, typer.Option(
        "--recover", min=1, metavar="STEPS",
        help="After the search, recover the chosen network: fine-tune it STEPS steps on the "
             "training split (as autoprune recover RUN --steps STEPS does) and rewrite the "
             "run folder with it.")] = None,
    distill: Annotated[bool, typer.Option(
        "--distill", help="With --recover: distil from the dense network (KL at T=4, half "
                          "the loss).")] = False,
    gradual: Annotated[bool, typer.Option(
        "--gradual", help="With --recover: start from the dense network and prune to the "
                          "chosen widths gradually (AGP's cubic schedule).")] = False,
) -> None:
    """Search per-unit channel counts that meet every --target at the best validation score.

    Trains (and caches) the dense baseline if needed, scores each candidate on a validation
    split carved from the training data (images: accuracy after adaptive BatchNorm; text:
    loss and perplexity per character), and writes the run folder:
    study.db (optuna), best.json, pruned.pt, pareto.png, summary.json. With a latency target
    candidates are costed by an on-device lookup table and the chosen network is measured.
    """
    from autoprune.search_job import search as run

    if (distill or gradual) and not recover_steps:
        fail("--distill and --gradual are options of the recovery: add --recover STEPS")
    output_folder(run_dir, "--run-dir")
    output_folder(cache_dir, "--cache-dir")
    source_options(model, data)
    space_options(granularity)
    search_options(target, executor, storage_format)
    lut_file(lut)

    try:
        settings = SearchSettings(
            source=source(model, data, image_size, width_mult, output=output,
                           model_arg=model_arg, weights=weights, dtype=dtype),
            space=space(granularity, round_to=round_to, min_ratio=min_ratio,
                         criterion=criterion, levels=levels, nm=nm, include_ends=include_ends,
                         storage_format=storage_format),
            scoring=ScoringSettings(calib_batches=calib_batches, finetune_steps=finetune_steps,
                                    evaluator=absolute(evaluator)),
            device=timing_device(batch=batch, threads=threads, backend=backend, clock=clock,
                                 device=device),
            executor=ExecutorSettings(executor=executor, workers=workers,
                                      ray_address=ray_address, cpus_per_trial=cpus_per_trial,
                                      gpus_per_trial=gpus_per_trial, device=device),
            targets=tuple(target), agent=agent, objective=objective, reward=reward, seed=seed,
            trials=trials, run_dir=run_dir, storage=storage, cache_dir=cache_dir,
            progress=progress, lut=lut)
        summary = run(settings, console=err)
        if not recover_steps and not summary.get("dense_meets_budgets"):
            options = "[--distill]" if "sparse" in summary else \
                "[--distill | --gradual | --reconstruct]"
            err.print(f"not recovered yet: fine-tune it on the training split with autoprune "
                      f"recover {summary['run_dir']} --steps 300 {options} (or search with "
                      "--recover STEPS)", highlight=False, markup=False)
        if recover_steps and summary.get("dense_meets_budgets"):
            err.print("[yellow]note:[/] nothing was pruned, so nothing to recover")
        elif recover_steps:
            from autoprune.recover import recover_run

            summary["recovery"] = recover_run(summary["run_dir"], steps=recover_steps,
                                              distill=distill, gradual=gradual, seed=seed,
                                              cache_dir=cache_dir, progress=progress,
                                              console=err, device=device)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if summary.get("latency", {}).get("met_when_measured") is False:
        raise typer.Exit(code=1)


@app.command()
def pick(
    run: Annotated[Path | None, typer.Argument(
        metavar="RUN", show_default=False,
        help="A finished run folder (autoprune search --run-dir).")] = None,
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="BUDGET", help=TARGET_HELP)] = [],  # noqa: B006
    run_option: Annotated[Path | None, typer.Option(
        "--run", help="The run folder, as an option (the same as RUN).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache folder.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    lut: Annotated[Path | None, typer.Option(
        help="A latency table measured on the device the network will run on (autoprune "
             "profile --from-timings): a latency= budget is then costed with it, for that "
             "device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Choose from a finished run (e.g. a Pareto front) the best network meeting --target.

    No new search: the run's trials are filtered by the new budgets, the best is pruned,
    scored (validation and test) and written as pick-<target>.json / .pt in the run folder.
    """
    if run is not None and run_option is not None and run != run_option:
        fail(f"two run folders given, {run} and --run {run_option}; pass one: autoprune pick "
             "RUN --target BUDGET")
    run = run if run is not None else run_option
    if run is None:
        fail("pick needs the folder of a finished search to choose from: autoprune pick RUN "
             "--target BUDGET")
    if not target:
        fail("pick needs a budget to choose by: add --target, e.g. --target flops=50%")
    output_folder(cache_dir, "--cache-dir")
    pick_targets(target, lut)
    lut_file(lut)
    from autoprune.pick_run import pick as pick_from_run

    try:
        summary = pick_from_run(run, tuple(target), cache_dir=cache_dir, console=err,
                                device=device, lut=lut)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")



@app.command()
def recover(
    run: Annotated[Path, typer.Argument(help="A finished run folder (autoprune search "
                                             "--run-dir).")],
    steps: Annotated[int, typer.Option(min=0, help="Optimizer steps of fine-tuning on the "
                                                   "training split (0 only with "
                                                   "--reconstruct).")],
    reconstruct: Annotated[bool, typer.Option(
        "--reconstruct", help="First refit, by least squares on 8 training batches, the layers "
                              "that read pruned channels so their outputs match the dense "
                              "network's (He et al. 2017; no training).")] = False,
    distill: Annotated[bool, typer.Option(
        "--distill", help="Distil from the dense network: alpha T^2 KL(teacher || student) + "
                          "(1 - alpha) cross-entropy, T=4, alpha=0.5 (Hinton et al. 2015).")] = False,
    gradual: Annotated[bool, typer.Option(
        "--gradual", help="Start from the dense network and prune to the chosen widths in 4 "
                          "stages on AGP's cubic schedule over the first two thirds of the "
                          "steps, then fine-tune (Zhu & Gupta 2017).")] = False,
    lr: Annotated[float | None, typer.Option(
        min=0.0, help="Learning rate (cosine decay to 0); default 0.01 with SGD, 5e-4 with "
                      "AdamW (what the baseline trained with: transformers and text).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the training order.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (stderr).")] = True,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Recover a run's chosen network: fine-tune it, then rewrite the run folder with it.

    Trains on the training split only and scores on the run's validation split (adaptive BN,
    as the search scored) once per epoch, or 4 times when --steps is under an epoch; test is
    scored once, at the end. best.json gets the recovered metrics with before_recovery and a
    recovery block beside them; pruned.pt (load_pruned), pruned.pt2 and summary.json hold
    the recovered network. A killed recovery resumes from RUN/recover.ckpt. A run recovered
    before is recovered further from its recovered weights (--gradual starts from dense).
    """
    from autoprune.recover import recover_run

    output_folder(cache_dir, "--cache-dir")
    recover_options(steps)
    try:
        result = recover_run(run, steps=steps, distill=distill, gradual=gradual, lr=lr,
                             seed=seed, reconstruct=reconstruct, cache_dir=cache_dir,
                             progress=progress, console=err, device=device)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


@app.command()
def train(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "vgg11",
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE", help=MODEL_ARG_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution.")] = SEARCH.source.image_size,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier.")] = 1.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (images; default: per model).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        min=1, help="Most training steps (text; default 10000: training stops earlier, when the "
                    "validation loss stops improving).")] = None,
    retrain: Annotated[bool, typer.Option(help="Train again even if a cached baseline exists.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(help="Baseline cache folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the baseline record as JSON.")] = False,
) -> None:
    """Train (or load from the cache) the dense baseline that searches start from.

    Images train for --epochs; the text decoder trains until its validation loss stops
    improving, and its curve is printed.
    """
    from autoprune.zoo.tasks import TEXT_SOURCES

    output_folder(cache_dir, "--cache-dir")
    source_options(model, data)
    train_options(model, data, weights)
    try:
        from autoprune.placement import resolve_device

        place = resolve_device(device)
        if data.strip().lower() in TEXT_SOURCES:
            from autoprune.zoo.language import load_or_train_language_baseline
            from autoprune.zoo.tasks import zoo_architecture

            if epochs is not None:
                fail("--epochs is for images; the text decoder trains until its validation "
                      "loss stops improving, at most --max-steps")
            zoo_architecture(model, data)  # a model that reads no text fails before the corpus
            _, _, record = load_or_train_language_baseline(
                model, width_mult=width_mult, cache_dir=cache_dir, retrain=retrain,
                max_steps=max_steps, device=place)
        elif ":" in model:  # a factory of the user's: weights given, or trained and cached
            from autoprune.zoo.tasks import load_task

            task = load_task(model, data, image_size=image_size, epochs=epochs,
                             cache_dir=cache_dir, model_args=tuple(model_arg or ()),
                             weights=str(weights) if weights else None, device=place)
            record = task.baseline
            if weights:  # trained already: scored, not trained again
                record = {**record, "metrics": task.scores(), "trained": False}
        else:
            if max_steps is not None:
                fail("--max-steps is for text; images train for --epochs")
            from autoprune.zoo.train import load_or_train_baseline

            _, _, record = load_or_train_baseline(model, data, image_size=image_size,
                                                  width_mult=width_mult, epochs=epochs,
                                                  cache_dir=cache_dir, retrain=retrain,
                                                  device=place)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
        return
    if "curve" in record:
        from autoprune.report import curve_table

        err.print(curve_table(record["curve"], best_step=record["best_step"]))
    metrics = record.get("metrics", record)
    err.print(f"{model} on {data}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        + (f"  (your weights, nothing trained: {record.get('weights_path')})"
           if record.get("trained") is False else
           f"  ({'cached' if record.get('cached') else 'trained'}: {record.get('weights_path')})"))


# The measuring commands live in their own module; listed here, after train.
app.command()(profile)
app.command()(latency)
app.command("space")(space_command)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder (its best.json), or a chosen-network "
                                             "JSON: pick-*.json, or an ofa extract result.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[str | None, typer.Option(
        "--format", help="onnx, torchscript, exported-program (torch.export, .pt2) or "
                         "state_dict; default: from the file's suffix (.onnx, .ts, .pt2, .pt); "
                         "another suffix needs --format.")] = None,
    atol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance of the check.")] = 1e-4,
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance of the check.")] = 1e-3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Write a chosen network for deployment, checked against torch.

    The exported network is run on random inputs of the recorded shape (onnxruntime for
    onnx) and must reproduce the pruned torch network's output within atol + rtol x |output|.
    """
    from autoprune.export import ExportError, export_choice

    chosen_network(run, "RUN")
    output_file(output, "-o", "model.onnx")
    export_format(output, fmt)
    try:
        done = export_choice(run, output, fmt=fmt, atol=atol, rtol=rtol)
    except (*user_errors(), ExportError) as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(done.summary(), indent=2) + "\n")
    check = ("weights only" if done.max_abs_diff is None else
             f"largest difference from torch {done.max_abs_diff:.2e} ({done.tolerance})")
    err.print(f"wrote {done.path} ({done.format}, {done.bytes / 1e6:.3f} MB); {check}",
              highlight=False)


@app.command("models")
def list_models() -> None:
    """List the zoo models and the data each reads."""
    from autoprune.zoo.models import available_models

    for name in available_models("images"):
        typer.echo(f"{name:12s} images (--data digits)")
    for name in available_models("text"):
        typer.echo(f"{name:12s} text (--data python-stdlib)")


@app.command("agents")
def list_agents() -> None:
    """List the search agents, one line each."""
    from autoprune.agents import agent_descriptions

    for name, text in agent_descriptions().items():
        typer.echo(f"{name:12s} {text}")
    typer.echo("\nChain agents with '+': --agent erk+tpe runs ERK until it is done, then TPE, "
               "which starts from ERK's results.")
    typer.echo(f"The default, --agent auto, is {AUTO[1]} ({AUTO[2]} for --objective pareto).")


# The once-for-all commands live in their own module.
app.add_typer(ofa_app, name="ofa")


def main() -> None:
    # torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages: a
    # trial's network is written into fresh memory, and faulting it in 4 KB pages cost as much
    # as the copy itself (benchmarks/scale.py). Read at torch's first allocation; a user's
    # THP_MEM_ALLOC_ENABLE=0 keeps it off.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    app()
