"""Everything a run folder holds, written and read here only.

    run.json        the search's identity (a resume must match it), and where its study
                    lives when that is a shared database (``study``: the URL, kept whole so
                    the folder reopens it, and the run's study name there)
    study.db        the optuna study (``autoprune.study``), unless it is in a shared database
    best.json       the chosen network: how the dense model is built, per-unit channels,
                    costs, metrics, budgets (and, with a latency budget, what was measured)
    pruned.pt       its weights (loaded with ``weights_only=True``)
    pruned.pt2      the same network as a ``torch.export`` program (``torch.export.load``
                    runs it without autoprune or the model's code; absent when the model
                    cannot be exported, with a note)
    pick-*.json/.pt networks chosen later by ``autoprune pick``; ``ofa extract`` writes the
                    same form for a sub-network
    summary.json, front.json, pareto.png   reports
    space.json      the space's coverage: its units, the share of MACs and params they can
                    remove, every layer kept dense with its reason (``autoprune.coverage``)
    recover.ckpt    a recovery under way (``autoprune recover``), removed when it finishes;
                    once recovered, best.json/pruned.pt hold the recovered network, with the
                    search's figures kept as ``before_recovery`` (``record_recovery``)

A chosen-network JSON (``write_choice``/``read_choice``) is enough, with its weights, to rebuild
the pruned network (``load_pruned``) without the search.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import SearchError
from autoprune.placement import cpu_state, placed
from autoprune.precision import as_example, model_dtype
from autoprune.search_spaces import SearchSpace, make_space
from autoprune.study import StudyStore, check_storage, masked, normalize_storage, study_name_for
from autoprune.zoo.models import build_model_from_spec

__all__ = ["RUN_FORMAT", "check_run_folder", "describe_study", "example_record", "load_weights",
           "open_study", "read_choice", "read_run_record", "read_run_settings", "rebuild_choice", "record_recovery",
           "study_record", "unit_table", "write_choice", "write_json", "write_sparse"]

RUN_FORMAT = 1


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` atomically (a kill never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SearchError(f"{path} is corrupt ({err}); remove the run folder or choose "
                          "another --run-dir") from None


def study_record(run_dir: Path, storage: str | None = None) -> dict[str, str] | None:
    """Where the study of ``run_dir`` lives: ``{"storage": URL, "name": study name}`` in a
    shared database, None for the folder's own ``study.db``. A folder with a run.json keeps
    what it recorded (``storage`` None reads it from there; another one is refused); a new
    folder's study goes to ``storage``, under a name of its own (``study_name_for``)."""
    path = run_dir / "run.json"
    if path.exists():
        recorded = _read_run_json(path).get("study")
        if storage is None:
            return recorded
        storage = normalize_storage(storage)
        if recorded is None:
            raise SearchError(
                f"run folder {run_dir} keeps its study in {run_dir / 'study.db'}, not in "
                f"--storage {masked(storage)}; resume it without --storage, or choose another "
                "--run-dir for a run in that database")
        if recorded["storage"] != storage:
            raise SearchError(
                f"run folder {run_dir} keeps its study ({recorded['name']}) in "
                f"{masked(recorded['storage'])}, not in --storage {masked(storage)}; resume it "
                "with that --storage (or without --storage: the folder records it), or choose "
                "another --run-dir")
        return recorded
    if storage is None:
        return None
    return {"storage": normalize_storage(storage), "name": study_name_for(run_dir)}


def open_study(run_dir: Path, record: Mapping[str, str] | None) -> StudyStore:
    """The study ``study_record`` says (a shared database is checked to answer first)."""
    if record is None:
        return StudyStore.in_folder(run_dir)
    check_storage(record["storage"])
    return StudyStore(record["storage"], study_name=record["name"])


def describe_study(run_dir: Path, record: Mapping[str, str] | None) -> str:
    """Where a run's study is, as it may be printed (a URL's password masked)."""
    if record is None:
        return str(run_dir / "study.db")
    return f"study {record['name']} in {masked(record['storage'])}"


def check_run_folder(run_dir: Path, identity: Mapping[str, Any], *, write: bool = True,
                     storage: str | None = None, baseline: Mapping[str, Any] | None = None,
                     made_by: str | None = None) -> dict[str, str] | None:
    """Record ``identity`` (and a shared study's URL and name) in a new run folder
    (``write=False``: not yet), or refuse to resume one holding another search or keeping its
    study elsewhere than ``storage``. ``baseline`` (the dense weights' hash and file) and
    ``made_by`` (``allocate`` for a run of the Python API) are recorded beside. Returns where
    the study lives (``study_record``)."""
    path = run_dir / "run.json"
    if path.exists():
        saved = _read_run_json(path)
        if saved.get("settings") != identity:
            diff = {k: (saved.get("settings", {}).get(k), v) for k, v in identity.items()
                    if saved.get("settings", {}).get(k) != v}
            raise SearchError(f"run folder {run_dir} holds a different search (saved vs now: "
                              f"{diff}); resume it with the same options or choose another "
                              "--run-dir")
        return study_record(run_dir, storage)
    record = study_record(run_dir, storage)
    if write:
        write_json(path, {"format": RUN_FORMAT, "settings": dict(identity),
                          **({"study": record} if record else {}),
                          **({"baseline": dict(baseline)} if baseline else {}),
                          **({"made_by": made_by} if made_by else {})})
        if record and masked(record["storage"]) != record["storage"]:
            os.chmod(path, 0o600)  # it holds the database's password: its owner's alone
    return record


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's whole run.json (its identity under ``settings``)."""
    return _read_run_json(run_dir / "run.json")


def read_run_settings(run_dir: Path) -> dict[str, Any]:
    """The identity a finished run folder recorded; refuses what is not one."""
    run_json, db = run_dir / "run.json", run_dir / "study.db"
    if not run_json.exists() or not (db.exists() or study_record(run_dir) is not None):
        raise FileNotFoundError(f"{run_dir} is not an autoprune run folder (it needs run.json "
                                "and study.db, or a study store recorded in run.json; run "
                                "autoprune search --run-dir ... first)")
    return dict(json.loads(run_json.read_text())["settings"])


def unit_table(space: SearchSpace, config: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per unit: channels kept, of how many, and the ratio."""
    return {u.name: {"channels": config[u.name], "of": u.full, "ratio": config[u.name] / u.full}
            for u in space.units}


def write_choice(path: Path, *, model: nn.Module | Mapping[str, Any] | None, space: SearchSpace,
                 data: str | None, example_inputs: Any, config: Mapping[str, int],
                 costs: Mapping[str, float], metrics: Mapping[str, Any],
                 budgets: Sequence[Mapping[str, Any]], trial: int | None = None,
                 weights: nn.Module | None = None, weights_file: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write one chosen network's JSON to ``path`` (``<name>.json``), and with ``weights``
    its state dict to ``weights_file`` (default ``<name>.pt``) beside it. ``model`` is the
    dense model (or its spec): a zoo or factory model records how to build it again, a model
    of the user's records ``model_spec: null`` (``load_pruned(..., model=dense)``)."""
    weights_file = weights_file or path.with_suffix(".pt").name
    spec = model if isinstance(model, Mapping) or model is None \
        else getattr(model, "autoprune_spec", None)
    recipe = space.recipe or {}
    choice: dict[str, Any] = {
        "format": RUN_FORMAT, "model_spec": dict(spec) if spec is not None else None,
        "data": data, **example_record(example_inputs),
        "round_to": space.round_to, "min_ratio": space.min_ratio, "trial": trial,
        **{k: recipe[k] for k in ("space", "output", "space_options") if recipe.get(k)},
        "config": {k: int(v) for k, v in config.items()}, "units": unit_table(space, config),
        "costs": dict(costs), "metrics": dict(metrics), "budgets": list(budgets),
        "weights": weights_file, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        torch.save(cpu_state(weights), path.parent / weights_file)
    write_json(path, choice)
    return choice


def example_record(example: Any) -> dict[str, Any]:
    """The example input's shape and dtype (several inputs: each one's), as a choice
    records them."""
    if isinstance(example, torch.Tensor):
        return {"example_input_shape": list(example.shape),
                "example_input_dtype": str(example.dtype).removeprefix("torch.")}
    return {"example_input_shape": [list(t.shape) for t in example],
            "example_input_dtype": [str(t.dtype).removeprefix("torch.") for t in example]}


def _example(choice: Mapping[str, Any]) -> Any:
    """Zeros of the recorded shapes and dtypes (character ids for a language model)."""
    shape, dtype = choice["example_input_shape"], choice.get("example_input_dtype", "float32")
    if isinstance(dtype, list):
        return tuple(torch.zeros(s, dtype=getattr(torch, d)) for s, d in zip(shape, dtype))
    return torch.zeros(shape, dtype=getattr(torch, dtype))


def read_choice(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A chosen-network JSON (a run folder means its ``best.json``) and its path."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.json"
    try:
        choice = json.loads(path.read_text())
        for key in ("model_spec", "example_input_shape", "config"):
            choice[key]  # noqa: B018 - a missing key is a file that is not ours
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; pass a run's best.json "
                                "(autoprune search writes it)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable autoprune best.json ({err})") from None
    return choice, path


def rebuild_choice(choice: Mapping[str, Any], folder: Path, *, model: nn.Module | None = None
                   ) -> tuple[nn.Module, nn.Module, Any]:
    """``(pruned, dense, example)``: the pruned network rebuilt from the dense model (its
    recorded spec, or ``model`` where the choice was made from a model of the user's) and its
    configuration, with its weights when they are in ``folder``. ``model`` is not modified."""
    if model is None:
        if choice["model_spec"] is None:
            raise SearchError(
                f"{folder} holds a network pruned from a model of your own "
                "(autoprune.allocate): it records the widths and weights, not how to build the "
                f"dense model. Pass that model: load_pruned({str(folder)!r}, model=dense)")
        model = build_model_from_spec(choice["model_spec"])
    training = model.training
    try:
        dense = placed(model, dtype=choice.get("dtype")).eval()
        example = as_example(_example(choice), model_dtype(dense))
        space = make_space(choice.get("space", "channel"), dense, example,
                           round_to=choice.get("round_to", 8),
                           min_ratio=choice.get("min_ratio", 0.2), output=choice.get("output"),
                           **choice.get("space_options", {}))
        pruned = space.deployable(space.apply(dense, choice["config"]))
    except (ValueError, KeyError, RuntimeError) as err:
        raise SearchError(f"the network of {folder} cannot be rebuilt on this model "
                          f"({type(err).__name__}: {err}); pass the dense model it was pruned "
                          "from") from None
    finally:
        model.train(training)
    weights = folder / choice.get("weights", "pruned.pt")
    if weights.exists():
        load_weights(pruned, weights)
    return pruned.eval(), dense, example


def load_weights(model: nn.Module, path: Path) -> None:
    """A saved state dict into ``model`` (weights only, never unpickled code), or one error
    saying what the file holds instead."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch's reasons are many and long
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise SearchError(f"{path} is not a PyTorch state dict ({type(err).__name__}"
                          f"{': ' + reason if reason else ''}); it must hold the weights "
                          "torch.save(model.state_dict(), path) writes. Restore it, or run the "
                          "search again (autoprune search --run-dir NEW)") from None
    if not isinstance(state, Mapping):
        raise SearchError(f"{path} holds a {type(state).__name__}, not a state dict; it must "
                          "hold the weights torch.save(model.state_dict(), path) writes. "
                          "Restore it, or run the search again (autoprune search --run-dir NEW)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise SearchError(f"{path} does not fit the network its JSON describes ({first}); "
                          "restore the folder's files together, or run the search again "
                          "(autoprune search --run-dir NEW)") from None


def record_recovery(run_dir: Path, *, val: Mapping[str, float], test: Mapping[str, float],
                    recovery: Mapping[str, Any], weights: nn.Module,
                    files: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Rewrite a run's chosen network as recovered: its weights in pruned.pt (atomically), its
    ``val``/``test`` metrics in best.json with ``before_recovery`` (the search's figures, kept
    as they were from the first recovery on) and the ``recovery`` block beside them (an
    earlier recovery's block moves to its ``previous``); summary.json's best metrics likewise,
    with ``files`` merged into its files. Returns the new best.json."""
    path = run_dir / "best.json"
    choice, _ = read_choice(path)
    before = choice.get("before_recovery", choice["metrics"])
    block = dict(recovery)
    if (prev := choice.get("recovery")) is not None:
        older = list(prev.get("previous", []))
        if prev.get("history") != block.get("history"):  # not this recovery written again
            older.append({k: v for k, v in prev.items() if k != "previous"})
        if older:
            block["previous"] = older
    target = run_dir / choice.get("weights", "pruned.pt")
    tmp = target.with_suffix(target.suffix + ".tmp")
    torch.save(weights.state_dict(), tmp)
    os.replace(tmp, target)
    choice.update(metrics={**{f"val_{k}": v for k, v in val.items()},
                           **{f"test_{k}": v for k, v in test.items()}},
                  before_recovery=before, recovery=block)
    write_json(path, choice)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = _read_run_json(summary_path)
        best = summary.setdefault("best", {})
        best["before_recovery"] = best.get("before_recovery", best.get("metrics"))
        best["metrics"] = {**val, **{f"test_{k}": v for k, v in test.items()}}
        summary["recovery"] = {k: v for k, v in block.items()
                               if k not in ("history", "stages", "previous")}
        summary["recovery"]["rounds"] = 1 + len(block.get("previous", []))
        summary.setdefault("files", {}).update(files or {})
        write_json(summary_path, summary)
    return choice


def write_sparse(run_dir: Path, model: nn.Module, table: Any, *, storage_format: str,
                 name: str = "pruned.sparse.pt") -> dict[str, Any]:
    """A weight-sparse network (masks baked in) saved compressed in ``storage_format``
    (``autoprune.sparse_io``; ``load_sparse`` gives its dense state dict back), with what a
    summary states about it: the file's bytes and the bytes predicted, what ``size=`` counts
    from the layer table (the payload) plus the file container's fixed ~4 kB, the sparsity of the prunable weights, and the MACs of non-zero weights beside the
    dense-equivalent MACs."""
    from autoprune.costs import SizeCost  # noqa: PLC0415 - weight-sparse runs only
    from autoprune.sparse_io import buffer_bytes, container_bytes, save_sparse  # noqa: PLC0415

    written = save_sparse(model, run_dir / name, storage_format=storage_format)
    payload = SizeCost(storage_format, buffer_bytes=buffer_bytes(model)).estimate(table)
    container = container_bytes()
    first = [r for r in table if r.weight_elements and r.call == 0]
    elements = sum(r.weight_elements for r in first)
    return {"file": str(run_dir / name), "storage_format": storage_format, "bytes": written,
            "predicted_bytes": int(payload) + container, "payload_bytes": int(payload),
            "container_bytes": container,
            "sparsity": 1.0 - sum(r.weight_nonzero for r in first) / max(1, elements),
            "macs_nonzero": int(sum(r.macs for r in table)),
            "dense_equivalent_macs": int(sum(r.dense_macs or r.macs for r in table))}
