"""Gaussian-process Bayesian optimization (optuna's GP: Matern-5/2 ARD kernel, log EI).

A single-objective ask for one point, once the start-up trials are in, does not go through an
optuna study or ``GPSampler``: the agent runs the same model itself, in numpy with analytic
gradients instead of torch autograd (which cost about 1 ms a call on these small matrices):

- the kernel fit is optuna's ``gp.fit_kernel_params`` (maximum a-posteriori Matern-5/2 ARD
  hyperparameters under optuna's default prior and minimum noise, L-BFGS-B over their logs,
  the same gradient tolerance; same optimum to 4 digits on test data);
- the acquisition is optuna's ``LogEI`` (same posterior, same stable log EI; values within
  1e-9 of optuna's) maximised like ``optim_mixed.optimize_acqf_mixed`` (scrambled Sobol
  samples, then batched L-BFGS-B from the best sample, roulette-picked samples and the best
  trial, in lengthscale-scaled coordinates).

Multi-objective searches, batched asks (``n > 1``: optuna's q-batch acquisition over the
running trials) and the start-up phase still build the study and call ``GPSampler``, with the
settings they had before (``sampler_*``): their time per proposal is not capped.

What bounds a direct proposal's time (``benchmarks/agent_overhead.py``):

- the GP sees at most ``max_history`` trials (the best half and the most recent half);
- the kernel hyperparameters are refitted only every ``refit_every``-th ask, warm-started from
  the previous fit; in between, the previous hyperparameters are reused on the current data
  (the kernel matrix and its Cholesky factor are recomputed, so every new trial is in the
  posterior; only lengthscales, scale and noise are stale by up to ``refit_every - 1`` asks);
- the acquisition search uses ``preliminary_samples`` samples (GPSampler default 2048; this
  agent had 512) and ``local_searches`` local searches (10; had 6), each stopping at a projected
  gradient below ``sqrt(acq_tol)`` (1e-4 in optuna) or after 200 iterations;
- BLAS runs on one thread while proposing (threadpoolctl): OpenBLAS's threads on these small
  matrices only wait on each other, 2-3x the time on a busy machine.

The fitted hyperparameters and the ask at which they were fitted are part of ``state_dict``
(plain floats), so a resumed agent reuses exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .registry import register_agent
from .optuna_agent import OptunaAgent

if TYPE_CHECKING:
    import optuna

__all__ = ["GPAgent"]

_EPS = 1e-10  # optuna's floor on the standard deviation when standardising values


@register_agent("gp")
class GPAgent(OptunaAgent):
    """Bayesian optimization with a Gaussian process and expected improvement (optuna GP)."""

    n_startup_trials = 10
    # The GP's fit and its acquisition search grow with the history (542 ms a proposal after
    # 200 trials in the league, against 535 ms a trial, with optuna's defaults): the best 32
    # and the latest 32 trials are what it models.
    max_history = 64
    # Acquisition search: quasi-random starting samples and local searches (optuna: 2048, 10).
    preliminary_samples = 256
    local_searches = 3
    # ... and what GPSampler uses where the study path remains (multi-objective, n > 1).
    sampler_preliminary_samples = 512
    sampler_local_searches = 6
    #: Refit the kernel hyperparameters every this many asks (1: every ask, as optuna does).
    refit_every = 4
    #: L-BFGS-B gradient tolerance of the kernel fit (optuna's default) and of the acquisition
    #: search (optuna: 1e-4; the search stops at a projected gradient below its square root).
    fit_gtol = 1e-2
    acq_tol = 1e-3

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self._kernel: list[float] | None = None  # inverse sq. lengthscales, scale, noise var
        self._kernel_fitted_at = -1  # self._asked when the kernel was last fitted

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import GPSampler

        # GPSampler fits a Matern-5/2 ARD kernel and maximises log expected improvement; it
        # uses scipy and torch internally (this module never imports torch). Scores after
        # adaptive BN are not noise-free across near-identical allocations, so the noise term
        # stays on (deterministic_objective=False).
        sampler = GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        # optuna keeps these two private (set in __init__, read by its acquisition search)
        if hasattr(sampler, "_n_preliminary_samples") and hasattr(sampler, "_n_local_search"):
            sampler._n_preliminary_samples = self.sampler_preliminary_samples
            sampler._n_local_search = self.sampler_local_searches
        return sampler

    # ------------------------------------------------------------------ ask
    def ask(self, n: int) -> list[np.ndarray]:
        if n != 1 or self.objectives != 1 or self._explore:
            return super().ask(n)  # study + GPSampler (or the one uniform point after a repeat)
        import optuna

        trials = [t for t in self._kept() if t.state == optuna.trial.TrialState.COMPLETE]
        if len(trials) < self.n_startup_trials:
            return super().ask(n)  # the start-up phase: GPSampler's random sampler
        with _one_blas_thread():
            x = self._propose(trials)
        self._pending.append((x, {}))
        self._asked += 1
        return [np.clip(x, 0.0, 1.0)]

    def _propose(self, trials: list[optuna.trial.FrozenTrial]) -> np.ndarray:
        # Every parameter is a FloatDistribution(0, 1) (OptunaAgent._distributions): optuna's
        # normalized coordinates are the values themselves.
        X = np.array([[t.params[k] for k in self._names] for t in trials], dtype=float)
        values = np.array([t.values[0] for t in trials], dtype=float)  # maximised
        Y = (values - values.mean()) / max(_EPS, float(values.std()))
        if self._kernel is None or len(self._kernel) != self.dim + 2 \
                or self._asked - self._kernel_fitted_at >= self.refit_every:
            self._kernel = self._fit_kernel(X, Y)
            self._kernel_fitted_at = self._asked
        acq = _LogEI(X, Y, np.array(self._kernel))
        rng = np.random.RandomState(self._round_seed() % (2**32))
        return _maximise(acq, X[np.argmax(Y)], rng, samples=self.preliminary_samples,
                         local_searches=self.local_searches, tol=self.acq_tol)

    def _fit_kernel(self, X: np.ndarray, Y: np.ndarray) -> list[float]:
        """optuna's maximum a-posteriori kernel fit, from the last fit if there is one."""
        previous = None
        if self._kernel is not None and len(self._kernel) == self.dim + 2:
            previous = np.array(self._kernel)
        return [float(v) for v in _fit_kernel(X, Y, previous, gtol=self.fit_gtol)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["gp_kernel"] = None if self._kernel is None else {
            "params": list(self._kernel), "fitted_at": self._kernel_fitted_at}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        kernel = state.get("gp_kernel")
        self._kernel = None if kernel is None else [float(v) for v in kernel["params"]]
        self._kernel_fitted_at = -1 if kernel is None else int(kernel["fitted_at"])


_BLAS: list[Any] = []  # a threadpoolctl controller, made on first use


def _one_blas_thread() -> Any:
    """BLAS on one thread while proposing: on these small matrices OpenBLAS's threads only
    wait on each other, and on a busy machine that cost 2-3x the proposal time (measured)."""
    if not _BLAS:
        import importlib

        importlib.import_module("scipy.linalg")  # scipy's BLAS loaded before looking for it
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


_SQRT_HALF = 0.5 ** 0.5
_SQRT_HALF_PI = (0.5 * np.pi) ** 0.5
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)
_STABILIZING_NOISE = 1e-12  # optuna's LogEI adds it to the posterior variance


class _LogEI:
    """optuna's ``LogEI`` on a Matern-5/2 ARD GP with fixed hyperparameters, in numpy with
    analytic gradients (the same posterior and the same numerically stable log EI; torch's
    autograd on these small arrays cost about 1 ms a call, most of a proposal)."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, kernel: np.ndarray) -> None:
        from scipy.linalg import cho_solve, cholesky, solve_triangular

        self.X, self.ils = X, kernel[:-2]
        self.scale, noise = float(kernel[-2]), float(kernel[-1])
        self.length_scales = 1.0 / np.sqrt(self.ils)
        r2 = (X[:, None, :] - X[None, :, :]) ** 2 @ self.ils
        C = self._matern(r2)[0] * self.scale
        C[np.diag_indices_from(C)] += noise
        L = cholesky(C, lower=True)
        self.alpha = cho_solve((L, True), Y)
        # the inverse factor once, so each evaluation is matrix products
        self.L_inv = solve_triangular(L, np.eye(len(X)), lower=True)
        self.f0 = float(Y.max())

    @staticmethod
    def _matern(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matern-5/2 of squared distances and its derivative w.r.t. them."""
        sq = np.sqrt(5.0 * r2)
        e = np.exp(-sq)
        return e * ((5.0 / 3.0) * r2 + sq + 1.0), (-5.0 / 6.0) * (1.0 + sq) * e

    def __call__(self, x: np.ndarray, grad: bool = False) -> Any:
        # the direct log EI underflows where z < -25 and the erfcx form overflows for large z;
        # each is used only where the other is not
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return self._eval(x, grad)

    def _eval(self, x: np.ndarray, grad: bool) -> Any:
        from scipy.special import erfc, erfcx

        diff = x[:, None, :] - self.X[None, :, :]  # (B, N, D)
        m, dm = self._matern(diff ** 2 @ self.ils)
        k = self.scale * m  # (B, N)
        mean = k @ self.alpha
        v = k @ self.L_inv.T  # (B, N): L^-1 k per point
        raw_var = self.scale - (v * v).sum(axis=1)
        var = np.maximum(raw_var, 0.0) + _STABILIZING_NOISE
        sigma = np.sqrt(var)
        z = (mean - self.f0) / sigma
        out = np.log(0.5 * z * erfc(-_SQRT_HALF * z) + np.exp(-0.5 * z * z) / (2 * np.pi) ** 0.5)
        small = z < -25
        if small.any():
            zs = z[small]
            out[small] = (-0.5 * zs ** 2 - _LOG_SQRT_2PI
                          + np.log1p(_SQRT_HALF_PI * zs * erfcx(-_SQRT_HALF * zs)))
        value = out + np.log(sigma)
        if not grad:
            return value
        # d log h(z) / dz = Phi(z) / h(z), h(z) = z Phi(z) + phi(z)
        r = _SQRT_HALF_PI * erfcx(-_SQRT_HALF * z)
        dlogh = r / (1.0 + z * r)
        big = z >= -25
        dlogh[big] = (0.5 * erfc(-_SQRT_HALF * z[big])) / np.exp(out[big])
        w = v @ self.L_inv  # C^-1 k, (B, N)
        # dk/dx_d = scale m'(r2) 2 ils_d (x_d - X_d), summed against alpha and C^-1 k
        c = (self.scale * dm)[:, :, None] * diff  # (B, N, D)
        dmean = np.einsum("n,bnd->bd", self.alpha, c) * (2.0 * self.ils)
        dvar = -2.0 * np.einsum("bn,bnd->bd", w, c) * (2.0 * self.ils) * (raw_var > 0.0)[:, None]
        dsigma = dvar / (2.0 * sigma[:, None])
        dz = dmean / sigma[:, None] - ((mean - self.f0) / var)[:, None] * dsigma
        return value, dlogh[:, None] * dz + dsigma / sigma[:, None]


def _maximise(acq: _LogEI, best_trial: np.ndarray, rng: np.random.RandomState, *,
              samples: int, local_searches: int, tol: float) -> np.ndarray:
    """optuna's ``optimize_acqf_mixed`` for continuous parameters in [0, 1]: scrambled Sobol
    samples (seeded from ``rng`` as optuna seeds them), then batched L-BFGS-B from the best
    sample, roulette-picked samples and the best trial, in coordinates scaled by the
    lengthscales."""
    from scipy.stats import qmc

    xs = qmc.Sobol(acq.X.shape[1], scramble=True,
                   seed=rng.randint(np.iinfo(np.int32).max)).random(samples)
    f = acq(xs)
    top = int(np.argmax(f))
    probs = np.exp(f - f[top])
    probs[top] = 0.0
    total = probs.sum()
    probs = probs / total if total > 0 else probs
    extra = min(local_searches - 2, int(np.count_nonzero(probs > 0.0)))
    chosen = [top]
    if extra > 0:
        chosen += list(rng.choice(len(xs), size=extra, replace=False, p=probs))
    starts = np.vstack([xs[chosen], best_trial[None, :]])
    start_f = acq(starts)
    ls = acq.length_scales

    def negative(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, grad = acq(np.clip(scaled * ls, 0.0, 1.0), grad=True)
        return -value, -grad * ls

    scaled_opt, neg_f, iters = _batched_lbfgsb(negative, starts / ls,
                                               [(0.0, 1.0 / s) for s in ls], pgtol=tol ** 0.5,
                                               max_iters=200)
    better = (-neg_f > start_f) & (iters > 0)
    cands = np.where(better[:, None], np.clip(scaled_opt * ls, 0.0, 1.0), starts)
    vals = np.where(better, -neg_f, start_f)
    return cands[int(np.argmax(vals))]


def _batched_lbfgsb(func_and_grad: Any, x0: np.ndarray, bounds: list[tuple[float, float]], *,
                    pgtol: float, max_iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L-BFGS-B from each row of ``x0`` (``func_and_grad`` takes and returns batches):
    optuna's greenlet-batched driver where this optuna has it (a private module, so another
    optuna may not), else the same scipy L-BFGS-B one start after another, as optuna itself
    runs it without greenlet: the same optima, more Python calls."""
    try:
        from optuna._gp.batched_lbfgsb import batched_lbfgsb
    except ImportError:
        pass
    else:
        return batched_lbfgsb(func_and_grad=func_and_grad, x0_batched=x0, bounds=bounds,
                              pgtol=pgtol, max_iters=max_iters)
    from scipy.optimize import fmin_l_bfgs_b

    def one(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = func_and_grad(x[None, :])
        return float(value[0]), np.array(grad[0], dtype=float)

    xs, fs, iters = np.empty_like(x0), np.empty(len(x0)), np.empty(len(x0), dtype=int)
    for i, start in enumerate(x0):
        xs[i], fs[i], info = fmin_l_bfgs_b(one, start, bounds=bounds, m=10, factr=1e7,
                                           pgtol=pgtol, maxfun=15000, maxiter=max_iters,
                                           maxls=20)
        iters[i] = info["nit"]
    return xs, fs, iters


_MIN_NOISE = 1e-6  # optuna's prior.DEFAULT_MINIMUM_NOISE_VAR


def _fit_kernel(X: np.ndarray, Y: np.ndarray, previous: np.ndarray | None, *,
                gtol: float) -> np.ndarray:
    """optuna's ``gp.fit_kernel_params`` in numpy with analytic gradients: maximise the marginal
    log likelihood of a Matern-5/2 ARD kernel plus optuna's default log prior over
    ``log(inverse squared lengthscales), log(scale), log(noise - min noise)`` with L-BFGS-B,
    from ``previous`` and, if that fails, from all ones; all ones if both fail. Returns
    ``[inverse squared lengthscales..., scale, noise variance]``."""
    from scipy.linalg import LinAlgError, cholesky, solve_triangular
    from scipy.optimize import minimize

    n, d = X.shape
    eye = np.eye(n)
    sqd = (X[:, None, :] - X[None, :, :]) ** 2  # (N, N, D)

    def loss(raw: np.ndarray) -> tuple[float, np.ndarray]:
        ils, scale = np.exp(raw[:d]), float(np.exp(raw[d]))
        extra = float(np.exp(raw[d + 1]))
        noise = extra + _MIN_NOISE
        m, dm = _LogEI._matern(sqd @ ils)
        C = scale * m
        C[np.diag_indices(n)] += noise
        try:
            L = cholesky(C, lower=True, check_finite=False)
        except LinAlgError:
            return math.inf, np.zeros_like(raw)
        L_inv = solve_triangular(L, eye, lower=True, check_finite=False)
        C_inv = L_inv.T @ L_inv
        alpha = C_inv @ Y
        mll = -np.log(np.diag(L)).sum() - 0.5 * float(Y @ alpha)
        G = 0.5 * (np.outer(alpha, alpha) - C_inv)  # d mll / dC
        g = np.empty_like(raw)
        g[:d] = ils * np.einsum("ij,ijd->d", G * (scale * dm), sqd)
        g[d] = float((G * (scale * m)).sum())
        g[d + 1] = float(np.trace(G)) * extra
        prior = (-(0.1 / ils + 0.1 * ils).sum() + math.log(scale) - scale
                 + 0.1 * math.log(noise) - 30.0 * noise)
        g[:d] += 0.1 / ils - 0.1 * ils
        g[d] += 1.0 - scale
        g[d + 1] += (0.1 / noise - 30.0) * extra
        return -(mll + prior), -g

    ones = np.ones(d + 2)
    for start in ([previous] if previous is not None else []) + [ones]:
        raw0 = np.concatenate([np.log(start[:d]), [math.log(start[d]),
                                                  math.log(start[d + 1] - 0.99 * _MIN_NOISE)]])
        res = minimize(loss, raw0, jac=True, method="l-bfgs-b", options={"gtol": gtol})
        if res.success and math.isfinite(res.fun):
            raw = res.x
            return np.concatenate([np.exp(raw[:d]), [math.exp(raw[d]),
                                                     math.exp(raw[d + 1]) + _MIN_NOISE]])
    return ones
