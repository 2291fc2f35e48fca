"""What a search space covers, before any search: the question a user asks first.

:func:`space_coverage` lists the units a space found (name, kind, width, floor), how much of
the dense network's MACs and parameters the space can remove (the dense network against the
thinnest one it allows, both from the space's exact layer table), and every layer that stays
dense with its reason (the space's notes; a layer no note names is one no unit reaches).
``autoprune space`` prints it (:func:`coverage_tables`), and a search writes it to its run
folder as ``space.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from torch import nn

from autoprune.search_spaces import SearchSpace, reference_macs, reference_params

__all__ = ["coverage_tables", "space_coverage"]

#: Layer-table kinds whose rows are layers a user would call prunable (weights of their own).
_LAYERS = ("conv", "conv_transpose", "linear", "embedding", "recurrent", "attention")

#: Why a layer stays dense when no note of the space names it (and it has channels to spare).
UNREACHED = ("no unit reaches it: its channel group feeds the model's output, runs into a "
             "layer kept dense (see the notes), or is left out")


def space_coverage(space: SearchSpace, model: nn.Module | None = None, example: Any = None,
                   ) -> dict[str, Any]:
    """The space's coverage as plain JSON: ``units`` (name, kind, width, floor, floor_ratio,
    choices, layers), ``dense`` and ``thinnest`` (MACs and parameters from the layer table),
    ``removable`` (the share of each the thinnest network removes), ``dense_layers`` (each
    layer no unit shrinks, with its MACs, parameters and reason) and ``notes`` (the space's
    own, verbatim). With ``model`` its parameters are counted directly too, and with
    ``example`` its MACs (one forward pass) under ``reference``: they equal ``dense``."""
    dense_cfg, thin_cfg = space.dense_config(), space.min_config()
    dense_rows, thin_rows = space.layer_table(dense_cfg), space.layer_table(thin_cfg)
    dense = {"macs": sum(r.macs for r in dense_rows), "params": sum(r.params for r in dense_rows)}
    thin = {"macs": sum(r.macs for r in thin_rows), "params": sum(r.params for r in thin_rows)}
    notes = [str(n) for n in getattr(space, "notes", ())]
    units = [{"name": u.name, "kind": u.kind, "width": int(u.full), "floor": int(u.minimum),
              "floor_ratio": round(u.minimum / u.full, 4), "choices": len(u.choices),
              "layers": list(u.members)} for u in space.units]
    out: dict[str, Any] = {
        "space": space.name, "round_to": space.round_to, "min_ratio": space.min_ratio,
        "units": units, "dense": dense, "thinnest": thin,
        "removable": {k: _share(dense[k] - thin[k], dense[k]) for k in dense},
        "dense_layers": _dense_layers(dense_rows, thin_rows, notes, dense, space.round_to),
        "notes": notes}
    if model is not None:
        out["reference"] = {"params": reference_params(model)}
        if example is not None:
            inputs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
            out["reference"]["macs"] = reference_macs(model, inputs)
    return out


def _number(value: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= div:
            return f"{value / div:.2f}{suffix}"
    return f"{value:.0f}"


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def _dense_layers(dense_rows: Sequence[Any], thin_rows: Sequence[Any], notes: Sequence[str],
                  dense: Mapping[str, int], round_to: int) -> list[dict[str, Any]]:
    """Each layer (conv, linear, embedding, ...) whose MACs and parameters are the same in the
    thinnest network as in the dense one, with the first note naming it as its reason."""
    totals: dict[str, list[int]] = {}
    kinds: dict[str, str] = {}
    widths: dict[str, int] = {}
    for d, t in zip(dense_rows, thin_rows):
        if d.kind not in _LAYERS:
            continue
        name = d.module
        kinds.setdefault(name, d.kind)
        widths.setdefault(name, int(d.out_channels))
        acc = totals.setdefault(name, [0, 0, 0, 0])
        acc[0] += d.macs
        acc[1] += d.params
        acc[2] += t.macs
        acc[3] += t.params
    out = []
    for name, (macs, params, thin_macs, thin_params) in totals.items():
        if (macs, params) != (thin_macs, thin_params):
            continue  # some unit shrinks it
        out.append({"layer": name, "kind": kinds[name], "macs": macs, "params": params,
                    "macs_share": _share(macs, dense["macs"]),
                    "reason": _reason(name, notes, widths[name], round_to)})
    return out


def _reason(layer: str, notes: Sequence[str], width: int, round_to: int) -> str:
    """The first note naming ``layer`` (as a whole name, not a part of a longer one); else
    that its channels are too few to round (a group of at most ``round_to`` elements has
    nothing to choose), else :data:`UNREACHED`."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(layer)}(?![\w.])")
    for note in notes:
        if pattern.search(note):
            return note
    if 0 < width <= round_to:
        return (f"its {width} output channels are too few for round_to {round_to}: a lower "
                f"--round-to searches them")
    return UNREACHED


def coverage_tables(coverage: Mapping[str, Any]) -> Group:
    """For people: the units, what the space can remove, and the layers kept dense."""
    units = Table(title=f"units of the {coverage['space']} space ({len(coverage['units'])})")
    for col in ("unit", "kind", "width", "floor", "choices", "layers"):
        units.add_column(col, justify="left" if col in ("unit", "kind", "layers") else "right")
    for u in coverage["units"]:
        layers = ", ".join(u["layers"][:3]) + (f", +{len(u['layers']) - 3}"
                                               if len(u["layers"]) > 3 else "")
        units.add_row(u["name"], u["kind"], str(u["width"]), str(u["floor"]),
                      str(u["choices"]), layers)
    costs = Table(title="what the space can remove (dense vs the thinnest network it allows)")
    for col in ("cost", "dense", "thinnest", "removable"):
        costs.add_column(col, justify="left" if col == "cost" else "right")
    for key in ("macs", "params"):
        d, t = coverage["dense"][key], coverage["thinnest"][key]
        costs.add_row(key, _number(d), _number(t),
                      f"{100 * coverage['removable'][key]:.1f}%")
    parts: list[Any] = [units, costs]
    if coverage["dense_layers"]:
        kept = Table(title=f"layers kept dense ({len(coverage['dense_layers'])})")
        for col in ("layer", "kind", "MACs share", "reason"):
            kept.add_column(col, justify="right" if col == "MACs share" else "left",
                            overflow="fold")
        for row in coverage["dense_layers"]:
            kept.add_row(row["layer"], row["kind"], f"{100 * row['macs_share']:.1f}%",
                         row["reason"])
        parts.append(kept)
    others = [n for n in coverage["notes"]
              if not any(r["reason"] == n for r in coverage["dense_layers"])]
    if others:
        parts.append(Text("notes:\n" + "\n".join(f"  - {n}" for n in others)))
    return Group(*parts)
