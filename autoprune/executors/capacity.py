"""How many trials a Ray cluster holds at once: the CPUs and GPUs each trial reserves against
what the cluster has. Pure (no Ray import), so it is tested without starting Ray.

A trial actor reserves ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractions allowed:
``0.5`` puts two trials on each GPU; Ray then sets ``CUDA_VISIBLE_DEVICES`` in the actor to the
GPU it was given, so inside it that GPU is ``cuda:0``). Trials in flight are the fewest of what
the CPUs and the GPUs hold, and of ``workers`` when given: an actor queued for resources it never
gets would wait for ever. (Totals over the cluster: like the CPU count, they do not see how
resources split between nodes.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["check_request", "gpu_fits", "trial_slots"]


def gpu_fits(gpus: float, gpus_per_trial: float) -> int:
    """Trials ``gpus`` GPUs hold. A fraction of a GPU is packed GPU by GPU, as Ray does (two
    GPUs hold four trials of 0.4, not five: no trial straddles two GPUs)."""
    if gpus_per_trial < 1:
        return int(math.floor(gpus + 1e-9)) * int(math.floor(1 / gpus_per_trial + 1e-9))
    return int(math.floor(gpus / gpus_per_trial + 1e-9))


def check_request(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """One ``ValueError`` for a request no cluster can meet."""
    if not cpus_per_trial > 0:
        raise ValueError(f"--cpus-per-trial must be > 0 (got {cpus_per_trial:g})")
    if not (gpus_per_trial >= 0 and math.isfinite(gpus_per_trial)):
        raise ValueError(f"--gpus-per-trial must be 0 or more (got {gpus_per_trial:g}); "
                         "fractions such as 0.5 share a GPU between trials")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ValueError(f"--gpus-per-trial above 1 must be a whole number of GPUs (got "
                         f"{gpus_per_trial:g}); Ray gives a trial either part of one GPU or "
                         "whole GPUs")


def trial_slots(resources: Mapping[str, float], *, cpus_per_trial: float,
                gpus_per_trial: float = 0.0, workers: int | None = None) -> int:
    """Trials to keep in flight on a cluster with ``resources`` (``ray.cluster_resources()``:
    ``{"CPU": 16.0, "GPU": 2.0, ...}``): ``workers`` (``None``: as many as fit), never more
    than the CPUs hold nor, when trials reserve GPUs, than the GPUs hold. A cluster that
    cannot hold even one trial is one ``ValueError`` naming the fix."""
    check_request(cpus_per_trial, gpus_per_trial)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1 (got {workers})")
    cpus = float(resources.get("CPU", 0.0))
    if cpus < cpus_per_trial:
        raise ValueError(f"the Ray cluster has {cpus:g} CPUs; a trial asks for "
                         f"{cpus_per_trial:g} (--cpus-per-trial)")
    fits = int(cpus // cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        gpus = float(resources.get("GPU", 0.0))
        if gpus <= 0:
            raise ValueError(
                f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs, but the Ray cluster has "
                "none (ray.cluster_resources() lists no GPU). Fix: run on a cluster whose "
                "nodes have GPUs (`ray start` finds them, or give --num-gpus), or leave "
                "--gpus-per-trial out (0) to run trials on CPUs")
        if gpus < gpus_per_trial:
            raise ValueError(f"the Ray cluster has {gpus:g} GPUs; a trial asks for "
                             f"{gpus_per_trial:g} (--gpus-per-trial). Fix: ask for at most "
                             f"{gpus:g}, or a fraction to share a GPU")
        fits = min(fits, gpu_fits(gpus, gpus_per_trial))
    fits = max(1, fits)
    return min(workers or fits, fits)
