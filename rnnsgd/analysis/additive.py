"""Additive power laws, Hoffmann et al. 2022 "approach 3" (the continuous companion of the thresholds).

    y = E + sum_k A_k x_k^(-alpha_k),   E = e^e, A_k = e^(a_k)

fitted by minimizing sum_i Huber_delta(LSE(e, a_k - alpha_k log x_ik) - log y_i) with L-BFGS-B from a grid of
starting points, keeping the best. The loss is divided by delta inside the optimizer (same minimizer; the
gradient is then O(1) rather than O(delta), which makes the gradient-norm convergence check meaningful);
reported losses are the plain Huber sums. Exponents are bounded to [0, 10]: this fits decaying terms.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from .bootstrap import percentile_ci

BOUND_LOG = 100.0
ALPHA_MAX = 10.0


def _unpack(theta, K, e_fixed):
    if e_fixed is None:
        return theta[0], theta[1 : 1 + K], theta[1 + K :]
    return e_fixed, theta[:K], theta[K:]


def _loss_grad(theta, X, ly, w, e_fixed, delta):
    """Huber/delta loss on log residuals and its gradient. X (n, K) log features, ly (n,) log targets, w (n,)
    row weights (bootstrap counts). e_fixed: None (E free), a float log E, or -inf (no E term)."""
    n, K = X.shape
    e, a, al = _unpack(theta, K, e_fixed)
    terms = a[None, :] - al[None, :] * X  # (n, K)
    has_e = not (e_fixed is not None and np.isneginf(e_fixed))
    if has_e:
        terms = np.column_stack([np.full(n, e), terms])
    m = terms.max(axis=1, keepdims=True)
    pred = (m + np.log(np.exp(terms - m).sum(axis=1, keepdims=True)))[:, 0]
    pi = np.exp(terms - pred[:, None])  # share of each term in the prediction
    r = pred - ly
    ar = np.abs(r)
    loss = np.sum(w * np.where(ar <= delta, 0.5 * r * r / delta, ar - 0.5 * delta))
    psi = w * np.clip(r / delta, -1.0, 1.0)
    gt = psi @ pi  # d loss / d term
    ga = gt[1:] if has_e else gt
    gal = -(psi[:, None] * pi[:, -K:] * X).sum(axis=0)
    g = np.r_[ga, gal] if e_fixed is not None else np.r_[gt[0], ga, gal]
    return loss, g


def _bounds(K, e_free):
    b = [(-BOUND_LOG, BOUND_LOG)] * ((1 if e_free else 0) + K) + [(0.0, ALPHA_MAX)] * K
    return b


def _proj_grad(theta, g, bounds):
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    pg = np.where((theta <= lo) & (g > 0), 0.0, g)
    pg = np.where((theta >= hi) & (pg < 0), 0.0, pg)
    return float(np.max(np.abs(pg))) if len(pg) else 0.0


def _run(theta0, X, ly, w, e_fixed, delta, bounds, maxiter=5000):
    res = minimize(
        _loss_grad,
        theta0,
        args=(X, ly, w, e_fixed, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 10},
    )
    _, g = _loss_grad(res.x, X, ly, w, e_fixed, delta)
    pg = _proj_grad(res.x, g, bounds)
    # ABNORMAL_TERMINATION in the line search at a converged point is common with Huber's kinks: the
    # gradient norm, relative to the number of rows, is the check that matters
    ok = bool(np.isfinite(res.fun) and pg <= 1e-6 * (1.0 + w.sum()))
    return res.x, float(res.fun), ok, pg


def _grid(X, ly, e_free, max_starts, rng):
    """Starting points: E a little to far below min y, each exponent over {0.1 .. 2.5}, each A such that its
    term is about the median y (times e^-1.5 or e^0.5) at the feature's median."""
    K = X.shape[1]
    e_vals = ly.min() + np.array([-4.0, -1.5, -0.5, -0.1]) if e_free else [None]
    al_vals = (0.1, 0.3, 0.6, 1.0, 1.5, 2.5)
    per_k = [
        [(np.median(ly) + al * np.median(X[:, k]) + off, al) for al in al_vals for off in (-1.5, 0.5)]
        for k in range(K)
    ]
    starts = []
    for e in e_vals:
        for combo in itertools.product(*per_k):
            a = [c[0] for c in combo]
            al = [c[1] for c in combo]
            starts.append(np.r_[([e] if e is not None else []), a, al])
    starts = np.array(starts)
    if len(starts) > max_starts:
        starts = starts[rng.choice(len(starts), max_starts, replace=False)]
    return starts


@dataclass
class PowerLawFit:
    """Result of fit_additive_power_law. ci: one row per parameter (E, A[f], alpha[f]) with estimate, lo,
    hi (percentile bootstrap; NaN without it)."""

    features: tuple[str, ...]
    E: float
    A: dict[str, float]
    alpha: dict[str, float]
    loss: float
    converged: bool
    grad_norm: float
    n_starts: int
    n_obs: int
    E_fixed: bool
    ci: pd.DataFrame = field(repr=False)
    boot_ok: float = float("nan")

    def predict(self, df: pd.DataFrame | dict) -> np.ndarray:
        """E + sum_k A_k x_k^(-alpha_k) at the rows of df (needs the feature columns)."""
        out = self.E
        for f in self.features:
            out = out + self.A[f] * np.asarray(df[f], dtype=float) ** (-self.alpha[f])
        return np.asarray(out, dtype=float)

    def to_row(self) -> dict:
        """Flat dict: E, E_lo, E_hi, A_<f>, A_<f>_lo, ..., alpha_<f>, ..., loss, converged, n_obs."""
        row = {}
        for name, r in self.ci.iterrows():
            key = name.replace("[", "_").rstrip("]")
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = r["estimate"], r["lo"], r["hi"]
        row.update(
            loss=self.loss,
            converged=self.converged,
            grad_norm=self.grad_norm,
            n_obs=self.n_obs,
            E_fixed=self.E_fixed,
            boot_ok=self.boot_ok,
        )
        return row


def fit_additive_power_law(
    df: pd.DataFrame,
    target: str,
    features: Sequence[str],
    *,
    E: float | None = None,
    delta: float = 1e-3,
    n_boot: int = 500,
    cluster: str | None = None,
    max_starts: int = 64,
    n_polish: int = 5,
    ci_level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> PowerLawFit:
    """Fit target = E + sum_k A_k feature_k^(-alpha_k) (Hoffmann et al. 2022, approach 3; module docstring).

    E: None fits it; a number fixes it (0 drops the term, e.g. for an excess risk). Rows with a non-finite
    target are dropped (diverged runs); a target <= 0 or a feature <= 0 is an error (logs are taken).
    max_starts: the grid of starts is thinned at random to this many; every start runs 200 L-BFGS-B
    iterations and the n_polish best are run to convergence.
    n_boot: bootstrap refits (rows resampled, or whole clusters if `cluster` names a column), each warm-
    started from the best full-data fit (cold restarts from the whole grid reach the same optima);
    CIs are percentile intervals at ci_level. With few distinct x values they run narrow (a resample
    repeats the same few points): read them as indicative.
    """
    features = tuple(features)
    d = _finite_rows(df, target, features, cluster, E)
    rng = np.random.default_rng(seed)
    p = _Problem.of(d, target, features, E, delta)
    starts = _grid(p.X, p.ly, E is None, max_starts, rng)
    theta, loss, ok, pg = _best_of(p, starts, n_polish)
    lo = hi = np.full(p.n_par, np.nan)
    boot_ok = float("nan")
    if n_boot > 0:
        groups = d[cluster].to_numpy() if cluster else np.arange(len(p.ly))
        lo, hi, boot_ok = _bootstrap_ci(p, theta, groups, n_boot, ci_level, rng)
    ci = _ci_table(p, theta, lo, hi, E)
    return PowerLawFit(
        features=features,
        E=float(ci.loc["E", "estimate"]),
        A={f: float(ci.loc[f"A[{f}]", "estimate"]) for f in features},
        alpha={f: float(ci.loc[f"alpha[{f}]", "estimate"]) for f in features},
        loss=float(loss * delta),
        converged=bool(ok),
        grad_norm=float(pg),
        n_starts=len(starts),
        n_obs=len(p.ly),
        E_fixed=E is not None,
        ci=ci,
        boot_ok=boot_ok,
    )


def _finite_rows(df: pd.DataFrame, target: str, features: tuple[str, ...], cluster, E) -> pd.DataFrame:
    """The rows with a finite target, after checking that the columns exist and the logs can be taken."""
    what = "fit_additive_power_law"
    missing = [c for c in (target, *features, *([cluster] if cluster else [])) if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    if not features:
        raise ValueError(f"{what}: need at least one feature")
    d = df[np.isfinite(df[target].to_numpy(dtype=float))]
    y = d[target].to_numpy(dtype=float)
    Xr = d[list(features)].to_numpy(dtype=float)
    if np.any(y <= 0) or np.any(~np.isfinite(Xr)) or np.any(Xr <= 0):
        raise ValueError(f"{what}: target and features must be > 0 (log scale); filter the frame")
    if E is not None and E < 0:
        raise ValueError(f"{what}: E must be >= 0, got {E}")
    n_par = (1 if E is None else 0) + 2 * len(features)
    if len(y) <= n_par:
        raise ValueError(f"{what}: {len(y)} rows for {n_par} parameters")
    return d


@dataclass(frozen=True)
class _Problem:
    """One additive fit on the log scale: log features X (n, K), log target ly (n,), log E held fixed
    (e_fixed: None when E is fitted, -inf without an E term), the Huber delta, the box bounds and the
    names of the natural parameters (E, A[f], alpha[f])."""

    X: np.ndarray
    ly: np.ndarray
    e_fixed: float | None
    delta: float
    bounds: list
    names: list[str]

    @classmethod
    def of(cls, d: pd.DataFrame, target: str, features: tuple[str, ...], E, delta: float) -> _Problem:
        e_fixed = None if E is None else (-np.inf if E == 0 else float(np.log(E)))
        names = [*(["E"] if E is None else []), *(f"A[{f}]" for f in features)]
        names += [f"alpha[{f}]" for f in features]
        X, ly = np.log(d[list(features)].to_numpy(dtype=float)), np.log(d[target].to_numpy(dtype=float))
        return cls(X, ly, e_fixed, delta, _bounds(len(features), E is None), names)

    @property
    def n_par(self) -> int:
        return len(self.names)

    def run(self, theta0: np.ndarray, w: np.ndarray, maxiter: int = 5000):
        return _run(theta0, self.X, self.ly, w, self.e_fixed, self.delta, self.bounds, maxiter=maxiter)

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """Log-parameters -> E (when fitted), A, alpha."""
        e, a, al = _unpack(theta, self.X.shape[1], self.e_fixed)
        return np.r_[([np.exp(e)] if self.e_fixed is None else []), np.exp(a), al]


def _best_of(p: _Problem, starts: np.ndarray, n_polish: int):
    """Every start for a few hundred iterations, then the n_polish best run to full convergence: the same
    optimum as running all of them to the end, at a fraction of the cost. Returns (theta, loss, ok, pg)."""
    w = np.ones(len(p.ly))
    lim = np.array(p.bounds).T
    first = [p.run(np.clip(s0, *lim), w, maxiter=200) for s0 in starts]
    best = None
    for i in np.argsort([r[1] for r in first])[:n_polish]:
        th, loss, ok, pg = p.run(first[i][0], w)
        if best is None or (ok, -loss) > (best[2], -best[1]):
            best = (th, loss, ok, pg)
    return best


def _bootstrap_ci(p: _Problem, theta: np.ndarray, groups: np.ndarray, n_boot: int, ci_level: float, rng):
    """Percentile CIs (lo, hi) of the natural parameters over n_boot resamples of the groups, each refit
    warm-started at theta, and the share of refits that converged."""
    ids, inv = np.unique(groups, return_inverse=True)
    samples, oks = [], []
    for _ in range(n_boot):
        cnt = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
        th_b, _, ok_b, _ = p.run(theta, cnt[inv].astype(float))
        samples.append(p.natural(th_b) if ok_b else np.full(p.n_par, np.nan))
        oks.append(ok_b)
    lo, hi = percentile_ci(np.array(samples), level=ci_level)
    return lo, hi, float(np.mean(oks))


def _ci_table(p: _Problem, theta: np.ndarray, lo, hi, E: float | None) -> pd.DataFrame:
    """One row per parameter (estimate, lo, hi), a fixed E first with no CI."""
    ci = pd.DataFrame({"estimate": p.natural(theta), "lo": lo, "hi": hi}, index=p.names)
    if E is not None:
        ci = pd.concat(
            [pd.DataFrame({"estimate": [float(E)], "lo": [np.nan], "hi": [np.nan]}, index=["E"]), ci]
        )
    return ci


def fit_learning_curve(
    df: pd.DataFrame,
    x: str = "data.L",
    curve_x: str = "data.N",
    y: str = "test/risk",
    *,
    opt: str | None = "opt",
    E: str | float | None = "opt",
    by: Sequence[str] = (),
    n_boot: int = 200,
    seed: int | np.random.Generator | None = 0,
) -> pd.DataFrame:
    """Per x (e.g. per L), risk(N) = OPT + A N^(-alpha) (the continuous companion of the thresholds).

    E: "opt" fixes the floor at the mean of the `opt` column within the group (OPT is measured per run on
    the test set); None fits it freely; a number fixes it (0 for an excess risk). Seeds are pooled; the
    bootstrap resamples rows. Returns one row per (by..., x): the fit's flat row (PowerLawFit.to_row) with
    the feature named N: E, A_N, alpha_N with _lo/_hi, loss, converged, n_obs.
    """
    what = "fit_learning_curve"
    cols = [*by, x, curve_x, y] + ([opt] if E == "opt" else [])
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    rng = np.random.default_rng(seed)
    rows = []
    for key, sub in df.groupby([*by, x], sort=True):
        e_val = float(np.nanmean(sub[opt].to_numpy(dtype=float))) if E == "opt" else E
        d = pd.DataFrame({"N": sub[curve_x].to_numpy(dtype=float), "y": sub[y].to_numpy(dtype=float)})
        fit = fit_additive_power_law(d, "y", ["N"], E=e_val, n_boot=n_boot, seed=rng)
        row = dict(zip([*by, x], key if isinstance(key, tuple) else (key,), strict=True))
        row.update(fit.to_row())
        rows.append(row)
    return pd.DataFrame(rows)
