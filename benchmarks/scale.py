"""What a search costs on models of real size: space building, per-trial overhead, peak memory.

For each model (built from its ``transformers`` config: random weights, since cost and memory do
not depend on weight values) and each granularity, one child process (so that its peak RSS is
its own) builds the space and runs a ``--trials`` random search through ``autoprune.allocate``
with an evaluator that runs the pruned network once on the example and returns its loss. It
reports:

- ``build s``: building the search space (``make_space``) and preparing it once per search
  (``SearchSpace.prepare``: a weight-sparse space's statistics and level store);
- ``dense fwd s``: one forward pass of the dense model on the example (after one to warm up,
  the median of 5 before the search and 3 after it);
- ``setup s``: once per search, building the cost model's forms and checking what the
  evaluator returns (its evaluation not counted);
- ``overhead/trial``: the search's own seconds per trial, everything but the evaluator
  (pruning, costing, the agent, the study), and as a multiple of the dense forward;
- ``x fwd paired``: the same multiple measured trial by trial, which a host whose speed moves
  in phases cannot skew: the evaluator also times one dense forward, and each gap between two
  evaluations (a trial's overhead) is divided by the mean of the two forwards beside it. The
  median over the trials (the first, which holds the setup, left out);
- ``peak RSS``: the child's peak resident memory, in GB and as a multiple of the fp32 weights.

The example is 1 x 64 tokens (one 224 px image for ResNet-50), on one thread. Budgets:
``flops=50%`` for channels (heads, MLP widths and the residual width), ``sparsity=50%`` for
the unstructured spaces (Wanda or SparseGPT) and ``sparsity=25%`` for N:M 2:4 by magnitude
(2:4 in every layer is exactly 50%, a search with one answer).

    python benchmarks/scale.py                                   # every model, every granularity
    python benchmarks/scale.py --models gpt2 --granularities channel wanda
    python benchmarks/scale.py --before d343c69                  # the same, for that commit too
    python benchmarks/scale.py --models tinyllama-1.1b --granularities channel --round-trip

``--round-trip`` saves each chosen network as a run folder holds it (``Allocation.save``),
reloads it with ``load_pruned`` and checks that it scores the loss the search recorded.
Children run with ``THP_MEM_ALLOC_ENABLE=1`` (huge pages for large tensors), as the CLI does.

``--before REV`` runs every child a second time on the code of ``REV`` (a git worktree in a
temporary folder) and puts its rows beside. A child that fails, or passes ``--max-rss-gb``
(default 20: the host has 24 GB and no swap) and is stopped, is a row saying so. Writes benchmarks/results/scale.json (``--tag T``: scale-T.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

#: name -> (transformers config class, its arguments); the example is 64 tokens or one image
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet50": ("ResNetConfig", {}),
    "gpt2": ("GPT2Config", {}),
    "decoder-246m": ("LlamaConfig", {"hidden_size": 1024, "num_hidden_layers": 16,
                                     "num_attention_heads": 16, "num_key_value_heads": 4,
                                     "intermediate_size": 2816, "vocab_size": 32000}),
    "tinyllama-1.1b": ("LlamaConfig", {"hidden_size": 2048, "num_hidden_layers": 22,
                                       "num_attention_heads": 32, "num_key_value_heads": 4,
                                       "intermediate_size": 5632, "vocab_size": 32000}),
}

#: granularity -> (space, criterion, target, space options)
GRANULARITIES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "channel": ("channel", "l2", "flops=50%", {}),
    "wanda": ("unstructured", "wanda", "sparsity=50%", {}),
    "sparsegpt": ("unstructured", "sparsegpt", "sparsity=50%", {}),
    # (2:4 everywhere is exactly 50%: a search needs room, so half the weights go 2:4)
    "nm": ("nm", "magnitude", "sparsity=25%", {"nm": ["2:4"]}),
}


def _build(name: str, dtype: str) -> tuple[Any, tuple[Any, ...], str]:
    import torch  # noqa: PLC0415 - the child's own imports
    import transformers  # noqa: PLC0415

    cls, args = MODELS[name]
    config = getattr(transformers, cls)(**args)
    torch.manual_seed(0)
    if name == "resnet50":
        model = transformers.ResNetForImageClassification(config)
        x = (torch.randn(1, 3, 224, 224),)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
        x = (torch.randint(0, config.vocab_size, (1, 64)),)
    model = model.to(getattr(torch, dtype)).eval()
    if x[0].is_floating_point():
        x = (x[0].to(getattr(torch, dtype)),)
    return model, x, "logits"


def _loss(out: Any, x: Any) -> float:
    import torch  # noqa: PLC0415

    logits = out.logits.float()
    if logits.dim() == 2:  # an image classifier: the loss of class 0
        return float(torch.nn.functional.cross_entropy(logits, torch.zeros(1, dtype=torch.long)))
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]))


def _round_trip(alloc: Any, model: Any, x: Any) -> dict[str, Any]:
    """The chosen network saved as a run folder holds it (``Allocation.save``: weights, the
    choice, a ``torch.export`` program), reloaded with ``load_pruned`` and scored as the search
    scored it: the loss must be the one recorded."""
    import torch  # noqa: PLC0415
    from autoprune import load_pruned  # noqa: PLC0415

    folder = Path(tempfile.mkdtemp(prefix="autoprune-scale-"))
    try:
        t0 = time.perf_counter()
        alloc.save(folder)
        save_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e9
        t0 = time.perf_counter()
        net = load_pruned(folder, model=model)
        load_s = time.perf_counter() - t0
        with torch.no_grad():
            again = _loss(net(*x), x[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    scored = alloc.metrics.get("loss")
    return {"files_gb": size, "save_s": save_s, "load_s": load_s, "scored_loss": scored,
            "reloaded_loss": again, "same": scored == again, "rss_after_gb": _rss_gb()}


def child(name: str, granularity: str, trials: int, dtype: str,
          round_trip: bool = False, agent: str = "random",
          levels: list[float] | None = None) -> dict[str, Any]:
    """One model at one granularity, in this process: what the table shows."""
    import torch  # noqa: PLC0415

    import autoprune  # noqa: PLC0415
    from autoprune.search_spaces import make_space  # noqa: PLC0415

    torch.set_num_threads(1)
    model, x, output = _build(name, dtype)
    params = sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {"params": params, "weights_gb": params * 4 / 1e9,
                           "rss_start_gb": _rss_gb()}
    def forwards(n: int) -> list[float]:
        out = []
        with torch.no_grad():
            for _ in range(n):
                t = time.perf_counter()
                model(*x)
                out.append(time.perf_counter() - t)
        return out

    forwards(1)  # (a first forward allocates and warms what the others reuse)
    times = forwards(5)
    space_name, criterion, target, options = GRANULARITIES[granularity]
    extra = dict(options)
    if criterion != "l2":
        extra["criterion"] = criterion
    if criterion in ("wanda", "sparsegpt"):
        extra["calibration"] = [(x, x[0])]
    if levels and space_name == "unstructured":
        extra["levels"] = tuple(levels)
        row["levels"] = list(levels)
    t0 = time.perf_counter()
    space = make_space(space_name, model, x, round_to=8, min_ratio=0.25, output=output, **extra)
    row["build_s"] = time.perf_counter() - t0
    row["units"] = space.dim
    spent = [0.0]
    marks: list[tuple[float, float, float]] = []  # per evaluation: start, end, dense forward s

    def evaluate(pruned: Any) -> dict[str, float]:
        t = time.perf_counter()
        with torch.no_grad():
            loss = _loss(pruned(*x), x[0])
            # one dense forward beside each trial (counted as evaluating, not as overhead):
            # the host's speed moves in phases of 10-30 s, so each trial's overhead is
            # divided by the forwards timed just before and after it
            f = time.perf_counter()
            model(*x)
            end = time.perf_counter()
        marks.append((t, end, end - f))
        spent[0] += end - t
        return {"loss": loss}

    import autoprune.api  # noqa: F401, PLC0415 - imported before the clock starts, not in it
    t0 = time.perf_counter()
    alloc = autoprune.allocate(model, example_inputs=x, target=target, evaluate=evaluate,
                               agent=agent, trials=trials, space=space, output=output)
    total = time.perf_counter() - t0
    row["trials"] = len(alloc.trials)
    row["evaluate_s"] = spent[0]
    # the space's once-per-search work (a weight-sparse level store) belongs to building it
    resources = getattr(alloc, "resources", None) or {}
    prepare = float(resources.get("prepare_s", 0.0))
    # once per search: the cost forms and the evaluator's first check (its evaluation is in
    # ``spent``); code older than this split has it in the overhead
    setup = float(resources.get("setup_s", 0.0))
    row["prepare_s"] = prepare
    row["setup_s"] = setup
    row["build_s"] += prepare
    row["overhead_per_trial_s"] = (total - spent[0] - prepare - setup) / max(1, len(alloc.trials))
    # the dense forward before and after the search, so that a host busier at one end than
    # the other does not decide the ratio
    times += forwards(3)
    row["dense_forward_s"] = statistics.median(times)
    row["dense_forward_spread_s"] = [min(times), max(times)]
    row["overhead_x_forward"] = row["overhead_per_trial_s"] / row["dense_forward_s"]
    # paired: the time between two evaluations (one trial's overhead; the first gap, which
    # holds the search's setup, left out) over the mean of the dense forwards beside it
    paired = [(b[0] - a[1]) / ((a[2] + b[2]) / 2) for a, b in zip(marks[1:], marks[2:])]
    row["paired_x_forward"] = statistics.median(paired) if paired else None
    row["paired_x_forward_all"] = paired
    row["loss"] = alloc.metrics.get("loss")
    template = getattr(space, "_template", None)  # a channel space's scores kept per cut
    if template is not None and getattr(template, "scored_asked", 0):
        row["scores_kept"] = template.scored_kept / template.scored_asked
    row["peak_rss_gb"] = _rss_gb()
    row["peak_x_weights"] = row["peak_rss_gb"] / row["weights_gb"]
    if round_trip:  # (after the search's own peak is taken)
        row["round_trip"] = _round_trip(alloc, model, x)
    return row


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _worktree(rev: str) -> Path:
    """The code of ``rev`` in a temporary folder, importable as ``autoprune`` (its
    ``agents``/``search_spaces`` linked in as the installed package maps them)."""
    where = Path(tempfile.mkdtemp(prefix="autoprune-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    for sub in ("agents", "search_spaces"):
        (where / "autoprune" / sub).symlink_to(where / sub)
    return where


def _run_child(name: str, granularity: str, args: argparse.Namespace,
               code: Path | None) -> dict[str, Any]:
    # huge pages for large tensors, as the CLI sets them (autoprune.cli.main)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, __file__, "--child", name, granularity, "--trials", str(args.trials),
           "--dtype", args.dtype, "--agent", args.agent] + \
        (["--round-trip"] if args.round_trip else []) + \
        (["--levels", *map(str, args.levels)] if args.levels else [])
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errs:
        child_proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=errs, text=True,
                                      cwd=str(code or ROOT))
        stopped = None
        while child_proc.poll() is None:  # a watchdog: this machine has no swap
            time.sleep(0.5)
            if _rss_of(child_proc.pid) > args.max_rss_gb:
                stopped = f"stopped at {args.max_rss_gb:g} GB of RSS"
            elif time.perf_counter() - t0 > args.timeout:
                stopped = f"did not finish in {args.timeout} s"
            if stopped:
                child_proc.kill()
                child_proc.wait()
                return {"status": stopped, "wall_s": time.perf_counter() - t0}
        out.seek(0)
        errs.seek(0)
        stdout, stderr = out.read(), errs.read()
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return {"status": "ok", **json.loads(line), "wall_s": time.perf_counter() - t0}
    why = "killed (out of memory?)" if child_proc.returncode < 0 else f"exit {child_proc.returncode}"
    tail = (stderr.strip().splitlines() or [""])[-1][:200]
    return {"status": f"failed: {why}: {tail}"}


def _rss_of(pid: int) -> float:
    """A running process's resident memory (GB; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    if row is None:
        return ""
    if row.get("status") != "ok":
        return row.get("status", "")[:40] if key == "build_s" else ""
    return format(row[key], fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--granularities", nargs="+", default=list(GRANULARITIES),
                    choices=list(GRANULARITIES))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--agent", default="random", help="the search agent (default: random)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--before", metavar="REV", help="also run the code of this commit")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per child")
    ap.add_argument("--max-rss-gb", type=float, default=20.0,
                    help="a child past this resident memory is stopped (the host has no swap)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--round-trip", action="store_true",
                    help="search into a run folder, reload its chosen network with load_pruned "
                         "and check it scores what the search recorded")
    ap.add_argument("--levels", nargs="+", type=float, metavar="L",
                    help="the unstructured spaces' grid of sparsity levels (default: the "
                         "space's, 0 and 0.5-0.98, 8 in all). A trial reads one level per "
                         "layer, so its overhead does not depend on how many there are; the "
                         "level store's build does (SparseGPT on the 1.1B decoder: about 4 s "
                         "a layer and level on this host, 70 min for the default grid)")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "GRANULARITY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.trials, args.dtype, args.round_trip,
                               args.agent, args.levels)))
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console(width=max(132, Console().width))  # every column whole
    before = _worktree(args.before) if args.before else None
    out = RESULTS / (f"scale-{args.tag}.json" if args.tag else "scale.json")
    rows: list[dict[str, Any]] = []
    try:
        for name in args.models:
            for gran in args.granularities:
                console.print(f"{name} / {gran} ...")
                row = {"model": name, "granularity": gran, "now": _run_child(name, gran, args, None)}
                if before is not None:
                    row["before"] = _run_child(name, gran, args, before)
                rows.append(row)
                RESULTS.mkdir(exist_ok=True)
                out.write_text(json.dumps({"host": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count(), "trials": args.trials,
                                           "dtype": args.dtype, "before": args.before,
                                           "levels": args.levels,
                                           "rows": rows}, indent=1))
    finally:
        if before is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                           capture_output=True)
            shutil.rmtree(before, ignore_errors=True)
    table = Table(title=f"search cost, {args.trials} trials ({args.agent}), {args.dtype}, "
                        "1 thread" + (f", levels {args.levels}" if args.levels else ""))
    for col in ("model", "granularity", "params", "dense fwd s", "build s", "setup s",
                "overhead/trial s", "x fwd", "x fwd paired", "peak RSS GB", "x weights"):
        table.add_column(col, justify="left" if col in ("model", "granularity") else "right")
    for r in rows:
        for label, res in (("", r["now"]), (f"before ({args.before})", r.get("before"))):
            if res is None:
                continue
            params = f"{res['params'] / 1e6:.0f}M" if res.get("status") == "ok" else ""
            table.add_row(r["model"] if not label else "", r["granularity"] if not label else label,
                          params, _cell(res, "dense_forward_s", ".2f"), _cell(res, "build_s", ".1f"),
                          _cell(res, "setup_s", ".1f") if res.get("setup_s") is not None else "",
                          _cell(res, "overhead_per_trial_s", ".2f"),
                          _cell(res, "overhead_x_forward", ".1f"),
                          _cell(res, "paired_x_forward", ".2f")
                          if res.get("paired_x_forward") is not None else "",
                          _cell(res, "peak_rss_gb", ".2f"),
                          _cell(res, "peak_x_weights", ".2f"))
    console.print(table)
    for r in rows:
        if (r["now"] or {}).get("scores_kept") is not None:
            console.print(f"{r['model']} / {r['granularity']}: {r['now']['scores_kept']:.0%} of "
                          "the units' score lookups answered by scores kept for the same cuts")
    for r in rows:
        trip = (r["now"] or {}).get("round_trip")
        if trip:
            console.print(f"round trip, {r['model']} / {r['granularity']}: saved {trip['files_gb']:.2f} GB "
                          f"in {trip['save_s']:.1f} s, load_pruned {trip['load_s']:.1f} s; loss "
                          f"scored {trip['scored_loss']!r}, reloaded {trip['reloaded_loss']!r}: "
                          f"{'the same' if trip['same'] else 'DIFFERENT'}")
    console.print(f"written: {out}")


if __name__ == "__main__":
    main()
