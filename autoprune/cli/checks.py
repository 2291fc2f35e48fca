"""Checks of a command's options that need no work: a path that cannot be written, an option
that the chosen model, data or granularity would ignore. Each failure is one error naming the
fix, raised before anything is loaded or trained."""

from __future__ import annotations

from pathlib import Path

from autoprune.cli.common import fail
from autoprune.cli.hints import current_context

__all__ = ["chosen_network", "config_network", "export_format", "given", "lut_file",
           "output_file", "output_folder", "pick_targets", "recover_options", "search_options", "source_options",
           "space_options", "train_options"]


def given(name: str) -> bool:
    """Whether the running command's option ``name`` (its Python name) was given, not left
    at its default."""
    ctx = current_context()
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def _file_above(path: Path) -> Path | None:
    """The nearest existing folder-to-be above ``path`` that is a file, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(path: Path | None, option: str, example: str) -> None:
    """``path`` can be written as a file: not a folder, and under folders (``example``: a
    file name to suggest inside a folder given by mistake)."""
    if path is None:
        return
    where = Path(path).expanduser()
    if where.is_dir():
        fail(f"{option} {path} is a folder; name the file to write, e.g. {option} "
             f"{Path(path) / example}")
    if (blocker := _file_above(where)) is not None:
        fail(f"{option} {path}: {blocker} is a file, not a folder; choose a path whose folders "
             "are folders (missing ones are created)")


def output_folder(path: Path | None, option: str) -> None:
    """``path`` can be a folder: not a file, and under folders."""
    if path is None:
        return
    where = Path(path).expanduser()
    if where.exists() and not where.is_dir():
        fail(f"{option} {path} is a file; name a folder (it is created if missing)")
    if (blocker := _file_above(where)) is not None:
        fail(f"{option} {path}: {blocker} is a file, not a folder; choose a path whose folders "
             "are folders (missing ones are created)")


def source_options(model: str, data: str) -> None:
    """Options the model or data would ignore: --model-arg, --weights and --input-shape are
    for a model of one's own, --width-mult for a zoo model, --image-size for images."""
    from autoprune.user_model import is_factory  # noqa: PLC0415 - torch: after --help
    from autoprune.zoo.models import LANGUAGE_MODELS, available_models  # noqa: PLC0415
    from autoprune.zoo.tasks import TEXT_SOURCES  # noqa: PLC0415

    name = model.strip().lower()
    if name in available_models():
        own = "pass your model as --model path/to/file.py:factory"
        if given("model_arg"):
            fail(f"--model-arg is for a model of your own, but {name} is a zoo model (it "
                 f"takes --width-mult); for your own, {own}")
        if given("weights"):
            fail(f"--weights is for a model of your own, but {name} is a zoo model, whose "
                 f"baseline is trained here and cached (autoprune train); for your own, {own}")
        if given("input_shape"):
            fail(f"--input-shape is for a model of your own, but {name} is a zoo model: its "
                 "input comes from --data and --image-size")
    elif is_factory(model) and given("width_mult"):
        fail("--width-mult scales a zoo model; give your own model its width through its "
             "factory's arguments, e.g. --model-arg width=32")
    if name in LANGUAGE_MODELS and data.strip().lower() in TEXT_SOURCES and given("image_size"):
        fail(f"--image-size is for images; {data.strip()} is text (the decoder reads fixed "
             "64-character contexts)")


def search_options(targets: list[str], executor: str, storage_format: str) -> None:
    """search's options that the rest of its command line would ignore, and a storage format
    it does not know (refused before the baseline loads, not after)."""
    from autoprune.costs import STORAGE_FORMATS  # noqa: PLC0415 - torch

    if given("lut") and not any(t.strip().lower().startswith("latency") for t in targets):
        fail("--lut is the latency table that latency= budgets are costed with, and no "
             "--target here is one; add e.g. --target latency=10ms, or leave out --lut")
    if executor == "local" and given("cpus_per_trial"):
        fail("--cpus-per-trial is what Ray reserves for each trial: add --executor ray (the "
             "local executor runs one trial at a time in this process)")
    if storage_format not in STORAGE_FORMATS:
        fail(f"unknown --storage-format {storage_format!r}; choose one of "
             f"{', '.join(STORAGE_FORMATS)}")


# The options of search that each granularity uses (channel uses none of them).
_SPACE_OPTIONS = {"channel": (),
                  "unstructured": ("levels", "include_ends", "storage_format"),
                  "nm": ("nm", "include_ends", "storage_format"),
                  "channel+unstructured": ("levels", "include_ends", "storage_format")}


def space_options(granularity: str) -> None:
    """search's options that ``granularity`` would ignore (--levels with channels, --nm
    without nm, ...) are one error; an unknown granularity is left to the space's check,
    which lists them."""
    if granularity not in _SPACE_OPTIONS:
        return
    for name in ("levels", "nm", "include_ends", "storage_format"):
        if given(name) and name not in _SPACE_OPTIONS[granularity]:
            option = "--" + name.replace("_", "-")
            takes = [g for g, names in _SPACE_OPTIONS.items() if name in names]
            fail(f"{option} is for --granularity {_or(takes)}; this search prunes "
                 f"--granularity {granularity}, which would ignore it. Add --granularity "
                 f"{takes[0]} or leave out {option}")


def export_format(output: Path, fmt: str | None) -> None:
    """export's file and format agree: a suffix that names no format needs --format (so -o
    mynet.py is not overwritten with ONNX), and one that names another format is refused."""
    from autoprune.export import EXPORT_FORMATS, format_of  # noqa: PLC0415 - torch

    named = format_of(output)
    if fmt is None and named is None:
        fail(f"-o {output}: its suffix names no export format; name the file .onnx, .ts "
             f"(torchscript), .pt2 (exported-program) or .pt (state_dict), or pass --format")
    if fmt in EXPORT_FORMATS and named is not None and named != fmt:
        fail(f"-o {output}: its suffix is that of {named}, but --format is {fmt}; make them "
             "agree (or leave out --format: the suffix decides)")


def config_network(config: Path | None) -> None:
    """latency --config measures the network the run recorded: options that describe another
    network would be ignored, and are refused."""
    if config is None:
        return
    names = ("model", "model_arg", "weights", "input_shape", "data", "image_size", "width_mult")
    if ignored := ["--" + n.replace("_", "-") for n in names if given(n)]:
        fail(f"--config {config} measures the network that run recorded (its model, data and "
             f"input shape), so {', '.join(ignored)} would be ignored; leave "
             f"{'it' if len(ignored) == 1 else 'them'} out, or leave out --config to measure "
             "a dense model")


def train_options(model: str, data: str, weights: Path | None) -> None:
    """train's options that its model would ignore: --max-steps trains text only, weights of
    one's own are scored, not trained (--epochs), and --retrain is the zoo cache's."""
    from autoprune.user_model import is_factory  # noqa: PLC0415 - torch: after --help
    from autoprune.zoo.tasks import TEXT_SOURCES  # noqa: PLC0415

    if data.strip().lower() in TEXT_SOURCES:
        return
    if given("max_steps"):
        fail("--max-steps is for text (the decoder trains until its validation loss stops "
             "improving); images train for --epochs")
    if not is_factory(model):
        return
    if weights is not None and given("epochs"):
        fail("with --weights nothing is trained (your weights are scored), so --epochs would "
             "be ignored; leave it out, or leave out --weights to train a baseline here")
    if given("retrain"):
        fail("--retrain is for zoo models: your own model's baseline is cached under its "
             "file, --model-arg, data and --epochs, and trained anew when one of them changes")


def recover_options(steps: int) -> None:
    """recover's training options with --steps 0 (a refit alone: nothing is trained)."""
    if steps == 0 and (ignored := [o for o, n in (("--distill", "distill"), ("--lr", "lr"))
                                   if given(n)]):
        fail(f"--steps 0 trains nothing (the --reconstruct refit alone), so "
             f"{' and '.join(ignored)} would be ignored; give --steps N to fine-tune, or leave "
             f"{'it' if len(ignored) == 1 else 'them'} out")


def pick_targets(targets: list[str], lut: Path | None = None) -> None:
    """pick chooses by the costs a run's space computes (flops, params, sparsity, size), and
    by latency only with a table measured on the device (``--lut``): a latency= budget
    without one is refused before the run is opened."""
    if lut is None and any(t.strip().lower().startswith("latency") for t in targets):
        fail("pick chooses by flops=, params= (and, for weights, sparsity= or size=); a "
             "latency= budget needs the device's table: --lut lut.json from autoprune profile "
             "--from-timings (a table of another device). For this machine's latency, search: "
             "autoprune search --target latency=10ms ...")


def lut_file(lut: Path | None) -> None:
    """--lut names a table's file: a folder is refused (a missing file is the table's own
    error, or where it is built)."""
    if lut is not None and Path(lut).expanduser().is_dir():
        fail(f"--lut {lut} is a folder; pass a latency table's file (autoprune profile -o "
             "lut.json writes one), or leave out --lut to build and cache one")


def chosen_network(source: Path, what: str) -> None:
    """A supernet folder where a chosen network is read (export RUN, latency --config): say
    how to get one from it."""
    where = Path(source).expanduser()
    if where.is_dir() and (where / "supernet.json").exists():
        fail(f"{what} {source} is a supernet folder, which holds no chosen network: extract "
             f"one first with autoprune ofa extract {source} --target flops=50% ..., then pass "
             "the .json it writes")


def _or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
