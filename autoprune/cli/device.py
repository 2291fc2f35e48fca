"""``autoprune profile`` and ``autoprune latency``: what this machine measures (a latency
lookup table, a network's latency). Registered on the app by ``main``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from autoprune.cli.common import (MIN_RATIO_HELP, BACKEND_HELP, BATCH_HELP, CLOCK_HELP, DATA_HELP, INPUT_SHAPE_HELP,
                                  MODEL_ARG_HELP, MODEL_HELP, THREADS_HELP, WEIGHTS_HELP, LATENCY, PROFILE,
                                  TIMING_DEVICE_HELP, err, fail, source, timing_device,
                                  user_errors)
from autoprune.cli.checks import (chosen_network, config_network, lut_file, output_file,
                                  output_folder, source_options)
from autoprune.settings import LatencySettings, ProfilePlan, ProfileSettings, SpaceSettings

__all__ = ["latency", "profile"]


def profile(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = PROFILE.source.model,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE", help=MODEL_ARG_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    data: Annotated[str, typer.Option(help=DATA_HELP + " It gives the input shape.")] = PROFILE.source.data,
    batch: Annotated[int, typer.Option(min=1, help=BATCH_HELP)] = PROFILE.device.batch,
    threads: Annotated[int, typer.Option(min=1, help=THREADS_HELP)] = PROFILE.device.threads,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = PROFILE.device.backend,
    clock: Annotated[str, typer.Option(help=CLOCK_HELP)] = "auto",
    device: Annotated[str, typer.Option(help=TIMING_DEVICE_HELP)] = "auto",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the table (JSON).")] = PROFILE.output,
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution.")] = PROFILE.source.image_size,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier.")] = PROFILE.source.width_mult,
    round_to: Annotated[int, typer.Option(min=1, help="Channel rounding of the search space.")] = PROFILE.space.round_to,
    min_ratio: Annotated[float | None, typer.Option(min=0.01, max=1.0, help=MIN_RATIO_HELP)] = PROFILE.space.min_ratio,
    grid: Annotated[int, typer.Option(min=2, help="Widths profiled per axis of each layer.")] = PROFILE.plan.grid,
    calibration: Annotated[int, typer.Option(
        min=2, help="Pruned networks measured whole to fit the correction (and its error).")] = PROFILE.plan.calibration,
    export_to: Annotated[Path | None, typer.Option(
        "--export-to", metavar="DIR",
        help="Time on another device instead: write into this new (or empty) folder the "
             "blocks and whole networks to time as ONNX, manifest.json and time_on_device.py "
             "(needs only numpy and onnxruntime there). On the device run `python "
             "DIR/time_on_device.py [--threads N]`; bring DIR/timings.json back and run "
             "`autoprune profile --from-timings DIR -o lut.json`. --threads and --batch are the "
             "device's.")] = None,
    from_timings: Annotated[Path | None, typer.Option(
        "--from-timings", metavar="DIR",
        help="Build the table from the timings a device wrote into an --export-to folder "
             "(DIR/timings.json), with the same correction and held-out check as a build "
             "here. A search with --lut then predicts for that device and says so.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table's summary as JSON.")] = False,
) -> None:
    """Build a latency lookup table for a model on this machine (minutes), with its error;
    or export one for another device to time (--export-to) and build it from the timings
    brought back (--from-timings).

    Each conv/linear layer is timed with its BatchNorm and activation at a grid of widths;
    a whole-network correction is fitted on real measurements of random pruned networks.
    """
    from autoprune.latency.jobs import profile as run

    output_file(output, "-o", "table.json")
    if export_to is not None and from_timings is not None:
        fail("--export-to and --from-timings are two steps: export first, time on the device, "
             "then build the table from the timings. Fix: give one of them")
    if from_timings is not None:
        _from_timings(from_timings, output, as_json)
        return
    output_folder(export_to, "--export-to")
    source_options(model, data)
    try:
        settings = ProfileSettings(
            source=source(model, data, image_size, width_mult, model_arg=model_arg,
                           weights=weights, input_shape=input_shape),
            space=SpaceSettings(round_to=round_to, min_ratio=min_ratio),
            # an export is timed by onnxruntime on the device, with the device's clock
            device=timing_device(batch=batch, threads=threads, backend="onnxruntime"
                                 if export_to is not None and backend == "torch" else backend,
                                 clock="auto" if export_to is not None else clock,
                                 device=device),
            output=output, plan=ProfilePlan(grid=grid, calibration=calibration))
        if export_to is not None:
            from autoprune.latency.jobs import export_profile

            summary = export_profile(settings, export_to, console=err)
        else:
            summary = run(settings, console=err)
    except user_errors() as e:
        fail(str(e))
    if export_to is not None:
        _print_export(summary, export_to, as_json)
    else:
        _print_table(summary, as_json)


def _print_export(summary: dict, folder: Path, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    err.print(f"wrote {summary['path']}: {summary['blocks']} blocks and {summary['networks']} "
              f"whole networks as ONNX ({summary['megabytes']} MB), manifest.json and "
              f"time_on_device.py in {summary['seconds']}s. On the device (numpy and "
              f"onnxruntime only): python {folder}/time_on_device.py --threads "
              f"{summary['threads']}; then here: autoprune profile --from-timings {folder} -o "
              "lut.json", highlight=False)


def _from_timings(folder: Path, output: Path, as_json: bool) -> None:
    from autoprune.latency.jobs import profile_from_timings
    from autoprune.latency.table import LatencyTableError

    if not Path(folder).is_dir():
        fail(f"--from-timings {folder} is not a folder; name the folder `autoprune profile "
             "--export-to` wrote (with the device's timings.json in it)")
    try:
        summary = profile_from_timings(folder, output)
    except (*user_errors(), LatencyTableError) as e:
        fail(str(e))
    _print_table(summary, as_json)
    if not summary["check"].get("passed", True):
        err.print(f"[yellow]the table failed its check[/] (median error "
                  f"{100 * summary['check']['median_abs_rel']:.1f}% on the networks it was not "
                  f"fitted on, limit {100 * summary['check']['limit']:.1f}%): the device's speed "
                  "changed while it timed the export, and a search refuses this table. Fix: "
                  f"time the export again on the device (python {folder}/time_on_device.py) "
                  "when nothing else runs there, then run this again", highlight=False)


def _print_table(summary: dict, as_json: bool) -> None:
    from autoprune.latency.device import describe_device

    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        c = summary["check"]
        where = (f" for {describe_device(summary['device'])}"
                 if summary["device"].get("measured_on") == "device" else "")
        err.print(f"wrote {summary['path']}{where}: {summary['layers']} layers, {summary['blocks']} "
                  f"blocks, {summary['grid_points']} grid points in {summary['build_seconds']}s; "
                  f"dense predicted {summary['dense_predicted_ms']:.2f} ms; error on "
                  f"{c['networks']} whole networks it was not fitted on: median "
                  f"{100 * c['median_abs_rel']:.1f}%, max {100 * c['max_abs_rel']:.1f}%, "
                  f"{100 * c['within_10pct']:.0f}% within 10% (the machine's re-measurement "
                  f"noise {100 * c['retest_median_abs_rel']:.1f}%)", highlight=False)


def latency(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = LATENCY.source.model,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE", help=MODEL_ARG_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    config: Annotated[Path | None, typer.Option(
        help="A run's best.json (or run folder): measure its pruned network instead of the dense one.")] = None,
    data: Annotated[str, typer.Option(help=DATA_HELP + " It gives the input shape.")] = LATENCY.source.data,
    batch: Annotated[int, typer.Option(min=1, help=BATCH_HELP)] = LATENCY.device.batch,
    threads: Annotated[int, typer.Option(min=1, help=THREADS_HELP)] = LATENCY.device.threads,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = LATENCY.device.backend,
    clock: Annotated[str, typer.Option(help=CLOCK_HELP)] = "auto",
    device: Annotated[str, typer.Option(help=TIMING_DEVICE_HELP)] = "auto",
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution.")] = LATENCY.source.image_size,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier.")] = LATENCY.source.width_mult,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = LATENCY.warmup,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls (median, p10, p90 reported).")] = LATENCY.repeats,
    lut: Annotated[Path | None, typer.Option(help="Also print this lookup table's prediction.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"median_ms","p10_ms","p90_ms","device"}.')] = False,
) -> None:
    """Measure a network's latency on this machine (median of single calls after warm-up)."""
    from autoprune.latency.device import describe_device
    from autoprune.latency.jobs import latency as run

    if config is not None:
        chosen_network(config, "--config")
    config_network(config)
    lut_file(lut)
    source_options(model, data)
    try:
        settings = LatencySettings(
            source=source(model, data, image_size, width_mult, model_arg=model_arg,
                           weights=weights, input_shape=input_shape),
            device=timing_device(batch=batch, threads=threads, backend=backend, clock=clock,
                                 device=device),
            config=config, warmup=warmup, repeats=repeats, lut=lut)
        result = run(settings)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        keys = ("median_ms", "p10_ms", "p90_ms", "device") + (("predicted_ms",) if lut else ())
        sys.stdout.write(json.dumps({k: result[k] for k in keys}, indent=2) + "\n")
        return
    net = result["network"]
    what = net["config"] if net["config"] == "dense" else f"configuration {net['config']}"
    pred = f"; table predicts {result['predicted_ms']:.2f} ms" if "predicted_ms" in result else ""
    wall = (f"; wall-clock median {result['wall_median_ms']:.2f} ms"
            if result["device"]["clock"] != "wall" else "")
    typer.echo(f"{net['model']} ({what}): median {result['median_ms']:.2f} ms (p10 "
               f"{result['p10_ms']:.2f}, p90 {result['p90_ms']:.2f}) on "
               f"{describe_device(result['device'])}{wall}{pred}")
