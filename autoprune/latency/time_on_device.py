#!/usr/bin/env python3
"""Time an autoprune latency export on the device the network will run on.

This file is copied into every folder ``autoprune profile --export-to DIR`` writes. It needs
only Python 3.9+, numpy and onnxruntime: no torch, no autoprune.

    python DIR/time_on_device.py [--threads N]        # time the export: DIR/timings.json
    python DIR/time_on_device.py --model chosen.onnx  # time one network (--json for JSON;
                                                      # --reference: and the device's level now)

The export's blocks and whole networks are timed in interleaved rounds: in each round every
block once, in a fresh random order, then every whole network once, in a fresh random order of
its own, so load that comes and goes lands on all of them alike; while the networks' even
rounds disagree with the odd ones by over 10%, two rounds more (up to --max-rounds). Each visit
runs its warm-up calls, then its timed calls; every timed call is kept. The clock is the
calling thread's CPU time for one thread (onnxruntime then runs the whole inference on it) and
wall-clock time for more, as autoprune times on its own machine. Bring ``timings.json`` back and build the table
with ``autoprune profile --from-timings DIR -o lut.json``.

The format of ``manifest.json`` and ``timings.json`` is described in autoprune's
``docs/device-timings.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time

MANIFEST_FORMAT = "autoprune-device-export"
REFERENCE_ROUNDS = 5  # --model --reference: interleaved rounds
#: An export whose whole networks disagree with themselves by more than this between the even
#: rounds and the odd ones is timed two rounds more, up to --max-rounds (autoprune rebuilds a
#: table of its own machine as noisy as that: its NOISY_BUILD)
NOISY = 0.10
TIMINGS_FORMAT = "autoprune-device-timings"
VERSION = 1


def _fail(message: str) -> None:
    sys.stderr.write(f"time_on_device.py: error: {message}\n")
    raise SystemExit(2)


def _modules():
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:
        _fail(f"{err.name} is not installed here. Fix: pip install numpy onnxruntime")
    return np, ort


def cpu_model() -> str:
    """The processor's name (``model name`` in /proc/cpuinfo, ``Hardware`` on ARM boards)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields: dict[str, str] = {}
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "hardware", "cpu model", "processor"):
            if fields.get(key) and not fields[key].isdigit():
                return fields[key]
        if "cpu part" in fields:
            return f"{fields.get('cpu implementer', '?')}:{fields['cpu part']}"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def session(ort, path: str, threads: int, provider: str, spinning: bool = False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:  # see --spinning: idle pool threads sleep instead of busy-waiting
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=[provider])
    except Exception as err:  # noqa: BLE001 - one line naming the file
        _fail(f"onnxruntime could not load {path} on {provider} ({type(err).__name__}: {err})")


def feed_for(np, sess, inputs: list[dict] | None, batch: int | None, seed: int) -> dict:
    """Random inputs: from the manifest's description, else from the graph's own inputs
    (symbolic dimensions take ``batch``, or 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for k, info in enumerate(sess.get_inputs()):
        spec = (inputs or [])[k] if inputs and k < len(inputs) else None
        if spec is not None:
            shape, dtype, high = spec["shape"], spec["dtype"], spec.get("high", 1)
        else:
            shape = [d if isinstance(d, int) and d > 0 else (batch or 1) for d in info.shape]
            dtype = {"tensor(float)": "float32", "tensor(float16)": "float16",
                     "tensor(double)": "float64", "tensor(int64)": "int64",
                     "tensor(int32)": "int32", "tensor(bool)": "bool"}.get(info.type, "float32")
            high = 2
        if dtype.startswith("float"):
            feed[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feed[info.name] = np.ones(shape, dtype=bool)
        else:
            feed[info.name] = rng.integers(0, max(1, int(high)), size=shape).astype(dtype)
    return feed


def clocked(np, run, warmup: int, repeats: int, clock: str) -> list[float]:
    """Milliseconds of ``repeats`` single calls after ``warmup`` untimed ones (the garbage
    collector off while they run)."""
    for _ in range(warmup):
        run()
    now = time.thread_time_ns if clock == "cpu" else time.perf_counter_ns
    out = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = now()
            run()
            out.append((now() - t0) / 1e6)
    finally:
        if enabled:
            gc.enable()
    return out


def describe(np, ort, threads: int, provider: str, clock: str, spinning: str) -> dict:
    return {"spinning": spinning, "cpu": cpu_model(), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "system": platform.platform(), "host": platform.node(),
            "python": platform.python_version(), "numpy": np.__version__,
            "backend": "onnxruntime", "backend_version": ort.__version__,
            "provider": provider, "threads": threads, "clock": clock}


def resolve_clock(clock: str, threads: int) -> str:
    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock == "cpu" and threads != 1:
        _fail(f"--clock cpu times the calling thread only, which misses the work of "
              f"{threads - 1} other thread(s); use --clock wall, or --threads 1")
    return clock


def halves_noise(np, samples: dict, items: list) -> float:
    """The device's own re-measurement noise: per whole network, its even rounds' median
    against its odd rounds', the median of those disagreements (0 with fewer than 2 rounds)."""
    out = []
    for item in items:
        s = np.asarray(samples[item["id"]], dtype=float).reshape(-1, int(item["repeats"]))
        if len(s) >= 2:
            out.append(abs(float(np.median(s[0::2]) / np.median(s[1::2])) - 1.0))
    return float(np.median(out)) if out else 0.0


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        _fail(f"{path} does not exist: run this script from the folder autoprune profile "
              "--export-to wrote, or pass --dir")
    except (OSError, ValueError) as err:
        _fail(f"{path} is not readable JSON ({err}). Fix: copy the export folder again")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != VERSION:
        _fail(f"{path} is not an autoprune device export of version {VERSION}")
    return manifest


def time_export(folder: str, args: argparse.Namespace) -> None:
    np, ort = _modules()
    manifest = read_manifest(folder)
    threads = args.threads or int(manifest.get("threads", 1))
    clock = resolve_clock(args.clock, threads)
    rounds = args.rounds or int(manifest.get("rounds", 3))
    items = manifest["items"]
    rng = random.Random(args.seed)
    runners = []
    started = time.perf_counter()
    for n, item in enumerate(items):
        sess = session(ort, os.path.join(folder, item["file"]), threads, args.provider,
                       args.spinning == "on")
        feed = feed_for(np, sess, item.get("inputs"), None, n)
        runners.append(lambda sess=sess, feed=feed: sess.run(None, feed))
        if n % 50 == 0 or n == len(items) - 1:
            print(f"loaded {n + 1}/{len(items)} networks", flush=True)
    samples: dict[str, list[float]] = {item["id"]: [] for item in items}
    blocks = [i for i, item in enumerate(items) if item["kind"] == "block"]
    nets = [i for i, item in enumerate(items) if item["kind"] != "block"]
    most = max(rounds, args.max_rounds if args.max_rounds is not None else 2 * rounds)
    done, noise = 0, None
    while done < rounds:
        for group in (blocks, nets):
            order = list(group)
            rng.shuffle(order)
            gc.collect()
            for i in order:
                item = items[i]
                samples[item["id"]].extend(clocked(np, runners[i], int(item["warmup"]),
                                                   int(item["repeats"]), clock))
        done += 1
        print(f"round {done}/{rounds} done ({time.perf_counter() - started:.0f}s)", flush=True)
        if done == rounds:
            noise = halves_noise(np, samples, [items[i] for i in nets])
            if noise > NOISY and rounds + 2 <= most:
                rounds += 2  # (two: the even rounds and the odd stay as many)
                print(f"the device disagreed with itself by {100 * noise:.1f}% between even "
                      f"and odd rounds: timing {rounds - done} more rounds", flush=True)
    out = {"format": TIMINGS_FORMAT, "version": VERSION, "export_id": manifest["export_id"],
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "device": describe(np, ort, threads, args.provider, clock, args.spinning), "rounds": rounds,
           "noise": None if noise is None else round(noise, 6),
           "seconds": round(time.perf_counter() - started, 3),
           "samples_ms": {k: [round(v, 6) for v in s] for k, s in samples.items()}}
    target = args.out or os.path.join(folder, "timings.json")
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(tmp, target)
    print(f"wrote {target}: {len(items)} networks, {rounds} rounds, {threads} thread(s), "
          f"{clock} clock, onnxruntime {ort.__version__} on {cpu_model()}. Bring it back and "
          f"run: autoprune profile --from-timings <this folder> -o lut.json")


def references(np, ort, args: argparse.Namespace, threads: int) -> list[dict]:
    """The export's whole networks with their timings there, to time beside a network."""
    manifest = read_manifest(args.dir)
    path = os.path.join(args.dir, "timings.json")
    try:
        with open(path, encoding="utf-8") as f:
            timed = json.load(f)
    except (OSError, ValueError):
        _fail(f"--reference needs the export's timings: {path} is missing or unreadable. Fix: "
              "time the export first (python time_on_device.py)")
    if timed.get("export_id") != manifest["export_id"]:
        _fail(f"{path} holds timings of another export")
    out = []
    for n, item in enumerate(manifest["items"]):
        if item["kind"] == "network" and timed["samples_ms"].get(item["id"]):
            sess = session(ort, os.path.join(args.dir, item["file"]), threads, args.provider,
                           args.spinning == "on")
            feed = feed_for(np, sess, item.get("inputs"), None, n)
            out.append({"id": item["id"], "warmup": int(item["warmup"]),
                        "repeats": int(item["repeats"]),
                        "export_ms": float(np.median(timed["samples_ms"][item["id"]])),
                        "run": lambda sess=sess, feed=feed: sess.run(None, feed)})
    return out


def time_model(path: str, args: argparse.Namespace) -> None:
    np, ort = _modules()
    if not os.path.exists(path):
        _fail(f"{path} does not exist")
    threads = args.threads or 1
    clock = resolve_clock(args.clock, threads)
    sess = session(ort, path, threads, args.provider, args.spinning == "on")
    feed = feed_for(np, sess, None, args.batch, args.seed)
    run = lambda: sess.run(None, feed)  # noqa: E731
    refs = references(np, ort, args, threads) if args.reference else []
    level = None
    if not refs:
        times = clocked(np, run, args.warmup, args.repeats, clock)
    else:
        # the network and the export's networks in interleaved rounds: how fast the device
        # runs now against when the export was timed (its level), beside the measurement
        rng, rounds = random.Random(args.seed), REFERENCE_ROUNDS
        per = max(1, args.repeats // rounds)
        times, now = [], {r["id"]: [] for r in refs}
        for _ in range(rounds):
            order = [None, *refs]
            rng.shuffle(order)
            for ref in order:
                if ref is None:
                    times.extend(clocked(np, run, args.warmup, per, clock))
                else:
                    now[ref["id"]].extend(clocked(np, ref["run"], ref["warmup"],
                                                  ref["repeats"], clock))
        ratios = [float(np.median(now[r["id"]])) / r["export_ms"] for r in refs]
        level = {"factor": round(float(np.median(ratios)), 4), "networks": len(refs),
                 "p10": round(float(np.percentile(ratios, 10)), 4),
                 "p90": round(float(np.percentile(ratios, 90)), 4)}
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    result = {"median_ms": round(median, 4), "p10_ms": round(p10, 4), "p90_ms": round(p90, 4),
              "model": path,
              "device": describe(np, ort, threads, args.provider, clock, args.spinning)}
    if level is not None:
        result["level"] = level
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    d = result["device"]
    print(f"{path}: median {median:.3f} ms (p10 {p10:.3f}, p90 {p90:.3f}) on {d['cpu']}, "
          f"onnxruntime {d['backend_version']} {args.provider}, {threads} thread(s), "
          f"{clock} clock")
    if level is not None:
        print(f"the export's {level['networks']} networks, timed beside it, took "
              f"{level['factor']:.2f}x their times when the export was timed (p10 "
              f"{level['p10']:.2f}, p90 {level['p90']:.2f}): compare it with the table's "
              f"prediction times {level['factor']:.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Time an autoprune latency export (or one ONNX network) on this device, "
                    "with numpy and onnxruntime only.")
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)),
                    help="the export folder (default: the folder of this script)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: the export's; 1 with --model)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds over the export (default: the export's)")
    ap.add_argument("--max-rounds", type=int, default=None,
                    help="rounds at most: while the networks' even rounds disagree with the odd "
                         "by over 10%%, two more are timed (default: twice --rounds)")
    ap.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                    help="auto: the calling thread's CPU time for 1 thread, else wall-clock")
    ap.add_argument("--spinning", choices=["off", "on"], default="off",
                    help="whether onnxruntime's idle intra-op threads busy-wait (its own "
                         "default is on). Off by default: an export holds hundreds of "
                         "sessions, each with its own thread pool, and with it on their "
                         "spinning threads slowed the sessions timed after them (a load "
                         "average of 23 on a 2-core host). Time --model with the same setting "
                         "as the export")
    ap.add_argument("--provider", default="CPUExecutionProvider",
                    help="onnxruntime execution provider (default CPUExecutionProvider)")
    ap.add_argument("--out", default=None, help="where to write the timings "
                                                "(default: DIR/timings.json)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rounds' orders")
    ap.add_argument("--model", default=None,
                    help="time this one ONNX network instead of the export")
    ap.add_argument("--batch", type=int, default=1,
                    help="with --model: the batch of inputs whose batch dimension is symbolic")
    ap.add_argument("--warmup", type=int, default=10, help="with --model: untimed calls")
    ap.add_argument("--repeats", type=int, default=100, help="with --model: timed calls")
    ap.add_argument("--json", action="store_true", help="with --model: print JSON")
    ap.add_argument("--reference", action="store_true",
                    help="with --model: time the export's whole networks beside it, in "
                         "interleaved rounds, and report the device's speed now against when "
                         "the export was timed (a device whose speed moves: thermal "
                         "throttling, other load)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        _fail(f"--threads {args.threads}: give 1 or more")
    if args.rounds is not None and args.rounds < 1:
        _fail(f"--rounds {args.rounds}: give 1 or more")
    if args.repeats < 1 or args.warmup < 0:
        _fail("--repeats must be 1 or more and --warmup 0 or more")
    if args.model:
        time_model(args.model, args)
    else:
        time_export(args.dir, args)


if __name__ == "__main__":
    main()
