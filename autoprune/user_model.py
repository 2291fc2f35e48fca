"""A user's own model: ``--model path/to/file.py:factory`` or ``--model package.module:factory``.

The factory is a callable returning an ``nn.Module``, called with the keyword arguments of
``--model-arg name=value`` (values read as Python literals where they parse: ``3``, ``0.5``,
``True``, ``(1, 2)``; anything else is a string). ``--weights ckpt.pt`` is loaded with
``weights_only=True``: a state dict, or a dict holding one under ``state_dict`` or ``model``.

:func:`build_user_model` returns the model with an ``autoprune_spec`` recording how it was
built -- the factory (a file by its absolute path), the file's sha256, the arguments, the
weights' path and sha256 -- so a run folder rebuilds it from that record alone
(:func:`rebuild_user_model`), and says so in one error when the factory has moved or changed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["UserModelError", "build_user_model", "is_factory", "load_callable", "load_weights",
           "parse_input_shape", "parse_model_args", "rebuild_user_model"]


class UserModelError(ValueError):
    """A factory that cannot be found or run, or weights that do not fit its model."""


def is_factory(model: str) -> bool:
    """Whether ``--model`` names a factory (``file.py:fn``, ``pkg.mod:fn``), not a zoo model."""
    return ":" in model


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["depth=3", "name=wide"]`` -> ``{"depth": 3, "name": "wide"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserModelError(f"--model-arg {item!r} is not name=value (e.g. --model-arg "
                                 "width=32)")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> ``(3, 32, 32)``: one sample's shape, without the batch."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UserModelError(f"--input-shape {text!r} is not sizes joined by x, without the "
                             "batch (e.g. 3x32x32; --batch sets the batch)")
    return shape


#: Modules made from a user's files are named with this prefix (never importable elsewhere):
#: executors that ship work to other processes pickle them by value (``user_modules``).
USER_MODULE_PREFIX = "autoprune_user_"


def user_modules() -> list[Any]:
    """The modules loaded from a user's files in this process (factories, evaluators)."""
    return [m for name, m in list(sys.modules.items()) if name.startswith(USER_MODULE_PREFIX)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_callable(spec: str, option: str = "--evaluator") -> Callable[..., Any]:
    """The callable ``file.py:fn`` or ``package.module:fn`` names (errors name ``option``)."""
    return _factory(spec, option)[0]


def _factory(spec: str, option: str = "--model") -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable ``spec`` names, and what records where it came from."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UserModelError(f"{option} {spec!r} is not file.py:fn or package.module:fn")
    if where.endswith(".py") or "/" in where or Path(where).is_file():
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise UserModelError(f"{option} {spec!r}: {path} does not exist")
        module_name = f"{USER_MODULE_PREFIX}{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise UserModelError(f"{option} {spec!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module  # so the model's classes pickle and export by name
        try:
            loader.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - the user's file: say where it failed
            raise UserModelError(f"importing {path} failed ({type(err).__name__}: {err}); fix "
                                 "the file so `python {path}` runs") from err
        origin = {"factory": f"{path}:{name}", "file_sha256": _sha256(path)}
    else:
        try:
            module = importlib.import_module(where)
        except Exception as err:  # noqa: BLE001
            raise UserModelError(f"{option} {spec!r}: cannot import {where} ({type(err).__name__}: "
                                 f"{err}); install the package or pass file.py:factory") from err
        file = getattr(module, "__file__", None)
        origin = {"factory": f"{where}:{name}",
                  "file_sha256": _sha256(Path(file)) if file else None}
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UserModelError(f"{option} {spec!r}: {where} has no callable {name!r} (its callables: "
                             f"{', '.join(found[:12]) or 'none'})")
    return fn, origin


def load_weights(model: nn.Module, weights: Path) -> str:
    """Load ``weights`` into ``model`` (``weights_only=True``); returns the file's sha256. A
    file that does not fit names the first mismatched key."""
    weights = Path(weights)
    if weights.is_dir():
        raise UserModelError(f"--weights {weights} is a folder; pass the file of a state dict "
                             f"(torch.save(model.state_dict(), path) writes one)")
    if not weights.is_file():
        raise UserModelError(f"--weights {weights} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it may not read
            warnings.simplefilter("ignore")
            raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpicklable, corrupt, or not a torch file
        raise UserModelError(_unreadable(weights, err)) from None
    state = raw
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), Mapping):
                state = raw[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserModelError(f"--weights {weights} holds no state dict (a dict of tensors, or "
                             "one under 'state_dict' or 'model')")
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise UserModelError(f"--weights {weights} does not fit the model: it lacks {key!r}")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise UserModelError(f"--weights {weights} does not fit the model: {key!r} is "
                                 f"{tuple(state[key].shape)} in the file, "
                                 f"{tuple(own[key].shape)} in the model")
    extra = [k for k in state if k not in own]
    if extra:
        raise UserModelError(f"--weights {weights} does not fit the model: the file has "
                             f"{extra[0]!r}, which the model has not")
    model.load_state_dict(state)
    return _sha256(weights)


def _unreadable(weights: Path, err: Exception) -> str:
    """One line for a ``--weights`` file torch cannot load with ``weights_only=True``
    (torch's own message runs to 15 lines and advises what autoprune will not do)."""
    fix = "torch.save(model.state_dict(), path) writes one"
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:  # a pickled object: a whole model, an optimizer, a class of the user's
        return (f"--weights {weights} holds a pickled {found.group(1)}, not a state dict of "
                f"tensors; save the weights alone ({fix})")
    return f"--weights {weights} is not a PyTorch state dict ({fix})"


def build_user_model(spec: str, args: Mapping[str, Any] | None = None,
                     weights: Path | None = None) -> nn.Module:
    """The factory's model (eval mode), weights loaded, with ``autoprune_spec`` recording how
    it was built."""
    fn, origin = _factory(spec)
    try:
        with warnings.catch_warnings():  # an empty layer is refused below, in one line
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            model = fn(**dict(args or {}))
    except Exception as err:  # noqa: BLE001 - the user's factory: name it and what it raised
        raise UserModelError(f"the factory {origin['factory']} raised {type(err).__name__}: "
                             f"{err} (called with {dict(args or {})})") from err
    if not isinstance(model, nn.Module):
        raise UserModelError(f"the factory {origin['factory']} returned "
                             f"{type(model).__name__}, not a torch.nn.Module")
    empty = next(((n, tuple(p.shape)) for n, p in model.named_parameters() if p.numel() == 0),
                 None)
    if empty is not None:
        given = ", ".join(f"{k}={v!r}" for k, v in dict(args or {}).items()) or "no arguments"
        raise UserModelError(f"the factory {origin['factory']} built a model with an empty "
                             f"layer ({empty[0]} has shape {empty[1]}) from {given}; give it "
                             "arguments that build every layer (--model-arg)")
    record = {**origin, "args": dict(args or {}), "weights": None, "weights_sha256": None}
    if weights is not None:
        record["weights"] = str(Path(weights).expanduser().resolve())
        record["weights_sha256"] = load_weights(model, Path(weights))
    model.autoprune_spec = record
    return model.eval()


def rebuild_user_model(record: Mapping[str, Any]) -> nn.Module:
    """The model a run folder recorded (its architecture, without the recorded weights: the
    pruned weights are the run's). A factory that has moved or whose file changed since is
    one error."""
    fn_spec = str(record["factory"])
    try:
        _, origin = _factory(fn_spec)
    except UserModelError as err:
        raise UserModelError(f"the run was made with the factory {fn_spec}, which cannot be "
                             f"loaded now ({err}). Fix: restore it, or load the run's "
                             "pruned.pt2 with torch.export.load, which needs no model code") from None
    if record.get("file_sha256") and origin["file_sha256"] != record["file_sha256"]:
        raise UserModelError(f"the factory {fn_spec} has changed since the run was made (its "
                             "file's sha256 differs). Fix: restore the file as it was, or load "
                             "the run's pruned.pt2 with torch.export.load")
    return build_user_model(fn_spec, record.get("args") or {})
