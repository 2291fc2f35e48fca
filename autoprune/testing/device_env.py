"""A simulated target device: a Python that sees numpy and onnxruntime and nothing else of
this environment (no torch, no autoprune), for running ``time_on_device.py`` as it runs on a
phone, a board or another server (:mod:`autoprune.latency.remote`).

The interpreter is this one, started with ``-S`` (no site-packages); ``PYTHONPATH`` is a folder
of links to numpy's and onnxruntime's packages alone. Working in the export folder, neither
``import torch`` nor ``import autoprune`` can succeed there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["bare_python"]

def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations)))


def bare_python(folder: str | Path) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` of a Python with numpy and onnxruntime only, its package
    folder made under ``folder``. Raises ``ModuleNotFoundError`` when this environment lacks
    either package."""
    numpy = _package_dir("numpy")
    links = {"numpy": numpy, "onnxruntime": _package_dir("onnxruntime")}
    if (numpy.parent / "numpy.libs").is_dir():  # the shared libraries numpy's wheel ships
        links["numpy.libs"] = numpy.parent / "numpy.libs"
    site = Path(folder) / "site"
    site.mkdir(parents=True, exist_ok=True)
    for name, where in links.items():
        if not (site / name).exists():
            (site / name).symlink_to(where, target_is_directory=True)
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    return [sys.executable, "-S"], env
