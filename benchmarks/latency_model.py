"""How well does the latency lookup table predict measured latency, against FLOPs and roofline?

For each model: build a lookup table on this machine (timed), draw random configurations (not
those the table was calibrated on), prune to each and measure it for real (``--passes``
passes, 6 by default, each over all networks in a fresh shuffled order, two more at a time
while the two halves disagree by over 5%, up to twice as many; the latency is the median of all
passes' samples, so a burst of contention during one pass moves it little), and compare
predictors:

* ``table``      the lookup table's prediction (what latency budgets are costed with);
* ``flops``      MACs times one scale, least-squares fitted *on the evaluated networks
                 themselves* -- the best case for FLOPs as a latency proxy;
* ``roofline``   the analytic roofline model (micro-benchmarked peak and bandwidth), raw.

Reported per model and over all: share of networks predicted within +-5% and +-10% of the
measurement, median absolute % error, Spearman rank correlation; the realized speedup against
the FLOPs reduction; and the *test-retest* agreement of the two halves of the measurement (the
median of the even passes' samples against the odd passes', ``pass_a_ms`` and ``pass_b_ms`` in
the rows), the noise ceiling no predictor can beat on a busy machine. Load averages before
and after are recorded.

    python benchmarks/latency_model.py            # resnet56, mobilenetv2, vgg11, vit, chargpt;
                                                  # torch and onnxruntime; 70 configs each
    python benchmarks/latency_model.py --quick    # resnet20 and mobilenetv2, 15 each (~2 min)
    python benchmarks/latency_model.py --models mobilenetv2 --configs 20 --seed 3

Every table is built with its own check (whole networks it was not fitted on) and kept even
when the check fails (``refuse=False``), so a failed build is reported, not hidden: the
``check`` columns say what the table said about itself, next to what it really scored.

Writes benchmarks/results/latency_model[-quick].json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from autoprune.latency.cache import anchor_to_now
from autoprune.latency.device import BackendError, Device, describe_device, resolve_clock
from autoprune.latency.measure import (make_runner, pinned_threads,
                               time_calls)
from autoprune.latency.table import LatencyTable, ProfilePlan
from autoprune.zoo.models import available_models
from autoprune.zoo.tasks import zoo_architecture
from autoprune.latency.roofline import RooflineCost
from autoprune.search_spaces import make_space

sys.path.insert(0, str(Path(__file__).resolve().parent))  # latency_scoring.py, beside this file
from latency_device import DEFAULT_VENV, device_python, run_model_device  # noqa: E402
from latency_scoring import (MAX_PASSES_FACTOR, MEASURE_NOISE, configs_for,  # noqa: E402
                             load, online_predictions, scores)

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True, kw_only=True)
class Settings:
    models: tuple[str, ...]
    configs: int
    warmup: int
    repeats: int
    passes: int
    threads: int
    backend: str
    clock: str
    batch: int
    image_size: int
    plan: ProfilePlan
    seed: int
    out: Path


def measure_all(nets: list[torch.nn.Module], x: torch.Tensor, s: Settings,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``s.passes`` passes (more on a noisy host, see ``MEASURE_NOISE``), each over every
    network in a fresh shuffled order; per network the median of the even passes' samples, of
    the odd passes' (the re-measurement: two independent estimates of the same networks) and
    of all of them (the latency), and the passes made."""
    passes: list[list[np.ndarray]] = []

    def pooled_median(which: range) -> np.ndarray:
        return np.array([np.median(np.concatenate([passes[p][i] for p in which]))
                         for i in range(len(nets))])

    with pinned_threads(s.threads), torch.inference_mode():
        runners = [make_runner(n, (x,), backend=s.backend, threads=s.threads) for n in nets]
        while True:
            for _ in range(s.passes if not passes else 2):
                row = [np.empty(0)] * len(nets)
                for i in rng.permutation(len(nets)):
                    timings = time_calls(runners[i], warmup=s.warmup, repeats=s.repeats)
                    row[i] = timings.of(s.clock) * 1e3
                passes.append(row)
            a, b = pooled_median(range(0, len(passes), 2)), pooled_median(range(1, len(passes), 2))
            if (np.median(np.abs(a / b - 1.0)) <= MEASURE_NOISE
                    or len(passes) + 2 > MAX_PASSES_FACTOR * s.passes):
                break
    return a, b, pooled_median(range(len(passes))), len(passes)


def run_model(name: str, s: Settings, roof: RooflineCost, console: Console) -> dict[str, Any]:
    torch.manual_seed(0)
    # the zoo model on its own data's inputs (digits images; python-stdlib ids for chargpt)
    data = "python-stdlib" if name in available_models("text") else "digits"
    model, example = zoo_architecture(name, data, image_size=s.image_size)
    x = Device(batch=s.batch).inputs(example)[0]
    space = make_space("channel", model, x[:1])
    load_before = load()
    table = LatencyTable.build(model, x, space=space,
                               device=Device(threads=s.threads, backend=s.backend,
                                             batch=s.batch, clock=s.clock),
                               plan=replace(s.plan, seed=s.seed), console=console, refuse=False)
    built = table
    # what a search costs with: the table anchored to the machine's speed now
    table, anchor = anchor_to_now(built, model, example, space,
                                  Device(threads=s.threads, backend=s.backend, batch=s.batch,
                                         clock=s.clock))
    rng = np.random.default_rng(s.seed)
    configs = [space.dense_config()] + configs_for(space, s.configs, rng)
    nets = [space.apply(model, c).eval() for c in configs]
    started = time.perf_counter()
    a, b, meas, passes = measure_all(nets, x, s, rng)
    seconds = time.perf_counter() - started
    tables = [space.layer_table(c) for c in configs]
    pred = np.array([table.predict(c) for c in configs])
    pred_online = online_predictions(pred, meas, rng)
    pred_built = np.array([built.predict(c) for c in configs])
    macs = np.array([sum(r.macs for r in t) for t in tables], dtype=float)
    roof_ms = np.array([roof.estimate(t) for t in tables])
    flops_scale = float(np.dot(macs, meas) / np.dot(macs, macs))  # best case: fit on test set
    dense_ms, dense_macs = meas[0], macs[0]
    rows = [{"config": c, "macs": float(m), "measured_ms": float(v), "pass_a_ms": float(pa),
             "pass_b_ms": float(pb), "table_ms": float(p), "table_built_ms": float(q),
             "table_online_ms": float(o), "roofline_ms": float(r)}
            for c, m, v, pa, pb, p, q, o, r in zip(configs, macs, meas, a, b, pred, pred_built,
                                                   pred_online, roof_ms)]
    ev = slice(1, None)  # the dense network is the reference, not an evaluated configuration
    speedup = dense_ms / meas[ev]
    reduction = dense_macs / macs[ev]
    bins = []
    for lo, hi in ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)):
        sel = (macs[ev] / dense_macs >= lo) & (macs[ev] / dense_macs < hi)
        if sel.any():
            bins.append({"macs_fraction": f"{lo:.2f}-{min(hi, 1):.2f}", "n": int(sel.sum()),
                         "median_flops_reduction": float(np.median(reduction[sel])),
                         "median_speedup": float(np.median(speedup[sel]))})
    return {
        "model": name, "backend": s.backend,
        "label": name if s.backend == "torch" else f"{name} ({s.backend})",
        "units": space.dim, "n": len(configs) - 1,
        "device": table.device, "table_build_seconds": round(table.build_seconds, 1),
        "table_blocks": len(table.entries), "table_grid_points": int(sum(e.ms.size for e in table.entries)),
        "table_loo_median_pct": 100 * table.correction["loo_median_abs_rel"],
        "table_check": {k: v for k, v in table.check.items() if k != "points"},
        "table_first_attempt": table.correction.get("first_attempt"),
        "table_second_attempt": table.correction.get("second_attempt"),
        "measure_seconds": round(seconds, 1), "measure_passes": passes,
        "load_before": load_before, "load_after": load(),
        "dense_measured_ms": float(dense_ms), "dense_predicted_ms": float(pred[0]),
        "flops_scale_ms_per_gmac": flops_scale * 1e9,
        "anchor": anchor,
        "scores": {"table": scores(pred[ev], meas[ev]),
                   "table_online": scores(pred_online[ev], meas[ev]),
                   "table_built": scores(pred_built[ev], meas[ev]),
                   "flops": scores(flops_scale * macs[ev], meas[ev]),
                   "roofline": scores(roof_ms[ev], meas[ev]),
                   "retest": scores(a[ev], b[ev])},
        "speedup_vs_flops_reduction": {"bins": bins, "spearman": float(
            spearmanr(reduction, speedup).statistic) if len(speedup) > 2 else float("nan")},
        "rows": rows,
    }


def pooled(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("table", "table_online", "table_built", "flops", "roofline", "retest"):
        pred, meas = [], []
        for r in results:
            rows = r["rows"][1:]
            scale = r["flops_scale_ms_per_gmac"] / 1e9
            col = {"table": [x["table_ms"] for x in rows],
                   "table_online": [x.get("table_online_ms", x["table_ms"]) for x in rows],
                   "table_built": [x["table_built_ms"] for x in rows],
                   "flops": [scale * x["macs"] for x in rows],
                   "roofline": [x["roofline_ms"] for x in rows],
                   "retest": [x["pass_a_ms"] for x in rows]}[key]
            pred += col
            meas += [x["pass_b_ms"] if key == "retest" else x["measured_ms"] for x in rows]
        out[key] = scores(np.array(pred), np.array(meas))
    return out


def show(results: list[dict[str, Any]], total: dict[str, dict[str, float]], console: Console) -> None:
    t = Table(title="latency prediction vs measurement (random pruned networks)")
    for col in ("model", "n", "predictor", "within 5%", "within 10%", "median |err|", "Spearman"):
        t.add_column(col, justify="left" if col in ("model", "predictor") else "right")
    labels = {"table": "lookup table", "table_online": "table, levelled online",
              "table_built": "table as built",
              "flops": "FLOPs x best scale", "roofline": "roofline", "retest": "re-measurement"}
    torch_rows = [r for r in results if r["backend"] == "torch"]
    for name, n, sc in [(r["label"], r["n"], r["scores"]) for r in results] + (
            [("all (torch)", sum(r["n"] for r in torch_rows), total)] if torch_rows else []):
        for key in [k for k in ("table", "table_online", "table_built", "flops", "roofline",
                                "retest") if k in sc]:
            v = sc[key]
            t.add_row(name if key == "table" else "", str(n) if key == "table" else "",
                      labels[key], f"{100 * v['within_5pct']:.1f}%", f"{100 * v['within_10pct']:.1f}%",
                      f"{v['median_abs_pct']:.1f}%", f"{v['spearman']:.3f}")
        t.add_section()
    t.caption = ("lookup table: anchored to the machine's speed now, as a search costs with it; "
                 "levelled online: each network predicted as the check after a search does, "
                 "scaled by the level of the networks measured before it; "
                 "table as built: before that; re-measurement: the same networks timed twice "
                 "(even passes vs odd passes), the noise ceiling on this machine now")
    console.print(t)
    sp = Table(title="realized speedup vs FLOPs reduction (measured)")
    for col in ("model", "MACs of dense", "n", "FLOPs reduction (median)", "speedup (median)"):
        sp.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        for i, b in enumerate(r.get("speedup_vs_flops_reduction", {}).get("bins", [])):
            sp.add_row(r["label"] if i == 0 else "", b["macs_fraction"], str(b["n"]),
                       f"{b['median_flops_reduction']:.2f}x", f"{b['median_speedup']:.2f}x")
        sp.add_section()
    console.print(sp)
    ck = Table(title="what each table said about itself (its check) against what it scored")
    for col in ("model", "check: median |err|", "build noise", "limit", "passed", "attempts",
                "real: median |err|", "real: within 10%", "levelled online: median |err|",
                "levelled online: within 10%", "re-measurement within 10%"):
        ck.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        c = r["table_check"]
        two = r["table_first_attempt"] or r["table_second_attempt"]
        ck.add_row(r["label"], f"{100 * c['median_abs_rel']:.1f}%",
                   f"{100 * c['retest_median_abs_rel']:.1f}%", f"{100 * c['limit']:.1f}%",
                   "yes" if c["passed"] else "NO", "2" if two else "1",
                   f"{r['scores']['table']['median_abs_pct']:.1f}%",
                   f"{100 * r['scores']['table']['within_10pct']:.1f}%",
                   f"{r['scores']['table_online']['median_abs_pct']:.1f}%",
                   f"{100 * r['scores']['table_online']['within_10pct']:.1f}%",
                   f"{100 * r['scores']['retest']['within_10pct']:.1f}%")
    console.print(ck)
    for r in results:
        console.print(f"{r['label']}: table built in {r['table_build_seconds']}s "
                      f"({r['table_blocks']} blocks, {r['table_grid_points']} grid points), dense "
                      f"measured {r['dense_measured_ms']:.2f} ms / predicted "
                      f"{r['dense_predicted_ms']:.2f} ms; load {r['load_before']} -> {r['load_after']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--quick", action="store_true", help="resnet20 + mobilenetv2, 15 configs each")
    ap.add_argument("--models", default=None, help="comma-separated zoo models")
    ap.add_argument("--configs", type=int, default=None, help="random configurations per model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backends", default=None,
                    help="comma-separated: torch, onnxruntime, device (default torch and "
                         "onnxruntime; --quick: torch). device: the table made through "
                         "profile --export-to / --from-timings on a second device, onnxruntime "
                         "in a virtual environment without torch at --device-threads")
    ap.add_argument("--device-threads", type=int, default=2,
                    help="threads the device backend times with (default 2)")
    ap.add_argument("--device-venv", type=Path, default=DEFAULT_VENV,
                    help="the device's virtual environment (made when missing: numpy and "
                         "onnxruntime only)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per network per pass")
    ap.add_argument("--passes", type=int, default=6,
                    help="measurement passes over all networks, each in its own shuffled order "
                         "(even, >= 2); the re-measurement compares the even passes with the odd")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.passes < 2 or args.passes % 2:
        ap.error(f"--passes {args.passes}: give an even number, 2 or more (each half of the "
                 "passes is one independent measurement of every network)")
    quick = args.quick
    models = tuple((args.models or ("resnet20,mobilenetv2" if quick else
                                    "resnet56,mobilenetv2,vgg11,vit,chargpt")).split(","))
    backends = tuple((args.backends or ("torch" if quick else "torch,onnxruntime")).split(","))
    s = Settings(models=models, configs=args.configs or (15 if quick else 70), warmup=3,
                 repeats=args.repeats or 15, passes=args.passes, threads=args.threads,
                 backend=backends[0], clock=resolve_clock(None if args.clock == "auto" else
                                                           args.clock, args.threads),
                 batch=args.batch, image_size=32,
                 plan=ProfilePlan(),
                 seed=args.seed,
                 out=args.out or RESULTS / (f"latency_model{'-quick' if quick else ''}"
                                            f"{'' if backends == ('torch',) or not quick else '-' + '-'.join(backends)}"
                                            f"{'-wall' if args.clock == 'wall' else ''}.json"))
    console = Console()
    console.print(f"load average {load()}; models {', '.join(models)}; {s.configs} configurations "
                  f"each; backends {', '.join(backends)}, {s.threads} thread(s), batch {s.batch}, "
                  f"clock {s.clock}")
    roof = RooflineCost.measure(threads=s.threads, batch=s.batch, clock=s.clock)
    console.print(f"roofline micro-benchmark: {roof}")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []

    def save() -> dict[str, Any]:
        """Everything measured so far, written after every model (a later failure or a kill
        keeps the rows already measured)."""
        torch_rows = [r for r in results if r["backend"] == "torch"]
        payload = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                   "device": describe_device(results[0]["device"]) if results else None,
                   "roofline": roof.to_json(),
                   "settings": {"configs": s.configs, "warmup": s.warmup, "repeats": s.repeats,
                                "passes": s.passes, "plan": {k: getattr(s.plan, k) for k in
                                                      ProfilePlan.__dataclass_fields__}},
                   "seconds": round(time.perf_counter() - started, 1),
                   "pooled": pooled(torch_rows) if torch_rows else {}, "models": results,
                   "failed": failed}
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(json.dumps(payload, indent=1) + "\n")
        return payload

    python = device_python(args.device_venv, console) if "device" in backends else None
    for b in backends:
        for m in models:
            try:
                results.append(run_model_device(m, s, python, args.device_threads, console)
                               if b == "device" else
                               run_model(m, replace(s, backend=b), roof, console))
            except BackendError as err:  # one model the backend cannot run: the others go on
                failed.append({"model": m, "backend": b, "error": str(err)})
                console.print(f"[red]{m} ({b}) skipped:[/] {err}")
            save()
    payload = save()
    if results:
        show(results, payload["pooled"], console)
    for f in failed:
        console.print(f"[red]not measured:[/] {f['model']} ({f['backend']}): {f['error']}")
    console.print(f"wrote {s.out} in {payload['seconds']}s")


if __name__ == "__main__":
    main()
