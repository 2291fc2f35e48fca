"""``autoprune space``: what a search could prune in a model, before any search or training.
Registered on the app by ``main``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from autoprune.cli.checks import source_options, space_options
from autoprune.cli.common import (DATA_HELP, GRANULARITY_HELP, INPUT_SHAPE_HELP, MIN_RATIO_HELP,
                                  MODEL_ARG_HELP, MODEL_HELP, SEARCH, fail, source, space,
                                  user_errors)

__all__ = ["space_command"]


def space_command(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = SEARCH.source.model,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE", help=MODEL_ARG_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Weights of your model (torch.load with weights_only=True). Not needed: which "
             "units there are depends on the architecture alone.")] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    data: Annotated[str, typer.Option(help=DATA_HELP + " It gives the input shape.")] = SEARCH.source.data,
    image_size: Annotated[int, typer.Option(min=8, help="Input resolution.")] = SEARCH.source.image_size,
    width_mult: Annotated[float, typer.Option(min=0.05, help="Width multiplier of the zoo model.")] = SEARCH.source.width_mult,
    output: Annotated[str | None, typer.Option(
        help="The model output pruning must keep when it returns several (a ModelOutput field "
             "such as logits, a dict key or a tuple position; default: the first tensor).")] = SEARCH.source.output,
    granularity: Annotated[str, typer.Option(help=GRANULARITY_HELP)] = SEARCH.space.space,
    round_to: Annotated[int, typer.Option(min=1, help="Channel counts are multiples of this.")] = SEARCH.space.round_to,
    min_ratio: Annotated[float | None, typer.Option(min=0.01, max=1.0, help=MIN_RATIO_HELP)] = SEARCH.space.min_ratio,
    levels: Annotated[str, typer.Option(
        help="Sparsity levels (percent) a weight tensor may take, with --granularity "
             "unstructured.")] = ",".join(f"{100 * v:g}" for v in SEARCH.space.levels),
    nm: Annotated[str, typer.Option(
        "--nm", help="N:M patterns a layer may follow besides dense, with --granularity nm.")] = ",".join(SEARCH.space.nm),
    include_ends: Annotated[bool, typer.Option(
        "--include-ends", help="Prune the first and last layers too (weight granularity).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Show what a search could prune: the units found (name, kind, width, floor), the share
    of the dense MACs and parameters the thinnest network removes, and every layer kept dense
    with its reason. Needs the architecture only: nothing is trained."""
    from rich.console import Console

    from autoprune.coverage import coverage_tables, space_coverage
    from autoprune.search_spaces import make_space
    from autoprune.spaces import check_space
    from autoprune.zoo.tasks import zoo_architecture

    source_options(model, data)
    space_options(granularity)
    try:
        src = source(model, data, image_size, width_mult, output=output, model_arg=model_arg,
                     weights=weights, input_shape=input_shape)
        settings = space(granularity, criterion=None, levels=levels, nm=nm,
                         include_ends=include_ends, round_to=round_to, min_ratio=min_ratio)
        check_space(settings, ())
        net, example = zoo_architecture(src.model, src.data, image_size=src.image_size,
                                        width_mult=src.width_mult, model_args=src.model_args,
                                        weights=src.weights, input_shape=src.input_shape)
        built = make_space(settings.space, net, example, round_to=settings.round_to,
                           min_ratio=settings.min_ratio, output=src.output, **settings.options())
        report = space_coverage(built, net, example)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    Console().print(coverage_tables(report))
