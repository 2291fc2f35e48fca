"""What the command-line modules share: the defaults (read from the settings, so the library
holds the one copy), the help texts of options several commands take, and how a command turns
its options into settings and a user's mistake into one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from autoprune.settings import LatencySettings, ModelSource, ProfileSettings, SearchSettings, SpaceSettings

__all__ = ["BACKEND_HELP", "MIN_RATIO_HELP", "LATENCY", "PROFILE", "SEARCH", "BATCH_HELP", "CLOCK_HELP", "CRITERION_HELP", "DATA_HELP", "DEVICE_HELP", "TIMING_DEVICE_HELP", "DTYPE_HELP",
           "GRANULARITY_HELP", "INPUT_SHAPE_HELP", "MODEL_ARG_HELP", "MODEL_HELP", "TARGET_HELP",
           "THREADS_HELP", "WEIGHTS_HELP", "absolute", "err", "fail", "source", "space", "timing_device",
           "user_errors"]

# Every default below is read from the settings, so the library holds the one copy.
SEARCH, PROFILE, LATENCY = SearchSettings(), ProfileSettings(), LatencySettings()

TARGET_HELP = (
    "Budget, repeatable: latency=10ms (also us, s; measured on this machine), flops=50% (of the "
    "dense model), flops=20M, macs=0.2G, params=0.1M, params=30%. 'flops' counts "
    "multiply-accumulates (MACs) as the pruning literature does (CIFAR ResNet-56 = 125M); "
    "'macs' is a synonym."
)
# The same three options on profile, search and latency: what a latency refers to.
BATCH_HELP = "Batch size a latency is for."
MODEL_HELP = ("Zoo model (autoprune models lists them), or your own: path/to/file.py:factory or "
              "package.module:factory, a callable returning an nn.Module.")
MODEL_ARG_HELP = ("Keyword argument of your factory, name=value (repeatable; values read as "
                  "Python literals where they parse, else strings).")
WEIGHTS_HELP = ("Weights of your model (torch.load with weights_only=True): a state dict, or a "
                "dict holding one under 'state_dict' or 'model'. Without: a baseline is trained "
                "and cached.")
DTYPE_HELP = ("Precision of the search: float32 (default), bfloat16 or float16. The dense "
              "weights and every pruned network are held in it (half the memory), inputs are "
              "cast to it, and size= budgets count its bytes; the run folder records it, so "
              "pick, recover and export rebuild the network in it.")
MIN_RATIO_HELP = ("Fewest elements every unit keeps, as a fraction (default: a floor per kind of "
                  "unit: CNN channels 0.2, MLP neurons 0.05, the residual width of a "
                  "transformer 0.5, attention heads 0.2, a mixture-of-experts layer's experts 0.2).")
INPUT_SHAPE_HELP = "One sample's input shape without the batch, e.g. 3x32x32 (default: the data's)."
DATA_HELP = ("Data source: digits (scikit-learn's images, embedded), python-stdlib (the text of "
             "this Python's standard library, for --model chargpt; scored by loss), or "
             "path/to/file.npz with arrays x (images) and y (labels), optionally x_test and "
             "y_test, or an image folder: one sub-folder per class of PNG/JPEG files, with "
             "train/ val/ test/ sub-folders if you have them, read a batch at a time (both "
             "resized to --image-size, normalised per channel).")
CRITERION_HELP = (
    "How each unit ranks its channels (the lowest go): l2 (default; the L2 magnitude of the "
    "channel's whole coupled group), l1, taylor (first-order Taylor, Molchanov), hessian "
    "(Optimal Brain Damage's diagonal saliency), bn-scale (|gamma|, Network Slimming), fpgm "
    "(geometric median), apoz (share of zero activations) or reconstruction (the next layer's "
    "output without the channel, ThiNet). taylor, hessian, apoz and reconstruction rank on "
    "batches of the training split. Attention heads are ranked by magnitude. With "
    "--granularity unstructured or nm: magnitude (default), wanda (|W| times the input's "
    "norm) or sparsegpt (layer-wise second-order reconstruction), on the same batches.")
GRANULARITY_HELP = (
    "What is pruned: channel (default: whole channels and heads, a physically smaller "
    "network), unstructured (single weights of every conv/linear, at --levels), nm (N of "
    "every M consecutive weights along the input dimension, the patterns of --nm) or "
    "channel+unstructured (both in one search: latency and flops= budgets steer the "
    "channels, sparsity= and size= the single weights, params= counts non-zeros). The first "
    "and last layers and embeddings stay dense unless --include-ends. A latency budget needs "
    "channel (or channel+unstructured): this CPU's dense kernels gain nothing from "
    "scattered zeros.")
THREADS_HELP = "CPU threads a latency is for (torch.set_num_threads / intra_op_num_threads)."
BACKEND_HELP = ("Runtime a latency is for: torch (eager, on the CPU), onnxruntime (CPU), cuda "
                "(torch eager on a CUDA GPU, timed with CUDA events; --device cuda:N picks the "
                "GPU), or onnxruntime-cuda / onnxruntime-tensorrt (onnxruntime's GPU providers: "
                "pip install onnxruntime-gpu).")
CLOCK_HELP = ("How calls are timed: cpu (the calling thread's CPU time; unaffected by other "
              "processes taking turns on the core), wall (elapsed time), cuda (CUDA events, "
              "for --backend cuda), or auto (cpu with --threads 1, else wall; cuda with "
              "--backend cuda).")

TIMING_DEVICE_HELP = ("The GPU a GPU --backend times on: cuda or cuda:N (auto: the first). CPU "
                      "backends time on this machine's CPU.")
DEVICE_HELP = ("Where scoring, fine-tuning, statistics and training run: cpu, cuda (the first "
               "GPU), cuda:N, or auto (cuda when torch sees a GPU, else cpu). Not what a "
               "latency is for: a latency on the GPU is --backend cuda.")

err = Console(stderr=True)


def fail(message: str) -> None:
    """One error, then exit 2; options the message names that this command lacks are said to
    be those of the command that made its input (:func:`~autoprune.cli.hints.fit_to_command`)."""
    from rich.markup import escape

    from autoprune.cli.hints import fit_to_command

    err.print(f"[bold red]error:[/] {escape(fit_to_command(message))}", highlight=False)
    raise typer.Exit(code=2)


def source(model: str, data: str, image_size: int, width_mult: float, *,
            output: str | None = None, model_arg: list[str] | None = None,
            weights: Path | None = None, input_shape: str | None = None,
            dtype: str = "float32") -> ModelSource:
    """The ModelSource of a command's options (the input shape parsed here, lazily)."""
    shape = None
    if input_shape:
        from autoprune.user_model import parse_input_shape

        shape = parse_input_shape(input_shape)
    model = absolute(model) or model  # a file: recorded by absolute path
    if data.strip().endswith(".npz") or Path(data.strip()).expanduser().is_dir():
        # a file or a folder of the user's: recorded by absolute path
        data = str(Path(data.strip()).expanduser().resolve())
    return ModelSource(model=model, data=data, image_size=image_size, width_mult=width_mult,
                       output=output, model_args=tuple(model_arg or ()),
                       weights=str(Path(weights).expanduser().resolve()) if weights else None,
                       input_shape=shape, dtype=dtype)


def space(granularity: str, *, criterion: str | None, levels: str, nm: str,
           **rest: object) -> SpaceSettings:
    """The SpaceSettings of search's options: ``--levels`` in percent, ``--nm`` a list, and the
    criterion defaulting to the granularity's own (l2 where channels are pruned, magnitude
    for weights only)."""
    usage = "percents separated by commas, e.g. 0,50,80,90"
    try:
        percents = [float(v.strip().removesuffix("%")) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--levels takes {usage}; got {levels!r}") from None
    if not percents:
        raise ValueError(f"--levels takes {usage}; got none")
    if bad := [f"{v:g}" for v in percents if not 0 <= v < 100]:
        raise ValueError(f"--levels takes percents from 0 up to (not including) 100, the share "
                         f"of a tensor's weights removed; got {', '.join(bad)} (e.g. 0,50,80,90)")
    if len(set(percents)) != len(percents):
        raise ValueError(f"--levels {levels} repeats a level; list each once")
    points = tuple(v / 100.0 for v in percents)
    patterns = tuple(p.strip() for p in nm.split(",") if p.strip())
    if not patterns:
        raise ValueError("--nm takes N:M patterns separated by commas, e.g. 2:4,1:4; got none")
    default = "l2" if granularity in ("channel", "channel+unstructured") else "magnitude"
    return SpaceSettings(space=granularity, criterion=criterion or default, levels=points,
                         nm=patterns, **rest)  # type: ignore[arg-type]


def timing_device(*, batch: int, threads: int, backend: str, clock: str, device: str) -> Any:
    """The latency ``Device`` of a command's --batch, --threads, --backend and --clock, on the
    GPU that --device names (``cuda:N``) when the backend is a GPU one."""
    from autoprune.latency.device import Device

    index = device.strip().lower().partition(":")[2]
    return Device(batch=batch, threads=threads, backend=backend,
                  clock=None if clock == "auto" else clock,
                  gpu=int(index) if index.isdigit() else 0)


def absolute(spec: str | None) -> str | None:
    """``file.py:fn`` with the file by its absolute path (a run folder records it)."""
    if not spec:
        return spec
    where, colon, name = spec.rpartition(":")
    if colon and (where.endswith(".py") or "/" in where):
        return f"{Path(where).expanduser().resolve()}:{name}"
    return spec


def user_errors() -> tuple[type[BaseException], ...]:
    from autoprune.errors import SearchError
    from autoprune.latency.device import BackendError

    return (ValueError, SearchError, FileNotFoundError, BackendError)
