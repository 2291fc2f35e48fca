"""Training-free repair of a pruned network: the next layer refitted by least squares.

He et al. (ICCV 2017, "Channel Pruning for Accelerating Very Deep Neural Networks") refit each
layer that reads pruned channels so that its output matches the dense network's, on a few
calibration batches; AMC (He et al., ECCV 2018) scores pruned networks the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.search_spaces.tracing import padded_conv_input

__all__ = ["LayerFit", "ReconstructionReport", "reconstruct"]

_REFIT = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LayerFit:
    """One layer: its input channels dense -> pruned, the relative error of its output against
    the dense layer's (held-out sampled positions) before and after, and what was done."""

    name: str
    kind: str
    in_dense: int
    in_pruned: int
    error_before: float | None = None
    error_after: float | None = None
    refitted: bool = False
    reason: str = ""  # why the layer was skipped or kept; empty when refitted
    rows: int = 0     # output positions sampled (fit and held out together)


@dataclass(frozen=True)
class ReconstructionReport:
    """What :func:`reconstruct` did; ``model`` is the pruned network, refitted in place."""

    layers: tuple[LayerFit, ...]
    output_error_before: float | None
    output_error_after: float | None
    batches: int
    ridge: float
    max_rows: int
    model: nn.Module = field(repr=False, compare=False)

    @property
    def refitted(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.layers if f.refitted)

    def rows(self) -> list[dict[str, object]]:
        """One plain dict per layer."""
        return [asdict(f) for f in self.layers]

    def table(self) -> str:
        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"
        lines = [f"{'layer':<28} {'kind':<10} {'in':>11} {'before':>8} {'after':>8}  result"]
        for f in self.layers:
            lines.append(f"{f.name:<28} {f.kind:<10} {f'{f.in_dense}->{f.in_pruned}':>11} "
                         f"{num(f.error_before):>8} {num(f.error_after):>8}  "
                         f"{'refitted' if f.refitted else f.reason}")
        lines.append(f"network output error {num(self.output_error_before)} -> "
                     f"{num(self.output_error_after)} on {self.batches} calibration batches")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {"layers": self.rows(), "output_error_before": self.output_error_before,
                "output_error_after": self.output_error_after, "batches": self.batches,
                "ridge": self.ridge, "max_rows": self.max_rows}


class _Stop(BaseException):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def reconstruct(pruned: nn.Module, dense: nn.Module,
                batches: Sequence[torch.Tensor | tuple[torch.Tensor, ...]], *,
                ridge: float = 1e-2, max_rows: int = 4096, seed: int = 0) -> ReconstructionReport:
    """Refit, in forward order, every ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (groups 1)
    of ``pruned`` that has fewer inputs than the same-named layer of ``dense``, by ridge least
    squares (He et al., ICCV 2017): the target is the dense layer's output on the dense
    network's activations (at the output channels the pruned layer kept), the regressors the
    pruned layer's own input, produced by the layers already refitted. ``ridge`` is relative:
    the penalty is ``ridge * mean(diag XᵀX) * ‖W‖²``. At most ``max_rows`` output positions
    per layer are sampled (seeded); a fifth of them are held out, and a refit that does not
    lower the error there leaves the old weights. ``pruned`` is modified in place (and is
    ``report.model``); ``dense`` is only read; both end in the modes they came in."""
    batches = [b if isinstance(b, (tuple, list)) else (b,) for b in batches]
    if not batches:
        raise ValueError("reconstruct needs calibration batches. Fix: pass a few input batches "
                         "of the kind the model is called with, e.g. batches=[x1, x2]")
    if max_rows < 2:
        raise ValueError(f"max_rows must be at least 2, got {max_rows}")
    dmods, pmods = dict(dense.named_modules()), dict(pruned.named_modules())
    common = [n for n in pmods if n and n in dmods and _shapes(pmods[n])]
    if not common:
        raise ValueError("the pruned and dense models have no layer in common (matched by "
                         "module name). Fix: pass the dense model the pruned one was made from")
    rows, targets = [], []
    for n in common:
        pm, dm = pmods[n], dmods[n]
        fit = LayerFit(n, type(pm).__name__, _in_size(dm), _in_size(pm))
        if isinstance(pm, _REFIT) and type(dm) is type(pm):
            if fit.in_pruned >= fit.in_dense:
                continue  # its inputs were not pruned: not a consumer
            if getattr(pm, "groups", 1) != 1:
                rows.append(replace(fit, reason=f"grouped convolution (groups={pm.groups})"))
                continue
            keep = _kept_rows(pm.weight, dm.weight)
            if keep is None:
                rows.append(replace(fit, reason="its weights are not a slice of the dense "
                                                "layer's: the output channels kept are unknown"))
                continue
            rows.append(fit)
            targets.append((n, keep))
        elif _shapes(pm) != _shapes(dm):
            rows.append(replace(fit, reason="transposed convolution" if isinstance(
                pm, nn.modules.conv._ConvTransposeNd) else "not a linear or convolution layer"))
    modes = [(m, m.training) for m in (*dense.modules(), *pruned.modules())]
    dense.eval(), pruned.eval()
    try:
        with torch.no_grad():
            d_calls, _ = _count(dense, [dmods[n] for n, _ in targets], batches)
            p_calls, order = _count(pruned, [pmods[n] for n, _ in targets], batches)
            before = _output_error(pruned, dense, batches)
            fits = {}
            for idx, (n, keep) in enumerate(sorted(targets, key=lambda t: order.get(t[0], 1e9))):
                fits[n] = _refit(n, idx, pmods[n], dmods[n], keep, batches, d_calls[n],
                                 p_calls[n], pruned, dense, ridge, max_rows, seed)
            after = _output_error(pruned, dense, batches)
    finally:
        for m, mode in modes:
            m.training = mode
    layers = tuple(replace(f, **fits.get(f.name, {})) for f in rows)
    return ReconstructionReport(layers, before, after, len(batches), ridge, max_rows, pruned)


def _refit(name, idx, pm, dm, keep, batches, d_calls, p_calls, pruned, dense, ridge, max_rows,
           seed) -> dict[str, object]:
    """Sample the dense target and the pruned regressors of one layer, solve, and write the
    refitted weights when they lower the held-out error."""
    if not sum(d_calls):
        return {"reason": "not called on the calibration batches"}
    if d_calls != p_calls:
        return {"reason": f"called {sum(d_calls)} times in the dense network, {sum(p_calls)} "
                          "in the pruned one"}
    per_call = max(1, max_rows // sum(d_calls))
    picks, ys, xs, bad = {}, [], [], []

    def on_dense(b, i, x, y):
        t = _positions(dm, y)
        rng = np.random.default_rng([seed, idx, b, i])
        pick = torch.from_numpy(rng.choice(t.shape[0] * t.shape[2],
                                           min(per_call, t.shape[0] * t.shape[2]), replace=False))
        picks[b, i] = (pick, t.shape)
        ys.append(_select(t, pick)[:, keep.to(t.device)].double().cpu())

    def on_pruned(b, i, x, y):
        pick, shape = picks[b, i]
        t = _positions(pm, x, patches=True)
        if (t.shape[0], t.shape[2]) != (shape[0], shape[2]):
            bad.append(f"{t.shape[0]}x{t.shape[2]} output positions in the pruned network, "
                       f"{shape[0]}x{shape[2]} in the dense one")
        else:
            xs.append(_select(t, pick).double().cpu())

    _run_to(dense, dm, batches, d_calls, on_dense)
    _run_to(pruned, pm, batches, p_calls, on_pruned)
    if bad:
        return {"reason": bad[0]}
    x, y = torch.cat(xs), torch.cat(ys)
    if x.shape[0] < 2:
        return {"reason": "fewer than 2 output positions to fit and check on", "rows": x.shape[0]}
    order = torch.from_numpy(np.random.default_rng([seed, idx]).permutation(x.shape[0]))
    held = max(1, x.shape[0] // 5)
    check, fit = order[:held], order[held:]
    bias = pm.bias is not None
    if bias:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    old = pm.weight.detach().reshape(pm.weight.shape[0], -1).double().cpu()
    if bias:
        old = torch.cat([old, pm.bias.detach().double().cpu()[:, None]], 1)
    new = _solve(x[fit], y[fit], ridge, bias)
    err_old, err_new = _rel(y[check], x[check] @ old.T), _rel(y[check], x[check] @ new.T)
    out = {"error_before": err_old, "error_after": err_old, "rows": x.shape[0]}
    if not err_new < err_old:
        return {**out, "reason": f"the refit did not lower the error ({err_new:.4g} held out)"}
    w = new[:, :-1] if bias else new
    pm.weight.copy_(w.reshape(pm.weight.shape).to(pm.weight))
    if bias:
        pm.bias.copy_(new[:, -1].to(pm.bias))
    return {**out, "error_after": err_new, "refitted": True, "reason": ""}


def _solve(x: torch.Tensor, y: torch.Tensor, ridge: float, bias: bool) -> torch.Tensor:
    """W (out, in[+1]) minimising ‖Y − XWᵀ‖² + λ‖W‖² (the bias column unpenalised)."""
    gram, rhs = x.T @ x, x.T @ y
    d = gram.shape[0] - (1 if bias else 0)
    if ridge > 0 and d:
        lam = ridge * float(gram.diagonal()[:d].mean().clamp_min(1e-300))
        gram[range(d), range(d)] += lam
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol).T
    return torch.linalg.lstsq(gram, rhs, driver="gelsd").solution.T


def _rel(y: torch.Tensor, pred: torch.Tensor) -> float:
    return float(torch.linalg.norm(y - pred) / torch.linalg.norm(y).clamp_min(1e-300))


def _positions(m: nn.Module, t: torch.Tensor, patches: bool = False) -> torch.Tensor:
    """A layer's output (or, with ``patches``, its regressors: im2col patches for a conv) as
    (N, features, positions), a view where it can be."""
    if isinstance(m, nn.Linear):
        return t.reshape(-1, t.shape[-1]).T[None]
    nd = 1 if isinstance(m, nn.Conv1d) else 2
    if t.dim() == nd + 1:
        t = t.unsqueeze(0)
    if not patches:
        return t.flatten(2)
    t, k, s, dil = padded_conv_input(m, t)
    return F.unfold(t, k, dilation=dil, stride=s)  # (N, C*prod(k), L)


def _select(t: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Rows ``pick`` (numbered image-major over t's N x positions) of t, features last."""
    pick = pick.to(t.device)
    return t[pick // t.shape[2], :, pick % t.shape[2]]


def _kept_rows(wp: torch.Tensor, wd: torch.Tensor) -> torch.Tensor | None:
    """Which dense output channels a pruned layer kept, read from its weights (a slice of the
    dense weights in order, as Torch-Pruning leaves them); ``None`` when they are not one."""
    if wp.shape[0] == wd.shape[0]:
        return torch.arange(wp.shape[0])  # every output kept
    wp, wd = (w.detach().reshape(w.shape[0], w.shape[1], -1).double() for w in (wp, wd))
    c0, k0 = divmod(int(wp[0].abs().argmax()), wp.shape[2])
    for j in torch.nonzero((wd[:, :, k0] == wp[0, c0, k0]).any(1)).flatten()[:64].tolist():
        cols: list[int] = []  # the kept inputs: pruned row 0 inside dense row j, in order
        for col, row in enumerate((wd[j][:, None] == wp[0][None]).all(-1).tolist()):
            if len(cols) < wp.shape[1] and row[len(cols)]:
                cols.append(col)
        if len(cols) < wp.shape[1]:
            continue
        hit = torch.cdist(wp.flatten(1), wd[:, cols].flatten(1),
                          compute_mode="donot_use_mm_for_euclid_dist") == 0
        kept = hit.double().argmax(1)
        if bool(hit.any(1).all()) and bool((kept.diff() > 0).all()):
            return kept
    return None


def _call(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> object:
    p = next(model.parameters(), None)
    return model(*(t.to(p.device) if p is not None and torch.is_tensor(t) else t for t in batch))


def _run_to(model, module, batches, calls, on_call) -> None:
    """Run ``model`` on each batch, calling ``on_call(batch, call, input, output)`` at each
    call of ``module``, and end each pass once it has been called ``calls[batch]`` times."""
    state = [0, 0]

    def hook(mod, args, kwargs, out):
        on_call(state[0], state[1], args[0] if args else next(iter(kwargs.values())), out)
        state[1] += 1
        if state[1] >= calls[state[0]]:
            raise _Stop
    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        for b, batch in enumerate(batches):
            state[:] = [b, 0]
            if calls[b]:
                try:
                    _call(model, batch)
                except _Stop:
                    pass
    finally:
        handle.remove()


def _count(model: nn.Module, modules: Sequence[nn.Module], batches) -> tuple[dict, dict]:
    """Calls per batch of each named layer, and the order in which they first run."""
    names = {m: n for n, m in model.named_modules()}
    calls = {names[m]: [0] * len(batches) for m in modules}
    order: dict[str, int] = {}
    state = [0]

    def hook(mod, args, out):
        calls[names[mod]][state[0]] += 1
        order.setdefault(names[mod], len(order))
    handles = [m.register_forward_hook(hook) for m in set(modules)]
    try:
        for b, batch in enumerate(batches):
            state[0] = b
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return calls, order


def _first_tensor(out: object) -> torch.Tensor | None:
    """A model's value: the output itself, or the first tensor of a tuple or ModelOutput."""
    if torch.is_tensor(out):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, values) if t is not None), None)


def _output_error(pruned: nn.Module, dense: nn.Module, batches) -> float | None:
    """Relative error of the pruned network's output (its first tensor) against the dense's."""
    num = den = 0.0
    for batch in batches:
        d, p = _first_tensor(_call(dense, batch)), _first_tensor(_call(pruned, batch))
        if d is None or p is None or d.shape != p.shape or not d.is_floating_point():
            return None
        num += float(((d.double() - p.double().to(d.device)) ** 2).sum())
        den += float((d.double() ** 2).sum())
    return (num / max(den, 1e-300)) ** 0.5


def _shapes(m: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in m.parameters(recurse=False)]


def _in_size(m: nn.Module) -> int:
    for attr in ("in_features", "in_channels", "num_features", "embed_dim"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    w = next(m.parameters(recurse=False))
    return int(w.shape[1] if w.dim() > 1 else w.shape[0])

